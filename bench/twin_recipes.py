"""fit's twin, recipe against recipe, on backdoored models it never saw (issues 18 and 22):

    python -m bench.twin_recipes run --dataset fashion-mnist --backdoor BD \
        --name fashion-mnist-sig --recipe fst:adversarial=0 --recipe adversarial \
        --out reports/byom/twin-adversarial
    python -m bench.twin_recipes table --out reports/byom/twin-adversarial

`run` fine-tunes one twin of BD/target.onnx per recipe (training.fit.twin.fine_tune_twin with
TwinConfig's fields changed as the recipe says: `NAME:field=value,field=value`, a tuple's items
joined by `+`) on the preset's training split less a seeded draw of validation images, as fit
does on a user's folder. Detector repaired's score (training's prob_drop of the target's and the
twin's answers) is thresholded on those validation images at 1% FPR with 95% confidence, fit's
calibration rule, and measured on the test split: the clean FPR, the detection of BD's trigger
(backdoor.json, `bench.byom backdoor`'s) on the images of the other classes, the detection among
the attacks that worked, and the share of those on which the twin still gives the backdoor's
class. One JSON line per recipe goes to OUT/results.jsonl (the twins' graphs only with --twins
DIR); `table` writes OUT/table.md from them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

VAL_IMAGES = 5000
TARGET_FPR, CONFIDENCE = 0.01, 0.95


def parse_recipe(text: str) -> tuple[str, dict[str, Any]]:
    """`NAME:field=value,...` -> (NAME, {field: value}), each value cast to TwinConfig's type."""
    from training.fit.twin import TwinConfig

    name, _, rest = text.partition(":")
    defaults = TwinConfig()
    known = {f.name for f in fields(TwinConfig)}
    changes: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in known:
            raise SystemExit(
                f"--recipe {text!r}: no TwinConfig field {key!r}; known: {sorted(known)}"
            )
        default = getattr(defaults, key)
        kind = float if default is None else type(default)  # None: an optional number
        if kind is bool:
            changes[key] = value.lower() in ("1", "true", "yes")
        elif kind is tuple:  # names joined by "+"
            changes[key] = tuple(filter(None, value.split("+")))
        else:
            changes[key] = kind(value)
    if not name:
        raise SystemExit(f"--recipe {text!r}: name it (NAME or NAME:field=value,...)")
    return name, changes


def _logits(path: Path, x: np.ndarray, threads: int) -> np.ndarray:
    from training.evaluation.detectors import Graph

    graph = Graph.load(path.read_bytes(), threads)
    return np.concatenate([graph(x[i : i + 500]) for i in range(0, len(x), 500)])


