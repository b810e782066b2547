"""Cheaper de-trigger AEs against the shipped one (issue 20, point 2): speed and detection of
each candidate, measured in one run, with the issue's rule applied.

    python -m training.ae_candidates --dataset mnist \\
        --ae shipped=models/mnist/detrigger.onnx --ae int8=runs/mnist/detrigger_int8.onnx \\
        --ae slim=runs/mnist/detrigger_slim.onnx

The first --ae is the baseline (or the one --baseline names).

Speed: ONNX Runtime in this process, CPU provider, --threads intra-op threads, on the first
clean test images at batch 1 and 64. The target (the shipped set's, --shipped), each AE, and
each AE's guard pass (AE(x), then the target once on [x; AE(x)] and the KL score, as the
service's engine runs it) are timed for --seconds each, in --rounds rounds whose order rotates
(so that no graph always runs first or last while the machine's load changes); the median of
the rounds is reported, with the spread. What matters are the ratios within the run: an AE's
cost relative to the target (target img/s / AE img/s; the aim is <= 0.5) and the guard's
throughput relative to the bare target (a plain model server's in-process ceiling).

Detection: training.detection_report's measurement (training/evaluation/comparison.py) with
STRIP off, on the shipped set and every attack set of the suite found under --suite-dir (or
--sets): for each AE, the KL score thresholded at --target-fpr of the clean validation images
(the same images for every AE), and the share of each attack's triggered test images it flags.
The rule (issue 20): on no attack may a candidate's detection drop by more than --max-drop
points below the baseline's (each pair of a two-target set too). The clean test FPR, the
validation FPR and AUROC are reported beside it; the class-change rule's detection too, not
judged.

Writes --out/<dataset>.json (every number, the command, seed, versions, hardware, load
averages, wall time, the AEs' sha256) and --out/<dataset>.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from contract.scoring import kl
from contract.unchanged import changed_rows, pair_rows, second_pass
from training import cli, evidence
from training.data.attack_suite import DEFAULT_SUITE, SuiteError, load_suite
from training.data.datasets import DATASETS, load_dataset
from training.evaluation.comparison import AESpec, CompareOptions, Data, evaluate_set, find_sets
from training.evaluation.detection import MIN_THRESHOLD
from training.evaluation.detectors import Graph
from training.evaluation.markdown import pct, table
from training.nets.manifest_file import sha256

BATCHES = (1, 64)


# --- speed ------------------------------------------------------------------------------------
def images_per_second(call: Callable[[], object], batch: int, seconds: float) -> float:
    """Images per second of `call` (one batch of `batch` images) over about `seconds`, after
    one untimed call."""
    call()
    n, t0 = 0, time.perf_counter()
    while True:
        call()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n * batch / dt


def guard_pass(ae: Graph, target: Graph, x: np.ndarray) -> np.ndarray:
    """What the service's engine computes per batch: AE(x), the target on x and the images
    that AE(x) changed (contract/unchanged.py), KL on the full pair."""
    x_ae = ae(x).astype(np.float32, copy=False)
    changed = changed_rows(x, x_ae)
    logits = target(second_pass(x, x_ae, changed))[pair_rows(changed)]
    return kl(logits[: len(x)], logits[len(x) :])


def unchanged_share(ae: Graph, images: np.ndarray, batch: int = 256) -> float:
    """The share of `images` that the AE returns bit for bit (the guard runs them once)."""
    same = [
        ~changed_rows(x, ae(x).astype(np.float32, copy=False))
        for x in (images[i : i + batch] for i in range(0, len(images), batch))
    ]
    return float(np.concatenate(same).mean())


def measure_speed(
    target: Graph,
    aes: dict[str, Graph],
    images: np.ndarray,
    seconds: float,
    rounds: int,
) -> dict[str, Any]:
    """{batch: {name: {median, min, max img/s}}} for the target, each AE and each AE's guard
    pass, the order of the cells rotated every round."""
    out: dict[str, Any] = {}
    for batch in BATCHES:
        x = np.ascontiguousarray(images[:batch])
        cells: dict[str, Callable[[], object]] = {"target": partial(target, x)}
        for label, ae in aes.items():
            cells[f"ae:{label}"] = partial(ae, x)
            cells[f"guard:{label}"] = partial(guard_pass, ae, target, x)
        names = list(cells)
        runs: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                runs[name].append(images_per_second(cells[name], batch, seconds))
        out[str(batch)] = {
            n: {
                "median": statistics.median(v),
                "min": min(v),
                "max": max(v),
                "rounds": [round(s, 1) for s in v],
            }
            for n, v in runs.items()
        }
    return out


def speed_ratios(speed: dict[str, Any], labels: Sequence[str]) -> dict[str, Any]:
    """Per batch and AE: its cost relative to the target's (target img/s / AE img/s) and its
    guard pass's throughput relative to the bare target's."""
    out: dict[str, Any] = {}
    for batch, cells in speed.items():
        t = cells["target"]["median"]
        out[batch] = {
            label: {
                "ae_cost_vs_target": t / cells[f"ae:{label}"]["median"],
                "guard_vs_target": cells[f"guard:{label}"]["median"] / t,
            }
            for label in labels
        }
    return out


# --- detection --------------------------------------------------------------------------------
def detector_summary(entry: dict[str, Any], rule: str) -> dict[str, Any]:
    keys = (
        "threshold",
        "detection_rate",
        "false_positive_rate",
        "validation_false_positive_rate",
        "auroc",
        "tpr_at_fpr0.01",
        "ms_per_image",
    )
    out = {k: entry.get(k) for k in keys}
    out["pairs"] = [
        {"target_class": p["target_class"], "detection_rate": p["detection_rate"]}
        for p in entry["pairs"]
    ]
    if rule == "kl":
        out["clean_accuracy_after_ae"] = entry.get("clean_accuracy_after_ae")
        out["largest_pixel_change"] = entry.get("largest_pixel_change")
    return out


def set_summary(entry: dict[str, Any]) -> dict[str, Any]:
    """One set's json entry of comparison.evaluate_set, cut to what the comparison reads."""
    per_ae: dict[str, dict[str, Any]] = {}
    for d in entry["detectors"]:
        label = d["ae"]
        if label is None:
            continue
        per_ae.setdefault(label, {})[d["rule"]] = detector_summary(d, d["rule"])
    return {
        "attack": entry["attack"],
        "model_set": entry["model_set"],
        "clean_accuracy": entry["clean_accuracy"],
        "attack_success_rate": entry["attack_success_rate"],
        "n_negative": entry["n_negative"],
        "n_positive": sum(p["n_positive"] for p in entry["pairs"]),
        "validation_images": entry["validation"]["n"],
        "aes": per_ae,
    }


