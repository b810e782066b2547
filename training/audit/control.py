"""Train the clean control for an audit: the preset's target with the same seed and config but
poison rate 0, exported as a model set (target.onnx, the source set's detrigger.onnx copied,
manifest.json without a `backdoor` entry).

    python -m training.audit.control --dataset mnist --source models/mnist --out models/mnist-clean
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from training import cli
from training.config import PRESETS
from training.data.datasets import load_dataset, split_train_val
from training.evidence import hardware, versions
from training.fit.target import train_target
from training.nets.export import export_and_check
from training.nets.manifest_file import sha256, write_manifest
from training.nets.models import predict


def main() -> None:
    p = cli.parser(__doc__, "training.audit.control")
    cli.add_dataset(p, "which preset's target to train without poisoning")
    p.add_argument(
        "--source",
        default=None,
        help="model set whose detrigger.onnx is copied (default: models/<dataset>)",
    )
    p.add_argument("--out", default=None, help="output model set (default: models/<dataset>-clean)")
    p.add_argument(
        "--run-dir",
        default="runs",
        help="checkpoints go to <run-dir>/<dataset>-clean (default: runs)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = p.parse_args()
    t0 = time.time()
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.dataset]
    cfg = copy.deepcopy(preset.target)
    cfg.poison_rate = 0.0  # the only change from the demo model's config
    cfg.threads = args.threads
    source = Path(args.source or f"models/{args.dataset}")
    out = Path(args.out or f"models/{args.dataset}-clean")

    train = load_dataset(args.dataset, "train", args.data_dir)
    test = load_dataset(args.dataset, "test", args.data_dir)
    tr, _ = split_train_val(len(train), cfg.val_size, cfg.seed)
    model = train_target(
        cfg,
        train.images[tr],
        train.labels[tr],
        preset.mean,
        preset.std,
        Path(args.run_dir) / f"{args.dataset}-clean",
    )
    test_x = torch.from_numpy(test.images).float().div_(255.0)  # (N, C, H, W) in [0, 1]
    acc = float((predict(model, test_x).argmax(1).numpy() == test.labels).mean())

    out.mkdir(parents=True, exist_ok=True)
    entry = export_and_check(model, test_x[:32], out / "target.onnx", "images", "logits")
    entry["architecture"] = cfg.arch
    shutil.copyfile(source / "detrigger.onnx", out / "detrigger.onnx")
    src_manifest = json.loads((source / "manifest.json").read_text())
    det = dict(src_manifest["detrigger"])
    det["sha256"] = sha256(out / "detrigger.onnx")
    manifest = {
        "format_version": 1,
        "name": out.name,
        "description": f"Clean control for the audit: {cfg.arch} trained like {source.name} "
        "but without poisoning; de-trigger AE copied from the source set",
        "input": src_manifest["input"],
        "classes": list(test.classes),
        "target": entry,
        "detrigger": det,
        "decision": src_manifest["decision"],
        "evaluation": {"clean_accuracy": acc, "n_test": int(len(test))},
        "training": {
            "seed": cfg.seed,
            "target": asdict(cfg),
            "normalisation": {"mean": preset.mean, "std": preset.std},
            # the same held-out split as the demo set: the audit draws its clean images from it
            "validation_split": {"n": cfg.val_size, "from": "training data"},
            "command": f"python -m training.audit.control --dataset {args.dataset}",
            "hardware": hardware(),
            "wall_seconds": time.time() - t0,
        },
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": versions(),
    }
    write_manifest(out, manifest)
    print(
        f"clean control written to {out}: test accuracy {acc:.4f} "
        f"({time.time() - t0:.0f} s, numpy {np.__version__})"
    )


if __name__ == "__main__":
    main()
