"""The detection comparison report's Markdown and ROC plots, rendered from the jsons that
training.detection_report writes: <dataset>.md, <dataset>/roc.png and README.md (every dataset
in one Table 7). Used by detection_report after a run and by the detection_tables job, which
rewrites them from the jsons alone.

Table 7 is laid out like the paper's: one row per method, the paper's reported detection rate
beside its method reproduced here, the improved detector, STRIP and the audit-based detector.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from training.evaluation.markdown import evidence_lines, pct, row, rule  # noqa: E402
from training.evaluation.report import PAPER

PAPER_ATTACK = "badnets-white"  # the paper's trigger: the shipped sets
ROC_FPRS = (0.01, 0.05)  # TPR reported at these FPRs (ROC points on the test set)
# The FPRs the ROC curve is kept at in the json: 0, then 1e-4 .. 1 on a log scale.
FPR_GRID = (0.0, *(float(v) for v in np.round(np.logspace(-4, 0, 41), 8)))
# Issue 7's goals: the paper's trigger detected at these rates with a measured clean FPR of at
# most MAX_FPR; a mean TPR at 1% FPR of at least REST_GOAL over the rest of the suite.
PAPER_TRIGGER_GOALS = {"mnist": 0.99, "fashion-mnist": 0.97, "cifar10": 0.95}
MAX_FPR = 0.01
REST_GOAL = 0.90
# Table 7's rows: (row name, (AE label, rule)); None = the paper's own figure.
TABLE7: tuple[tuple[str, tuple[str | None, str] | None], ...] = (
    ("paper, reported (Kwon)", None),
    ("paper's method, reproduced (paper AE, class change)", ("paper", "class_change")),
    ("improved (improved AE, KL at the target FPR)", ("improved", "kl")),
    ("STRIP (threshold at the target FPR)", (None, "strip")),
    ("audit-based (audit AE, KL at the target FPR)", ("audit", "kl")),
    # Generalisation: per attack, the improved AE's recipe trained without that attack's trigger
    # family (training.train_detrigger --exclude), given as --ae heldout@ATTACK=...; shown only
    # where it ran.
    (
        "held out (improved recipe without the attack's family, KL at the target FPR)",
        ("heldout", "kl"),
    ),
)
OPTIONAL_LABELS = ("heldout",)  # Table 7 rows left out of a report where their AE never ran


def table7_rows(reports: list[dict]) -> list[tuple[str, tuple[str | None, str] | None]]:
    """TABLE7 without the optional rows that ran on no set of these reports."""
    return [
        (row, key)
        for row, key in TABLE7
        if key is None
        or key[0] not in OPTIONAL_LABELS
        or any(find(e, key) for r in reports for e in r["sets"])
    ]


# --- lookups ----------------------------------------------------------------------------------
def find(entry: dict, key: tuple[str | None, str]) -> dict | None:
    """The detector of a set entry with this (AE label, rule), or None (not run)."""
    return next((d for d in entry["detectors"] if (d["ae"], d["rule"]) == key), None)


def detector_keys(report: dict) -> list[tuple[str | None, str]]:
    """Every (AE label, rule) that ran on some set, in order of appearance."""
    keys: list[tuple[str | None, str]] = []
    for entry in report["sets"]:
        for d in entry["detectors"]:
            if (d["ae"], d["rule"]) not in keys:
                keys.append((d["ae"], d["rule"]))
    return keys


def detector_name(report: dict, key: tuple[str | None, str]) -> str:
    for entry in report["sets"]:
        d = find(entry, key)
        if d is not None:
            return d["name"]
    return f"{key[0]} AE, {key[1]}"


def points(v: float) -> str:
    return f"{100 * v:.2f} points"


# --- summaries --------------------------------------------------------------------------------
def mean_tpr_rest(report: dict, key: tuple[str | None, str]) -> tuple[float | None, list[str]]:
    """Mean TPR at 1% FPR over the non-paper attacks this detector ran on, and those attacks."""
    vals, names = [], []
    for entry in report["sets"]:
        d = find(entry, key)
        if d is not None and not entry["paper_trigger"]:
            vals.append(d["tpr_at_fpr0.01"])
            names.append(entry["attack"])
    return (float(np.mean(vals)) if vals else None), names


def goal_lines(report: dict) -> list[str]:
    """Whether each of issue 7's goals holds, per detector, and by how much it misses."""
    lines: list[str] = []
    keys = detector_keys(report)
    goal = PAPER_TRIGGER_GOALS.get(report["dataset"])
    paper = next((e for e in report["sets"] if e["paper_trigger"]), None)
    if goal is not None:
        lines.append(
            f"- **Paper's trigger: detection >= {pct(goal)}% at a measured clean FPR <= "
            f"{pct(MAX_FPR)}%** (test set, threshold from validation)"
            + ("" if paper else ": no set with the paper's trigger in this report")
        )
        for key in keys if paper is not None else []:
            d = find(paper, key) if paper is not None else None
            if d is None:
                continue
            misses = []
            if d["detection_rate"] < goal:
                misses.append(f"detection {points(goal - d['detection_rate'])} under")
            if d["false_positive_rate"] > MAX_FPR:
                misses.append(f"FPR {points(d['false_positive_rate'] - MAX_FPR)} over")
            verdict = "holds" if not misses else "misses: " + ", ".join(misses)
            lines.append(
                f"  - {d['name']}: {pct(d['detection_rate'])}% at FPR "
                f"{pct(d['false_positive_rate'])}%: {verdict}"
            )
    missing = report.get("missing") or []
    lines.append(
        f"- **Mean TPR at 1% FPR >= {pct(REST_GOAL)}% across the rest of the suite**"
        + (f" (no set for: {', '.join(missing)})" if missing else "")
    )
    for key in keys:
        mean, names = mean_tpr_rest(report, key)
        if mean is None:
            continue
        verdict = "holds" if mean >= REST_GOAL else f"misses by {points(REST_GOAL - mean)}"
        lines.append(
            f"  - {detector_name(report, key)}: {pct(mean)}% over {len(names)} attack(s) "
            f"({', '.join(names)}): {verdict}"
        )
    strip_key = next((k for k in keys if k[1] == "strip"), None)
    if strip_key is not None:
        lines.append(
            "- **At least as good as STRIP (TPR at 1% FPR on every attack) at a fraction of its "
            "forward passes**"
        )
        for key in (k for k in keys if k[1] != "strip"):
            lines.append(
                f"  - {detector_name(report, key)}: {versus_strip(report, key, strip_key)}"
            )
    return lines