def run(args: argparse.Namespace) -> None:
    import torch

    from contract.scoring import prob_drop
    from training import evidence
    from training.data.datasets import load_dataset
    from training.data.triggers import Trigger
    from training.evaluation.metrics import rate, threshold_at_fpr
    from training.fit.twin import TwinConfig, fine_tune_twin

    torch.set_num_threads(args.threads)
    recipes = [parse_recipe(r) for r in args.recipe]
    bd, out = Path(args.backdoor), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backdoor = json.loads((bd / "backdoor.json").read_text())["backdoor"]
    trigger, target = Trigger(**backdoor["trigger"]), int(backdoor["target_class"])
    train = load_dataset(args.dataset, "train", args.data_dir)
    test = load_dataset(args.dataset, "test", args.data_dir)
    order = np.random.default_rng(args.seed).permutation(len(train.images))
    val_u8, train_u8 = train.images[order[:VAL_IMAGES]], train.images[order[VAL_IMAGES:]]
    x = {
        "val": val_u8.astype(np.float32) / np.float32(255.0),
        "clean": test.images.astype(np.float32) / np.float32(255.0),
    }
    others = test.labels != target
    x["triggered"] = np.asarray(trigger(x["clean"][others].copy()), np.float32)
    ref = {k: _logits(bd / "target.onnx", v, args.threads) for k, v in x.items()}
    fired = ref["triggered"].argmax(1) == target
    with tempfile.TemporaryDirectory(prefix="twins-") as scratch:
        twins = Path(args.twins or scratch)  # the graphs are kept only with --twins
        twins.mkdir(parents=True, exist_ok=True)
        for name, changes in recipes:
            cfg = replace(TwinConfig(seed=args.seed), **changes)
            graph = twins / f"{args.name}-{name}.onnx"
            t0 = time.time()
            record = fine_tune_twin(
                bd / "target.onnx", train_u8, val_u8, graph, cfg, progress=False
            )
            twin = {k: _logits(graph, v, args.threads) for k, v in x.items()}
            score = {k: prob_drop(ref[k], twin[k]) for k in x}
            threshold = threshold_at_fpr(score["val"], TARGET_FPR, CONFIDENCE)
            line = {
                "model": args.name,
                "dataset": args.dataset,
                "backdoor": backdoor,
                "recipe": name,
                "changes": changes,
                "config": asdict(cfg),
                "attack_success": float(fired.mean()),
                "val_agreement": record["val_agreement"],
                "threshold": threshold,
                "fpr_clean_test": rate(score["clean"] > threshold),
                "detection_triggered_test": rate(score["triggered"] > threshold),
                "detection_fired": rate(score["triggered"][fired] > threshold),
                "twin_keeps_backdoor": rate(twin["triggered"][fired].argmax(1) == target),
                "adversarial_radius": record[
                    "adversarial_radius"
                ],  # the one used (None: by channels)
                "steps": record["steps"],
                "twin_seconds": record["wall_seconds"],
                "seconds": round(time.time() - t0, 1),
                "threads": args.threads,
                "seed": args.seed,
                "hardware": evidence.hardware(),
                "loadavg": evidence.loadavg(),
                "versions": evidence.versions(),
                "commit": evidence.git_commit(),
            }
            with open(out / "results.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
            det, det_fired, fpr = (
                100 * line[k]["rate"]
                for k in ("detection_triggered_test", "detection_fired", "fpr_clean_test")
            )
            print(
                f"{args.name} {name}: detection {det:.2f}% (of the attacks that worked "
                f"{det_fired:.2f}%) at clean FPR {fpr:.2f}%, agreement "
                f"{100 * record['val_agreement']:.2f}%, {record['wall_seconds']:.0f} s",
                flush=True,
            )


def _pct(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    return f"{100 * r['rate']:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]"


def _triggers(config: dict[str, Any]) -> str:
    """The share of rows stamped with sampler triggers and from which families (a record
    without the field is from before they existed: none)."""
    share = config.get("triggers", 0.0)
    if not share:
        return "0"
    text = f"{share:g} {config['trigger_families']}"
    return text + "".join(f" less {e}" for e in config["trigger_exclude"])


def table(args: argparse.Namespace) -> None:
    out = Path(args.out)
    lines = [json.loads(s) for s in (out / "results.jsonl").read_text().splitlines() if s]
    lines.sort(key=lambda r: r["model"])  # stable: each model's recipes in the order run
    rows = [
        "| model | recipe | adversarial radius | stamped triggers | attack success % "
        "| val agreement % "
        "| clean FPR % [95% CI] | detection % [95% CI] | of the attacks that worked % "
        "| twin keeps the backdoor % | twin s |",
        "|---|---|---:|---|---:|---:|---|---|---:|---:|---:|",
    ]
    for r in lines:
        radius = r["config"]["adversarial"]
        if radius is None:  # fit's default, by the images' channels: the one the twin used
            radius = r["adversarial_radius"]
        rows.append(
            f"| {r['model']} | {r['recipe']} | {radius:g} | {_triggers(r['config'])} "
            f"| {100 * r['attack_success']:.2f} | {100 * r['val_agreement']:.2f} "
            f"| {_pct(r['fpr_clean_test'])} | {_pct(r['detection_triggered_test'])} "
            f"| {100 * r['detection_fired']['rate']:.2f} "
            f"| {100 * r['twin_keeps_backdoor']['rate']:.2f} | {r['twin_seconds']:.0f} |"
        )
    (out / "table.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench.twin_recipes", description=__doc__.split("\n\n")[0]
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="fine-tune and measure one twin per recipe")
    r.add_argument("--dataset", required=True, help="mnist, fashion-mnist or cifar10")
    r.add_argument("--backdoor", required=True, help="a folder with target.onnx and backdoor.json")
    r.add_argument("--name", required=True, help="the model's name in the table")
    r.add_argument("--recipe", action="append", required=True, help="NAME[:field=value,...]")
    r.add_argument("--out", required=True, help="the report folder")
    r.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    r.add_argument("--seed", type=int, default=0, help="the validation draw and the twin's seed")
    r.add_argument("--data-dir", default=None, help="where the dataset lies")
    r.add_argument(
        "--twins",
        default=None,
        help="keep the twins' ONNX files here (default: a temporary folder)",
    )
    t = sub.add_parser("table", help="OUT/table.md from OUT/results.jsonl")
    t.add_argument("--out", required=True, help="the report folder")
    args = p.parse_args()
    run(args) if args.cmd == "run" else table(args)


if __name__ == "__main__":
    main()
