"""The audit's report, rendered: audit.json, README.md and plots (each class's synthesised
trigger, the mask norms with their anomaly indices, the pruning curve)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from training.evaluation.markdown import evidence_lines, pct, row, rule, table  # noqa: E402
from training.inversion.restarts import Candidate, stack  # noqa: E402
from training.inversion.synthesis import SynthResult  # noqa: E402


def plot_trigger_grid(
    masks: np.ndarray, patterns: np.ndarray, titles: list[str], path: Path
) -> None:
    """Row 1: each mask (K, H, W); row 2: mask * pattern (what the trigger paints)."""
    k = len(masks)
    fig, axes = plt.subplots(2, k, figsize=(max(1.3 * k, 2.6), 3.0), squeeze=False)
    for i in range(k):
        painted = masks[i][None] * patterns[i]  # (C, H, W)
        painted = painted[0] if painted.shape[0] == 1 else painted.transpose(1, 2, 0)
        axes[0, i].imshow(masks[i], cmap="gray", vmin=0, vmax=1)
        axes[1, i].imshow(painted, cmap="gray" if painted.ndim == 2 else None, vmin=0, vmax=1)
        axes[0, i].set_title(titles[i], fontsize=7)
        for a in axes[:, i]:
            a.axis("off")
    for line, label in enumerate(("mask", "mask x pattern")):
        axes[line, 0].text(
            -0.3,
            0.5,
            label,
            transform=axes[line, 0].transAxes,
            rotation=90,
            va="center",
            ha="right",
            fontsize=8,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_triggers(synth: SynthResult, classes: list[str], flagged: list[int], path: Path) -> None:
    """Each class's trigger from the sweep; flagged classes marked *."""
    titles = [
        f"{c}{' *' if i in flagged else ''}\nL1={synth.l1[i]:.1f}" for i, c in enumerate(classes)
    ]
    plot_trigger_grid(synth.masks, synth.patterns, titles, path)


def plot_candidates(cands: list[dict], triggers: list[Candidate], path: Path) -> None:
    """The flagged class's triggers from the sweep and the restarts, smallest first."""
    titles = [f"{c['start']}{' (kept)' if c['kept'] else ''}\nL1={c['mask_l1']:.1f}" for c in cands]
    plot_trigger_grid(*stack(triggers), titles, path)


