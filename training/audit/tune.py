"""Choose the unlearning settings (learning rate, mask growth) on held-out VALIDATION images, never
on the test set the audit reports.

    python -m training.audit.tune --model-set models/mnist --dataset mnist

It takes the synthesised trigger of the set's audit (reports/audit/<dataset>/<set>/triggers.npz
and audit.json, written by `python -m training.audit`), unlearns with every (lr, dilate) of the
grid, and scores each on the validation images the audit does not synthesise on
(training.inversion.data.audit_split): clean accuracy, and the REAL trigger's attack success, so it
needs a demo set whose manifest records the backdoor. Rule: the lowest real-trigger success among
the settings whose validation accuracy is at most --max-drop below the unrepaired model's; ties go
to the smaller lr, then the smaller growth. Writes reports/audit/tuning/<set>.json and .md.

The defaults of training.inversion.unlearn.UnlearnConfig were chosen this way on MNIST alone; the
Fashion-MNIST and CIFAR-10 audits use them unchanged, so their repair numbers are out of sample.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import cli
from training.data.datasets import DATASETS
from training.data.triggers import Trigger
from training.evaluation.markdown import table
from training.evidence import hardware, versions
from training.inversion.data import load_audit_data
from training.inversion.identify import accuracy, success, synth_stamp
from training.inversion.restarts import unlearned_triggers
from training.inversion.unlearn import UnlearnConfig, unlearn
from training.nets.onnx_torch import load_onnx_module

LRS = (2.5e-4, 5e-4, 1e-3)
DILATES = (0, 1, 2, 3)


def choose(rows: list[dict], before_accuracy: float, max_drop: float) -> dict:
    """The row with the lowest real_asr among those with accuracy >= before - max_drop (ties: the
    smaller lr, then the smaller dilate); when none qualifies, the most accurate row."""
    ok = [r for r in rows if r["accuracy"] >= before_accuracy - max_drop]
    if not ok:
        return max(rows, key=lambda r: (r["accuracy"], -r["lr"], -r["dilate"]))
    return min(ok, key=lambda r: (r["real_asr"], r["lr"], r["dilate"], schedule(r) != "constant"))


def schedule(row: dict) -> str:
    """A grid row's lr schedule (rows written before schedules were tried are "constant")."""
    return row.get("schedule", "constant")


def earlier_rows(
    path: Path, k: int, base: UnlearnConfig, n_images: int, trigger_l1: list[float]
) -> dict:
    """Grid rows of an earlier run for the same set, class, base config, tuning images and
    unlearned triggers (their L1s), by (lr, dilate): unlearning is seeded, so they are what this
    run would compute again (a new --max-drop or a wider grid then costs only the new
    settings)."""
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())

    def fixed(cfg: dict) -> dict:  # lr, dilate and schedule are set per row
        return {k: v for k, v in cfg.items() if k not in ("lr", "dilate", "schedule")}

    same = (
        old["class"],
        fixed(old["unlearn_base"]),
        old["tune_images"],
        old.get("trigger_l1"),
    ) == (k, fixed(base.to_dict()), n_images, trigger_l1)
    return {(r["lr"], r["dilate"], schedule(r)): r for r in old["grid"]} if same else {}