def versus_strip(
    report: dict, key: tuple[str | None, str], strip_key: tuple[str | None, str]
) -> str:
    """Whether an AE detector's TPR at 1% FPR reaches STRIP's on every attack both ran on, with
    fewer forward passes; by how much it falls short where it does not."""
    below, n, passes, strip_passes, ms, strip_ms = [], 0, [], [], [], []
    for entry in report["sets"]:
        d, s = find(entry, key), find(entry, strip_key)
        if d is None or s is None:
            continue
        n += 1
        passes.append(d["forward_passes"]["total"])
        strip_passes.append(s["forward_passes"]["total"])
        ms.append(d["ms_per_image"])
        strip_ms.append(s["ms_per_image"])
        if d["tpr_at_fpr0.01"] < s["tpr_at_fpr0.01"]:
            gap = s["tpr_at_fpr0.01"] - d["tpr_at_fpr0.01"]
            below.append(f"{entry['attack']} ({points(gap)} under)")
    if not n:
        return "no attack where both ran"
    p, sp = float(np.mean(passes)), float(np.mean(strip_passes))
    cost = (
        f"{p:g} vs {sp:g} forward passes per image ({100 * p / sp:.0f}%), "
        f"{np.mean(ms):.3f} vs {np.mean(strip_ms):.3f} ms per image"
    )
    why = []
    if below:
        why.append("below STRIP on " + ", ".join(below))
    if p >= sp:
        why.append("no fewer passes than STRIP")
    verdict = "holds" if not why else "misses: " + "; ".join(why)
    return f"{verdict} ({n} attack(s) compared; {cost})"


