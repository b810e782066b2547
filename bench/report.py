"""The benchmark's report: the guard/peer pairs, issue 20's acceptance targets computed from
them, and the Markdown page."""

from __future__ import annotations

import statistics
from typing import Any

from training.evaluation.markdown import table

V2_KINDS = ("v2-json", "v2-binary")
# Issue 20, "Done when": the guard against the peer with the same load, on this machine.
RATIO_1 = 1.0  # guard / peer at 1 image per request, concurrency 1, 8 and 32
RATIO_64 = 0.6  # guard / peer at 64 images per request
P99_1_MS = 5.0  # the guard's p99 at 1 image per request, concurrency 1
CEILING_64 = 0.8  # the guard's images/s over its in-process ceiling at 64 images per request


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def comparisons(
    rows: list[dict[str, Any]], ceilings: dict[tuple[str, int], dict[str, float]]
) -> list[dict[str, Any]]:
    """One entry per guard cell, beside the peer's cell with the same body, size and concurrency
    (or, for a body the peer refused, its V2 JSON cell, marked in ``peer_body``), and for 64
    images the in-process ceiling measured around it: by images/s, and by CPU per image (the
    ceiling's CPU ms per image over the service's: less sensitive to what other jobs on a shared
    machine take)."""
    peer = {(r["body"], r["images_per_request"], r["concurrency"]): r for r in rows
            if r["side"] == "peer"}  # fmt: skip
    pairs = []
    for g in (r for r in rows if r["side"] == "guard"):
        cell = (g["body"], g["images_per_request"], g["concurrency"])
        p = peer.get(cell) or peer.get(("v2-json", *cell[1:]))
        c = ceilings.get((g["body"], g["concurrency"]), {}) if cell[1] == 64 else {}
        ceiling, ceiling_cpu = c.get("images_per_s"), c.get("cpu_ms_per_image")
        pairs.append(
            {
                "body": g["body"],
                "images_per_request": cell[1],
                "concurrency": cell[2],
                "guard_first": g["position"] == 1,
                "peer_body": p["body"] if p else None,
                "peer_images_per_s": p["images_per_s"] if p else None,
                "guard_images_per_s": g["images_per_s"],
                "guard_vs_peer": _ratio(g["images_per_s"], p["images_per_s"] if p else None),
                "peer_p50_ms": p["p50_ms"] if p else None,
                "peer_p99_ms": p["p99_ms"] if p else None,
                "guard_p50_ms": g["p50_ms"],
                "guard_p99_ms": g["p99_ms"],
                "peer_errors": p["errors"] if p else None,
                "guard_errors": g["errors"],
                "peer_cpu_s": p["server_cpu_s"] if p else None,
                "guard_cpu_s": g["server_cpu_s"],
                "peer_cpu_ms_per_image": p["server_cpu_ms_per_image"] if p else None,
                "guard_cpu_ms_per_image": g["server_cpu_ms_per_image"],
                "ceiling_images_per_s": round(ceiling, 1) if ceiling else None,
                "guard_vs_ceiling": _ratio(g["images_per_s"], ceiling),
                "ceiling_before_after": [c["images_per_s_before"], c["images_per_s_after"]]
                if c
                else None,
                "ceiling_cpu_ms_per_image": round(ceiling_cpu, 3) if ceiling_cpu else None,
                "guard_vs_ceiling_cpu": _ratio(ceiling_cpu, g["server_cpu_ms_per_image"]),
            }
        )
    return pairs


def _cell(p: dict[str, Any]) -> str:
    return f"{p['body']}, {p['images_per_request']} img/request, c={p['concurrency']}"


def _row(target: str, measured: float | None, cell: str, ok: bool | None) -> dict[str, Any]:
    status = "n/a" if ok is None else ("pass" if ok else "miss")
    return {"target": target, "measured": measured, "cell": cell, "status": status}


