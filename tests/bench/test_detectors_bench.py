"""`python -m bench.detectors` on a tiny set that offers every detector: both tables, one row
per batch size, written between their markers of the page it is given."""

from __future__ import annotations

from pathlib import Path

from bench.detectors import BEGIN, END, REPAIRED_BEGIN, REPAIRED_END, main
from tests.support.tiny_models import TinySpec, build_model_set

SPEC = TinySpec(name="tinyall", rule="score", strip_n=8, both=(0.5, 0.3), repaired=0.5)


def test_both_tables_are_written_for_a_set_with_a_repaired_graph(tmp_path: Path) -> None:
    folder = build_model_set(tmp_path / "tinyall", SPEC)
    page = tmp_path / "page.md"
    page.write_text(
        f"# page\n\n{BEGIN}\nold\n{END}\n\ntext\n\n{REPAIRED_BEGIN}\nold\n{REPAIRED_END}\n"
    )
    rows = main(["--model-set", str(folder), "--batch", "1", "--batch", "4", "--repeats", "2",
                 "--docs", str(page)])  # fmt: skip
    assert len(rows) == 4  # two batch sizes, two tables
    text = page.read_text()
    assert "old" not in text and text.startswith("# page\n") and "\ntext\n" in text
    both = text.split(BEGIN)[1].split(END)[0]
    repaired = text.split(REPAIRED_BEGIN)[1].split(REPAIRED_END)[0]
    assert "| detrigger + strip: CPU ms, median / best |" in both
    assert "| repaired / detrigger (CPU, median) |" in repaired
    for block in (both, repaired):
        cells = [line.split(" | ") for line in block.splitlines() if line.startswith("| tinyall")]
        assert [c[1] for c in cells] == ["1", "4"]
        assert all(float(c[4]) > 0 for c in cells)  # the ratio column
