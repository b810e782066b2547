"""A model set: manifest + verified target and de-trigger sessions, run as one unit."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.errors import DetectorNotAvailable, ModelFailed, ModelLoadError
from contract.fusion import both_batch, both_scores, decide_both, decide_detrigger_or_repaired
from contract.manifest import (
    BothSpec,
    DetriggerOrRepairedSpec,
    Manifest,
    RepairedSpec,
    read_manifest,
    read_verified,
)
from contract.modes import Detector
from contract.scoring import Decisions, Rule, decide
from contract.strip import Strip
from contract.unchanged import changed_rows, pair_rows, second_pass
from service import tracing
from service.runtime.aligned import aligned_model
from service.runtime.fused import AE_PREFIX, LOGITS, CannotFuse, FusedModel, check_parity, fuse
from service.runtime.onnx import OnnxModel
from service.settings import Settings

logger = logging.getLogger("guard.models")


@dataclass(frozen=True)
class Scored:
    """A batch's decisions with the target's logits on x and on AE(x), each (N, K); STRIP
    runs no AE, so its logits_ae is None."""

    decisions: Decisions
    logits_x: np.ndarray
    logits_ae: np.ndarray | None = None
    images_ae: np.ndarray | None = None  # (N, C, H, W) AE(x), kept for the quarantine

    def slice(self, start: int, stop: int) -> Scored:
        return Scored(
            self.decisions.slice(start, stop),
            self.logits_x[start:stop],
            None if self.logits_ae is None else self.logits_ae[start:stop],
            None if self.images_ae is None else self.images_ae[start:stop],
        )

    @staticmethod
    def concat(parts: Sequence[Scored]) -> Scored:
        ae = [p.logits_ae for p in parts if p.logits_ae is not None]
        images = [p.images_ae for p in parts if p.images_ae is not None]
        return Scored(
            Decisions.concat([p.decisions for p in parts]),
            np.concatenate([p.logits_x for p in parts]),
            np.concatenate(ae) if len(ae) == len(parts) else None,
            np.concatenate(images) if len(images) == len(parts) else None,
        )


@dataclass(frozen=True)
class Rows:
    """One array of per-image rows of a batch, what proxy mode runs locally: AE(x), (N, C, H, W)
    float32 in [0, 1], or the repaired graph's logits, (N, K)."""

    values: np.ndarray

    def slice(self, start: int, stop: int) -> Rows:
        return Rows(self.values[start:stop])

    @staticmethod
    def concat(parts: Sequence[Rows]) -> Rows:
        return Rows(np.concatenate([p.values for p in parts]))


@dataclass(frozen=True)
class AeAndRepaired:
    """What proxy mode runs locally for detector detrigger_or_repaired: AE(x) and the repaired
    graph's logits on x, row for row."""

    ae: Rows
    repaired: Rows

    def slice(self, start: int, stop: int) -> AeAndRepaired:
        return AeAndRepaired(self.ae.slice(start, stop), self.repaired.slice(start, stop))

    @staticmethod
    def concat(parts: Sequence[AeAndRepaired]) -> AeAndRepaired:
        return AeAndRepaired(
            Rows.concat([p.ae for p in parts]), Rows.concat([p.repaired for p in parts])
        )


