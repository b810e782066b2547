"""A user's ONNX image classifier, read and wrapped so that it takes the model contract's input.

The contract (docs/model-contract.md) feeds a set's target.onnx float32 NCHW images in [0, 1]
with a dynamic batch axis and reads one (N, K) output of logits. A user's graph may take NHWC,
uint8 or normalised input, a fixed batch, give probabilities, or have several outputs.
`inspect_target` reads what the graph takes; `wrap_target` puts a few nodes in front of the
graph (scale, normalise, transpose, cast) and behind it (log of probabilities) by graph surgery,
so the set's target.onnx takes the contract's input, or it raises TargetError naming the option
that fixes the problem.

Where the graph says it unambiguously, the options default from it: the layout from where the
1 or 3 channels sit, a scale of 255 for a uint8 input. A float graph that expects 0..255 or
normalised input cannot say so: --scale, --mean and --std are the user's to give.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LAYOUTS = ("auto", "NCHW", "NHWC")
OUTPUT_KINDS = ("auto", "logits", "probabilities")
INPUT_NAME, OUTPUT_NAME = "images", "logits"
PROB_TOL = 1e-3  # rows of a softmax output sum to 1 within this


class TargetError(ValueError):
    """A target graph that cannot be wrapped as given; the message names the option that fixes
    it where one does."""


@dataclass
class TargetOptions:
    """How to read the user's graph; None means "from the graph"."""

    layout: str = "auto"
    mean: tuple[float, ...] | None = None  # per channel, applied after --scale
    std: tuple[float, ...] | None = None
    scale: float | None = None  # multiply [0, 1] images by this first (255 for 0..255 graphs)
    output: str | None = None  # which output, for a graph with several
    output_kind: str = "auto"  # logits | probabilities | auto (from a forward pass)
    size: tuple[int, int] | None = None  # (H, W) for a graph whose H and W are dynamic


@dataclass
class TargetInfo:
    """What the wrapped target takes and gives."""

    input_name: str  # the user's graph's input
    output_name: str  # the user's graph's output in use
    dtype: str  # numpy name of the graph's input type
    layout: str  # NCHW | NHWC
    channels: int
    height: int
    width: int
    batch: int | str  # a fixed batch size, or the name of the dynamic axis
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    output_kind: str = "logits"
    classes: int = 0
    notes: list[str] = field(default_factory=list)  # what was assumed, for the report

    @property
    def chw(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width


def _dims(value_info) -> list[int | str]:
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in value_info.type.tensor_type.shape.dim
    ]


