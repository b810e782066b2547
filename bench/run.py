"""Benchmark the guard against MLServer serving the bare target, in one run:
``python -m bench.run`` (what ``make bench`` runs).

1. Starts both servers side by side on 127.0.0.1: the guard (``uvicorn service.main:app``, as
   ``make serve`` runs it, V2 local mode on models/mnist) and the peer, MLServer serving the
   set's bare target.onnx alone (one model pass per request, inference in its HTTP process,
   bench/mlserver.py), with the guard's ONNX Runtime threads and spinning.
2. For V2 JSON and V2 binary bodies (the same bytes to both sides), 1 and 64 images per
   request, concurrency 1, 8 and 32: one cell per side with the same load generator (wrk,
   bench/load.py), the two sides alternating (guard first, then peer first in the next cell).
   Per cell: images/s, p50/p90/p99 latency, errors, and each server's CPU seconds from /proc.
   A body that the peer refuses (its REST server has no binary tensor data) is recorded as such.
3. Before each 64-image cell: the guard's in-process ONNX Runtime ceiling at batch 64 (AE, then
   the target on x and the images AE(x) changed, on the clean sample images the load sends,
   bench/ceiling.py), so the service/ceiling ratio compares numbers taken minutes, not a run,
   apart.
4. /classify with PNG multipart bodies, 1 and 64 images per request (the guard only).
5. A py-spy profile of the guard at 1 image per request (V2 JSON, concurrency 1 and 32).

Writes bench.json and bench.md to --out (reports/bench/) with the command, seed, versions,
hardware, load average, and issue 20's acceptance targets beside the measured numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import ceiling, profile
from bench.bodies import build_bodies
from bench.guard import guard_env, run_guard
from bench.load import Body, run_wrk, wrk_binary, wrk_version
from bench.mlserver import VENV as MLSERVER_VENV
from bench.mlserver import run_mlserver
from bench.processes import cpu_seconds, wait_idle
from bench.report import README_BEGIN, README_END, acceptance, comparisons, markdown, readme_table
from service.runtime.modelset import ModelSet
from service.settings import Settings
from training import evidence
from training.evaluation.markdown import replace_block
from training.nets.manifest_file import sha256

REPO = Path(__file__).resolve().parents[1]
# What the guard's side of the report lists.
GUARD_PACKAGES = (
    "onnxruntime", "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic", "numpy",
    "pillow", "py-spy",
)  # fmt: skip
SIZES = (1, 64)
CONCURRENCY = (1, 8, 32)
V2_KINDS = ("v2-json", "v2-binary")
# (concurrency, only the thread holding the GIL): all threads at 1 and 32 connections, and at 1
# the Python work alone (what holds the GIL), where the guard's per-request overhead shows.
PROFILES = ((1, False), (1, True), (32, False))
PEER_MODEL = "target"


class Side:
    """One server under test: where its V2 infer route is and which process to read CPU from."""

    def __init__(self, name: str, url: str, infer_path: str, pid: int) -> None:
        self.name, self.url, self.infer_path, self.pid = name, url, infer_path, pid

    def path(self, body: Body) -> str:
        return "/classify" if body.kind == "png-multipart" else self.infer_path


def answer_classes(response: httpx.Response, body: Body) -> list[int]:
    """The class per image in a 200 answer: argmax of the V2 logits, or /classify's class."""
    if body.kind == "png-multipart":
        return [r["predicted"]["class"] for r in response.json()["results"]]
    length = response.headers.get("inference-header-content-length")
    raw = response.content
    head = json.loads(raw[: int(length)] if length else raw)
    (out,) = [o for o in head["outputs"] if o["name"] == "logits"]
    if "binary_data_size" in out.get("parameters", {}):
        data = np.frombuffer(raw[int(length) :], dtype="<f4")
    else:
        data = np.asarray(out["data"], dtype=np.float32)
    return data.reshape(out["shape"]).argmax(1).tolist()


def check(side: Side, body: Body) -> dict[str, Any]:
    """One request before the cells: the status and, when 200, the class of each image."""
    r = httpx.post(
        side.url + side.path(body), content=body.read(), headers=body.headers, timeout=60
    )
    if r.status_code != 200:
        return {"status": r.status_code, "answer": r.text[:300]}
    classes = answer_classes(r, body)
    if len(classes) != body.images:
        raise RuntimeError(f"{side.name}: {len(classes)} answers for {body.images} images")
    return {"status": 200, "classes": classes}