@dataclass
class ModelSet:
    folder: Path
    manifest: Manifest
    target: OnnxModel
    detrigger: OnnxModel
    strip: Strip | None = None
    repaired: OnnxModel | None = None  # detector repaired's graph (detectors.repaired)
    # AE and target joined in one graph (service/runtime/fused.py); None: two calls
    fused: FusedModel | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def input_chw(self) -> tuple[int, int, int]:
        spec = self.manifest.input
        return spec.channels, spec.height, spec.width

    @property
    def provider(self) -> str:
        if self.target.provider == self.detrigger.provider:
            return self.target.provider
        return f"{self.target.provider}+{self.detrigger.provider}"

    @classmethod
    def load(cls, folder: Path, settings: Settings) -> ModelSet:
        """Verify and load the graphs; any failure raises ModelLoadError naming the file.

        Nothing is returned until every session is built and checked, so a half-loaded set
        can never be served.
        """
        manifest = read_manifest(folder)
        models: dict[str, OnnxModel] = {}
        verified: dict[str, bytes] = {}
        for role in ("target", "detrigger"):
            spec = getattr(manifest, role)
            verified[role] = data = read_verified(folder, spec)
            models[role] = OnnxModel.load(
                str(folder / spec.file), data, spec.input_name, spec.output_name, settings
            )
        repaired = manifest.detectors.repaired
        if repaired is not None:
            models["repaired"] = OnnxModel.load(
                str(folder / repaired.file),
                read_verified(folder, repaired),
                repaired.input_name,
                repaired.output_name,
                settings,
            )
        model_set = cls(folder, manifest, models["target"], models["detrigger"])
        model_set.repaired = models.get("repaired")
        model_set._check_shapes()
        c, h, w = model_set.input_chw
        probe = np.random.default_rng(0).random((4, c, h, w), dtype=np.float32)
        model_set.detrigger, ae_bytes = aligned_model(
            model_set.detrigger, verified["detrigger"], settings, probe
        )
        model_set.fused = model_set._fuse(ae_bytes, verified["target"], settings)
        strip_spec = manifest.detectors.strip
        if strip_spec is not None:
            model_set.strip = Strip.load(folder, strip_spec, model_set.input_chw)
        return model_set

    @property
    def detectors(self) -> tuple[Detector, ...]:
        """The detectors this set offers: always the de-trigger AE, STRIP when calibrated, and
        both when the manifest has their fused calibration too; repaired with a repaired
        graph, and detrigger_or_repaired when the manifest has that fused calibration too."""
        offered = [Detector.detrigger]
        if self.strip is not None:
            offered.append(Detector.strip)
            if self.manifest.detectors.both is not None:
                offered.append(Detector.both)
        if self.repaired is not None:
            offered.append(Detector.repaired)
            if self.manifest.detectors.detrigger_or_repaired is not None:
                offered.append(Detector.detrigger_or_repaired)
        return tuple(offered)

    def default_detector(self, configured: Detector | None) -> Detector:
        """The detector of a request that names none: ``configured`` (GUARD_DEFAULT_DETECTOR)
        where this set offers it, else the set's own (the manifest's detectors.default), else
        detrigger."""
        for chosen in (configured, self.manifest.detectors.default):
            if chosen is not None and chosen in self.detectors:
                return chosen
        return Detector.detrigger

    def rule(self, detector: Detector) -> Rule:
        """What results report beside a detector's score."""
        if detector is Detector.both:
            both = self.manifest.detectors.both
            assert both is not None, "resolve the detector against ModelSet.detectors first"
            return Rule(detector, both.score, both.ae_threshold, "either", both.strip_threshold)
        if detector is Detector.repaired:
            repaired = self.manifest.detectors.repaired
            assert repaired is not None, "resolve the detector against ModelSet.detectors first"
            return Rule(detector, repaired.score, repaired.threshold, "score")
        if detector is Detector.detrigger_or_repaired:
            fused, repaired = self.require_detrigger_or_repaired()
            return Rule(
                detector,
                fused.score,
                fused.ae_threshold,
                "either",
                repaired_threshold=fused.repaired_threshold,
                repaired_score_name=repaired.score,
            )
        if detector is Detector.strip:
            spec = self.manifest.detectors.strip
            assert spec is not None, "resolve the detector against ModelSet.detectors first"
            return Rule(detector, "strip_entropy", spec.threshold, "score_below")
        d = self.manifest.decision
        return Rule(detector, d.score, d.threshold, d.rule)

    def _check_shapes(self) -> None:
        c, h, w = self.input_chw
        graphs = (self.target, self.detrigger) + (() if self.repaired is None else (self.repaired,))
        for model in graphs:
            shape = model.input_shape()
            fixed = [d if isinstance(d, int) else None for d in shape]
            if len(fixed) != 4 or any(
                want is not None and have is not None and have != want
                for have, want in zip(fixed[1:], (c, h, w), strict=True)
            ):
                raise ModelLoadError(
                    f"{model.name}: input shape {shape} does not match the manifest "
                    f"(N, {c}, {h}, {w})"
                )

    def _fuse(self, detrigger: bytes, target: bytes, settings: Settings) -> FusedModel | None:
        """The joined graph, built from the verified bytes, when it gives the two calls'
        outputs bit for bit; else None (logged), and the set runs two calls."""
        d, t = self.manifest.detrigger, self.manifest.target
        try:
            data = fuse(
                detrigger, (d.input_name, d.output_name), target, (t.input_name, t.output_name)
            )
            model = OnnxModel.load(
                f"{d.file}+{t.file}", data, AE_PREFIX + d.input_name, LOGITS, settings
            )
        except (CannotFuse, ModelLoadError) as exc:
            logger.warning(
                "AE and target stay two calls", extra={"model": self.name, "why": str(exc)}
            )
            return None
        fused = FusedModel(model)
        c, h, w = self.input_chw
        probe = np.random.default_rng(0).random((2, c, h, w), dtype=np.float32)
        # and the AE's own output, which a gated AE (contract/unchanged.py) is likely to return
        # unchanged: the joined graph's skip is checked on both kinds of row
        probe = np.concatenate([probe, self.detrigger.run(probe).astype(np.float32, copy=False)])
        if not check_parity(fused, self.detrigger, self.target, probe):
            logger.warning(
                "AE and target stay two calls",
                extra={"model": self.name, "why": "the joined graph's outputs differ"},
            )
            return None
        return fused

    def _logits(self, model: OnnxModel, logits: np.ndarray, rows: int) -> np.ndarray:
        """``model``'s output, checked to be ``rows`` rows of logits over the set's classes;
        ModelFailed otherwise."""
        k = len(self.manifest.classes)
        if logits.shape != (rows, k):
            raise ModelFailed(f"{model.name}: logits {logits.shape}, expected ({rows}, {k})")
        return logits

    def detrigger_only(self, x: np.ndarray) -> Rows:
        """AE(x) alone; proxy mode sends [x; AE(x)] to the upstream target."""
        with tracing.span("ae", model=self.name, images=x.shape[0]):
            x_ae = self.detrigger.run(x).astype(np.float32, copy=False)
        if x_ae.shape != x.shape:
            raise ModelFailed(f"{self.detrigger.name}: output {x_ae.shape} != input {x.shape}")
        return Rows(x_ae)

    def repaired_only(self, x: np.ndarray) -> Rows:
        """The repaired graph's logits on x, (N, K); proxy mode sends x alone to the upstream
        target."""
        self.require(Detector.repaired)
        assert self.repaired is not None
        with tracing.span("repaired", model=self.name, images=x.shape[0]):
            logits = self.repaired.run(x)
        return Rows(self._logits(self.repaired, logits, x.shape[0]))

    def repaired_scored(self, x: np.ndarray) -> Scored:
        """Detector repaired: the target and the repaired graph, each once on x."""
        spec = self.manifest.detectors.repaired
        logits_r = self.repaired_only(x).values
        assert spec is not None
        with tracing.span("target", model=self.name, detector="repaired", images=x.shape[0]):
            logits_x = self._logits(self.target, self.target.run(x), x.shape[0])
        return Scored(decide(logits_x, logits_r, spec.decision), logits_x, logits_r)

    def require_detrigger_or_repaired(self) -> tuple[DetriggerOrRepairedSpec, RepairedSpec]:
        """The fused rule of detector detrigger_or_repaired and the repaired graph's entry;
        DetectorNotAvailable without them."""
        self.require(Detector.detrigger_or_repaired)
        detectors = self.manifest.detectors
        assert detectors.detrigger_or_repaired is not None and detectors.repaired is not None
        return detectors.detrigger_or_repaired, detectors.repaired

    def ae_and_repaired(self, x: np.ndarray) -> AeAndRepaired:
        """AE(x) and the repaired graph's logits on x; proxy mode sends [x; AE(x)] to the
        upstream target."""
        self.require(Detector.detrigger_or_repaired)
        return AeAndRepaired(self.detrigger_only(x), self.repaired_only(x))

    def detrigger_or_repaired_scored(self, x: np.ndarray) -> Scored:
        """Detector detrigger_or_repaired: the de-trigger pass (:meth:`infer_scored`) and the
        repaired graph on x; ``logits_ae`` holds the logits of mode repair's answer."""
        fused, repaired = self.require_detrigger_or_repaired()
        scored = self.infer_scored(x)
        assert scored.logits_ae is not None
        logits_r = self.repaired_only(x).values
        decisions, answer = decide_detrigger_or_repaired(
            scored.logits_x, scored.logits_ae, logits_r, fused, repaired
        )
        return Scored(decisions, scored.logits_x, answer, scored.images_ae)

    def infer_scored(self, x: np.ndarray) -> Scored:
        """The decisions and both logits: AE once, then the target once on x and the images that
        AE(x) changed (an unchanged image's second pass would repeat its first); one ONNX
        Runtime call of the joined graph where the set has one."""
        n = x.shape[0]
        if self.fused is not None:
            with tracing.span("ae_target", model=self.name, images=n):
                logits, x_ae, changed = self.fused.run(x)  # (N + M, K), (N, C, H, W), (N,)
            if x_ae.shape != x.shape:
                raise ModelFailed(f"{self.detrigger.name}: output {x_ae.shape} != input {x.shape}")
        else:
            x_ae = self.detrigger_only(x).values
            changed = changed_rows(x, x_ae)
            batch = second_pass(x, x_ae, changed)
            with tracing.span("target", model=self.name, images=batch.shape[0]):
                logits = self.target.run(batch)  # (N + M, K)
        # M of the N images changed by the AE: run twice
        logits = self._logits(self.target, logits, n + int(changed.sum()))
        logits = logits[pair_rows(changed)]  # (2N, K): an unchanged image's second row is its first
        return Scored(
            decide(logits[:n], logits[n:], self.manifest.decision), logits[:n], logits[n:], x_ae
        )

    def require_strip(self) -> Strip:
        """The set's STRIP detector; DetectorNotAvailable when its manifest has none."""
        if self.strip is None:
            raise DetectorNotAvailable(
                f"model set {self.name!r} does not offer detector 'strip' (its manifest has no "
                "detectors.strip)",
                accepted=f"detector one of {[d.value for d in self.detectors]} for model set "
                f"{self.name!r}",
            )
        return self.strip

    def require(self, detector: Detector) -> None:
        """DetectorNotAvailable unless this set offers ``detector``."""
        if detector in self.detectors:
            return
        entry = f"detectors.{detector.value}"
        raise DetectorNotAvailable(
            f"model set {self.name!r} does not offer detector {detector.value!r} (its manifest "
            f"has no {entry})",
            accepted=f"detector one of {[d.value for d in self.detectors]} for model set "
            f"{self.name!r}",
        )

    def require_both(self) -> tuple[Strip, BothSpec]:
        """STRIP and the fused rule of detector both; DetectorNotAvailable without them."""
        self.require(Detector.both)
        assert self.strip is not None and self.manifest.detectors.both is not None
        return self.strip, self.manifest.detectors.both

    def both_scored(self, x: np.ndarray) -> Scored:
        """Detector both: AE once, then the target once on [x; AE(x); STRIP's copies]."""
        strip, spec = self.require_both()
        n = x.shape[0]
        x_ae = self.detrigger_only(x).values
        with tracing.span("target", model=self.name, detector="both", images=n):
            logits = self.target.run(both_batch(x, x_ae, strip))  # (B * (n + 2), K)
        logits = self._logits(self.target, logits, n * (strip.config.n + 2))
        logits_x, logits_ae, entropy = both_scores(logits, n, strip.config.n)
        return Scored(decide_both(logits_x, logits_ae, entropy, spec), logits_x, logits_ae, x_ae)

    def strip_scored(self, x: np.ndarray) -> Scored:
        """STRIP's decisions and the logits on x: the target once on [x; n copies of each]."""
        strip = self.require_strip()
        n = x.shape[0]
        with tracing.span("target", model=self.name, detector="strip", images=n):
            logits = self.target.run(strip.batch(x))  # (B * (n + 1), K)
        logits = self._logits(self.target, logits, n * (strip.config.n + 1))
        decisions, logits_x = strip.decide(logits, n)
        return Scored(decisions, logits_x)

    def warm_up(self, batch_sizes: tuple[int, ...]) -> None:
        """Run every batch size of every detector once, so that the first request pays no
        allocation or tuning cost."""
        c, h, w = self.input_chw
        rng = np.random.default_rng(0)
        for size in batch_sizes:
            x = rng.random((size, c, h, w), dtype=np.float32)
            self.infer_scored(x)
            if self.strip is not None:
                self.strip_scored(x)
            if Detector.both in self.detectors:
                self.both_scored(x)
            if self.repaired is not None:
                self.repaired_scored(x)
            if Detector.detrigger_or_repaired in self.detectors:
                self.detrigger_or_repaired_scored(x)