def _graph_inputs(model) -> list:
    """The graph's real inputs (initializers listed as inputs by old exporters left out)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _layout(dims: list[int | str], layout: str) -> str:
    if layout != "auto":
        return layout
    c_first, c_last = dims[1] in (1, 3), dims[3] in (1, 3)
    if c_first and not c_last:
        return "NCHW"
    if c_last and not c_first:
        return "NHWC"
    if c_first and c_last:  # e.g. a 3x3 image: keep the contract's order, but say so
        return "NCHW"
    raise TargetError(
        f"cannot tell the layout of input shape {dims}: neither dim 1 nor dim 3 is 1 or 3 "
        "channels; pass --layout NCHW or --layout NHWC"
    )


def inspect_target(path: Path, opts: TargetOptions) -> TargetInfo:
    """Read the graph's input and output; TargetError when it is no image classifier we can
    wrap, naming the option that fixes it."""
    import onnx
    from onnx import helper

    if opts.layout not in LAYOUTS:
        raise TargetError(f"--layout {opts.layout!r}: allowed: {', '.join(LAYOUTS)}")
    if opts.output_kind not in OUTPUT_KINDS:
        raise TargetError(f"--output-kind {opts.output_kind!r}: allowed: {', '.join(OUTPUT_KINDS)}")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise TargetError(f"{path}: not a readable ONNX model ({exc})") from exc
    inputs = _graph_inputs(model)
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise TargetError(f"{path}: the graph takes {len(inputs)} inputs {names}; it must take one")
    inp = inputs[0]
    dims = _dims(inp)
    if len(dims) != 4:
        raise TargetError(
            f"{path}: input {inp.name!r} has shape {dims}; an image classifier takes a 4-d "
            "batch (N, C, H, W) or (N, H, W, C)"
        )
    layout = _layout(dims, opts.layout)
    c, h, w = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    if c not in (1, 3):
        raise TargetError(
            f"{path}: input {inp.name!r} {dims} read as {layout} has {c} channels; the guard "
            f"takes 1 or 3 (pass --layout {'NHWC' if layout == 'NCHW' else 'NCHW'} if the "
            "layout is the other one)"
        )
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        if opts.size is None:
            raise TargetError(
                f"{path}: input {inp.name!r} {dims} has a dynamic height or width; pass --size "
                "HxW (e.g. --size 32x32)"
            )
        h, w = opts.size
    elif opts.size is not None and tuple(opts.size) != (h, w):
        raise TargetError(f"--size {opts.size} differs from the graph's fixed {h}x{w}")
    elem = inp.type.tensor_type.elem_type
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem)).name
    if dtype not in ("float32", "float16", "float64", "uint8"):
        raise TargetError(f"{path}: input {inp.name!r} is {dtype}; supported: float or uint8")
    notes = []
    scale = opts.scale
    if scale is None:
        scale = 255.0 if dtype == "uint8" else 1.0
        if dtype == "uint8":
            notes.append("uint8 input: images scaled by 255 (--scale 255)")
    elif dtype == "uint8" and scale != 255.0:
        raise TargetError(f"{path}: a uint8 input takes 0..255 pixels; pass --scale 255")
    if opts.layout == "auto":
        notes.append(f"layout {layout} read from the input shape {dims}")
    mean = tuple(opts.mean) if opts.mean else (0.0,) * c
    std = tuple(opts.std) if opts.std else (1.0,) * c
    for name, v in (("--mean", mean), ("--std", std)):
        if len(v) not in (1, c):
            raise TargetError(f"{name} gives {len(v)} values; the graph has {c} channels")
    mean, std = (mean * c)[:c] if len(mean) == 1 else mean, (std * c)[:c] if len(std) == 1 else std
    if any(s <= 0 for s in std):
        raise TargetError(f"--std {std}: every value must be positive")
    if dtype == "uint8" and (any(mean) or any(s != 1 for s in std)):
        raise TargetError("a uint8 input cannot take --mean/--std (the graph normalises itself)")
    outputs = [o.name for o in model.graph.output]
    if opts.output is None:
        if len(outputs) != 1:
            raise TargetError(
                f"{path}: the graph has {len(outputs)} outputs {outputs}; pass --output NAME "
                "naming the one with the class scores"
            )
        out = outputs[0]
    elif opts.output not in outputs:
        raise TargetError(f"--output {opts.output!r}: the graph's outputs are {outputs}")
    else:
        out = opts.output
    batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else (dims[0] or "batch")
    return TargetInfo(
        inp.name, out, dtype, layout, int(c), int(h), int(w), batch, scale, mean, std, notes=notes
    )


def _const(name: str, array: np.ndarray):
    from onnx import helper, numpy_helper

    return helper.make_node(
        "Constant", [], [name], value=numpy_helper.from_array(array, name=name + "_value")
    )


def _prefix_nodes(info: TargetInfo, src: str, dst: str) -> list:
    """Nodes from the contract's float32 NCHW [0, 1] tensor `src` to the user's input `dst`."""
    from onnx import TensorProto, helper

    nodes, cur, c = [], src, info.channels

    def step(op: str, name: str, *extra: str, **attrs) -> None:
        nonlocal cur
        out = f"guard_{name}"
        nodes.append(helper.make_node(op, [cur, *extra], [out], **attrs))
        cur = out

    if info.scale != 1.0:
        nodes.append(_const("guard_scale_c", np.array(info.scale, np.float32)))
        step("Mul", "scaled", "guard_scale_c")
    if any(info.mean):
        nodes.append(_const("guard_mean_c", np.array(info.mean, np.float32).reshape(1, c, 1, 1)))
        step("Sub", "centred", "guard_mean_c")
    if any(s != 1 for s in info.std):
        nodes.append(_const("guard_std_c", np.array(info.std, np.float32).reshape(1, c, 1, 1)))
        step("Div", "normalised", "guard_std_c")
    if info.layout == "NHWC":
        step("Transpose", "nhwc", perm=[0, 2, 3, 1])
    if info.dtype == "uint8":
        nodes.append(_const("guard_lo", np.array(0.0, np.float32)))
        nodes.append(_const("guard_hi", np.array(255.0, np.float32)))
        step("Round", "rounded")
        step("Clip", "clipped", "guard_lo", "guard_hi")
        step("Cast", "u8", to=TensorProto.UINT8)
    elif info.dtype != "float32":
        to = {"float16": TensorProto.FLOAT16, "float64": TensorProto.DOUBLE}[info.dtype]
        step("Cast", "cast", to=to)
    nodes.append(helper.make_node("Identity", [cur], [dst]))
    return nodes


def _suffix_nodes(info: TargetInfo, src: str, dst: str) -> list:
    """Nodes from the user's output `src` to float32 logits `dst` (log-probabilities for a
    probability output, so that softmax gives the probabilities back)."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", [src], ["guard_out_f32"], to=TensorProto.FLOAT)]
    if info.output_kind == "probabilities":
        nodes.append(_const("guard_eps", np.array(1e-12, np.float32)))
        nodes.append(helper.make_node("Max", ["guard_out_f32", "guard_eps"], ["guard_p"]))
        nodes.append(helper.make_node("Log", ["guard_p"], [dst]))
    else:
        nodes.append(helper.make_node("Identity", ["guard_out_f32"], [dst]))
    return nodes


