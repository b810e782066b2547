"""Request and response bodies of the REST API (pydantic), with converters from the guard."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contract.modes import Detector, Mode
from service.guard import ImageResult, Outcome
from service.repository import Slot


class ClassRef(BaseModel):
    """A class as index and label."""

    model_config = ConfigDict(populate_by_name=True)

    class_: int = Field(alias="class", description="Class index in the manifest's order.")
    label: str


class Base64Image(BaseModel):
    data: str = Field(description="The image file's bytes, base64-encoded (standard alphabet).")
    filename: str | None = Field(None, max_length=255)


class ClassifyJSONRequest(BaseModel):
    """The application/json form of POST /classify."""

    model_config = ConfigDict(extra="forbid")

    images: list[Base64Image] = Field(min_length=1)
    model: str | None = Field(None, description="Model set name; the default set when absent.")
    mode: Mode | None = Field(
        None, description="flag, block or repair; GUARD_DEFAULT_MODE when absent."
    )
    resize: bool = Field(False, description="Resize images of another size to the model's input.")
    detector: Detector | None = Field(
        None,
        description="detrigger, strip, both, repaired or detrigger_or_repaired; absent: the "
        "set's default detector (GET /v1/models lists it).",
    )


class ImageResultBody(BaseModel):
    index: int
    filename: str | None
    flagged: bool = Field(description="True when the image is judged to carry a trigger.")
    predicted: ClassRef = Field(description="The class on the image as uploaded.")
    detriggered: ClassRef | None = Field(
        description="The class after the de-trigger autoencoder (detector repaired: the "
        "repaired graph's class on the image; detrigger_or_repaired: the repaired graph's "
        "class where its rule fired, else the class after the autoencoder); null with "
        "detector strip, which runs no autoencoder."
    )
    detector: Detector = Field(description="The detector that judged the image.")
    score: float = Field(
        description="The detector's score: prob_drop or kl (detrigger, both and "
        "detrigger_or_repaired: the target on the image against the target on AE(image); "
        "repaired: against the repaired graph on the image), or the mean entropy in bits of "
        "the target's outputs on the superimposed copies (strip_entropy)."
    )
    score_name: Literal["prob_drop", "kl", "strip_entropy"]
    threshold: float
    decision_rule: Literal["class_change", "score", "score_below", "either"] = Field(
        description="class_change: flagged when the class changes after the autoencoder; "
        "score: flagged when score > threshold; score_below (strip): flagged when "
        "score < threshold; either: flagged when score > threshold or, with both, "
        "strip_entropy < strip_threshold, with detrigger_or_repaired, repaired_score > "
        "repaired_threshold."
    )
    strip_entropy: float | None = Field(
        default=None,
        description="Detector both: STRIP's score beside the de-trigger score, the mean "
        "entropy in bits over the superimposed copies; null with the other detectors.",
    )
    strip_threshold: float | None = Field(
        default=None,
        description="Detector both: STRIP's threshold in the fused rule (calibrated with "
        "'threshold' for one clean FPR); null with the other detectors.",
    )
    repaired_score: float | None = Field(
        default=None,
        description="Detector detrigger_or_repaired: the repaired graph's score beside the "
        "de-trigger score (prob_drop or kl of the target against the repaired graph on the "
        "image); null with the other detectors.",
    )
    repaired_threshold: float | None = Field(
        default=None,
        description="Detector detrigger_or_repaired: the repaired graph's threshold in the "
        "fused rule (calibrated with 'threshold' for one clean FPR); null with the other "
        "detectors.",
    )
    fired: list[Detector] = Field(
        default_factory=list,
        description="The detectors whose own rule flagged the image: with both, detrigger, "
        "strip, or the two; with detrigger_or_repaired, detrigger, repaired, or the two; with "
        "one detector, that one when flagged. Empty when not flagged.",
    )
    outcome: Literal["answered", "blocked", "repaired"] = Field(
        description="answered: 'answer' is the predicted class; blocked: no class is given; "
        "repaired: 'answer' is the class after de-triggering (detector repaired: the repaired "
        "graph's class; detrigger_or_repaired: as 'detriggered')."
    )
    answer: ClassRef | None = Field(
        description="The class to use under the mode; null when the image is blocked."
    )


class ClassifyResponse(BaseModel):
    model: str
    mode: Mode
    detector: Detector = Field(description="The detector that judged the images.")
    flagged: int = Field(description="How many images were flagged.")
    blocked: int = Field(description="How many images got no class (mode block).")
    results: list[ImageResultBody] = Field(description="One entry per image, in request order.")


def _ref(classes: list[str], index: int) -> ClassRef:
    return ClassRef.model_validate({"class": index, "label": classes[index]})


def _outcome(mode: Mode, result: ImageResult) -> Literal["answered", "blocked", "repaired"]:
    if result.answer is None:
        return "blocked"
    if mode is Mode.repair and result.flagged:
        return "repaired"
    return "answered"


def classify_response(outcome: Outcome) -> ClassifyResponse:
    manifest = outcome.model_set.manifest
    classes = manifest.classes
    rule = outcome.rule
    results = [
        ImageResultBody(
            index=r.index,
            filename=r.filename,
            flagged=r.flagged,
            predicted=_ref(classes, r.predicted),
            detriggered=None if r.detriggered is None else _ref(classes, r.detriggered),
            detector=rule.detector,
            score=r.score,
            score_name=rule.score_name,
            threshold=rule.threshold,
            decision_rule=rule.rule,
            strip_entropy=r.entropy,
            strip_threshold=rule.strip_threshold,
            repaired_score=r.repaired_score,
            repaired_threshold=rule.repaired_threshold,
            fired=list(r.fired),
            outcome=_outcome(outcome.mode, r),
            answer=None if r.answer is None else _ref(classes, r.answer),
        )
        for r in outcome.results
    ]
    return ClassifyResponse(
        model=manifest.name,
        mode=outcome.mode,
        detector=rule.detector,
        flagged=sum(r.flagged for r in results),
        blocked=sum(r.answer is None for r in results),
        results=results,
    )


class GraphSummary(BaseModel):
    file: str
    sha256: str
    provider: str | None


class InputSummary(BaseModel):
    height: int
    width: int
    channels: int
    shape: list[int] = Field(description="(C, H, W) of one image; the batch dimension is dynamic.")


class DecisionSummary(BaseModel):
    rule: str
    score: str
    threshold: float


class StripSummary(BaseModel):
    """The manifest's optional `detectors.strip` entry (training.evaluation.strip)."""

    n: int = Field(description="Superimposed copies per image (N + 1 target rows per image).")
    bank_images: int = Field(description="Clean validation images the copies are drawn from.")
    threshold: float = Field(description="Flagged when the mean entropy (bits) is below this.")
    target_fpr: float | None = Field(default=None, description="The FPR it was set for.")


