"""The detection comparison report's Markdown and ROC plots, written from the jsons of
training.detection_report alone:

    python -m training.detection_tables                 # every reports/detection/<dataset>.json

rewrites <dataset>.md, <dataset>/roc.png and README.md (every dataset in one Table 7). The
example grids of missed positives need the images, so only the report command writes them.

Table 7 is laid out like the paper's: one row per method, the paper's reported detection rate
beside its method reproduced here, the improved detector, STRIP and the audit-based detector.
"""

from __future__ import annotations

from pathlib import Path

from training import cli
from training.evaluation.detection_markdown import load_reports, write_dataset, write_readme


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__, "training.detection_tables")
    p.add_argument(
        "--out",
        default="reports/detection",
        help="folder holding <dataset>.json (default: reports/detection)",
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    reports = load_reports(out)
    if not reports:
        raise SystemExit(f"no <dataset>.json in {out}: run python -m training.detection_report")
    for report in reports:
        write_dataset(out, report)
    write_readme(out)


if __name__ == "__main__":
    main()
