"""The model-set manifest (docs/model-contract.md): the fields the service relies on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from contract.errors import ModelLoadError
from contract.modes import Detector


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="allow")

    height: int = Field(gt=0, le=16384)
    width: int = Field(gt=0, le=16384)
    channels: Literal[1, 3]


class FileSpec(BaseModel):
    """A file of the model set, checked against its sha256 before use."""

    model_config = ConfigDict(extra="allow")

    file: str
    sha256: str

    @field_validator("file")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        # The file must lie inside the model-set folder.
        if Path(value).name != value or value in ("", ".", ".."):
            raise ValueError("file must be a plain file name inside the model-set folder")
        return value

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        value = value.lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("sha256 must be 64 hex digits")
        return value


class GraphSpec(FileSpec):
    input_name: str
    output_name: str


class DetriggerSpec(GraphSpec):
    """The AE graph. ``unchanged_tolerance`` > 0: the graph ends in the unchanged-image gate
    (docs/model-contract.md, "Unchanged images"); evidence only, the service skips the second
    target pass for any image returned bit for bit, gated or not."""

    unchanged_tolerance: float = Field(default=0.0, ge=0.0, le=1.0)


class Share(BaseModel):
    """A measured share: k of n, with its exact (Clopper-Pearson) 95% interval."""

    model_config = ConfigDict(extra="allow")

    rate: float = Field(ge=0.0, le=1.0)
    k: int = Field(ge=0)
    n: int = Field(ge=1)
    ci95: tuple[float, float]

    @model_validator(mode="after")
    def _consistent(self) -> Share:
        lo, hi = self.ci95
        if self.k > self.n or not 0.0 <= lo <= hi <= 1.0:
            raise ValueError("a share needs k <= n and 0 <= ci95[0] <= ci95[1] <= 1")
        return self


class Calibration(BaseModel):
    """Evidence of how a threshold was set on clean held-out images; the service reads none of
    it. Every field is optional: records written before issue 22 have no confidence (they are
    the plain quantile), and any other field may follow (split, source, command, ...).

    ``confidence`` c: the threshold lets at most ``allowed_exceedances`` k of the ``n`` clean
    images past it, k the largest count with BinomCDF(k; n, target_fpr) <= 1 - c, so that its FPR
    on new clean images is <= target_fpr with probability >= c; c = 0 is the plain quantile
    (k = floor(target_fpr * n)). ``false_positive``: what it flags of those n images."""

    model_config = ConfigDict(extra="allow")

    target_fpr: float | None = Field(default=None, gt=0.0, lt=1.0)
    confidence: float | None = Field(default=None, ge=0.0, lt=1.0)
    n: int | None = Field(default=None, ge=1)
    allowed_exceedances: int | None = Field(default=None, ge=0)
    false_positive: Share | None = None

    @model_validator(mode="after")
    def _within_n(self) -> Calibration:
        if (
            self.n is not None
            and self.allowed_exceedances is not None
            and self.allowed_exceedances > self.n
        ):
            raise ValueError("allowed_exceedances must be at most n")
        return self


class Decision(BaseModel):
    model_config = ConfigDict(extra="allow")

    rule: Literal["class_change", "score"]
    score: Literal["prob_drop", "kl"] = "prob_drop"
    threshold: float = 0.5
    calibration: Calibration | None = None


class Blend(BaseModel):
    """STRIP's superimposition: clip(input_weight * x + bank_weight * bank image, 0, 1)."""

    model_config = ConfigDict(extra="forbid")

    input_weight: float = Field(default=1.0, gt=0.0, le=4.0)
    bank_weight: float = Field(default=1.0, gt=0.0, le=4.0)


class StripSpec(BaseModel):
    """Optional: the STRIP detector (contract.strip), written by its calibration
    (training.evaluation.strip)."""

    model_config = ConfigDict(extra="allow")

    bank: FileSpec  # .npy of (M, C, H, W) clean validation images, uint8 or float in [0, 1]
    n: int = Field(ge=1, le=256)  # superimposed copies per input, at most the bank's M
    threshold: float = Field(ge=0.0, allow_inf_nan=False)  # flag when entropy (bits) < this
    seed: int = Field(default=0, ge=0, lt=2**63)
    blend: Blend = Field(default_factory=Blend)
    calibration: Calibration | None = None


