"""Join the two defences (issue 6, item 6): train the de-trigger AE with the triggers the model
audit synthesised, and measure whether that raises detection on the demo sets.

    python -m training.audit.joint --dataset mnist

For one demo set it trains the preset's conv AE in up to three ways (--arms) on the same training
split, then evaluates every AE with the set's own target on the full test set, exactly as
`make reproduce` does (training.evaluation.evaluate.evaluate_pair: positives are the triggered
test images of other classes, thresholds are calibrated on the clean validation split):

- `corner`: the paper's training triggers (the AE `make reproduce` ships; reused when finished);
- `corner+synth`: the same, with half of the triggered images carrying instead the audit's
  synthesised trigger of a flagged class (training/inversion/synthesised.py);
- `none+synth`: only the synthesised triggers, i.e. an AE that knows nothing of the attack but
  what the audit found.

The target is the set's target.onnx run as a torch module (training.nets.onnx_torch), so any
demo set under the model contract works. Needs the set's audit (`python -m training.audit`).
Writes reports/audit/joint/<set>.json and .md.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from training import cli
from training.config import PRESETS, AEConfig, run_name
from training.data.datasets import load_dataset, split_train_val, to_float
from training.data.triggers import Trigger
from training.evaluation.evaluate import evaluate_pair
from training.evaluation.markdown import table
from training.evidence import hardware, versions
from training.fit.autoencoder import train_autoencoder
from training.inversion.render import JOINT_COLUMNS, joint_cells
from training.nets.onnx_torch import load_onnx_module

ARMS = ("corner", "corner+synth", "none+synth")
log = logging.getLogger("training.audit.joint")


def arm_config(base: AEConfig, arm: str, audit: str) -> AEConfig:
    """The AE config of one arm, from the preset's conv AE."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; allowed: {', '.join(ARMS)}")
    triggers, _, synth = arm.partition("+")
    return replace(base, triggers=triggers, synthesised=audit if synth else "")


def summary_row(arm: str, res: dict, target_fpr: float) -> dict:
    """The figures the table shows for one arm (all from the full test set)."""
    key = f"kl@fpr{target_fpr:g}"
    return {
        "arm": arm,
        "clean_accuracy_after_ae": res["clean_accuracy_after_ae"],
        "backdoor_accuracy_after_ae": res["backdoor_accuracy_after_ae"],
        "class_change": res["test"]["class_change"],
        "kl_calibrated": {"fpr": target_fpr, **res["test"][key]},
        "kl_auroc": res["scores"]["kl"]["auroc"],
        "kl_tpr_at_fpr0.01": res["scores"]["kl"]["tpr_at_fpr0.01"],
    }


def markdown(report: dict) -> str:
    f = report["target_fpr"]
    lines = [
        f"# Joining the defences on `{report['model_set']}`: AE trained with the audit's "
        "synthesised triggers",
        "",
        f"Audit: `{report['audit']}` (flagged classes {report['flagged']}; real target "
        f"{report['real_target']}). Every AE is the preset's conv AE "
        f"({report['epochs']} epoch(s)), evaluated with the set's target on the full test set "
        f"({report['n_positive']} triggered positives, {report['n_test']} clean negatives). KL "
        f"thresholds are calibrated on the clean validation split for FPR {f:g}.",
        "",
        *table(
            ["training triggers", *JOINT_COLUMNS],
            [[r["arm"], *joint_cells(r)] for r in report["arms"]],
        ),
    ]
    lines += [
        "",
        "All figures in %, from the test set.",
        "",
        f"- command: `{report['command']}`",
        f"- seed: {report['seed']}; hardware: {report['hardware']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
        f"- wall time: {report['wall_seconds']:.0f} s (AEs reloaded when a finished checkpoint "
        "of the same config was in the run directory)",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = cli.parser(__doc__, "training.audit.joint")
    cli.add_dataset(p, "the demo set's dataset")
    p.add_argument("--model-set", default=None, help="demo set (default: models/<dataset>)")
    p.add_argument(
        "--audit", default=None, help="its audit (default: reports/audit/<dataset>/<set>)"
    )
    p.add_argument(
        "--arms", default=",".join(ARMS), help="comma-separated arms (default: %(default)s)"
    )
    p.add_argument("--run-dir", default="runs", help="AE checkpoints (default: runs/<dataset>)")
    p.add_argument("--out", default="reports/audit/joint", help="(default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    args = p.parse_args()
    t0 = time.time()
    torch.set_num_threads(args.threads)
    source = Path(args.model_set or f"models/{args.dataset}")
    audit = args.audit or f"reports/audit/{args.dataset}/{source.name}"
    cli.require_model_set(source)
    cli.log_to(Path(args.run_dir) / f"joint-{source.name}.log")
    manifest = json.loads((source / "manifest.json").read_text())
    if "backdoor" not in manifest:
        sys.exit(f"{source}: no `backdoor` in its manifest; the measurement needs a demo set")
    flagged = json.loads((Path(audit) / "audit.json").read_text())["summary"]["target_classes"]
    trigger = Trigger(**manifest["backdoor"]["trigger"])
    real_target = int(manifest["backdoor"]["target_class"])

    preset = PRESETS[args.dataset]
    train = load_dataset(args.dataset, "train", args.data_dir)
    test = load_dataset(args.dataset, "test", args.data_dir)
    tr, va = split_train_val(len(train), preset.target.val_size, preset.target.seed)
    target = load_onnx_module(source / manifest["target"]["file"])
    test_x, val_x = to_float(test.images), to_float(train.images[va])
    base = replace(preset.autoencoders["conv"], threads=args.threads)
    fprs = tuple(sorted({0.01, 0.05, preset.target_fpr}))
    rows, results, cache = [], {}, {}
    for arm in args.arms.split(","):
        cfg = arm_config(base, arm, audit)
        log.info("arm %s: AE %s", arm, run_name(cfg))
        ae = train_autoencoder(cfg, train.images[tr], Path(args.run_dir) / args.dataset, log.info)
        val_y = train.labels[va]
        res, _ = evaluate_pair(
            target, ae, test_x, test.labels, val_x, val_y, trigger, real_target, fprs, cache
        )
        results[arm] = res
        rows.append(summary_row(arm, res, preset.target_fpr))
        log.info("arm %s: %s", arm, rows[-1])
    first = next(iter(results.values()))
    report = {
        "model_set": str(source),
        "audit": audit,
        "flagged": flagged,
        "real_target": real_target,
        "dataset": args.dataset,
        "target_fpr": preset.target_fpr,
        "epochs": base.epochs,
        "n_test": first["n_test"],
        "n_positive": first["n_positive"],
        "arms": rows,
        "results": results,
        "command": " ".join(["python -m training.audit.joint", *sys.argv[1:]]),
        "seed": base.seed,
        "hardware": hardware(),
        "versions": versions(),
        "wall_seconds": time.time() - t0,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{source.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{source.name}.md").write_text(markdown(report))
    log.info("written to %s/%s.md", out, source.name)


if __name__ == "__main__":
    main()