def measure(
    side: Side, others: list[Side], body: Body, concurrency: int, args: argparse.Namespace,
    position: int,
) -> dict[str, Any]:  # fmt: skip
    """A warm-up, then one measured wrk run; the servers' CPU seconds around the measured run."""
    url = side.url + side.path(body)
    if args.warmup > 0:
        run_wrk(url, body, concurrency, args.warmup, args.timeout)
        wait_idle(side.pid)
    cpu_before = cpu_seconds(side.pid)
    idle_before = sum(cpu_seconds(o.pid) for o in others)
    load = run_wrk(url, body, concurrency, args.seconds, args.timeout)
    cpu = cpu_seconds(side.pid) - cpu_before
    idle = sum(cpu_seconds(o.pid) for o in others) - idle_before
    drained = wait_idle(side.pid)
    images = load.ok * body.images
    row = {
        "side": side.name,
        "body": body.kind,
        "images_per_request": body.images,
        "concurrency": concurrency,
        "position": position,
        "requests": load.requests,
        "ok": load.ok,
        "errors": load.error_count,
        "error_kinds": {k: v for k, v in load.errors.items() if v},
        "seconds": round(load.seconds, 3),
        "images_per_s": round(images / load.seconds, 1),
        "p50_ms": round(load.p50_ms, 2),
        "p90_ms": round(load.p90_ms, 2),
        "p99_ms": round(load.p99_ms, 2),
        "mean_ms": round(load.mean_ms, 2),
        "server_cpu_s": round(cpu, 2),
        "server_cpu_ms_per_image": round(1000 * cpu / images, 3) if images else None,
        "other_server_cpu_s": round(idle, 2),
        "client_cpu_s": round(load.client_cpu_s, 2),
        "drain_s": round(drained, 2),
        "loadavg_1m_after": evidence.loadavg()[0],
    }
    print(json.dumps(row), flush=True)
    return row


def around(model_set: ModelSet, size: int, seconds: float, seed: int) -> tuple[float, float] | None:
    """The in-process ceiling at batch 64 beside a 64-image cell (None for other sizes):
    measured half the cell's seconds before and again after it, as the CPU that other jobs leave
    drifts."""
    return ceiling.guard_path(model_set, 64, max(1.0, seconds / 2), seed) if size == 64 else None