# --- Markdown ---------------------------------------------------------------------------------
def table7(report: dict) -> list[str]:
    """Rows = methods, columns = the attacks: detection / clean FPR on the test set."""
    sets = report["sets"]
    head = [f"{e['attack']}{' (paper trigger)' if e['paper_trigger'] else ''}" for e in sets]
    columns = [
        "method",
        *head,
        "mean TPR @ 1% FPR, rest of suite",
        "forward passes / image",
        "ms / image",
    ]
    lines = [row(columns), rule(len(columns), right=True)]
    for method, key in table7_rows([report]):
        if key is None:
            paper = PAPER.get(report["dataset"], {}).get("detection")
            cells = [
                f"{pct(paper)}" if e["paper_trigger"] and paper is not None else "-" for e in sets
            ]
            lines.append(row([method, *cells, "-", "-", "-"]))
            continue
        found = [find(e, key) for e in sets]
        cells = [
            "not run"
            if d is None
            else f"{pct(d['detection_rate'])} / {pct(d['false_positive_rate'])}"
            for d in found
        ]
        ran = [d for d in found if d is not None]
        mean, _ = mean_tpr_rest(report, key)
        cost = (
            [
                f"{np.mean([d['forward_passes']['total'] for d in ran]):g}",
                f"{np.mean([d['ms_per_image'] for d in ran]):.3f}",
            ]
            if ran
            else ["-", "-"]
        )
        mean_cell = pct(mean) if mean is not None else ("not run" if not ran else "-")
        lines.append(row([method, *cells, mean_cell, *cost]))
    return lines


def fired_cell(r: dict) -> str:
    """Detection on the positives the backdoor fired on, with how many they were; "-" where the
    trigger fired on none, or in a json written before the figure existed."""
    if r.get("detection_rate_fired") is None:
        return "-"
    return f"{pct(r['detection_rate_fired'])} (of {r['n_fired']})"


ATTACK_COLUMNS = (
    "detector",
    "detection",
    "detection, attack fired",
    "FPR (test)",
    "FPR (validation)",
    "AUROC",
    "TPR @ 1% FPR",
    "TPR @ 5% FPR",
    "threshold",
    "forward passes / image",
    "ms / image",
)


def attack_table(report: dict, entry: dict) -> list[str]:
    lines = [row(ATTACK_COLUMNS), rule(len(ATTACK_COLUMNS), right=True)]
    for d in entry["detectors"]:
        t = "-" if d["threshold"] is None else f"{d['threshold']:.4g}"
        if d["rule"] == "strip":
            t = f"H < {t} bits"
        elif d["rule"] == "kl":
            t = f"KL > {t}"
        p = d["forward_passes"]
        rows = [(d["name"], d)]
        if len(d["pairs"]) > 1:
            rows += [(f"&nbsp;&nbsp;target {r['target_class']} only", r) for r in d["pairs"]]
        for name, r in rows:
            lines.append(
                row(
                    [
                        name,
                        pct(r["detection_rate"]),
                        fired_cell(r),
                        pct(r["false_positive_rate"]),
                        pct(d["validation_false_positive_rate"]),
                        f"{r['auroc']:.4f}",
                        pct(r["tpr_at_fpr0.01"]),
                        pct(r["tpr_at_fpr0.05"]),
                        t,
                        f"{p['total']} ({p['ae']} AE + {p['target']} target)",
                        f"{d['ms_per_image']:.3f}",
                    ]
                )
            )
    return lines


def set_lines(report: dict, entry: dict) -> list[str]:
    pairs = "; ".join(
        f"target {p['target_class']}, trigger `{json.dumps(p['trigger'])}`, "
        f"{p['n_positive']} positives, attack success {pct(p['attack_success_rate'])}%"
        for p in entry["pairs"]
    )
    v = entry["validation"]
    return [
        f"### {entry['attack']}: `{entry['model_set']}`",
        "",
        f"{pairs}. Clean accuracy {pct(entry['clean_accuracy'])}% on {entry['n_negative']} "
        f"clean test images (the negatives). Thresholds from {v['n']} clean validation images "
        f"({v['source']}); STRIP's bank: {v['strip_bank']} other validation images.",
        "",
        *attack_table(report, entry),
        "",
    ]


