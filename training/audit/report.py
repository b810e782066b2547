"""Rewrite reports/audit/README.md's table from the audits' jsons (every
<dataset>/<set>/audit.json and joint/*.json), keeping the hand-written text above its
`<!-- table -->` marker:

    python -m training.audit.report
"""

from __future__ import annotations

import json
from pathlib import Path

from training import cli
from training.inversion.render import joint_overview, overview


def main() -> None:
    p = cli.parser(__doc__, "training.audit.report")
    p.add_argument(
        "--reports-dir",
        default="reports/audit",
        help="folder holding <dataset>/<set>/audit.json (default: reports/audit)",
    )
    args = p.parse_args()
    root = Path(args.reports_dir)
    reports = [json.loads(f.read_text()) for f in sorted(root.glob("*/*/audit.json"))]
    head = (
        (root / "README.md").read_text().split("<!-- table -->")[0]
        if (root / "README.md").is_file()
        else ""
    )
    joint = [json.loads(f.read_text()) for f in sorted((root / "joint").glob("*.json"))]
    body = overview(reports) + joint_overview(joint)
    (root / "README.md").write_text(f"{head}<!-- table -->\n{body}" if head else body)


if __name__ == "__main__":
    main()