class BothSummary(BaseModel):
    """The manifest's optional `detectors.both` entry (training.evaluation.fusion)."""

    rule: str = Field(description="either: flagged when either detector's own rule fires.")
    score: str = Field(description="The de-trigger score it thresholds (prob_drop or kl).")
    ae_threshold: float = Field(description="Flagged when the de-trigger score is above this.")
    strip_threshold: float = Field(description="Flagged when STRIP's entropy is below this.")
    target_fpr: float | None = Field(default=None, description="The FPR it was set for.")


class RepairedSummary(BaseModel):
    """The manifest's optional `detectors.repaired` entry (contract.manifest.RepairedSpec)."""

    file: str
    sha256: str
    provider: str | None
    score: str = Field(description="prob_drop or kl of the target against the repaired graph.")
    threshold: float = Field(description="Flagged when the score is above this.")
    target_fpr: float | None = Field(default=None, description="The FPR it was set for.")


class DetriggerOrRepairedSummary(BaseModel):
    """The manifest's optional `detectors.detrigger_or_repaired` entry
    (training.evaluation.fusion)."""

    rule: str = Field(description="either: flagged when either detector's own rule fires.")
    score: str = Field(description="The de-trigger score it thresholds (prob_drop or kl).")
    ae_threshold: float = Field(description="Flagged when the de-trigger score is above this.")
    repaired_score: str = Field(description="The repaired graph's score (prob_drop or kl).")
    repaired_threshold: float = Field(
        description="Flagged when the repaired graph's score is above this."
    )
    target_fpr: float | None = Field(default=None, description="The FPR it was set for.")


class AuditSummary(BaseModel):
    """The manifest's optional `audit` entry (training/audit: trigger synthesis)."""

    flagged: bool
    target_classes: list[int] = Field(description="Classes flagged as backdoor targets.")
    repair: str | None = Field(
        default=None,
        description="'unlearning' or 'pruning' when the target was repaired; null otherwise.",
    )
    report: str | None = None


