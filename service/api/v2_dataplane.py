"""The V2 data plane: decode -> guard (local or proxy backend) -> encode. Knows nothing about
HTTP: the REST routes parse bodies into :class:`InferRequest` and write back what this returns.

The response carries the target's outputs for the images as given (in proxy mode: the
upstream's own outputs, rows 0..N-1 of its answer) and the guard's verdict under
``parameters``. Mode ``repair`` swaps in the rows for the de-triggered copies of flagged images;
mode ``block`` refuses a request with a flagged image (Blocked, 403). The request parameter
``guard_detector`` (``detrigger``, ``strip``, ``both`` or ``repaired``) chooses the detector.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

from contract.errors import Blocked, InvalidParameter, InvalidRequest, UnknownModel
from contract.modes import Detector, Mode
from service import tracing
from service.api.v2_images import files_from_tensor, image_accepts, images_from_tensor
from service.backends.base import Call, Detection
from service.backends.proxy import ProxyBackend
from service.guard import Guard, fired
from service.logs import request_id_var
from service.protocol.infer_type import InferRequest, InferResponse, boolean
from service.repository import ModelRepository, Slot
from service.runtime.modelset import ModelSet

SERVER_NAME = "detrigger-guard"
EXTENSIONS = ["binary_tensor_data"]
# Request parameters the guard reads itself; they are not passed on to an upstream.
GUARD_PARAMETERS = (
    "guard_mode",
    "guard_detector",
    "guard_resize",
    "layout",
    "binary_data_output",
)

E = TypeVar("E", bound=enum.Enum)


def _enum_parameter(request: InferRequest, key: str, kind: type[E]) -> E | None:
    """parameters[key] as a member of ``kind``; None when absent. An unknown value is a 400."""
    value = request.parameters.get(key)
    if value is None:
        return None
    try:
        return kind(value)
    except ValueError as exc:
        raise InvalidParameter(
            f"parameters.{key} {value!r} is not allowed",
            accepted=f"{key} one of {[m.value for m in kind]}",
        ) from exc


class DataPlane:
    def __init__(self, guard: Guard, repository: ModelRepository, version: str) -> None:
        self.guard = guard
        self.repository = repository
        self.version = version

    # --- health and metadata --------------------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": self.version, "extensions": EXTENSIONS}

    def ready(self) -> bool:
        return self.repository.readiness()[0]

    def _slot(self, name: str, version: str | None) -> Slot:
        """A model set by its name, or by its upstream's model name in proxy mode; a version,
        when named, must be one its backend answers to."""
        slot = self.repository.find(name)
        if version is not None and slot.engine is not None:
            versions = slot.engine.backend.versions
            if version not in versions:
                raise UnknownModel(
                    f"model {name!r} has no version {version!r}",
                    accepted=f"versions {list(versions)} or none",
                )
        return slot

    def model_ready(self, name: str, version: str | None) -> bool:
        slot = self._slot(name, version)
        if slot.engine is None:
            return False
        return slot.engine.backend.readiness()[0]

    def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        slot = self._slot(name, version)
        model_set, engine = self.repository.resolve(slot.name)
        backend = engine.backend
        c, h, w = model_set.input_chw
        manifest = model_set.manifest
        meta: dict[str, Any] = {
            "name": name,
            "versions": list(backend.versions),
            "platform": f"{SERVER_NAME}_{backend.mode}",
            "inputs": [
                {"name": manifest.target.input_name, "datatype": "FP32", "shape": [-1, c, h, w]}
            ],
            "outputs": [
                {
                    "name": manifest.target.output_name,
                    "datatype": "FP32",
                    "shape": [-1, len(manifest.classes)],
                }
            ],
            "parameters": {
                "guard_model_set": model_set.name,
                "guard_mode": self.guard.settings.default_mode.value,
                "guard_detector": self.guard.detector_for(
                    model_set, None, self.guard.settings.default_mode
                ).value,
                "guard_detectors": json.dumps([d.value for d in model_set.detectors]),
                "guard_accepts": image_accepts(model_set.input_chw),
            },
        }
        if isinstance(backend, ProxyBackend):
            upstream = backend.upstream
            meta["inputs"][0]["name"] = upstream.input_name()
            if upstream.metadata and upstream.metadata.get("outputs"):
                meta["outputs"] = upstream.metadata["outputs"]
            meta["parameters"]["guard_upstream"] = upstream.config.url
            meta["parameters"]["guard_upstream_model"] = upstream.config.model
        return meta

    # --- inference ------------------------------------------------------------------------
    async def infer(
        self,
        name: str,
        version: str | None,
        request: InferRequest,
        headers: Mapping[str, str],
    ) -> InferResponse:
        slot = self._slot(name, version)
        model_set, engine = self.repository.resolve(slot.name)
        mode = _enum_parameter(request, "guard_mode", Mode) or self.guard.settings.default_mode
        detector = self.guard.detector_for(
            model_set, _enum_parameter(request, "guard_detector", Detector), mode
        )
        if len(request.inputs) != 1:
            raise InvalidRequest(
                f"{len(request.inputs)} inputs; the guard takes exactly one image input",
                accepted=image_accepts(model_set.input_chw),
            )
        resize = boolean(request.parameters.get("guard_resize", False), "parameters.guard_resize")
        tensor = request.inputs[0]
        if not tensor.shape or tensor.shape[0] == 0:
            raise InvalidRequest(
                f"input {tensor.name!r} holds no images (shape {tensor.shape})",
                accepted=image_accepts(model_set.input_chw),
            )
        self.guard.check_count(tensor.shape[0])
        if tensor.datatype == "BYTES":
            files = files_from_tensor(tensor, model_set.input_chw)
            x = await self.guard.decode(files, model_set, resize)
        else:
            started = time.perf_counter()
            with tracing.span("decode", model=slot.name, images=tensor.shape[0]):
                x = await self.guard.offload(
                    images_from_tensor, tensor, request, model_set.input_chw,
                    nbytes=tensor.data.nbytes,
                )  # fmt: skip
            self.guard.metrics.observe_stage("decode", time.perf_counter() - started, slot.name)
        passed_on = {k: v for k, v in request.parameters.items() if k not in GUARD_PARAMETERS}
        call = Call(headers, request.id or request_id_var.get(), passed_on)
        detection = await self.guard.detect(x, engine, model_set, mode, call, detector)
        return response_of(name, request, model_set, mode, detection)


def response_of(
    name: str,
    request: InferRequest,
    model_set: ModelSet,
    mode: Mode,
    detection: Detection,
) -> InferResponse:
    """The V2 answer to ``request`` from its detection: block refuses, repair swaps rows, and
    the verdict goes into the parameters."""
    d = detection.decisions
    n = len(d)
    flagged = [bool(f) for f in d.flagged]
    if mode is Mode.block and any(flagged):
        where = [i for i, f in enumerate(flagged) if f]
        if d.fired is not None:
            names = [[x.value for x in fired(d, i, detection.detector)] for i in where]
            why = f"(detectors that fired: {names})"
        elif d.detriggered is not None:
            after = (
                "on the repaired graph"
                if detection.detector is Detector.repaired
                else "after de-triggering"
            )
            why = (
                f"(class {[int(d.predicted[i]) for i in where]} before and "
                f"{[int(d.detriggered[i]) for i in where]} {after})"
            )
        else:
            why = (
                f"(class {[int(d.predicted[i]) for i in where]}, STRIP entropy "
                f"{[round(float(d.score[i]), 6) for i in where]} below the threshold)"
            )
        raise Blocked(f"mode block: image(s) {where} of {n} carry a backdoor trigger {why}")
    outputs = detection.outputs
    if request.outputs is not None:
        by_name = {t.name: t for t in outputs}
        missing = [o.name for o in request.outputs if o.name not in by_name]
        if missing:
            raise InvalidRequest(
                f"no outputs named {missing}", accepted=f"outputs among {sorted(by_name)}"
            )
        outputs = [by_name[o.name] for o in request.outputs]
    # Row i of each output: f(x_i), or for a flagged image under repair f(AE(x_i)) (detector
    # repaired: the repaired graph's logits on x_i; detrigger_or_repaired: those where the
    # repaired graph's rule fired).
    rows = np.arange(n)
    if mode is Mode.repair and any(flagged):
        rows = np.where(np.asarray(flagged), rows + n, rows)
        unrepaired = [t.name for t in outputs if t.shape[:1] != [2 * n]]
        if unrepaired:
            # Proxy mode, detector repaired or detrigger_or_repaired: only the logits output
            # has the repaired rows.
            kept = sorted({t.name for t in outputs} - set(unrepaired))
            raise InvalidParameter(
                f"mode repair with detector {detection.detector.value}: no repaired rows for "
                f"outputs {unrepaired} (the upstream's own outputs; the repaired graph gives "
                "only the logits)",
                accepted=f"outputs {kept} in the request, or mode flag or block",
            )
    outputs = [t.take_rows(rows) for t in outputs]
    # An upstream's own guard_* parameters (a guard in front of a guard) give way to ours.
    parameters = {k: v for k, v in detection.parameters.items() if not k.startswith("guard_")}
    parameters.update(verdict(model_set, mode, d, detection.detector))
    return InferResponse(
        model_name=name,
        outputs=outputs,
        model_version=detection.model_version,
        id=request.id,
        parameters=parameters,
    )


def verdict(
    model_set: ModelSet, mode: Mode, d: Any, detector: Detector = Detector.detrigger
) -> dict[str, Any]:
    """The guard's verdict as V2 parameters. The protocol allows only scalar parameter values,
    so the per-image lists are JSON text (``json.loads`` gives the list back). STRIP runs no
    AE, so its verdict has no ``guard_detriggered_class``; detector both adds STRIP's scores
    and its threshold, detrigger_or_repaired the repaired graph's, and both, per image, the
    detectors that fired."""
    flagged = [bool(f) for f in d.flagged]
    rule = model_set.rule(detector)
    out = {
        "guard_model_set": model_set.name,
        "guard_mode": mode.value,
        "guard_detector": detector.value,
        "guard_flagged_count": sum(flagged),
        "guard_flagged": json.dumps(flagged),
        "guard_score_name": rule.score_name,
        "guard_threshold": rule.threshold,
        "guard_scores": json.dumps([round(float(s), 6) for s in d.score]),
        "guard_predicted_class": json.dumps([int(c) for c in d.predicted]),
        "guard_repaired": json.dumps([f and mode is Mode.repair for f in flagged]),
    }
    if d.detriggered is not None:
        out["guard_detriggered_class"] = json.dumps([int(c) for c in d.detriggered])
    if d.entropy is not None and rule.strip_threshold is not None:
        out["guard_strip_scores"] = json.dumps([round(float(s), 6) for s in d.entropy])
        out["guard_strip_threshold"] = rule.strip_threshold
    if d.repaired_score is not None and rule.repaired_threshold is not None:
        out["guard_repaired_scores"] = json.dumps([round(float(s), 6) for s in d.repaired_score])
        out["guard_repaired_threshold"] = rule.repaired_threshold
    if d.fired is not None:
        out["guard_fired"] = json.dumps(
            [[x.value for x in fired(d, i, detector)] for i in range(len(flagged))]
        )
    return out