def miss_lines(report: dict) -> list[str]:
    lines = []
    for entry in report["sets"]:
        for m in entry["misses"]:
            r = m["reasons"]
            why = [f"the trigger did not send the image to the target {pct(r['not_fired'])}%"]
            if "ae_kept_target" in r:
                why.append(f"the AE output stayed in the target class {pct(r['ae_kept_target'])}%")
                why.append(
                    f"the class changed but the score stayed under the threshold "
                    f"{pct(r['under_threshold'])}%"
                )
            else:
                why.append(f"the entropy stayed above the threshold {pct(r['under_threshold'])}%")
            pair = f", target {m['target_class']}" if len(entry["pairs"]) > 1 else ""
            lines.append(
                f"- **{entry['attack']}{pair}, {m['detector']}**: detection "
                f"{pct(m['detection_rate'])}%, {points(m['short_by'])} under the "
                f"{pct(m['goal'])}% goal. Of the {m['missed']} missed positives: "
                + "; ".join(why)
                + "."
            )
            if m["examples"]:
                lines += ["", f"  ![{entry['attack']}, {m['detector']}]({m['examples']})", ""]
    return lines


def subset_note(config: dict) -> str:
    """Says so when the report ran on a seeded random subset of the test set (--test-images)."""
    full = config.get("test_set_size")
    if full is None or config["test_images"] >= full:
        return ""
    return f": a seeded random subset of the {full} test images (--test-images), not all of them"


def dataset_markdown(report: dict) -> str:
    name, c = report["dataset"], report["config"]
    lines = [
        f"# Detection comparison: {name}",
        "",
        "Every attack of the suite against every per-input detector, all run with ONNX Runtime "
        "as the guard runs them. Positives: test images whose true class is not the attack's "
        "target class, with its trigger stamped on; negatives: the clean test images "
        f"({c['test_images']}{subset_note(c)}). Every threshold is set on clean validation "
        f"images (never the test split) to flag at most {pct(c['target_fpr'])}% of them (KL "
        f"thresholds at least {c['kl_floor']:g}); the test FPR shows whether that holds. "
        "Detection and FPR are at that threshold; AUROC and TPR at 1% / 5% FPR come from the "
        "ROC on the test set (for the class-change rule, its one operating point). Forward "
        "passes and milliseconds are per image over the test set (clean and triggered), "
        "batches of "
        f"{c['batch_size']}, {c['threads']} ONNX Runtime thread(s).",
        "",
        "## Table 7, laid out like the paper's",
        "",
        "Cells: detection / clean FPR on the test set, in %. The paper's row is its reported "
        "detection rate (its own trigger only).",
        "",
        *table7(report),
        "",
        "## Goals",
        "",
        *goal_lines(report),
        "",
        "## Per attack",
        "",
    ]
    for entry in report["sets"]:
        lines += set_lines(report, entry)
    lines += ["## ROC curves", "", f"![ROC curves]({name}/roc.png)", ""]
    misses = miss_lines(report)
    lines += [f"## Misses: detection under {pct(c['goal'])}%", ""]
    lines += (misses or ["None."]) + [""]
    if report.get("missing"):
        lines += [
            "## Missing attacks",
            "",
            f"No model set for {', '.join(report['missing'])}: train them with `python -m "
            f"training.suite --dataset {name} --attacks {','.join(report['missing'])}`.",
            "",
        ]
    columns = ["label", "file", "sha256", "training triggers", "sets"]
    lines += ["## De-trigger AEs", "", row(columns), rule(len(columns))]
    seen: dict[tuple[str, str], list[str]] = {}
    infos: dict[tuple[str, str], dict] = {}
    for entry in report["sets"]:
        for label, info in entry["aes"].items():
            k = (label, info["sha256"])
            seen.setdefault(k, []).append(entry["attack"])
            infos.setdefault(k, info)
    for k, attacks in seen.items():
        info = infos[k]
        trig = info.get("triggers") or "unknown"
        if info.get("exclude"):
            trig += f" minus {', '.join(info['exclude'])}"
        if info.get("synthesised"):
            trig += f" + synthesised ({info['synthesised']})"
        lines.append(row([k[0], f"`{info['file']}`", f"`{k[1][:12]}`", trig, ", ".join(attacks)]))
    lines += ["", *evidence_lines(report, {}), f"- written: {report['created']}"]
    for u in report.get("updates", []):
        lines.append(
            f"- re-run since, replacing {', '.join(u['attacks'])}: `{u['command']}` "
            f"({u['wall_seconds']:.0f} s, {u['created']}; the other sets are the run above's)"
        )
    lines.append("")
    return "\n".join(lines)