def acceptance(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 20's targets, each checked against the measured cells (same body on both sides)."""
    out = []
    same = [p for p in pairs if p["body"] in V2_KINDS and p["peer_body"] == p["body"]]
    for size, floor in ((1, RATIO_1), (64, RATIO_64)):
        for p in (p for p in same if p["images_per_request"] == size):
            r = p["guard_vs_peer"]
            out.append(
                _row(f"guard/peer >= {floor}", r, _cell(p), None if r is None else r >= floor)
            )
    for p in pairs:
        if p["body"] in V2_KINDS and p["images_per_request"] == 1 and p["concurrency"] == 1:
            ms = p["guard_p99_ms"]
            out.append(_row(f"guard p99 <= {P99_1_MS} ms", ms, _cell(p), ms <= P99_1_MS))
    v2_64 = [p for p in pairs if p["body"] in V2_KINDS and p["guard_vs_ceiling"] is not None]
    if v2_64:
        # The median over the 64-image V2 cells, not the best: on a shared machine one ceiling
        # pass can get less CPU than the cell beside it, and the best would pick that luck.
        for key, what in (("guard_vs_ceiling", "images/s"), ("guard_vs_ceiling_cpu", "CPU/image")):
            r = round(statistics.median(p[key] for p in v2_64), 3)
            cells = f"median of {len(v2_64)} cells (64 img/request, V2 JSON and binary, c=" + (
                ",".join(sorted({str(p["concurrency"]) for p in v2_64}, key=int)) + ")"
            )
            target = f"guard/in-process ceiling >= {CEILING_64}, by {what}"
            out.append(_row(target, r, cells, r >= CEILING_64))
    return out


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(report: dict[str, Any]) -> str:
    env, ms, guard, peer = (report[k] for k in ("environment", "model_set", "guard", "peer"))
    vg, vp = env["versions_guard"], env["versions_peer"]
    lines = [
        "# The guard against MLServer serving the bare target (issue 20)",
        "",
        f"- Command: `{report['command']}` (what `make bench` runs), seed {report['seed']}, "
        f"{report['seconds']} s per measured cell and side after {report['warmup']} s of warm-up",
        f"- When: {report['started']} to {report['finished']} (UTC), git {env['git']}",
        f"- Hardware: {env['cpu']}, {env['cpus']} CPU cores ({env['cpus_usable']} usable), "
        f"{env['memory_gib']} GiB, no GPU; a machine shared with other jobs: load average "
        f"{' '.join(map(str, env['loadavg_before']))} before, "
        f"{' '.join(map(str, env['loadavg_after']))} after (1, 5, 15 min)",
        "- Guard: " + ", ".join(f"{k} {v}" for k, v in vg.items()),
        "- Peer (.venv-mlserver): " + ", ".join(f"{k} {v}" for k, v in vp.items()),
        f"- Load generator: {env['load_generator']}",
        f"- Model set `{ms['name']}` ({ms['dir']}), {ms['provider']}: target sha256 "
        f"{ms['target_sha256'][:12]}, AE (detrigger) sha256 {ms['detrigger_sha256'][:12]}",
        f"- Guard: `{guard['command']}`, {guard['mode']}; settings {guard['settings']}",
        f"- Peer: {peer['server']}, serving {peer['model']}; ONNX Runtime {peer['ort_threads']} "
        "(the guard's); bodies it refused: "
        + (
            "; ".join(
                f"{k} (HTTP {v['status']}: {v.get('answer', '')[:120]!r})"
                for k, v in peer["bodies_refused"].items()
            )
            or "none"
        ),
        "- Both servers give the same class for every image of a body: "
        + ", ".join(f"{k} {v}" for k, v in report["same_classes"].items()),
        "",
        "## Issue 20's targets",
        "",
        "| target | measured | cell | status |",
        "|---|---:|---|---|",
    ]
    for a in report["acceptance"]:
        lines.append(f"| {a['target']} | {_f(a['measured'], 3)} | {a['cell']} | {a['status']} |")
    lines += [
        "",
        "## V2 infer, both servers, the same bodies",
        "",
        "Each cell ran both servers one after the other with the same wrk load; `first` says "
        "which went first (the order alternates cell by cell). CPU: user + system seconds of the "
        "server's processes over the measured seconds, from /proc. A body the peer refused is "
        "compared with the peer's V2 JSON cell (`peer body`). The ceiling is the guard's engine "
        "call in-process at batch 64, the mean of passes just before and just after the cell; "
        "`guard/ceiling CPU` is the "
        "ceiling's CPU ms per image over the guard's (1.0: the service costs no CPU beyond the "
        "models).",
        "",
        "| body | img/req | conc | first | peer body | peer img/s | guard img/s | guard/peer "
        "| p50 ms peer / guard | p99 ms peer / guard | errors peer / guard "
        "| CPU s peer / guard | CPU ms/img peer / guard | ceiling img/s | guard/ceiling "
        "| guard/ceiling CPU |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in (p for p in report["comparisons"] if p["body"] in V2_KINDS):
        lines.append(
            f"| {p['body']} | {p['images_per_request']} | {p['concurrency']} "
            f"| {'guard' if p['guard_first'] else 'peer'} | {p['peer_body']} "
            f"| {_f(p['peer_images_per_s'])} | {_f(p['guard_images_per_s'])} "
            f"| **{_f(p['guard_vs_peer'], 2)}** "
            f"| {_f(p['peer_p50_ms'], 2)} / {_f(p['guard_p50_ms'], 2)} "
            f"| {_f(p['peer_p99_ms'], 2)} / {_f(p['guard_p99_ms'], 2)} "
            f"| {_f(p['peer_errors'])} / {_f(p['guard_errors'])} "
            f"| {_f(p['peer_cpu_s'], 2)} / {_f(p['guard_cpu_s'], 2)} "
            f"| {_f(p['peer_cpu_ms_per_image'], 3)} / {_f(p['guard_cpu_ms_per_image'], 3)} "
            f"| {_f(p['ceiling_images_per_s'])} | {_f(p['guard_vs_ceiling'], 2)} "
            f"| {_f(p['guard_vs_ceiling_cpu'], 2)} |"
        )
    lines += [
        "",
        "## /classify, PNG multipart (the guard only)",
        "",
        "The peer has no /classify; `guard/peer` compares with its V2 JSON cell of the same size "
        "and concurrency, so it also prices PNG decoding and the richer answer.",
        "",
        "| img/req | conc | img/s | guard/peer (V2 JSON) | p50 ms | p99 ms | errors | CPU s "
        "| CPU ms/img | ceiling img/s | guard/ceiling | guard/ceiling CPU |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in (p for p in report["comparisons"] if p["body"] == "png-multipart"):
        lines.append(
            f"| {p['images_per_request']} | {p['concurrency']} | {_f(p['guard_images_per_s'])} "
            f"| {_f(p['guard_vs_peer'], 2)} | {_f(p['guard_p50_ms'], 2)} "
            f"| {_f(p['guard_p99_ms'], 2)} | {_f(p['guard_errors'])} | {_f(p['guard_cpu_s'], 2)} "
            f"| {_f(p['guard_cpu_ms_per_image'], 3)} | {_f(p['ceiling_images_per_s'])} "
            f"| {_f(p['guard_vs_ceiling'], 2)} | {_f(p['guard_vs_ceiling_cpu'], 2)} |"
        )
    lines += [
        "",
        "## In-process ONNX Runtime (the benchmark's process, the guard's session options)",
        "",
        "On the set's clean sample images, the ones the load sends.",
        "",
        "| batch | AE alone img/s | target alone img/s | guard path img/s (AE, then target on "
        "x and the images AE(x) changed) |",
        "|---:|---:|---:|---:|",
    ]
    for size, r in report["in_process"].items():
        lines.append(
            f"| {size} | {_f(r['detrigger'])} | {_f(r['target'])} | {_f(r['guard_path'])} |"
        )
    client = sum(r["client_cpu_s"] for r in report["cells"])
    servers = sum(r["server_cpu_s"] for r in report["cells"])
    requests = sum(r["requests"] for r in report["cells"])
    lines += [
        "",
        "## The load generator",
        "",
        "wrk (C, epoll; Debian's package), one thread, one keep-alive connection per concurrent "
        "caller, each posting the same pre-built body back to back (a closed loop); after each "
        "run the benchmark waits until the server is idle, so requests left in flight do not run "
        "into the next cell. On 2 cores the client shares the CPU with the server it measures: "
        f"wrk used {client:.1f} CPU seconds for {requests:,} requests over all cells "
        f"({1e6 * client / max(requests, 1):.0f} µs each), the servers {servers:.1f}. A Python "
        "client (httpx) cost about as much CPU per request as the guard itself in this "
        "benchmark's earlier harness; and wrk is neither server's own stack, so it favours "
        "neither side.",
    ]
    if report["profiles"]:
        lines += [
            "",
            "## Profiles (py-spy, --nonblocking)",
            "",
            "Own: the innermost Python frame of a sample; total: anywhere on the stack (entry "
            "frames such as uvicorn's start and thread bootstraps left out). py-spy does not tell "
            "a waiting thread from a running one here: `Condition.wait`, `Queue.get` and "
            "`_worker` (futures/thread.py) are threads waiting for work; `Runner.run` is time "
            "inside uvloop's C event loop (its epoll waits and its own work). The GIL profile "
            "counts only the thread holding the GIL: the Python work itself.",
        ]
    for prof in report["profiles"]:
        lines += [
            "",
            f"### The guard at {prof['images_per_request']} image/request, "
            f"{prof['body']}, concurrency {prof['concurrency']}, threads: {prof['threads']} "
            f"(py-spy, {prof['seconds']} s, {prof['samples']} samples; "
            f"{_f(prof['images_per_s_while_profiled'])} img/s while sampled)",
            "",
            "| own % | function | | total % | function |",
            "|---:|---|---|---:|---|",
        ]
        for own, total in zip(prof["own"], prof["total"], strict=False):
            lines.append(
                f"| {own['percent']} | `{own['function']}` | | {total['percent']} "
                f"| `{total['function']}` |"
            )
    return "\n".join(lines) + "\n"


# README's table of issue 20's targets lies between these lines; bench.run rewrites it from
# the report it writes (when it writes the shipped reports/bench/).
README_BEGIN = "<!-- bench table: written by `make bench` from reports/bench/bench.json -->"
README_END = "<!-- end of bench table -->"


def readme_table(report: dict[str, Any]) -> list[str]:
    """Issue 20's targets as the run judged them: target, cell, measured, status."""
    return table(
        ["target", "cell", "measured", "status"],
        [[a["target"], a["cell"], a["measured"], a["status"]] for a in report["acceptance"]],
        spaced=True,
        align="llrl",
    )
