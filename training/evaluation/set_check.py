"""Check a model set folder against the model contract (docs/model-contract.md), without the
service: manifest schema, every file and its sha256, the graphs' input and output names and
shapes against the manifest, the AE's output shape equal to its input, and both graphs run by
ONNX Runtime on a batch of 3 (a batch other than 1, for the dynamic axis) with finite outputs;
the STRIP bank, detector both (calibrated for these graphs and bank), the repaired graph (one
row of logits per image, like the target) and detector detrigger_or_repaired (calibrated for
these graphs) when the manifest has them. `detrigger-guard
check` adds the service's own load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from contract.errors import ModelLoadError
from contract.fusion import decide_both, decide_detrigger_or_repaired, run_both
from contract.manifest import Manifest, read_manifest, read_verified
from contract.strip import Strip
from training.evaluation.detectors import cpu_session


class SetCheckError(ValueError):
    """The set breaks the contract; the message names the file and what is wrong."""


def _io(session, spec, role: str, folder: Path) -> tuple[list, list]:
    ins, outs = session.get_inputs(), session.get_outputs()
    in_names, out_names = [i.name for i in ins], [o.name for o in outs]
    if spec.input_name not in in_names or len(ins) != 1:
        raise SetCheckError(
            f"{folder / spec.file}: inputs {in_names}; the manifest's {role}.input_name is "
            f"{spec.input_name!r} (one input)"
        )
    if spec.output_name not in out_names:
        raise SetCheckError(
            f"{folder / spec.file}: outputs {out_names}; the manifest's {role}.output_name is "
            f"{spec.output_name!r}"
        )
    return list(ins[0].shape), next(o.shape for o in outs if o.name == spec.output_name)


def check_set(folder: Path, batch: int = 3) -> tuple[Manifest, list[str]]:
    """(the manifest, one line per check passed); SetCheckError at the first failure."""
    lines = []
    try:
        manifest = read_manifest(folder)
        lines.append(f"manifest.json: valid ({manifest.name}, {len(manifest.classes)} classes)")
        # In the order they run: the target runs on AE(x) too.
        specs = {"detrigger": manifest.detrigger, "target": manifest.target}
        if manifest.detectors.repaired is not None:
            specs["repaired"] = manifest.detectors.repaired
        data = {role: read_verified(folder, spec) for role, spec in specs.items()}
        files = ", ".join(specs[r].file for r in ("target", "detrigger", "repaired") if r in specs)
        lines.append(f"{files}: sha256 as the manifest says")
        strip = None
        if manifest.detectors.strip is not None:
            chw = (manifest.input.channels, manifest.input.height, manifest.input.width)
            strip = Strip.load(folder, manifest.detectors.strip, chw)
            lines.append(
                f"{manifest.detectors.strip.bank.file}: sha256 and shape fit "
                f"({len(strip.bank)} images, n={strip.config.n})"
            )
    except ModelLoadError as exc:
        raise SetCheckError(str(exc)) from exc
    c, h, w = manifest.input.channels, manifest.input.height, manifest.input.width
    x = np.random.default_rng(0).random((batch, c, h, w), dtype=np.float32)
    outputs: dict[str, np.ndarray] = {}
    for role, spec in specs.items():
        try:
            session = cpu_session(data[role], 0)
        except Exception as exc:
            raise SetCheckError(
                f"{folder / spec.file}: ONNX Runtime cannot load it: {exc}"
            ) from exc
        in_shape, _ = _io(session, spec, role, folder)
        fixed = [d if isinstance(d, int) else None for d in in_shape]
        if len(fixed) != 4 or any(
            have is not None and have != want
            for have, want in zip(fixed[1:], (c, h, w), strict=True)
        ):
            raise SetCheckError(
                f"{folder / spec.file}: input shape {in_shape}; the manifest says "
                f"(N, {c}, {h}, {w})"
            )
        if fixed[0] is not None:
            raise SetCheckError(f"{folder / spec.file}: fixed batch {fixed[0]}; it must be dynamic")
        feed = np.concatenate([x, outputs["detrigger"]]) if role == "target" else x
        try:
            (y,) = session.run([spec.output_name], {spec.input_name: feed})
        except Exception as exc:
            raise SetCheckError(
                f"{folder / spec.file}: fails on a batch of {len(feed)}: {exc}"
            ) from exc
        if not np.all(np.isfinite(y)):
            raise SetCheckError(f"{folder / spec.file}: non-finite outputs on a batch")
        outputs[role] = np.asarray(y, np.float32)
    if outputs["detrigger"].shape != x.shape:
        raise SetCheckError(
            f"{folder / manifest.detrigger.file}: output {outputs['detrigger'].shape} != input "
            f"{x.shape}"
        )
    if outputs["target"].shape != (2 * batch, len(manifest.classes)):
        raise SetCheckError(
            f"{folder / manifest.target.file}: output {outputs['target'].shape}; the manifest "
            f"has {len(manifest.classes)} classes: expected ({2 * batch}, {len(manifest.classes)})"
        )
    if "repaired" in outputs and outputs["repaired"].shape != (batch, len(manifest.classes)):
        raise SetCheckError(
            f"{folder / specs['repaired'].file}: output {outputs['repaired'].shape}; expected "
            f"({batch}, {len(manifest.classes)}), one row of logits per image"
        )
    lines.append(f"graphs: names and shapes as the manifest says; AE output = input {x.shape}")
    graphs = "both graphs" if len(specs) == 2 else f"the {len(specs)} graphs"
    lines.append(f"ONNX Runtime runs {graphs} on a batch of {batch} (target on {2 * batch})")
    if strip is not None:
        try:
            session = cpu_session(data["target"], 0)
            spec = manifest.target
            (logits,) = session.run([spec.output_name], {spec.input_name: strip.batch(x)})
            strip.decide(np.asarray(logits), batch)
        except Exception as exc:
            raise SetCheckError(f"STRIP fails on a batch of {batch}: {exc}") from exc
        lines.append("STRIP runs on a batch")
    if manifest.detectors.both is not None:
        lines += _check_both(folder, manifest, data, strip, x)
    if manifest.detectors.detrigger_or_repaired is not None:
        lines += _check_detrigger_or_repaired(folder, manifest, outputs, batch)
    return manifest, lines


def _made_with(folder: Path, name: str, calibration, now: dict) -> dict | None:
    """What a fused detector's calibration says it was calibrated with (None when it says
    nothing); SetCheckError when any of it differs from ``now``, the set's graphs and files."""
    extra = (calibration.model_extra if calibration else None) or {}
    made_with = extra.get("calibrated_with")
    if not isinstance(made_with, dict):
        return None
    stale = [k for k, v in now.items() if k in made_with and made_with[k] != v]
    if stale:
        raise SetCheckError(
            f"{folder / 'manifest.json'}: detectors.{name} was calibrated with another "
            f"{', '.join(stale)}; calibrate it again (detrigger-guard "
            "calibrate SET --recorded-split, or --data DIR)"
        )
    return made_with


