"""The audit's full-image trigger families (training/inversion/fullimage.py): their thresholds,
set on the clean control sets, and what they find on backdoored sets:

    python -m training.audit.families
    python -m training.audit.families --measure mnist=/tmp/aud/mnist-blend/set ...

Every set is searched as `python -m training.audit` searches it (the same clean synthesis images,
settings and seed). A family's threshold is the smallest half-integer above every anomaly index
of every class of every clean control, and at least Neural Cleanse's 2 (`threshold_from`): no
clean control is flagged. training.inversion.pipeline.FAMILY_THRESHOLDS holds the thresholds; a
test checks them against reports/audit/families/families.json. Measured sets (--measure) are
judged with those thresholds; their manifest's backdoor, when recorded, names the real target.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from training import cli
from training.data.triggers import Trigger
from training.evaluation.markdown import table
from training.evidence import hardware, versions
from training.inversion.anomaly import flagged_by_index
from training.inversion.data import load_audit_data
from training.inversion.fullimage import FAMILIES, synthesize_family
from training.inversion.identify import success
from training.inversion.pipeline import AuditConfig
from training.nets.onnx_torch import load_onnx_module

CONTROLS = (
    "mnist=models/mnist-clean",
    "fashion-mnist=models/fashion-mnist-clean",
    "cifar10=models/cifar10-clean",
)
NC_THRESHOLD = 2.0  # Neural Cleanse's anomaly-index threshold, the floor of every family's


def threshold_from(indices: list[float]) -> float:
    """The smallest half-integer strictly above every clean control's index, at least 2."""
    return max(NC_THRESHOLD, math.floor(max(indices) * 2 + 1) / 2)


def search(dataset: str, folder: Path, cfg: AuditConfig, args: argparse.Namespace) -> dict:
    """Every family's per-class smallest trigger on one set, as the audit searches it."""
    manifest = json.loads((folder / "manifest.json").read_text())
    data = load_audit_data(dataset, args.data_dir, manifest, args.synth_images, args.seed)
    model = load_onnx_module(folder / manifest["target"]["file"])
    out: dict = {
        "set": str(folder),
        "dataset": dataset,
        "backdoor": manifest.get("backdoor"),
        "families": {},
    }
    if out["backdoor"]:  # a demo set: how well its real trigger works on this target
        target = int(out["backdoor"]["target_class"])
        others = data.test_x[data.test_y != target]
        trigger = Trigger(**out["backdoor"]["trigger"])
        out["real_asr"] = success(model, others, trigger, target)
    for name in cfg.families:
        t = time.time()
        r = synthesize_family(
            name, model, data.synth_x, len(data.classes), cfg.family_synth, not args.no_progress
        )
        out["families"][name] = {
            "size": r.size.tolist(),
            "reached": r.reached.tolist(),
            "anomaly_index": r.anomaly_index().tolist(),
            "seconds": time.time() - t,
        }
        print(f"{folder} {name}: index {max(out['families'][name]['anomaly_index']):.2f}")
    return out


def judge(entry: dict, thresholds: dict[str, float]) -> None:
    """Add each family's flagged classes (index above its threshold, most anomalous first)."""
    for name, fam in entry["families"].items():
        fam["flagged"] = flagged_by_index(np.array(fam["anomaly_index"]), thresholds[name])