def plot_norms(
    l1: np.ndarray, index: np.ndarray, classes: list[str], threshold: float, path: Path
) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    colors = ["tab:red" if v > threshold else "tab:blue" for v in index]
    a.bar(range(len(l1)), l1, color=colors)
    a.set_title("synthesised mask L1 norm per class")
    b.bar(range(len(l1)), index, color=colors)
    b.axhline(threshold, color="k", ls="--", lw=1, label=f"flag > {threshold:g}")
    b.set_title("anomaly index (small side, MAD x 1.4826)")
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.set_xticks(range(len(l1)), classes, rotation=45, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_prune(curve: list[dict], path: Path, chosen: int | None = None) -> None:
    n = [r["pruned"] for r in curve]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(n, [r["accuracy"] for r in curve], label="clean accuracy")
    for key in curve[0]:
        if key.startswith("asr_"):
            ax.plot(n, [r[key] for r in curve], label=f"attack success ({key[4:]} trigger)")
    if chosen is not None:
        ax.axvline(chosen, color="k", ls=":", lw=1, label=f"stop: {chosen} pruned")
    ax.set_xlabel("penultimate neurons pruned (largest activation gap first)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.set_title("pruning curve (test set)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def markdown(report: dict) -> str:
    s = report["summary"]
    lines = [f"# Audit of `{report['model_set']}`", ""]
    verdict = (
        f"**Flagged as backdoored.** Target class(es): "
        f"{', '.join(report['classes'][c] for c in s['target_classes'])}"
        if s["flagged"]
        else "**Not flagged** (no class has a small-side anomaly index > "
        f"{s['anomaly_threshold']:g})."
    )
    lines += [verdict, ""]
    if "true_target_class" in s:
        lines += [
            f"Manifest's real target class: {s['true_target_class']} -> named correctly: "
            f"{s['target_named_correctly']}.",
            "",
        ]
    lines += [
        "## Detection",
        "",
        "![triggers](triggers.png)",
        "",
        "![norms](norms.png)",
        "",
        *table(
            ["class", "mask L1", "anomaly index", "synth. ASR (clean set)", "reached target"],
            [
                [
                    report["classes"][r["class"]],
                    f"{r['mask_l1']:.2f}",
                    f"{r['anomaly_index']:.2f}",
                    f"{r['synth_asr_clean_set']:.3f}",
                    r["reached_asr_target"],
                ]
                for r in s["per_class"]
            ],
        ),
    ]
    lines += family_lines(s.get("families") or {}, report["classes"])
    i = s["identification"]
    found = (
        f"{i['family']} family, size {i['size']:.3f}"
        if "size" in i
        else f"start: {i.get('start', 'sweep')}, mask L1 {i['mask_l1']:.2f}"
    )
    lines += [
        "",
        "## Identification",
        "",
        f"Candidate class {i['class']}: smallest synthesised trigger ({found}), its "
        f"attack success on test images of other classes {i['synth_asr_test']:.4f}.",
    ]
    if "neuron_overlap" in i:
        o = i["neuron_overlap"]
        if "iou_top_k" in i:
            lines += [
                f"Mask vs real trigger pixels: IoU {i['iou_at_0.5']:.3f} (mask >= 0.5), "
                f"{i['iou_top_k']:.3f} (top-k pixels, k = real trigger size).",
            ]
        lines += [
            f"Penultimate neurons: {o['shared']} of the top {o['top_k']} by activation gap "
            f"are shared by the synthesised and the real trigger (Jaccard "
            f"{o['jaccard']:.3f}); cosine of the gap vectors {o['cosine']:.3f}.",
            f"Real trigger's attack success on the unrepaired model: {i['real_asr_test']:.4f}.",
        ]
    lines += restart_lines(s.get("restarts"))
    rep = s.get("repair")
    lines += ["", "## Repair", ""]
    if rep is None:
        lines += ["No repair (model not flagged)."]
    else:
        p, u, b = rep["pruning"], rep["unlearning"], rep["before"]
        unlearned = (
            f"unlearned (1 epoch, 20% clean + 20% synth.-triggered, lr "
            f"{u['config']['lr']:g} {u['config'].get('schedule', 'constant')}, mask grown by "
            f"{u['config'].get('dilate', 0)} px)"
        )
        models = [
            ("unrepaired", b),
            (f"pruned ({p['neurons_pruned']}/{p['layer_width']} neurons)", p),
            (unlearned, u),
        ]
        lines += [
            *table(
                [
                    "model",
                    "clean accuracy",
                    "synth. trigger ASR",
                    "real trigger ASR",
                    "clean images of other classes sent to the target (the floor of the real ASR)",
                ],
                [
                    [
                        name,
                        _pct(m["clean_accuracy"]),
                        _pct(m["synth_asr"]),
                        _pct(m.get("real_asr")),
                        _pct(m.get("clean_to_target")),
                    ]
                    for name, m in models
                ],
            ),
            "",
            "![pruning](prune.png)",
        ]
        if report.get("exported"):
            lines += [
                "",
                f"Repaired model set ({report['exported']['repair']}): "
                f"`{report['exported']['path']}`.",
            ]
    lines += [
        "",
        *evidence_lines(report, s["seconds"]),
        f"- clean synthesis set: {report['data']['synthesis_images']} images; test set: "
        f"{report['data']['test_images']} images; unlearning pool: "
        f"{report['data']['train_images']} training images",
        f"- config: `{json.dumps(report['config'])}`",
        "",
    ]
    return "\n".join(lines)


def family_lines(families: dict, classes: list[str]) -> list[str]:
    """The full-image families' table: per class, each family's smallest trigger and index."""
    if not families:
        return []
    names = list(families)
    units = {"blend": "blend weight", "warp": "mean displacement, px"}
    return [
        "",
        "### Full-image trigger families (training/inversion/fullimage.py)",
        "",
        "Per class, the smallest trigger of each family that reached the attack-success target "
        "(* none did: the last one tried) and its anomaly index (of log sizes); flagged above "
        + ", ".join(f"{families[n]['anomaly_threshold']:g} ({n})" for n in names)
        + ".",
        "",
        *table(
            [
                "class",
                *(f"{n}: {units.get(n, 'size')}" for n in names),
                *(f"{n}: anomaly index" for n in names),
            ],
            [
                [
                    classes[k],
                    *(
                        f"{families[n]['per_class'][k]['size']:.3f}"
                        + ("" if families[n]["per_class"][k]["reached_asr_target"] else "*")
                        for n in names
                    ),
                    *(f"{families[n]['per_class'][k]['anomaly_index']:.2f}" for n in names),
                ]
                for k in range(len(classes))
            ],
        ),
    ]


def restart_lines(restarts: dict | None) -> list[str]:
    """The candidate class's triggers from the sweep and the restarts
    (training.inversion.restarts)."""
    if not restarts or restarts["count"] == 0:
        return []
    cands = restarts["candidates"]
    iou = "iou_top_k" in cands[0]
    lines = [
        "",
        f"### Restarts: the flagged class's trigger searched again from {restarts['count']} "
        "other starts",
        "",
        "The identification above uses the smallest trigger found. Unlearning uses every trigger "
        f"that reached the target with a mask at most {restarts['keep_factor']:g} times the "
        "smallest one's L1 (kept).",
        "",
        "![restarts](restarts.png)",
        "",
        *table(
            ["start", "mask L1", "synth. ASR (clean set)", "reached target", "kept"]
            + (["IoU with the real trigger (top-k)"] if iou else []),
            [
                [
                    c["start"],
                    f"{c['mask_l1']:.2f}",
                    f"{c['synth_asr_clean_set']:.3f}",
                    c["reached_asr_target"],
                    c["kept"],
                ]
                + ([f"{c['iou_top_k']:.3f}"] if iou else [])
                for c in cands
            ],
        ),
    ]
    return lines


def write_report(
    folder: Path,
    report: dict,
    synth: SynthResult,
    curve: list[dict],
    candidates: list[Candidate] = (),
    repair: list[Candidate] = (),
    families: dict | None = None,
    repair_full: list = (),
) -> None:
    """audit.json, README.md, the plots, and triggers.npz: every class's sweep trigger (masks,
    patterns), the candidate class's triggers from sweep and restarts, smallest first
    (candidate_*), and the ones unlearned (repair_*)."""
    folder.mkdir(parents=True, exist_ok=True)
    s = report["summary"]
    plot_triggers(synth, report["classes"], s["target_classes"], folder / "triggers.png")
    stale = folder / "restarts.png"
    if len(candidates) > 1:
        plot_candidates(s["restarts"]["candidates"], candidates, stale)
    elif stale.exists():
        stale.unlink()
    plot_norms(
        synth.l1,
        np.array([r["anomaly_index"] for r in s["per_class"]]),
        report["classes"],
        s["anomaly_threshold"],
        folder / "norms.png",
    )
    if curve:
        rep = report["summary"].get("repair") or {}
        plot_prune(curve, folder / "prune.png", rep.get("pruning", {}).get("neurons_pruned"))
    extra = {}
    for name, group in (("candidate", candidates), ("repair", repair)):
        if group:
            extra[f"{name}_masks"], extra[f"{name}_patterns"] = stack(group)
    for name, fam in (families or {}).items():  # every class's full-image trigger
        for k, t in enumerate(fam.triggers):
            extra.update(t.arrays(f"{name}_{k}"))
    for j, t in enumerate(repair_full):
        extra.update(t.arrays(f"repair_full_{j}_{t.family}"))
    np.savez_compressed(
        folder / "triggers.npz", masks=synth.masks, patterns=synth.patterns, **extra
    )
    (folder / "audit.json").write_text(
        json.dumps({**report, "prune_curve": curve}, indent=2) + "\n"
    )
    (folder / "README.md").write_text(markdown(report))


# The paper's Table 3 (Menisov 2022), MNIST row: (accuracy, attack success).
PAPER_TABLE3 = {
    "mnist": {
        "with backdoor": (0.869902, 0.99876),
        "pruning": (0.784083, 0.029518),
        "unlearning": (0.855576, 0.035861),
    },
}


TABLE3_COLUMNS = (
    "dataset",
    "source",
    "with backdoor acc / attack",
    "pruning acc / attack",
    "unlearning acc / attack",
    "unlearning lr and schedule, mask growth",
    "goal: attack <= 0.02, acc. drop <= 0.01",
)


def overview(reports: list[dict]) -> str:
    """reports/audit/README.md: every audited set in one table, beside the paper's Table 3."""
    lines = [
        "## Results",
        "",
        "Written by `python -m training.audit.report` from the `audit.json` files below; each "
        "set's own README.md holds its command, seed, versions, hardware and wall time.",
        "",
        "### Detection",
        "",
        *table(
            [
                "dataset",
                "model set",
                "flagged",
                "named target",
                "real target",
                "max anomaly index",
                "audit wall time",
            ],
            [
                [
                    r["dataset"],
                    f"`{r['model_set']}`",
                    r["summary"]["flagged"],
                    r["summary"]["target_classes"] or "-",
                    r["summary"].get("true_target_class", "none (clean)"),
                    f"{max(c['anomaly_index'] for c in r['summary']['per_class']):.2f}",
                    f"{r['wall_seconds']:.0f} s",
                ]
                for r in reports
            ],
        ),
    ]
    lines += [
        "",
        "### Repair beside the paper's Table 3",
        "",
        "Accuracy: clean test accuracy. Attack: the REAL trigger's attack success on test "
        "images of other classes (ours), the paper's 'attack's effectiveness'.",
        "",
        row(TABLE3_COLUMNS),
        rule(len(TABLE3_COLUMNS)),
    ]
    for r in reports:
        rep = r["summary"].get("repair")
        if not rep or "real_asr" not in rep["before"]:
            continue
        b, p, u = rep["before"], rep["pruning"], rep["unlearning"]
        lines.append(
            row(
                [
                    r["dataset"],
                    f"this repo (`{r['model_set']}`)",
                    f"{b['clean_accuracy']:.3f} / {b['real_asr']:.3f}",
                    f"{p['clean_accuracy']:.3f} / {p['real_asr']:.3f} "
                    f"({p['neurons_pruned']}/{p['layer_width']} neurons)",
                    f"{u['clean_accuracy']:.3f} / {u['real_asr']:.3f}",
                    f"{u['config']['lr']:g} {u['config'].get('schedule', 'constant')}, "
                    f"{u['config']['dilate']} px",
                    unlearning_goal(b, u),
                ]
            )
        )
        paper = PAPER_TABLE3.get(r["dataset"])
        if paper:
            cells = [f"{a:.3f} / {s:.3f}" for a, s in paper.values()]
            lines.append(row([r["dataset"], "paper, Table 3", *cells, "", ""]))
    return "\n".join(lines) + "\n"


def unlearning_goal(
    before: dict, after: dict, max_asr: float = 0.02, max_drop: float = 0.01
) -> str:
    """Issue 6's bar for unlearning: the real trigger's success <= 2%, clean accuracy at most one
    point below the unrepaired model's. 'holds', or what misses and by how much."""
    misses = []
    if after["real_asr"] > max_asr:
        misses.append(f"attack {after['real_asr'] - max_asr:.4f} over")
    drop = before["clean_accuracy"] - after["clean_accuracy"]
    if drop > max_drop:
        misses.append(f"acc. drop {drop:.3f}, {drop - max_drop:.3f} over")
    verdict = "holds" if not misses else "misses: " + "; ".join(misses)
    if "clean_to_target" in after:  # the floor: confusion into the target class, no trigger
        verdict += f" (clean images sent to the target: {after['clean_to_target']:.3f})"
    return verdict


# The columns of a joined-defence arm (training.audit.joint), in %, from the test set.
JOINT_COLUMNS = (
    "class change: detection / FPR",
    "KL: detection / FPR (FPR goal)",
    "KL AUROC",
    "KL TPR at 1% FPR",
    "clean acc. after AE",
    "backdoor acc. after AE",
)


def joint_cells(arm: dict) -> list[str]:
    """One arm's cells under JOINT_COLUMNS."""
    cc, kl = arm["class_change"], arm["kl_calibrated"]
    return [
        f"{pct(cc['detection_rate'])} / {pct(cc['false_positive_rate'])}",
        f"{pct(kl['detection_rate'])} / {pct(kl['false_positive_rate'])} ({pct(kl['fpr'])})",
        f"{arm['kl_auroc']:.4f}",
        pct(arm["kl_tpr_at_fpr0.01"]),
        pct(arm["clean_accuracy_after_ae"]),
        pct(arm["backdoor_accuracy_after_ae"]),
    ]


def joint_overview(reports: list[dict]) -> str:
    """The measurement of training.audit.joint: detection of each demo set's real trigger by AEs
    trained with and without the audit's synthesised triggers."""
    if not reports:
        return ""
    lines = [
        "",
        "### Joining the defences: the de-trigger AE trained with the synthesised triggers",
        "",
        "Written from reports/audit/joint/*.json (`python -m training.audit.joint`). Detection "
        "of the real trigger on the full test set; KL thresholds calibrated on clean validation "
        "images for the set's FPR.",
        "",
        *table(
            ["model set", "AE training triggers", *JOINT_COLUMNS],
            [
                [f"`{r['model_set']}`", a["arm"], *joint_cells(a)]
                for r in reports
                for a in r["arms"]
            ],
        ),
    ]
    return "\n".join(lines) + "\n"