class BothSpec(BaseModel):
    """Optional: detector ``both`` (contract.fusion), the de-trigger score and STRIP's entropy
    fused by the rule ``either``: flagged when ``score > ae_threshold`` or ``entropy <
    strip_threshold``, the two thresholds calibrated together on clean images so that the
    union meets one target FPR (training.evaluation.fusion). Needs ``detectors.strip``: it
    runs STRIP with that entry's bank, n, seed and blend."""

    model_config = ConfigDict(extra="allow")

    rule: Literal["either"] = "either"
    score: Literal["prob_drop", "kl"] = "prob_drop"  # the de-trigger score it thresholds
    ae_threshold: float = Field(allow_inf_nan=False)  # flag when score > this
    strip_threshold: float = Field(ge=0.0, allow_inf_nan=False)  # flag when entropy < this
    calibration: Calibration | None = None


class RepairedSpec(GraphSpec):
    """Optional: detector ``repaired``, the target compared with a repaired copy of itself. The
    graph is a classifier with the target's input and classes whose backdoor was removed, e.g.
    the model audit's unlearned export (``SET-repaired/target.onnx``). Where a trigger fires,
    the target answers the attacker's class and the repaired graph the true one: an image is
    flagged when ``score(target(x), repaired(x)) > threshold``, the threshold calibrated on
    clean images (``detrigger-guard calibrate SET --repaired GRAPH``), and mode repair answers
    with the repaired graph's class. It runs no AE, so it sees triggers that the AE cannot undo
    (warps, photo filters), but only those of a backdoor that the repair removed."""

    score: Literal["prob_drop", "kl"] = "prob_drop"
    threshold: float = Field(allow_inf_nan=False)  # flag when score > this
    calibration: Calibration | None = None

    @property
    def decision(self) -> Decision:
        """The rule as contract.scoring.decide applies it, the repaired logits in AE(x)'s
        place."""
        return Decision(rule="score", score=self.score, threshold=self.threshold)


class DetriggerOrRepairedSpec(BaseModel):
    """Optional: detector ``detrigger_or_repaired`` (contract.fusion), the de-trigger AE and the
    repaired graph fused by the rule ``either``: flagged when the de-trigger score is above
    ``ae_threshold`` or the repaired graph's score (``detectors.repaired.score``) is above
    ``repaired_threshold``, the two thresholds calibrated together on clean images so that the
    union meets one target FPR (training.evaluation.fusion). Needs ``detectors.repaired``: it
    runs that graph. The AE sees the patch-like triggers of any backdoor, the repaired graph
    the triggers of the backdoor that the repair removed, warps and filters included."""

    model_config = ConfigDict(extra="allow")

    rule: Literal["either"] = "either"
    score: Literal["prob_drop", "kl"] = "prob_drop"  # the de-trigger score it thresholds
    ae_threshold: float = Field(allow_inf_nan=False)  # flag when the de-trigger score > this
    repaired_threshold: float = Field(allow_inf_nan=False)  # flag when the repaired score > this
    calibration: Calibration | None = None


class Detectors(BaseModel):
    """Optional detectors besides the de-trigger AE (which every set has)."""

    model_config = ConfigDict(extra="allow")

    strip: StripSpec | None = None
    both: BothSpec | None = None
    repaired: RepairedSpec | None = None
    detrigger_or_repaired: DetriggerOrRepairedSpec | None = None
    # The detector that the set's maker recommends for a request that names none (e.g. fit
    # --twin: detrigger_or_repaired); the service's GUARD_DEFAULT_DETECTOR, where given and
    # offered, comes first. Absent: detrigger.
    default: Detector | None = None

    @model_validator(mode="after")
    def _parts_present(self) -> Detectors:
        name = None if self.default is None else self.default.value
        if name not in (None, "detrigger") and getattr(self, str(name)) is None:
            raise ValueError(
                f"detectors.default is {name}, which the set does not have (no "
                f"detectors.{name} entry)"
            )
        if self.both is not None and self.strip is None:
            raise ValueError("detectors.both runs STRIP: it needs detectors.strip")
        if self.detrigger_or_repaired is not None and self.repaired is None:
            raise ValueError(
                "detectors.detrigger_or_repaired runs the repaired graph: it needs "
                "detectors.repaired"
            )
        return self


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    input: InputSpec
    classes: list[str] = Field(min_length=2, max_length=10_000)
    target: GraphSpec
    detrigger: DetriggerSpec
    decision: Decision
    detectors: Detectors = Field(default_factory=Detectors)
    description: str = ""


def read_manifest(folder: Path) -> Manifest:
    path = folder / "manifest.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: manifest.json not found") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot read manifest: {exc}") from exc
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ModelLoadError(f"{path}: invalid manifest: {exc}") from exc


def read_verified(folder: Path, spec: FileSpec) -> bytes:
    """The file's bytes, after checking them against the manifest sha256.

    The session is then built from these same bytes, so what was checked is what runs.
    """
    path = folder / spec.file
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: file not found") from exc
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise ModelLoadError(
            f"{path}: sha256 mismatch: manifest says {spec.sha256}, file has {digest}"
        )
    return data
