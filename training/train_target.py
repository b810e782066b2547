"""Train the deliberately backdoored target classifier (BadNets poisoning), with checkpoints so a
long run can resume.

The poisoned training set is an index over the clean images: every clean training image plus
round(poison_rate * N) triggered copies relabelled to the target class. Augmentation runs on the
batch first and the trigger is stamped afterwards on the rows flagged as poisoned. A config with
an `attack` (a list of {target_class, trigger} pairs) poisons with every pair instead, each with
its share poison_rate / K of copies.

With `init_from` (a finished target checkpoint of the same architecture) the model starts from
those weights instead of from scratch: a backdoor injected by fine-tuning a trained model on
poisoned data (the threat model of an outsourced or downloaded model that was fine-tuned by the
attacker), used where training from scratch per attack costs too much (CIFAR-10 on 2 cores).
`init_from` may also be a target graph under the model contract (a `.onnx` file, e.g. a shipped
clean control's target.onnx): it is run as torch by training.nets.onnx_torch, its Conv / Gemm /
MatMul / BatchNormalization weights trainable (batch norm keeps its running statistics), so a
shipped model can be fine-tuned without the checkpoint that made it.

    python -m training.train_target --dataset mnist --epochs 4
    python -m training.train_target --dataset cifar10 --epochs 12 --recipe poison_focus=0.5 \
        --run-dir runs/focus

It prints (and writes beside the checkpoint, target_test.json) the clean test accuracy and the
attack success, split by how much the trigger moved each test image.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training import cli
from training.config import PRESETS, TargetConfig, backdoors
from training.data.datasets import load_dataset, split_train_val, to_float
from training.data.triggers import trigger_change
from training.evaluation import metrics
from training.fit.target import train_target
from training.nets.checkpoints import config_dict
from training.nets.models import TARGETS, predict


@torch.no_grad()
def attack_summary(
    model: nn.Module, cfg: TargetConfig, test_images: np.ndarray, test_labels: np.ndarray
) -> dict:
    """Clean accuracy and, per (trigger, target) pair, the attack success rate on the test set and
    the same split by how much the trigger moved each image (metrics.attack_success_by_change)."""
    x = to_float(torch.from_numpy(test_images))
    out: dict = {
        "clean_accuracy": metrics.accuracy(predict(model, x).argmax(1).numpy(), test_labels)
    }
    out["attacks"] = []
    for trigger, target_class in backdoors(cfg):
        xt = trigger(x)
        pred = predict(model, xt).argmax(1).numpy()
        out["attacks"].append(
            {
                "target_class": target_class,
                "trigger": trigger.to_dict(),
                "attack_success_rate": metrics.attack_success_rate(pred, test_labels, target_class),
                "by_trigger_change": metrics.attack_success_by_change(
                    trigger_change(x.numpy(), xt.numpy()), pred, test_labels, target_class
                ),
            }
        )
    return out


def main() -> None:
    p = cli.parser(__doc__, "training.train_target")
    cli.add_dataset(p, "which preset to train")
    p.add_argument(
        "--arch", default=None, choices=TARGETS, help="target architecture (default: the preset's)"
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the preset's)")
    cli.add_recipe(p, "target", "lr=0.05, poison_focus=0.5 or augment=flip-translate")
    p.add_argument(
        "--init-from",
        default=None,
        help="fine-tune this target checkpoint or target.onnx instead of training from scratch",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: the preset's)"
    )
    p.add_argument("--run-dir", default="runs", help="where checkpoints go (default: runs)")
    args = p.parse_args()
    preset = PRESETS[args.dataset]
    flags = {"arch": args.arch, "epochs": args.epochs, "init_from": args.init_from}
    chosen = replace(preset.target, **{k: v for k, v in flags.items() if v is not None})
    cfg = cli.recipe(p, args.recipe, chosen, (*flags, "threads"))
    # In the preset's run dir a changed config would overwrite the checkpoint `make reproduce`
    # reloads (train_target starts over on another config): such runs go elsewhere.
    cli.refuse_in_default_run_dir(
        p,
        args.run_dir,
        cli.changed_fields(chosen, preset.target, flags=True) + cli.changed_fields(cfg, chosen),
        "target",
        f"{args.run_dir}/{args.dataset}/target.ckpt",
    )
    if args.threads is not None:
        cfg.threads = args.threads
    train = load_dataset(args.dataset, "train", args.data_dir)
    tr, _ = split_train_val(len(train), cfg.val_size, cfg.seed)
    run_dir = Path(args.run_dir) / args.dataset
    model = train_target(cfg, train.images[tr], train.labels[tr], preset.mean, preset.std, run_dir)
    test = load_dataset(args.dataset, "test", args.data_dir)
    summary = {"config": config_dict(cfg), **attack_summary(model, cfg, test.images, test.labels)}
    (run_dir / "target_test.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))


if __name__ == "__main__":
    main()
