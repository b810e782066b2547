"""Detector both against the two detectors run one after the other: ``python -m bench.detectors``.

Loads each model set as the service does (service.runtime.modelset, local mode) and times, on
the same images, ``infer_scored`` then ``strip_scored`` (what two requests, one per detector,
cost the engine) against ``both_scored`` (one request with detector both: the AE once, one
target call on [x; AE(x); copies]). The calls are interleaved, so that a busy machine slows
both alike. On a shared machine wall time mostly measures the neighbours, so the process's CPU
time (one ONNX Runtime thread by default: no spinning threads to count) is reported beside
it: the median and best (min) of --repeats per batch size. Writes the table into
docs/fusion.md between its markers (--docs '' for none).

On a set that offers detector repaired it also times ``repaired_scored`` (the target and the
repaired graph, each once on x) against ``infer_scored`` alone (the de-trigger detector, the
default), in the same interleaved loop, and writes that table between its own markers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from service.runtime.modelset import ModelSet
from service.settings import Settings
from training.evaluation.markdown import replace_block, table

BEGIN = "<!-- detector timing: written by python -m bench.detectors -->"
END = "<!-- end of detector timing -->"
REPAIRED_BEGIN = "<!-- repaired timing: written by python -m bench.detectors -->"
REPAIRED_END = "<!-- end of repaired timing -->"


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def measure(model_set: ModelSet, batch: int, repeats: int) -> dict[str, list[float]]:
    """CPU and wall seconds of each detrigger + strip and each both, on one batch; where the set
    offers detector repaired, also of detrigger alone ("ae") and of repaired ("rep")."""
    c, h, w = model_set.input_chw
    x = np.random.default_rng(batch).random((batch, c, h, w), dtype=np.float32)
    calls: dict[str, Callable[[], object]] = {
        "sep": lambda: (model_set.infer_scored(x), model_set.strip_scored(x)),
        "both": lambda: model_set.both_scored(x),
    }
    if model_set.repaired is not None:
        calls["ae"] = lambda: model_set.infer_scored(x)
        calls["rep"] = lambda: model_set.repaired_scored(x)
    out: dict[str, list[float]] = {f"{k}_{t}": [] for k in calls for t in ("cpu", "wall")}
    for _ in range(repeats):
        for name, call in calls.items():
            cpu, wall = timed(call)
            out[f"{name}_cpu"].append(cpu)
            out[f"{name}_wall"].append(wall)
    return out


def main(argv: list[str] | None = None) -> list[list[str]]:
    p = argparse.ArgumentParser(prog="python -m bench.detectors", description=__doc__)
    p.add_argument(
        "--model-set",
        action="append",
        default=None,
        help="model set with detectors.both (repeatable; default: models/mnist, models/cifar10)",
    )
    p.add_argument(
        "--batch",
        type=int,
        action="append",
        default=None,
        help="batch size (repeatable; default: 1, 8, 32)",
    )
    p.add_argument("--repeats", type=int, default=21, help="timed calls of each (default: 21)")
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (default: 1)")
    p.add_argument("--docs", default="docs/fusion.md", help="page to write the table into")
    args = p.parse_args(argv)
    folders = [Path(f) for f in args.model_set or ["models/mnist", "models/cifar10"]]
    settings = Settings(models=folders, intra_op_threads=args.threads)
    rows, repaired_rows = [], []
    for folder in folders:
        model_set = ModelSet.load(folder, settings)
        model_set.warm_up(tuple(args.batch or (1, 8, 32)))
        for batch in args.batch or (1, 8, 32):
            t = measure(model_set, batch, args.repeats)
            med = {k: 1000 * statistics.median(v) for k, v in t.items()}
            best = {k: 1000 * min(v) for k, v in t.items()}
            rows.append(
                [
                    model_set.name,
                    str(batch),
                    f"{med['sep_cpu']:.1f} / {best['sep_cpu']:.1f}",
                    f"{med['both_cpu']:.1f} / {best['both_cpu']:.1f}",
                    f"{med['both_cpu'] / med['sep_cpu']:.2f}",
                    f"{med['sep_wall']:.1f} / {med['both_wall']:.1f}",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
            if "rep_cpu" in med:
                repaired_rows.append(
                    [
                        model_set.name,
                        str(batch),
                        f"{med['ae_cpu']:.1f} / {best['ae_cpu']:.1f}",
                        f"{med['rep_cpu']:.1f} / {best['rep_cpu']:.1f}",
                        f"{med['rep_cpu'] / med['ae_cpu']:.2f}",
                        f"{med['ae_wall']:.1f} / {med['rep_wall']:.1f}",
                    ]
                )
    header = [
        "set",
        "images",
        "detrigger + strip: CPU ms, median / best",
        "both: CPU ms, median / best",
        "both / separate (CPU, median)",
        "wall ms, median: separate / both",
    ]
    lines = table(header, rows, right=True)
    note = (
        f"{args.repeats} interleaved calls of each, ONNX Runtime CPU, {args.threads} intra-op "
        f"threads, on a shared 2-core machine (load average {os.getloadavg()[0]:.1f} at the "
        "end); `python -m bench.detectors`."
    )
    repaired_header = [
        "set",
        "images",
        "detrigger: CPU ms, median / best",
        "repaired: CPU ms, median / best",
        "repaired / detrigger (CPU, median)",
        "wall ms, median: detrigger / repaired",
    ]
    repaired_lines = table(repaired_header, repaired_rows, right=True) if repaired_rows else []
    if args.docs:
        replace_block(Path(args.docs), BEGIN, END, [*lines, "", note])
        if repaired_lines:
            replace_block(
                Path(args.docs), REPAIRED_BEGIN, REPAIRED_END, [*repaired_lines, "", note]
            )
    print("\n".join(lines + [""] + repaired_lines))
    return rows + repaired_rows


if __name__ == "__main__":
    main()