class ModelSummary(BaseModel):
    name: str
    default: bool
    state: Literal["loading", "ready", "failed"]
    reason: str
    description: str | None = None
    classes: list[str] | None = None
    input: InputSummary | None = None
    decision: DecisionSummary | None = None
    detectors: list[Detector] | None = Field(
        default=None,
        description="Detectors the set offers: detrigger, strip if calibrated, both if "
        "their fused rule is calibrated too, repaired if the set has a calibrated "
        "repaired graph, and detrigger_or_repaired if the fused rule of the two is calibrated "
        "too.",
    )
    default_detector: Detector | None = Field(
        default=None,
        description="The detector of a request that names none (mode flag or block): "
        "GUARD_DEFAULT_DETECTOR where the set offers it, else the set's own default, else "
        "detrigger.",
    )
    strip: StripSummary | None = None
    both: BothSummary | None = None
    repaired: RepairedSummary | None = None
    detrigger_or_repaired: DetriggerOrRepairedSummary | None = None
    provider: str | None = None
    target: GraphSummary | None = None
    detrigger: GraphSummary | None = None
    audit: AuditSummary | None = None


class ModelsResponse(BaseModel):
    models: list[ModelSummary]


def model_summary(slot: Slot, default: bool, detector: Detector | None = None) -> ModelSummary:
    """What /v1/models says of a set; ``detector``: GUARD_DEFAULT_DETECTOR."""
    summary = ModelSummary(
        name=slot.name, default=default, state=slot.state.value, reason=slot.reason
    )
    model_set = slot.model_set
    if model_set is None:
        return summary
    m = model_set.manifest
    summary.description = m.description
    summary.classes = m.classes
    summary.input = InputSummary(
        height=m.input.height,
        width=m.input.width,
        channels=m.input.channels,
        shape=list(model_set.input_chw),
    )
    summary.decision = DecisionSummary(
        rule=m.decision.rule, score=m.decision.score, threshold=m.decision.threshold
    )
    summary.detectors = list(model_set.detectors)
    summary.default_detector = model_set.default_detector(detector)
    strip = m.detectors.strip
    if strip is not None and model_set.strip is not None:
        summary.strip = StripSummary(
            n=strip.n,
            bank_images=len(model_set.strip.bank),
            threshold=strip.threshold,
            target_fpr=strip.calibration.target_fpr if strip.calibration else None,
        )
    both = m.detectors.both
    if both is not None and Detector.both in model_set.detectors:
        summary.both = BothSummary(
            rule=both.rule,
            score=both.score,
            ae_threshold=both.ae_threshold,
            strip_threshold=both.strip_threshold,
            target_fpr=both.calibration.target_fpr if both.calibration else None,
        )
    repaired = m.detectors.repaired
    if repaired is not None and model_set.repaired is not None:
        summary.repaired = RepairedSummary(
            file=repaired.file,
            sha256=repaired.sha256,
            provider=model_set.repaired.provider,
            score=repaired.score,
            threshold=repaired.threshold,
            target_fpr=repaired.calibration.target_fpr if repaired.calibration else None,
        )
    fused = m.detectors.detrigger_or_repaired
    if fused is not None and repaired is not None and model_set.repaired is not None:
        summary.detrigger_or_repaired = DetriggerOrRepairedSummary(
            rule=fused.rule,
            score=fused.score,
            ae_threshold=fused.ae_threshold,
            repaired_score=repaired.score,
            repaired_threshold=fused.repaired_threshold,
            target_fpr=fused.calibration.target_fpr if fused.calibration else None,
        )
    summary.provider = model_set.provider
    summary.target = GraphSummary(
        file=m.target.file, sha256=m.target.sha256, provider=model_set.target.provider
    )
    summary.detrigger = GraphSummary(
        file=m.detrigger.file, sha256=m.detrigger.sha256, provider=model_set.detrigger.provider
    )
    extra = m.model_extra or {}
    audit = extra.get("audit")
    if isinstance(audit, dict) and "flagged" in audit:
        repair = extra.get("repair")
        summary.audit = AuditSummary(
            flagged=bool(audit["flagged"]),
            target_classes=[int(c) for c in audit.get("target_classes", [])],
            repair=repair.get("method") if isinstance(repair, dict) else None,
            report=audit.get("report"),
        )
    return summary


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool
    models: dict[str, str] = Field(description="Each model set's state: 'ready' or the reason.")


class ErrorDetail(BaseModel):
    type: str
    message: str
    accepted: str


class ErrorBody(BaseModel):
    error: ErrorDetail
    request_id: str | None