def verdicts(
    sets: list[dict[str, Any]], baseline: str, labels: Sequence[str], max_drop: float
) -> dict[str, Any]:
    """Per candidate: its KL detection drop below the baseline's on every attack (and pair), in
    points, and whether every drop is within max_drop."""
    out: dict[str, Any] = {}
    for label in labels:
        if label == baseline:
            continue
        drops: list[dict[str, Any]] = []
        for s in sets:
            base, cand = s["aes"][baseline]["kl"], s["aes"][label]["kl"]
            drops.append(
                {
                    "attack": s["attack"],
                    "target_class": None,
                    "drop_points": 100 * (base["detection_rate"] - cand["detection_rate"]),
                }
            )
            if len(base["pairs"]) > 1:
                for pb, pc in zip(base["pairs"], cand["pairs"], strict=True):
                    drops.append(
                        {
                            "attack": s["attack"],
                            "target_class": pb["target_class"],
                            "drop_points": 100 * (pb["detection_rate"] - pc["detection_rate"]),
                        }
                    )
        worst = max(drops, key=lambda d: d["drop_points"]) if drops else None
        out[label] = {
            "drops": drops,
            "worst": worst,
            "passes": bool(drops) and all(d["drop_points"] <= max_drop for d in drops),
        }
    return out


# --- the report -------------------------------------------------------------------------------
def confidence_words(confidence: float) -> str:
    """How the thresholds were set, for the detection table's heading."""
    if not confidence:
        return ", the plain quantile"
    return f", at confidence {confidence:g} (the shipped sets' rule)"


