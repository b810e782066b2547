"""The report of a user's model set (fit, calibrate): report.json, report.md and two plots in
the set folder, the numbers beside the command, seed, versions and hardware that made them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from training.evaluation.metrics import confidence_note


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _interval(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    return f"{_pct(r['rate'])} ({r['k']}/{r['n']}; 95% CI {_pct(lo)} to {_pct(hi)})"


def fpr_line(calibration: dict[str, Any]) -> str:
    d = calibration["decision"]
    line = (
        f"de-trigger AE ({d['score']} > {d['threshold']:.6g}): clean FPR "
        f"{_interval(d['false_positive'])} at target {_pct(d['target_fpr'])}" + confidence_note(d)
    )
    if "shift" in d:  # the images were moved (training/evaluation/calibration.py, `shifted`)
        line += (
            f", on the images shifted by up to {d['shift']['pixels']} px (as they are: "
            f"{_interval(d['shift']['false_positive_unshifted'])})"
        )
    if "strip" in calibration:
        s = calibration["strip"]
        line += f"; STRIP (< {s['threshold']:.4f} bits): clean FPR {_interval(s['false_positive'])}"
    if "repaired" in calibration:
        r = calibration["repaired"]
        line += (
            f"; repaired ({r['score']} > {r['threshold']:.6g}): clean FPR "
            f"{_interval(r['false_positive'])}"
        )
    if "detrigger_or_repaired" in calibration:
        f = calibration["detrigger_or_repaired"]
        line += (
            f"; detrigger_or_repaired (each part at {_pct(f['per_detector_fpr'])}): clean FPR "
            f"{_interval(f['false_positive'])}"
        )
    return line


def shift_note(decision: dict[str, Any]) -> str:
    """What the two held-out FPRs of a shifted calibration tell the user (docs/byom.md,
    "Calibrated on shifted images")."""
    pixels = decision["shift"]["pixels"]
    return (
        f"The thresholds were set on the held-out images each shifted by up to {pixels} px. "
        "If the unshifted images are flagged less, the target scores them lower than shifted "
        "ones: because it trained on them (the shift then keeps new clean images from "
        "being flagged more than the target FPR), or because it is sensitive to small shifts "
        "(the threshold is then higher than needed, and costs some detection). If the held-out "
        "images are ones the model never saw, `--calibration-shift 0` (with fit's `--val DIR` "
        "or calibrate's `--data DIR`) sets the thresholds on them as they are."
    )


def plots(folder: Path, calibration: dict[str, Any]) -> list[str]:
    """score_histogram.png (clean scores, threshold) and estimates.png (restoration per
    trigger); the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    d = calibration["decision"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(np.asarray(d["scores"]), bins=60, color="#4477aa")
    ax.axvline(d["threshold"], color="#cc3311", label=f"threshold {d['threshold']:.4g}")
    ax.set_yscale("log")
    ax.set_xlabel(f"{d['score']} on clean validation images")
    ax.set_ylabel("images")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "score_histogram.png", dpi=100)
    plt.close(fig)
    names.append("score_histogram.png")
    est = calibration.get("estimates")
    if est and est["triggers"]:
        fig, ax = plt.subplots(figsize=(6, 3.2))
        labels = [t["name"] for t in est["triggers"]]
        ax.barh(labels, [t["restoration_rate"] for t in est["triggers"]], color="#228833")
        ax.set_xlim(0, 1)
        ax.set_xlabel("restoration rate (estimate): class on AE(stamped) = class on clean")
        fig.tight_layout()
        fig.savefig(folder / "estimates.png", dpi=100)
        plt.close(fig)
        names.append("estimates.png")
    return names


def markdown(report: dict[str, Any]) -> str:
    cal = report["calibration"]
    lines = [
        f"# Model set {report['name']}",
        "",
        f"Made by `{report['command']}` (seed {report['seed']}) on {report['hardware']}; "
        f"{report['wall_seconds']:.0f} s. Versions: "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        + ".",
        "",
        "## Data",
        "",
        *[f"- {line}" for line in report["data"]],
        "",
    ]
    if "target" in report:
        t = report["target"]
        lines += [
            "## Target",
            "",
            f"- input {t['input_name']!r} {t['dtype']} {t['layout']}, {t['channels']}x"
            f"{t['height']}x{t['width']}, batch {t['batch']}; output {t['output_name']!r} "
            f"({t['output_kind']}), {t['classes']} classes",
            f"- wrapped to float32 NCHW in [0, 1]: scale {t['scale']:g}, mean {list(t['mean'])}, "
            f"std {list(t['std'])}",
            *[f"- {n}" for n in t["notes"]],
            "",
        ]
    if "training" in report:
        tr = report["training"]
        lines += [
            "## De-trigger AE",
            "",
            "- the random-trigger conv AE (training.config.random_ae"
            + (f", trigger families {tr['families']}" if "families" in tr else "")
            + f"), {tr['epochs_done']} of "
            f"{tr['epochs']} epochs on {tr['images']} images, {tr['wall_seconds']:.0f} s on "
            f"{tr['device']} x {tr['world_size']}"
            + (" (stopped by --time-budget)" if tr["stopped_by_budget"] else ""),
            "",
        ]
    lines += ["## Calibration (measured)", "", f"- {fpr_line(cal)}", ""]
    if "shift" in cal["decision"]:
        lines += [shift_note(cal["decision"]), ""]
    est = cal.get("estimates")
    if est:
        c = est["clean"]
        lines += [
            "## Estimates (NOT detection rates)",
            "",
            "These are estimates. The model has no known backdoor, so no detection rate can be "
            "measured: each trigger family of the attack suite is stamped on "
            f"{est['n']} clean held-out images. *Restoration* is how often the target's class "
            "on AE(stamped) equals its class on the clean image; *flagged* how often the set "
            "flags the stamped image (low where the model never learnt that trigger).",
            "",
            f"- on clean images the AE changes pixels by {c['mean_abs_pixel_change']:.4f} on "
            f"average (of 1) and keeps the target's class on {_pct(c['class_agreement'])}; "
            f"it returns {_pct(c.get('unchanged', 0.0))} of them bit for bit (*unchanged*: a "
            "gated AE's, run once by the guard, never flagged; docs/model-contract.md); its "
            "largest pixel change on an image is "
            f"{c.get('median_largest_change', float('nan')):.4f} at the median (*smallest "
            "change* below: the least it moves a stamped image; a gate's tolerance must stay "
            "under it for every trigger the AE restores)",
            "",
            "| trigger | restoration | class changed by trigger | flagged | unchanged "
            "| smallest change |",
            "|---|---:|---:|---:|---:|---:|",
            *[
                f"| {t['name']} | {_pct(t['restoration_rate'])} | "
                f"{_pct(t['class_changed_by_trigger'])} | {_pct(t['flagged'])} | "
                f"{_pct(t.get('unchanged', 0.0))} | "
                f"{t.get('smallest_largest_change', float('nan')):.4f} |"
                for t in est["triggers"]
            ],
            "",
        ]
    for name in report.get("plots", []):
        lines += [f"![{name}]({name})", ""]
    return "\n".join(lines)


def write_report(folder: Path, report: dict[str, Any]) -> None:
    """report.json (scores left out), plots and report.md."""
    report["plots"] = plots(folder, report["calibration"])
    slim = json.loads(json.dumps(report))
    slim["calibration"]["decision"].pop("scores", None)
    (folder / "report.json").write_text(json.dumps(slim, indent=2) + "\n")
    (folder / "report.md").write_text(markdown(report) + "\n")