# --- plots ------------------------------------------------------------------------------------
def plot_roc(report: dict, path: Path) -> None:
    """One panel per attack, one curve per detector (the class-change rule: one point)."""
    sets = report["sets"]
    grid = np.asarray(report["fpr_grid"])
    keys = detector_keys(report)
    colours = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(keys)}
    cols = min(3, len(sets))
    rows = -(-len(sets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax, entry in zip(axes.flat, sets, strict=False):
        for d in entry["detectors"]:
            c = colours[(d["ae"], d["rule"])]
            if d["rule"] == "class_change":
                ax.plot(
                    d["false_positive_rate"], d["detection_rate"], "o", color=c, label=d["name"]
                )
            else:
                ax.step(grid, d["roc_tpr"], where="post", color=c, label=d["name"])
        ax.axvline(report["config"]["target_fpr"], color="k", ls=":", lw=0.8)
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(entry["attack"], fontsize=10)
        ax.set_xlabel("FPR (clean test images flagged)", fontsize=8)
        ax.set_ylabel("TPR (triggered images flagged)", fontsize=8)
        ax.legend(loc="lower right", fontsize=6)
    for ax in list(axes.flat)[len(sets) :]:
        ax.axis("off")
    fig.suptitle(f"{report['dataset']}: ROC per attack (test set)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- files ------------------------------------------------------------------------------------
def write_dataset(out: Path, report: dict) -> None:
    """<out>/<dataset>.md and <out>/<dataset>/roc.png from one dataset's report."""
    plot_roc(report, out / report["dataset"] / "roc.png")
    (out / f"{report['dataset']}.md").write_text(dataset_markdown(report))


def readme(reports: list[dict[str, Any]]) -> str:
    """Every dataset in one Table 7 (the paper's trigger and the rest of the suite), then each
    dataset's attack table and goals."""
    lines = [
        "# Detection comparison (issue 7)",
        "",
        "Written by `python -m training.detection_report --dataset <name>` (one json per "
        "dataset) and rewritten from the jsons by `python -m training.detection_tables`. "
        "Definitions: [docs/detection-report.md](../../docs/detection-report.md).",
        "",
        "## Table 7, laid out like the paper's",
        "",
        "Per dataset: detection / clean FPR (%) on the test set for the paper's trigger, at the "
        "threshold set on clean validation images; then the mean TPR at 1% FPR over the rest of "
        "the suite.",
        "",
    ]
    columns = ["method"]
    for r in reports:
        columns += [f"{r['dataset']}: paper trigger", f"{r['dataset']}: rest, mean TPR @ 1% FPR"]
    lines += [row(columns), rule(len(columns), right=True)]
    for method, key in table7_rows(reports):
        cells = []
        for r in reports:
            paper = next((e for e in r["sets"] if e["paper_trigger"]), None)
            if key is None:
                v = PAPER.get(r["dataset"], {}).get("detection")
                cells += [pct(v) if v is not None else "-", "-"]
                continue
            d = find(paper, key) if paper else None
            cells.append(
                f"{pct(d['detection_rate'])} / {pct(d['false_positive_rate'])}" if d else "not run"
            )
            mean, _ = mean_tpr_rest(r, key)
            ran = any(find(e, key) is not None for e in r["sets"])
            cells.append(pct(mean) if mean is not None else ("-" if ran else "not run"))
        lines.append(row([method, *cells]))
    for r in reports:
        lines += [
            "",
            f"## {r['dataset']}",
            "",
            f"Full report: [{r['dataset']}.md]({r['dataset']}.md). Cells: detection / clean FPR "
            "(%).",
            "",
            *table7(r),
            "",
            *goal_lines(r),
        ]
    return "\n".join(lines) + "\n"


def load_reports(out: Path) -> list[dict[str, Any]]:
    """Every <out>/<dataset>.json, in the order of PAPER_TRIGGER_GOALS, then by name."""
    order = list(PAPER_TRIGGER_GOALS)
    files = sorted(
        out.glob("*.json"),
        key=lambda f: (order.index(f.stem) if f.stem in order else len(order), f.stem),
    )
    return [json.loads(f.read_text()) for f in files]


def write_readme(out: Path) -> None:
    (out / "README.md").write_text(readme(load_reports(out)))