def markdown(report: dict) -> str:
    names = list(report["thresholds"])
    lines = [
        "# The audit's full-image trigger families (issue 22, point 4)",
        "",
        f"Written by `{report['command']}`. Families: training/inversion/fullimage.py. Each set is "
        "searched as `python -m training.audit` searches it; the anomaly index is of log sizes "
        "(blend weight; mean displacement in pixels). A family's threshold is the smallest "
        "half-integer above every index of every clean control, at least 2.",
        "",
        "## Clean controls and thresholds",
        "",
        *table(
            ["set", *(f"{n}: largest index" for n in names)],
            [
                [c["set"], *(f"{max(c['families'][n]['anomaly_index']):.2f}" for n in names)]
                for c in report["controls"]
            ],
        ),
        "",
        "Thresholds: " + ", ".join(f"{n} {report['thresholds'][n]:g}" for n in names) + ".",
    ]
    if report["measured"]:
        lines += [
            "",
            "## Backdoored sets",
            "",
            "Per family: the classes flagged, and the real target's index and size. Attack "
            "success: the real trigger's, on the test images of the other classes.",
            "",
            *table(
                [
                    "set",
                    "trigger",
                    "attack success",
                    "real target",
                    *(f"{n}: flagged / target's index (size)" for n in names),
                ],
                [measured_row(m, names) for m in report["measured"]],
            ),
        ]
    lines += [
        "",
        f"- seed {report['seed']}; {report['synth_images']} clean synthesis images per set; "
        f"settings `{json.dumps(report['family_synth'])}`",
        f"- hardware: {report['hardware']}; wall {report['wall_seconds']:.0f} s",
        f"- versions: {json.dumps(report['versions'])}",
        "",
    ]
    return "\n".join(lines)


def measured_row(m: dict, names: list[str]) -> list[str]:
    bd = m.get("backdoor") or {}
    target = bd.get("target_class")
    cells = []
    for n in names:
        fam = m["families"][n]
        cell = ", ".join(map(str, fam["flagged"])) or "none"
        if target is not None:
            cell += f" / {fam['anomaly_index'][target]:.2f} ({fam['size'][target]:.3f})"
        cells.append(cell)
    kind = (bd.get("trigger") or {}).get("kind", "?")
    asr = f"{100 * m['real_asr']:.2f}%" if "real_asr" in m else "-"
    return [m["set"], kind, asr, "?" if target is None else str(target), *cells]


def pairs(values: list[str]) -> list[tuple[str, Path]]:
    out = []
    for v in values:
        dataset, sep, folder = v.partition("=")
        if not sep:
            raise SystemExit(f"{v!r}: give DATASET=SET_FOLDER")
        cli.require_model_set(Path(folder))
        out.append((dataset, Path(folder)))
    return out


def main(argv: list[str] | None = None) -> None:
    p = cli.parser(__doc__, "training.audit.families")
    p.add_argument(
        "--control",
        action="append",
        default=None,
        help="DATASET=SET of a clean control, repeatable (default: the three shipped controls)",
    )
    p.add_argument(
        "--measure", action="append", default=[], help="DATASET=SET to judge, repeatable"
    )
    p.add_argument("--out", default="reports/audit/families", help="report folder")
    p.add_argument("--synth-images", type=int, default=1000, help="as training.audit's")
    p.add_argument("--seed", type=int, default=0, help="as training.audit's (default: 0)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    cli.add_data_dir(p)
    args = p.parse_args(argv)
    t0 = time.time()
    torch.set_num_threads(args.threads)
    cfg = AuditConfig(families=FAMILIES)
    controls = [search(d, f, cfg, args) for d, f in pairs(args.control or list(CONTROLS))]
    thresholds = {
        n: threshold_from([i for c in controls for i in c["families"][n]["anomaly_index"]])
        for n in cfg.families
    }
    measured = [search(d, f, cfg, args) for d, f in pairs(args.measure)]
    for entry in controls + measured:
        judge(entry, thresholds)
    report = {
        "command": " ".join(["python -m training.audit.families", *sys.argv[1:]]),
        "thresholds": thresholds,
        "controls": controls,
        "measured": measured,
        "family_synth": cfg.family_synth.to_dict(),
        "synth_images": args.synth_images,
        "seed": args.seed,
        "hardware": hardware(),
        "versions": versions(),
        "wall_seconds": time.time() - t0,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "families.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "README.md").write_text(markdown(report))
    print(f"thresholds {thresholds}; report in {out}")


if __name__ == "__main__":
    main()
