"""Static int8 quantisation of a de-trigger AE graph with ONNX Runtime (issue 20, candidate (a)):
QDQ format, activations uint8 and weights int8 (per output channel), the activation ranges
calibrated on clean training images of the dataset (never the validation split the thresholds
are set on, nor the test split).

    python -m training.quantize_ae --dataset mnist --ae models/mnist/detrigger.onnx \\
        --out runs/mnist/detrigger_int8.onnx

The graph is first pre-processed (shape inference and ONNX Runtime's graph optimisation,
onnxruntime.quantization.shape_inference.quant_pre_process), then quantised. --ops conv
quantises only Conv and ConvTranspose (the mask, fill and output arithmetic stay float); the
default quantises every operator ONNX Runtime's quantiser supports. Which operators ONNX Runtime
then runs as int8 kernels is its choice at session start: the command prints the optimised
graph's operator counts (QLinearConv is an int8 convolution; a ConvTranspose between
DequantizeLinear and QuantizeLinear runs in float).

Beside --out it writes a JSON: the source graph and its sha256, the settings, the calibration
images, the largest difference from the float AE on clean validation images, and the source's
`autoencoder` config (from the json beside the source, or the model set's manifest) so that
training.detection_report and training.ae_candidates name its training triggers.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from training import cli, config, evidence
from training.data.datasets import load_dataset, split_train_val
from training.nets.manifest_file import sha256

OP_CHOICES = {"all": None, "conv": ["Conv", "ConvTranspose"]}


def source_autoencoder(ae: Path) -> dict[str, Any]:
    """The training config of the float AE: from the json beside it (training.train_detrigger
    --export), else from the manifest of the model set it lies in; {} when neither says."""
    beside = ae.with_suffix(".json")
    if beside.is_file():
        return dict(json.loads(beside.read_text()).get("autoencoder") or {})
    manifest = ae.parent / "manifest.json"
    if manifest.is_file():
        raw = json.loads(manifest.read_text())
        training = raw.get("training") or {}
        arch = (raw.get("detrigger") or {}).get("architecture", "")
        swap = (training.get("detrigger_swap") or {}).get("autoencoder")
        if swap:
            return dict(swap)
        for cfg in (training.get("autoencoders") or {}).values():
            if cfg.get("arch") == arch and cfg.get("triggers") == "random":
                return dict(cfg)
    return {}


def calibration_images(dataset: str, n: int, seed: int, data_dir: str | None) -> np.ndarray:
    """n clean training images (the target's training split, not its validation split), float32
    (N, C, H, W) in [0, 1], drawn with `seed`."""
    preset = config.PRESETS[dataset]
    train = load_dataset(dataset, "train", data_dir)
    tr, _ = split_train_val(len(train), preset.target.val_size, preset.target.seed)
    pick = np.sort(np.random.default_rng(seed).choice(tr, size=min(n, len(tr)), replace=False))
    return train.images[pick].astype(np.float32) / np.float32(255.0)


def validation_images(dataset: str, n: int, data_dir: str | None) -> np.ndarray:
    preset = config.PRESETS[dataset]
    train = load_dataset(dataset, "train", data_dir)
    _, va = split_train_val(len(train), preset.target.val_size, preset.target.seed)
    return train.images[va[:n]].astype(np.float32) / np.float32(255.0)


def session(path: Path, threads: int = 1, optimised: Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if optimised is not None:
        options.optimized_model_filepath = str(optimised)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def op_counts(path: Path) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in onnx.load(str(path)).graph.node).items()))


def quantize(
    src: Path,
    out: Path,
    images: np.ndarray,
    ops: str = "all",
    per_channel: bool = True,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Write the QDQ int8 graph of `src` to `out`, its activation ranges calibrated on `images`
    (MinMax); returns the operator counts before, after and as ONNX Runtime runs it."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(str(src)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                {input_name: images[i : i + batch_size]} for i in range(0, len(images), batch_size)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=OP_CHOICES[ops],
            per_channel=per_channel,
        )
        runtime = Path(tmp) / "runtime.onnx"
        session(out, optimised=runtime)
        return {
            "source": op_counts(src),
            "quantised": op_counts(out),
            "onnx_runtime_optimised": op_counts(runtime),
        }


def max_difference(a: Path, b: Path, x: np.ndarray) -> dict[str, float]:
    """Largest and mean absolute pixel difference between two AE graphs on images x."""
    sa, sb = session(a), session(b)
    ya = sa.run(None, {sa.get_inputs()[0].name: x})[0]
    yb = sb.run(None, {sb.get_inputs()[0].name: x})[0]
    diff = np.abs(np.asarray(ya) - np.asarray(yb))
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "images": int(len(x))}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = cli.parser(__doc__, "training.quantize_ae")
    cli.add_dataset(p, "whose clean training images calibrate the ranges")
    p.add_argument("--ae", required=True, help="the float AE graph (an ONNX file)")
    p.add_argument("--out", required=True, help="the int8 graph to write (an ONNX file)")
    p.add_argument(
        "--ops",
        default="all",
        choices=sorted(OP_CHOICES),
        help="all: every operator the quantiser supports; conv: Conv and ConvTranspose only "
        "(default: all)",
    )
    p.add_argument(
        "--per-tensor",
        action="store_true",
        help="one weight scale per tensor instead of per output channel (default: per channel)",
    )
    p.add_argument(
        "--calibration-images",
        type=int,
        default=1024,
        help="clean training images the activation ranges are measured on (default: 1024)",
    )
    p.add_argument("--seed", type=int, default=0, help="which calibration images (default: 0)")
    args = p.parse_args(argv)
    src, out = Path(args.ae), Path(args.out)
    if not src.is_file():
        p.error(f"--ae {src}: no such file")
    images = calibration_images(args.dataset, args.calibration_images, args.seed, args.data_dir)
    ops = quantize(src, out, images, args.ops, not args.per_tensor)
    check = max_difference(src, out, validation_images(args.dataset, 256, args.data_dir))
    info = {
        "dataset": args.dataset,
        "source": {"file": str(src), "sha256": sha256(src)},
        "detrigger": {"file": str(out), "sha256": sha256(out)},
        "quantisation": {
            "format": "QDQ",
            "activations": "uint8",
            "weights": "int8",
            "per_channel": not args.per_tensor,
            "ops": args.ops,
            "calibration": {
                "method": "MinMax",
                "images": int(len(images)),
                "from": "training split",
                "seed": args.seed,
            },
            "difference_from_float_on_validation": check,
            "operators": ops,
        },
        "autoencoder": source_autoencoder(src),
        "versions": evidence.versions(("onnx", "onnxruntime", "numpy")),
    }
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    print(
        f"{out} written: int8 QDQ ({args.ops}); ONNX Runtime runs "
        f"{ops['onnx_runtime_optimised']}; largest pixel difference from the float AE on "
        f"{check['images']} validation images {check['max_abs']:.4f} (mean {check['mean_abs']:.5f})"
    )
    return info


if __name__ == "__main__":
    main()