def _check_detrigger_or_repaired(
    folder: Path, manifest: Manifest, outputs: dict[str, np.ndarray], batch: int
) -> list[str]:
    """Detector detrigger_or_repaired: calibrated for these graphs (when its calibration says
    what it was calibrated with), and its decision runs on the graphs' outputs."""
    fused, repaired = manifest.detectors.detrigger_or_repaired, manifest.detectors.repaired
    assert fused is not None and repaired is not None  # the schema: it needs repaired
    now = {
        "target_sha256": manifest.target.sha256,
        "detrigger_sha256": manifest.detrigger.sha256,
        "repaired_sha256": repaired.sha256,
        "repaired_score": repaired.score,
    }
    made_with = _made_with(folder, "detrigger_or_repaired", fused.calibration, now)
    logits = outputs["target"]
    decisions, _ = decide_detrigger_or_repaired(
        logits[:batch], logits[batch:], outputs["repaired"], fused, repaired
    )
    if not decisions.finite().all():
        raise SetCheckError("detector detrigger_or_repaired: non-finite scores on a batch")
    return [
        "detector detrigger_or_repaired decides on a batch"
        + (", calibrated with these graphs" if made_with else "")
    ]


def _check_both(folder: Path, manifest: Manifest, data: dict, strip, x: np.ndarray) -> list[str]:
    """Detector both: calibrated for these graphs and this bank (when its calibration says
    what it was calibrated with), and its one-call batch runs."""
    both = manifest.detectors.both
    spec = manifest.detectors.strip
    assert both is not None and strip is not None and spec is not None  # both needs strip
    now = {
        "target_sha256": manifest.target.sha256,
        "detrigger_sha256": manifest.detrigger.sha256,
        "strip_bank_sha256": spec.bank.sha256,
        "strip_n": spec.n,
        "strip_seed": spec.seed,
    }
    made_with = _made_with(folder, "both", both.calibration, now)
    try:
        ae, target = (cpu_session(data[role], 0) for role in ("detrigger", "target"))
        a, t = manifest.detrigger, manifest.target
        decisions = decide_both(
            *run_both(
                x,
                strip,
                lambda v: ae.run([a.output_name], {a.input_name: v})[0],
                lambda v: target.run([t.output_name], {t.input_name: v})[0],
            ),
            both,
        )
    except Exception as exc:
        raise SetCheckError(f"detector both fails on a batch of {len(x)}: {exc}") from exc
    if not decisions.finite().all():
        raise SetCheckError("detector both: non-finite scores on a batch")
    return [
        "detector both runs on a batch"
        + (", calibrated with these graphs and this bank" if made_with else "")
    ]