def _surgery(path: Path, info: TargetInfo):
    """The user's graph with the contract's input `images` and output `logits`, batch dynamic."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name for i in g.initializer}
    for inp in [i for i in g.input if i.name not in inits]:
        g.input.remove(inp)
    g.input.append(
        helper.make_tensor_value_info(
            INPUT_NAME, TensorProto.FLOAT, ["batch", info.channels, info.height, info.width]
        )
    )
    # The user's input and output tensors get names of ours, so that theirs may be `images`
    # or `logits` too (SSA: a name is written once).
    renames = {info.input_name: "guard_user_input", info.output_name: "guard_user_output"}
    body = list(g.node)
    for node in body:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                names[i] = renames.get(name, name)
    del g.node[:]
    g.node.extend(_prefix_nodes(info, INPUT_NAME, "guard_user_input"))
    g.node.extend(body)
    g.node.extend(_suffix_nodes(info, "guard_user_output", OUTPUT_NAME))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", None]))
    # Shapes inferred for a fixed batch would contradict the dynamic one: let ORT infer again.
    del g.value_info[:]
    for opset in model.opset_import:  # Round needs opset 11, Clip with inputs too
        if opset.domain in ("", "ai.onnx") and opset.version < 11:
            raise TargetError(
                f"{path}: opset {opset.version} is older than 11; re-export the model with "
                "opset 11 or newer"
            )
    onnx.checker.check_model(model)
    return model


def _session(data: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def wrap_target(path: Path, opts: TargetOptions, out: Path, sample: np.ndarray) -> TargetInfo:
    """Write the wrapped graph to `out` and return what it takes. `sample`: a few float32
    images (N, C, H, W) in [0, 1] of the user's data (N >= 3), run through the wrapped graph to
    check it serves batches of 1, 2 and 3, and to tell logits from probabilities."""
    info = inspect_target(path, opts)
    if sample.shape[1:] != info.chw:
        raise TargetError(f"sample images {sample.shape[1:]} do not match the graph {info.chw}")
    # Read the output once as logits, to see what it is.
    model = _surgery(path, info)
    try:
        sess = _session(model.SerializeToString())
    except Exception as exc:
        raise TargetError(f"{path}: ONNX Runtime cannot load the wrapped graph: {exc}") from exc
    outs = {}
    for n in (1, 2, 3):
        x = np.ascontiguousarray(sample[:n], np.float32)
        try:
            (y,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x})
        except Exception as exc:
            fixed = f" (the graph was exported for batch {info.batch})" if info.batch != 1 else ""
            raise TargetError(
                f"{path}: the graph does not run on a batch of {n}{fixed}: its batch axis "
                "cannot be made dynamic (e.g. a Reshape with a constant batch). Re-export it "
                f"with a dynamic batch axis. ONNX Runtime said: {exc}"
            ) from exc
        if y.ndim != 2 or y.shape[0] != n:
            raise TargetError(
                f"{path}: output {info.output_name!r} has shape {y.shape} for a batch of {n}; "
                "the guard needs (N, classes) class scores (pass --output NAME for another "
                "output)"
            )
        outs[n] = y
    y = outs[3]
    info.classes = int(y.shape[1])
    if info.classes < 2:
        raise TargetError(f"{path}: output {info.output_name!r} gives {info.classes} class")
    if opts.output_kind == "auto":
        probs = bool(
            np.all(y >= 0) and np.all(y <= 1) and np.allclose(y.sum(1), 1.0, atol=PROB_TOL)
        )
        info.output_kind = "probabilities" if probs else "logits"
        info.notes.append(
            f"output {info.output_name!r} read as {info.output_kind}"
            + (" (rows sum to 1): converted to log-probabilities" if probs else "")
        )
    else:
        info.output_kind = opts.output_kind
    if info.output_kind == "probabilities":
        model = _surgery(path, info)
    if isinstance(info.batch, int) and info.batch > 0:
        info.notes.append(f"fixed batch {info.batch} made dynamic")
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return info
