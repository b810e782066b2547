"""The floors of the house (docs/architecture.md), checked from the imports by Import Linter:
the contracts in pyproject.toml ([tool.importlinter]) say which floor may import which, that the
contract package imports none of ours, that training never imports the service or FastAPI, that
no training job imports another, and that nothing imports in a circle. Import Linter (grimp)
reads every import of the source, inside functions too, relative ones resolved.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from importlinter.api import read_configuration

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(cwd), "PATH": ""},
    )


def contracts() -> list[dict]:
    """The contracts of pyproject.toml, as Import Linter reads them."""
    return list(read_configuration(str(REPO / "pyproject.toml"))["contracts_options"])


def test_every_floor_contract_is_kept() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    kept = len(contracts())
    assert f"Contracts: {kept} kept, 0 broken." in result.stdout


def test_a_import_pointing_up_breaks_the_check(tmp_path: Path) -> None:
    """The check above can fail: a low floor that imports a high one is reported."""
    house = tmp_path / "house"
    house.mkdir()
    (house / "__init__.py").write_text("")
    (house / "high.py").write_text("from house import low\n")
    (house / "low.py").write_text("def f():\n    from house import high  # up, inside a function\n")
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_package = house\n\n[importlinter:contract:floors]\n"
        "name = floors\ntype = layers\nlayers =\n    house.high\n    house.low\n"
    )
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "house.low -> house.high" in result.stdout


def entry_points(package: str) -> set[str]:
    """Modules run with `python -m`: a __main__.py, or a module with an `if __name__ ==
    "__main__":` block."""
    out = set()
    for path in sorted((REPO / package).rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        tree = ast.parse(path.read_text(), str(path))
        runs = any(
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__"
            for node in tree.body
        )
        if path.name == "__main__.py" or runs:
            out.add(module)
    return out


def cli_jobs() -> set[str]:
    """The training jobs the `detrigger-guard` commands call: modules training/<job>.py (not a
    floor package, not a floor module) that cli/ imports."""
    floors = {"training.config", "training.evidence", "training.cli"}
    out = set()
    for path in sorted((REPO / "cli").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("training."):
                module = node.module or ""
                if (REPO / Path(*module.split("."))).with_suffix(".py").parent == REPO / "training":
                    out.add(module)
    return out - floors


def test_the_independent_jobs_are_exactly_the_training_commands() -> None:
    """A new `python -m training.<job>`, or a job a `detrigger-guard` command calls, must join
    the independence contract."""
    jobs = next(c for c in contracts() if c["type"] == "independence")
    assert cli_jobs() == {"training.fit_set", "training.calibrate_set"}
    assert set(jobs["modules"]) == entry_points("training") | cli_jobs()
