"""The de-trigger detector's two graphs as one: AE, then the target on ``[x; AE(x)]``.

Built at load time, with the ``onnx`` library, from the very bytes whose sha256 the manifest
vouches for (nothing new is written to disk, so the contract's hashes keep naming what runs):

    x -> AE -> x_ae;  changed = any(x_ae != x) per image;
    concat([x, x_ae[changed]], axis 0) -> target -> logits (N + M, K);
    outputs logits, x_ae, changed

Rows that the AE returned bit for bit unchanged are not run twice (contract/unchanged.py).

One ONNX Runtime call instead of two, and no numpy concatenation between them: at batch 1 on
the MNIST set, 1.34 times the images/s of the two calls, 30% less CPU per image (the same at
batch 64), and bit-identical logits. A pair that cannot be joined (different opset versions of
one domain) keeps the two calls; so does a joined graph whose outputs differ by a single bit
from the two calls' on the load-time check (:func:`check_parity`), so that a decision never
depends on which path ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, compose, helper

from contract.unchanged import changed_rows, reduce_per_image, second_pass
from service.runtime.onnx import OnnxModel

AE_PREFIX = "ae/"
TARGET_PREFIX = "target/"
LOGITS = "guard_logits"
DETRIGGERED = "guard_detriggered"
CHANGED = "guard_changed"
PAIR = "guard_pair"


class CannotFuse(ValueError):
    """The two graphs cannot be joined into one; the set keeps two calls."""


def _opsets(*models: onnx.ModelProto) -> list[onnx.OperatorSetIdProto]:
    versions: dict[str, int] = {}
    for model in models:
        for opset in model.opset_import:
            seen = versions.setdefault(opset.domain, opset.version)
            if seen != opset.version:
                raise CannotFuse(
                    f"opset {opset.domain or 'ai.onnx'} {seen} and {opset.version} differ"
                )
    return [helper.make_opsetid(domain, version) for domain, version in versions.items()]


def _renamed(
    outputs: Sequence[onnx.ValueInfoProto], name: str, new_name: str
) -> onnx.ValueInfoProto:
    """The graph output ``name``'s type, under ``new_name``."""
    found = [o for o in outputs if o.name == name]
    if not found:
        raise CannotFuse(f"no graph output {name!r}")
    out = onnx.ValueInfoProto()
    out.CopyFrom(found[0])
    out.name = new_name
    return out


def fuse(
    detrigger: bytes, detrigger_io: tuple[str, str], target: bytes, target_io: tuple[str, str]
) -> bytes:
    """The joined graph's bytes: input AE_PREFIX + the AE's input name, outputs LOGITS (2N, K)
    and DETRIGGERED (N, C, H, W). ``*_io``: each graph's (input name, output name)."""
    try:
        ae = compose.add_prefix(onnx.load_from_string(detrigger), AE_PREFIX)
        tg = compose.add_prefix(onnx.load_from_string(target), TARGET_PREFIX)
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... on what it cannot read
        raise CannotFuse(f"onnx cannot read the graphs: {exc}") from exc
    if ae.graph.sparse_initializer or tg.graph.sparse_initializer or ae.functions or tg.functions:
        raise CannotFuse("sparse initializers or local functions are not joined")
    ae_in, ae_out = (AE_PREFIX + name for name in detrigger_io)
    tg_in, tg_out = (TARGET_PREFIX + name for name in target_io)
    initialised = {i.name for i in tg.graph.initializer}
    x = [i for i in ae.graph.input if i.name == ae_in]
    if not x:
        raise CannotFuse(f"the AE has no input {detrigger_io[0]!r}")
    opsets = _opsets(ae, tg)
    opset = next((o.version for o in opsets if o.domain in ("", "ai.onnx")), 0)
    rank = len(x[0].type.tensor_type.shape.dim) or 4
    nodes = [
        *ae.graph.node,
        helper.make_node("Identity", [ae_out], [DETRIGGERED]),
        # changed: not every element of AE(x) equal to x's (NaN != NaN: a NaN row is changed)
        helper.make_node("Equal", [ae_out, ae_in], ["guard_equal"]),
        helper.make_node("Cast", ["guard_equal"], ["guard_equal_int"], to=TensorProto.INT32),
        *reduce_per_image(
            "ReduceMin", "guard_equal_int", "guard_all_equal", rank, opset, "guard_all_equal"
        ),
        helper.make_node("Reshape", ["guard_all_equal", "guard_rows"], ["guard_same"]),
        helper.make_node("Cast", ["guard_same"], ["guard_same_bool"], to=TensorProto.BOOL),
        helper.make_node("Not", ["guard_same_bool"], [CHANGED]),
        helper.make_node("Compress", [ae_out, CHANGED], ["guard_changed_images"], axis=0),
        helper.make_node("Concat", [ae_in, "guard_changed_images"], [PAIR], axis=0),
        helper.make_node("Identity", [PAIR], [tg_in]),
        *tg.graph.node,
        helper.make_node("Identity", [tg_out], [LOGITS]),
    ]
    changed = helper.make_tensor_value_info(CHANGED, TensorProto.BOOL, ["N"])
    rows = helper.make_tensor("guard_rows", TensorProto.INT64, [1], [-1])
    graph = helper.make_graph(
        nodes,
        "detrigger_guard",
        # The target's other inputs, if any, are its initialisers (graphs of older IR versions).
        [*x, *(i for i in tg.graph.input if i.name in initialised)],
        [_renamed(tg.graph.output, tg_out, LOGITS), _renamed(ae.graph.output, ae_out, DETRIGGERED),
         changed],
        initializer=[*ae.graph.initializer, *tg.graph.initializer, rows],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = max(ae.ir_version, tg.ir_version)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise CannotFuse(f"the joined graph does not check: {exc}") from exc
    return model.SerializeToString()


@dataclass
class FusedModel:
    """The joined graph's session; :meth:`run` gives (logits (N + M, K) on x and the M changed
    rows of AE(x), AE(x) (N, C, H, W), changed (N,) bool)."""

    model: OnnxModel

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        session = self.model.session
        logits, x_ae, changed = session.run(
            [LOGITS, DETRIGGERED, CHANGED], {self.model.input_name: x}
        )
        return np.asarray(logits), np.asarray(x_ae), np.asarray(changed, dtype=bool)


def check_parity(fused: FusedModel, detrigger: OnnxModel, target: OnnxModel, x: np.ndarray) -> bool:
    """Whether the joined graph gives the two calls' outputs on ``x``, bit for bit; ``x``
    should hold an image that the AE changes and, where the AE has a gate, one it does not."""
    logits, x_ae, changed = fused.run(x)
    want_ae = detrigger.run(x).astype(np.float32, copy=False)
    want_changed = changed_rows(x, want_ae)
    want_logits = target.run(second_pass(x, want_ae, want_changed))
    return all(
        got.shape == want.shape and np.array_equal(got, want, equal_nan=True)
        for got, want in ((logits, want_logits), (x_ae, want_ae), (changed, want_changed))
    )