def markdown(report: dict[str, Any]) -> str:
    labels = [a["label"] for a in report["aes"]]
    base = report["baseline"]
    lines = [
        f"# Cheaper de-trigger AEs: {report['dataset']}",
        "",
        "Written by `training.ae_candidates` (issue 20, point 2). Command:",
        "",
        f"    {report['command']}",
        "",
        f"{report['hardware']}; load average before / after "
        f"{report['loadavg_before']} / {report['loadavg_after']}; seed {report['seed']}; "
        f"{report['wall_seconds']:.0f} s.",
        "",
        "## The AEs",
        "",
        *table(
            ["label", "file", "sha256", "what"],
            [[a["label"], f"`{a['file']}`", a["sha256"][:12], a["what"]] for a in report["aes"]],
        ),
    ]
    speed = report.get("speed")
    if speed:
        ratios = report["speed_ratios"]
        lines += [
            "",
            f"## Speed (ONNX Runtime in-process, {report['config']['threads']} intra-op "
            f"thread(s), median of {report['config']['rounds']} rounds)",
            "",
            "img/s; `AE / target` is the AE's cost relative to the target's (target img/s / AE "
            "img/s, aim <= 0.5); `guard / target` is the guard's pass (AE, then the target on "
            "x and on the images AE(x) changed, KL) relative to the bare target; `unchanged` "
            "is the share of the first "
            f"{report['unchanged_clean']['images']:,} clean test images that the AE returns bit "
            "for bit (the guard's second pass skips them; docs/model-contract.md).",
            "",
        ]
        rows = []
        for batch in speed:
            cells = speed[batch]
            rows.append(
                [batch, "target alone", f"{cells['target']['median']:,.0f}", "", "", "", ""]
            )
            for label in labels:
                r = ratios[batch][label]
                rows.append(
                    [
                        batch,
                        label,
                        f"{cells[f'ae:{label}']['median']:,.0f}",
                        f"{r['ae_cost_vs_target']:.2f}",
                        f"{cells[f'guard:{label}']['median']:,.0f}",
                        f"{r['guard_vs_target']:.2f}",
                        pct(report["unchanged_clean"]["share"][label]),
                    ]
                )
        lines += table(
            ["batch", "graph", "AE img/s", "AE / target", "guard img/s", "guard / target",
             "unchanged %"],
            rows,
            align="llrrrrr",
        )  # fmt: skip
    sets = report.get("sets")
    if sets:
        fpr = report["config"]["target_fpr"]
        lines += [
            "",
            f"## Detection (KL at {pct(fpr)}% FPR on clean validation images"
            + confidence_words(report["config"].get("confidence", 0.0))
            + ")",
            "",
            "Cells: detection / clean test FPR (%), then the drop below the baseline "
            f"(`{base}`) in points. Rule: no drop above {report['config']['max_drop']} points.",
            "",
        ]
        header = ["attack", "attack success"] + [
            f"{label}" + (" (baseline)" if label == base else "") for label in labels
        ]
        rows = []
        for s in sets:
            row = [s["attack"], pct(s["attack_success_rate"])]
            b = s["aes"][base]["kl"]
            for label in labels:
                k = s["aes"][label]["kl"]
                cell = f"{pct(k['detection_rate'])} / {pct(k['false_positive_rate'])}"
                if label != base:
                    cell += f" ({100 * (b['detection_rate'] - k['detection_rate']):+.2f})"
                if len(k["pairs"]) > 1:
                    cell += (
                        " ["
                        + ", ".join(
                            f"t{p['target_class']} {pct(p['detection_rate'])}" for p in k["pairs"]
                        )
                        + "]"
                    )
                row.append(cell)
            rows.append(row)
        lines += table(header, rows, align="lr" + "r" * len(labels))
        lines += ["", "Thresholds, AUROC and the class-change rule (not judged):", ""]
        rows = []
        for s in sets:
            for label in labels:
                k, c = s["aes"][label]["kl"], s["aes"][label]["class_change"]
                rows.append(
                    [
                        s["attack"],
                        label,
                        f"{k['threshold']:.4g}",
                        pct(k["validation_false_positive_rate"]),
                        f"{k['auroc']:.4f}",
                        pct(k["clean_accuracy_after_ae"]),
                        f"{pct(c['detection_rate'])} / {pct(c['false_positive_rate'])}",
                    ]
                )
        lines += table(
            [
                "attack",
                "AE",
                "KL threshold (nats)",
                "validation FPR",
                "AUROC",
                "clean accuracy on AE(x)",
                "class change: detection / FPR",
            ],
            rows,
            align="llrrrrr",
        )
        lines += [
            "",
            "How far each AE moves images: the largest pixel change of AE(x) from x, median over "
            "the clean test images and smallest over each attack's triggered ones; `unchanged`: "
            "the share it returns bit for bit (a gated AE's; a triggered image returned "
            "unchanged can never be flagged, so its share must be 0):",
            "",
        ]
        rows = []
        for s in sets:
            for label in labels:
                m = s["aes"][label]["kl"].get("largest_pixel_change")
                if not m:  # a report written before this column
                    continue
                rows.append(
                    [
                        s["attack"],
                        label,
                        f"{m['clean_median']:.4f}",
                        pct(m["clean_unchanged"]),
                        ", ".join(f"{v:.4f}" for v in m["triggered_min"]),
                        ", ".join(pct(v) for v in m["triggered_unchanged"]),
                    ]
                )
        lines += table(
            ["attack", "AE", "clean: median", "clean unchanged %", "triggered: smallest",
             "triggered unchanged %"],
            rows,
            align="llrrrr",
        )  # fmt: skip
        lines += ["", "## Verdict", ""]
        for label, v in report["verdicts"].items():
            w = v["worst"]
            where = w["attack"] + (f" (target {w['target_class']})" if w["target_class"] else "")
            lines.append(
                f"- **{label}**: {'passes' if v['passes'] else 'fails'} the "
                f"{report['config']['max_drop']}-point rule; largest drop "
                f"{w['drop_points']:+.2f} points on {where}"
            )
    missing = report.get("missing")
    if missing:
        lines += [
            "",
            f"Attacks of the suite not measured in this run (no set found, or not in --sets): "
            f"{', '.join(missing)}.",
        ]
    return "\n".join(lines) + "\n"