def run_profiles(
    guard: Side, body: Body, args: argparse.Namespace
) -> list[dict[str, Any]]:  # fmt: skip
    if profile.py_spy() is None:
        print("py-spy not found: no profile (make bench installs it)", flush=True)
        return []
    out = []
    for concurrency, gil in PROFILES:
        spy, stacks = profile.start(guard.pid, args.seconds, gil=gil)
        load = run_wrk(guard.url + guard.infer_path, body, concurrency, args.seconds, args.timeout)
        wait_idle(guard.pid)
        summary = profile.finish(spy, stacks, args.profile_top)
        out.append(
            {
                "body": body.kind,
                "images_per_request": body.images,
                "concurrency": concurrency,
                "threads": "holding the GIL" if gil else "all",
                "seconds": args.seconds,
                "images_per_s_while_profiled": round(load.ok * body.images / load.seconds, 1),
                **summary,
            }
        )
        print(f"profiled c={concurrency} gil={gil}: {summary['samples']} samples", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="models/mnist", help="the model set to serve")
    parser.add_argument(
        "--seconds", type=int, default=10, help="measured seconds per cell and side"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="warm-up seconds before each measured run (0: none)"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(SIZES), help="images per request"
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=list(CONCURRENCY), help="connections"
    )
    parser.add_argument("--timeout", type=int, default=60, help="wrk's per-request timeout (s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image order and ceiling")
    parser.add_argument("--profile-top", type=int, default=15, help="profile rows to keep")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--out", default="reports/bench", help="output folder")
    args = parser.parse_args(argv)
    wrk_binary()  # fail before starting anything when wrk is missing

    model_dir = Path(args.model_dir)
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    load_before = evidence.loadavg()
    settings = Settings(models=[model_dir])
    model_set = ModelSet.load(model_dir, settings)
    ceiling_s = float(args.seconds)
    sizes, concurrencies = tuple(args.sizes), tuple(args.concurrency)
    in_process = {
        size: ceiling.models_alone(model_set, size, max(1.0, ceiling_s / 2), args.seed)
        for size in sorted({1, 64, *sizes})
    }
    print(json.dumps({"in_process": in_process}), flush=True)

    rows: list[dict[str, Any]] = []
    # (body kind, concurrency) of a 64-image cell -> its ceiling (bench.ceiling.pair)
    ceilings: dict[tuple[str, int], dict[str, float]] = {}
    checks: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-bodies-") as scratch:
        bodies = build_bodies(model_dir, sizes, Path(scratch), args.seed)
        with (
            run_guard(guard_env(model_dir.resolve())) as guard_server,
            run_mlserver(
                (model_dir / model_set.manifest.target.file).resolve(), model_set.input_chw,
                len(model_set.manifest.classes), model=PEER_MODEL,
                intra_op_threads=settings.intra_op_threads,
                inter_op_threads=settings.inter_op_threads, spinning=settings.ort_spinning,
                test_hooks=False,
            ) as peer_server,
        ):  # fmt: skip
            guard = Side(
                "guard", guard_server.url, f"/v2/models/{model_set.name}/infer", guard_server.pid
            )
            assert peer_server.process is not None
            peer = Side(
                "peer", peer_server.url, f"/v2/models/{PEER_MODEL}/infer", peer_server.process.pid
            )
            for (kind, size), body in bodies.items():
                for side in (guard, peer) if kind in V2_KINDS else (guard,):
                    result = check(side, body)
                    checks[f"{side.name} {kind} {size}"] = result
                    if side is guard and result["status"] != 200:
                        raise RuntimeError(f"the guard refused {kind} x{size}: {result}")
            first = sizes[0]
            peer_kinds = [k for k in V2_KINDS if checks[f"peer {k} {first}"]["status"] == 200]

            index = 0
            for kind in V2_KINDS:
                for size in sizes:
                    for concurrency in concurrencies:
                        body = bodies[kind, size]
                        before = around(model_set, size, ceiling_s, args.seed)
                        sides = [guard, peer] if kind in peer_kinds else [guard]
                        if index % 2:
                            sides.reverse()
                        for position, side in enumerate(sides, 1):
                            others = [s for s in (guard, peer) if s is not side]
                            rows.append(measure(side, others, body, concurrency, args, position))
                        index += 1
                        after = around(model_set, size, ceiling_s, args.seed)
                        if before is not None and after is not None:
                            ceilings[kind, concurrency] = ceiling.pair(before, after)
            for size in sizes:
                for concurrency in concurrencies:
                    body = bodies["png-multipart", size]
                    before = around(model_set, size, ceiling_s, args.seed)
                    rows.append(measure(guard, [peer], body, concurrency, args, 1))
                    after = around(model_set, size, ceiling_s, args.seed)
                    if before is not None and after is not None:
                        ceilings["png-multipart", concurrency] = ceiling.pair(before, after)
            profiles = (
                [] if args.no_profile else run_profiles(guard, bodies["v2-json", sizes[0]], args)
            )
            guard_log = guard_server.log_path.read_text(errors="replace")[-2000:]

    same = {
        f"{kind} x{size}": checks[f"guard {kind} {size}"]["classes"]
        == checks[f"peer {kind} {size}"]["classes"]
        for kind in peer_kinds
        for size in sizes
    }
    pairs = comparisons(rows, ceilings)
    report = {
        "command": shlex.join(
            [os.path.relpath(sys.executable, REPO), "-m", "bench.run", *(argv or sys.argv[1:])]
        ),
        "started": started,
        "finished": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seed": args.seed,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "timeout_s": args.timeout,
        "environment": {
            **evidence.machine(),
            "loadavg_before": load_before,
            "loadavg_after": evidence.loadavg(),
            "git": evidence.git_commit(REPO, ignore=Path(args.out)),
            "versions_guard": evidence.versions(GUARD_PACKAGES),
            "versions_peer": evidence.versions(
                ("mlserver", "onnxruntime", "fastapi", "uvicorn", "uvloop", "httptools", "numpy"),
                python=str(MLSERVER_VENV / "bin" / "python"),
            ),
            "load_generator": f"wrk {wrk_version()} (1 thread, keep-alive, closed loop)",
        },
        "model_set": {
            "name": model_set.name,
            "dir": str(model_dir),
            "target_sha256": sha256(model_dir / model_set.manifest.target.file),
            "detrigger_sha256": sha256(model_dir / model_set.manifest.detrigger.file),
            "provider": model_set.provider,
        },
        "guard": {
            "command": "uvicorn service.main:app --host 127.0.0.1 --port PORT --no-access-log",
            "mode": "V2 local (the guard runs its own target)",
            "settings": {
                k: getattr(settings, k)
                for k in (
                    "max_batch_size",
                    "max_batch_wait_ms",
                    "intra_op_threads",
                    "inter_op_threads",
                    "ort_spinning",
                    "graph_optimization",
                    "decode_threads",
                    "log_level",
                )
            },  # fmt: skip
            "log_tail": guard_log,
        },
        "peer": {
            "server": "MLServer, parallel_workers 0 (inference in its HTTP process), no adaptive "
            "batching, custom runtime bench/mlserver_runtime/onnx_logits.py",
            "model": f"{model_dir / model_set.manifest.target.file} alone",
            "ort_threads": {
                "intra_op": settings.intra_op_threads,
                "inter_op": settings.inter_op_threads,
                "spinning": settings.ort_spinning,
            },
            "bodies_accepted": peer_kinds,
            "bodies_refused": {k: checks[f"peer {k} 1"] for k in V2_KINDS if k not in peer_kinds},
        },
        "same_classes": same,
        "in_process": {str(k): v for k, v in in_process.items()},
        "cells": rows,
        "comparisons": pairs,
        "acceptance": acceptance(pairs),
        "profiles": profiles,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(report))
    print(f"wrote {out / 'bench.md'} and {out / 'bench.json'}")
    if out.resolve() == (REPO / "reports" / "bench").resolve():  # the shipped report: README too
        replace_block(REPO / "README.md", README_BEGIN, README_END, readme_table(report))
    for a in report["acceptance"]:
        print(f"{a['status']:>4}  {a['target']}: {a['measured']}")


if __name__ == "__main__":
    main()