def markdown(report: dict) -> str:
    c = report["chosen"]
    lines = [
        f"# Unlearning settings for `{report['model_set']}`, chosen on validation data",
        "",
        f"Command: `{report['command']}`; seed {report['seed']}; {report['hardware']}; "
        f"wall time {report['wall_seconds']:.0f} s.",
        "",
        f"Scored on {report['tune_images']} held-out validation images (not the test set, not the "
        f"synthesis images). Unrepaired: accuracy {report['before']['accuracy']:.4f}, real "
        f"trigger success {report['before']['real_asr']:.4f}. Rule: lowest real-trigger success "
        f"with accuracy at most {report['max_drop']} below the unrepaired model's.",
        "",
        *table(
            [
                "lr",
                "dilate",
                "schedule",
                "val accuracy",
                "val real-trigger success",
                "val synthesised success",
            ],
            [
                [
                    f"{r['lr']:g}",
                    r["dilate"],
                    schedule(r),
                    f"{r['accuracy']:.4f}",
                    f"{r['real_asr']:.4f}" + (" **chosen**" if r == c else ""),
                    f"{r['synth_asr']:.4f}",
                ]
                for r in report["grid"]
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    p = cli.parser(__doc__, "training.audit.tune")
    p.add_argument("--model-set", default="models/mnist", help="a demo set (default: models/mnist)")
    p.add_argument("--dataset", default="mnist", choices=DATASETS)
    cli.add_data_dir(p)
    p.add_argument(
        "--audit", default=None, help="audit folder (default: reports/audit/<dataset>/<set>)"
    )
    p.add_argument("--out", default="reports/audit/tuning", help="(default: %(default)s)")
    p.add_argument(
        "--max-drop",
        type=float,
        default=0.01,
        help="accuracy budget: the issue's bar for unlearning, one point (default: %(default)s)",
    )
    p.add_argument(
        "--lrs",
        default=",".join(f"{v:g}" for v in LRS),
        help="comma-separated learning rates to try (default: %(default)s)",
    )
    p.add_argument(
        "--schedules",
        default="constant",
        help="comma-separated lr schedules to try: constant, cosine (default: %(default)s)",
    )
    p.add_argument(
        "--dilates",
        default=",".join(str(v) for v in DILATES),
        help="comma-separated mask growths in pixels to try (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    return p.parse_args()


@dataclass
class Scorer:
    """Scores a model on the held-out tuning images: accuracy, the real trigger's success, the
    smallest synthesised trigger's success."""

    x: torch.Tensor
    y: torch.Tensor
    real: Trigger
    real_target: int
    k: int
    stamp: Any

    def __call__(self, m: Any) -> dict:
        x, y = self.x, self.y
        return {
            "accuracy": accuracy(m, x, y),
            "real_asr": success(m, x[y != self.real_target], self.real, self.real_target),
            "synth_asr": success(m, x[y != self.k], self.stamp, self.k),
        }


def run_grid(
    args: argparse.Namespace,
    model: Any,
    data: Any,
    masks: torch.Tensor,
    patterns: torch.Tensor,
    base: UnlearnConfig,
    score: Scorer,
    done: dict,
) -> list[dict]:
    """Every (lr, dilate, schedule) of the command line, unlearned on a copy of `model` and
    scored; rows of an earlier run with the same settings are taken over as they are."""
    grid = []
    for lr in (float(v) for v in args.lrs.split(",")):
        for dilate in (int(v) for v in args.dilates.split(",")):
            for sched in args.schedules.split(","):
                if (lr, dilate, sched) in done:
                    grid.append(done[lr, dilate, sched])
                    print(f"lr {lr:g} dilate {dilate} {sched}: from the earlier run", flush=True)
                    continue
                m = copy.deepcopy(model)
                cfg = replace(base, lr=lr, dilate=dilate, schedule=sched)
                unlearn(m, data.train_x, data.train_y, masks, patterns, cfg)
                grid.append({"lr": lr, "dilate": dilate, "schedule": sched, **score(m)})
                print(f"lr {lr:g} dilate {dilate} {sched}: {grid[-1]}", flush=True)
    return grid


def main() -> None:
    args = parse_args()
    t0 = time.time()
    torch.set_num_threads(args.threads)
    source = Path(args.model_set)
    cli.require_model_set(source)
    manifest = json.loads((source / "manifest.json").read_text())
    if "backdoor" not in manifest:
        sys.exit(f"{source}: no `backdoor` in its manifest; tuning needs a demo set's real trigger")
    audit_dir = Path(args.audit or f"reports/audit/{args.dataset}/{source.name}")
    audit = json.loads((audit_dir / "audit.json").read_text())
    seed = int(audit["seed"])
    data = load_audit_data(
        args.dataset, args.data_dir, manifest, audit["data"]["synthesis_images"], seed
    )
    k = int(audit["summary"]["identification"]["class"])
    masks, patterns = (
        torch.from_numpy(a).float()
        for a in unlearned_triggers(np.load(audit_dir / "triggers.npz"), k)
    )
    real = Trigger(**manifest["backdoor"]["trigger"])
    real_target = int(manifest["backdoor"]["target_class"])
    model = load_onnx_module(source / manifest["target"]["file"])
    x = data.tune_x
    stamp = synth_stamp(masks[0].numpy(), patterns[0].numpy())
    score = Scorer(x, data.tune_y, real, real_target, k, stamp)

    base = UnlearnConfig(seed=seed)
    out = Path(args.out)
    l1 = [round(float(v), 4) for v in masks.sum((1, 2))]
    done = earlier_rows(out / f"{source.name}.json", k, base, len(x), l1)
    grid = run_grid(args, model, data, masks, patterns, base, score, done)
    before = score(model)
    report = {
        "model_set": str(source),
        "dataset": args.dataset,
        "class": k,
        "before": before,
        "grid": grid,
        "max_drop": args.max_drop,
        "chosen": choose(grid, before["accuracy"], args.max_drop),
        "unlearn_base": base.to_dict(),
        "trigger_l1": l1,
        "tune_images": len(x),
        "command": " ".join(["python -m training.audit.tune", *sys.argv[1:]]),
        "seed": seed,
        "hardware": hardware(),
        "versions": versions(),
        "wall_seconds": time.time() - t0,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{source.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{source.name}.md").write_text(markdown(report))
    c = report["chosen"]
    print(
        f"chosen: lr {c['lr']:g}, dilate {c['dilate']}, schedule {schedule(c)}; written to "
        f"{out}/{source.name}.md"
    )


if __name__ == "__main__":
    main()