def ae_description(path: Path) -> str:
    """What the json beside an AE file says it is (train_detrigger --export, quantize_ae)."""
    beside = path.with_suffix(".json")
    if not beside.is_file():
        return "a model set's AE" if (path.parent / "manifest.json").is_file() else ""
    info = json.loads(beside.read_text())
    if "what" in info:  # a note written by hand beside a graph made by a command it names
        return str(info["what"])
    cfg = info.get("autoencoder") or {}
    text = f"{cfg.get('arch', '?')} width {cfg.get('width', '?')}, {cfg.get('triggers')} triggers"
    if cfg.get("families", "base") != "base" or cfg.get("exclude"):
        minus = f" minus {', '.join(cfg['exclude'])}" if cfg.get("exclude") else ""
        text += f" ({cfg.get('families', 'base')} families{minus})"
    q = info.get("quantisation")
    if q:
        text = f"int8 QDQ ({q['ops']}) of {info['source']['file']} ({text})"
    return text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = cli.parser(__doc__, "training.ae_candidates")
    p.add_argument("--dataset", default="mnist", choices=DATASETS, help="(default: mnist)")
    cli.add_data_dir(p)
    p.add_argument(
        "--ae",
        action="append",
        default=[],
        help="LABEL=PATH, an AE's ONNX file; repeatable, at least two (the first is the baseline "
        "unless --baseline names another)",
    )
    p.add_argument("--baseline", default="", help="the label the others are judged against")
    p.add_argument("--shipped", default="", help="the shipped set (default: models/<dataset>)")
    p.add_argument(
        "--suite-dir", default="runs/suite", help="training.suite's output (default: runs/suite)"
    )
    p.add_argument(
        "--sets", default="", help="model-set folders instead, as training.detection_report"
    )
    p.add_argument("--suite", default=str(DEFAULT_SUITE), help="suite file")
    p.add_argument("--target-fpr", type=float, default=0.01, help="(default: 0.01)")
    p.add_argument(
        "--kl-floor",
        type=float,
        default=MIN_THRESHOLD["kl"],
        help=f"(default: {MIN_THRESHOLD['kl']})",
    )
    # off by default: the reports already written used the plain quantile; 0.95 thresholds each
    # AE as the shipped sets are calibrated (detrigger-guard calibrate)
    cli.add_confidence(p, default=0.0)
    p.add_argument(
        "--max-drop", type=float, default=0.5, help="detection points a candidate may lose (0.5)"
    )
    p.add_argument(
        "--test-images", type=int, default=0, help="clean test images, 0 = all (default: 0)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="detection batches (default: 64)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default: 1)")
    p.add_argument("--seconds", type=float, default=1.0, help="per speed cell (default: 1.0)")
    p.add_argument(
        "--unchanged-images",
        type=int,
        default=2000,
        help="clean test images on which each AE's unchanged share is counted (default: 2000)",
    )
    p.add_argument("--rounds", type=int, default=5, help="speed rounds (default: 5)")
    p.add_argument("--no-speed", action="store_true", help="skip the speed measurement")
    p.add_argument("--no-detection", action="store_true", help="skip the detection measurement")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument(
        "--out", default="reports/ae-candidates", help="(default: reports/ae-candidates)"
    )
    args = p.parse_args(argv)
    try:
        args.specs = [AESpec.parse(s) for s in args.ae]
    except ValueError as e:
        p.error(str(e))
    labels = [s.label for s in args.specs]
    if len(labels) < 2 or len(set(labels)) != len(labels) or any(s.attack for s in args.specs):
        p.error("--ae: at least two, distinct labels, each LABEL=PATH (no @ATTACK)")
    if any(s.path == "set" for s in args.specs):
        p.error("--ae: give each AE's file (the speed run needs one graph per label)")
    args.baseline = args.baseline or labels[0]
    if args.baseline not in labels:
        p.error(f"--baseline {args.baseline}: not one of the --ae labels")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t0 = time.time()
    load_before = evidence.loadavg()
    shipped = Path(args.shipped or f"models/{args.dataset}")
    labels = [s.label for s in args.specs]
    train = load_dataset(args.dataset, "train", args.data_dir)
    test = load_dataset(args.dataset, "test", args.data_dir)
    report: dict[str, Any] = {
        "dataset": args.dataset,
        "command": " ".join(
            ["python -m training.ae_candidates", *(sys.argv[1:] if argv is None else argv)]
        ),
        "seed": args.seed,
        "hardware": evidence.onnx_hardware(args.threads),
        "machine": evidence.machine(),
        "versions": evidence.versions(evidence.ONNX_PACKAGES),
        "baseline": args.baseline,
        "config": {
            "threads": args.threads,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "batches": list(BATCHES),
            "target_fpr": args.target_fpr,
            "kl_floor": args.kl_floor,
            "confidence": args.confidence,
            "max_drop": args.max_drop,
            "test_images": args.test_images,
            "target": str(shipped / "target.onnx"),
        },
        "aes": [
            {
                "label": s.label,
                "file": s.path,
                "sha256": sha256(Path(s.path)),
                "size_bytes": Path(s.path).stat().st_size,
                "what": ae_description(Path(s.path)),
            }
            for s in args.specs
        ],
    }
    if not args.no_speed:
        # the first clean test images (repeated when there are fewer than the largest batch)
        pick = np.arange(max(BATCHES)) % len(test)
        images = test.images[pick].astype(np.float32) / np.float32(255.0)
        target = Graph.load((shipped / "target.onnx").read_bytes(), args.threads)
        aes = {s.label: Graph.load(Path(s.path).read_bytes(), args.threads) for s in args.specs}
        print(f"speed: {len(aes)} AEs, batches {BATCHES}, {args.rounds} rounds", flush=True)
        report["speed"] = measure_speed(target, aes, images, args.seconds, args.rounds)
        report["speed_ratios"] = speed_ratios(report["speed"], labels)
        clean = test.images[: args.unchanged_images].astype(np.float32) / np.float32(255.0)
        report["unchanged_clean"] = {
            "images": len(clean),
            "share": {label: unchanged_share(ae, clean) for label, ae in aes.items()},
        }
    if not args.no_detection:
        try:
            suite = load_suite(Path(args.suite))
        except SuiteError as e:
            raise SystemExit(str(e)) from e
        test_idx = np.arange(len(test))
        if 0 < args.test_images < len(test):
            rng = np.random.default_rng(args.seed)
            test_idx = np.sort(rng.permutation(len(test))[: args.test_images])
        data = Data(train, test, test_idx)
        where = argparse.Namespace(
            sets=args.sets,
            shipped=str(shipped),
            suite_dir=args.suite_dir,
            dataset=args.dataset,
        )
        sets, missing = find_sets(where, suite, tuple(test.images.shape[1:]))
        opts = CompareOptions(
            dataset=args.dataset,
            out=args.out,
            seed=args.seed,
            batch_size=args.batch_size,
            threads=args.threads,
            strip_n=0,
            target_fpr=args.target_fpr,
            kl_floor=args.kl_floor,
            confidence=args.confidence,
            examples=0,
        )
        summaries = []
        for attack, folder in sets:
            print(f"detection: {args.dataset} / {attack}: {folder}", flush=True)
            try:
                entry = evaluate_set(attack, folder, args.specs, data, opts)
            except ValueError as e:  # e.g. too few validation images for --confidence
                raise SystemExit(f"{attack} ({folder}): {e}") from e
            summaries.append(set_summary(entry))
        report["sets"] = summaries
        report["missing"] = missing
        report["verdicts"] = verdicts(summaries, args.baseline, labels, args.max_drop)
    report["loadavg_before"] = load_before
    report["loadavg_after"] = evidence.loadavg()
    report["wall_seconds"] = round(time.time() - t0, 1)
    report["created"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.dataset}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{args.dataset}.md").write_text(markdown(report))
    print(f"{out / (args.dataset + '.md')} written ({time.time() - t0:.0f} s)")
    return report


if __name__ == "__main__":
    main()
