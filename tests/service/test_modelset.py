import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from contract.errors import ModelLoadError
from service.runtime.modelset import ModelSet
from service.runtime.onnx import (
    provider_in_use,
    requested_providers,
    session_options,
    trt_cache_folder,
    with_options,
)
from service.settings import Settings
from tests.support.tiny_models import TinySpec, add_trigger, build_model_set, clean_image


def settings(**kw: object) -> Settings:
    return Settings(models=[Path("unused")], **kw)  # type: ignore[arg-type]


def copy_set(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_loads_and_detects_the_trigger(tiny_set: Path) -> None:
    spec = TinySpec()
    ms = ModelSet.load(tiny_set, settings())
    assert ms.name == "tiny" and ms.input_chw == (1, 28, 28)
    clean = np.stack([clean_image(spec, k, seed=k) for k in range(1, 10)])
    triggered = np.stack([add_trigger(im) for im in clean])
    x = np.concatenate([clean, triggered])[:, None].astype(np.float32) / 255.0
    d = ms.infer_scored(x).decisions
    assert d.predicted.tolist() == list(range(1, 10)) + [0] * 9
    assert d.detriggered.tolist() == list(range(1, 10)) * 2
    assert d.flagged.tolist() == [False] * 9 + [True] * 9
    assert (d.score[9:] > 0.9).all() and (np.abs(d.score[:9]) < 1e-3).all()


def test_cpu_fallback_when_gpu_providers_are_preferred(tiny_set: Path) -> None:
    # This machine has no GPU: TensorRT and CUDA are preferred but what actually loaded is CPU.
    s = settings()
    assert s.providers[0] == "TensorrtExecutionProvider"
    ms = ModelSet.load(tiny_set, s)
    assert ms.provider == "CPUExecutionProvider"
    assert ms.target.session.get_providers()[-1] == "CPUExecutionProvider"


def test_cpu_fallback_with_a_trt_cache_makes_no_cache(tiny_set: Path, tmp_path: Path) -> None:
    # TensorRT preferred, its cache set, but not installed here: the set loads on the CPU and
    # nothing is written into the cache folder.
    cache = tmp_path / "trt"
    ms = ModelSet.load(tiny_set, settings(trt_cache_dir=cache))
    assert ms.provider == "CPUExecutionProvider"
    assert not cache.exists()


def test_trt_gets_a_cache_folder_per_graph_and_the_others_none(tmp_path: Path) -> None:
    pref = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    s = settings(trt_cache_dir=tmp_path / "trt")
    a, b = with_options(pref, s, b"graph a"), with_options(pref, s, b"graph b")
    assert [name for name, _ in a] == pref
    assert a[1:] == [("CUDAExecutionProvider", {}), ("CPUExecutionProvider", {})]
    trt = a[0][1]
    folder = Path(trt["trt_engine_cache_path"])
    assert trt["trt_engine_cache_enable"] == trt["trt_timing_cache_enable"] == "True"
    assert trt["trt_timing_cache_path"] == str(folder) and folder.is_dir()
    # Named by the runtime's version and the bytes: another graph of the same architecture
    # (another AE's weights) gets another folder, the same bytes the same one.
    assert folder.parent == tmp_path / "trt" / f"ort-{ort.__version__}"
    assert Path(b[0][1]["trt_engine_cache_path"]) != folder
    assert with_options(pref, s, b"graph a") == a
    # Without a cache folder TensorRT gets no options (ORT's defaults: no engine cache).
    assert with_options(pref, settings(), b"graph a")[0] == ("TensorrtExecutionProvider", {})


def test_a_trt_cache_that_cannot_be_made_is_a_load_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ModelLoadError, match="GUARD_TRT_CACHE_DIR: cannot make"):
        trt_cache_folder(blocker / "trt", b"graph")


def test_provider_choice_follows_preference_not_installation() -> None:
    pref = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    # Installed but not loaded (e.g. CUDA libraries missing) does not count.
    assert provider_in_use(["CPUExecutionProvider"], pref) == "CPUExecutionProvider"
    assert provider_in_use(["CUDAExecutionProvider", "CPUExecutionProvider"], pref) == (
        "CUDAExecutionProvider"
    )
    assert (
        provider_in_use(
            ["CPUExecutionProvider", "TensorrtExecutionProvider", "CUDAExecutionProvider"], pref
        )
        == "TensorrtExecutionProvider"
    )
    assert requested_providers(pref, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert requested_providers(pref, ort.get_available_providers())[-1] == "CPUExecutionProvider"


def test_session_options_come_from_settings() -> None:
    opts = session_options(
        settings(intra_op_threads=3, inter_op_threads=2, graph_optimization="basic")
    )
    assert opts.intra_op_num_threads == 3
    assert opts.inter_op_num_threads == 2
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


def test_sha256_mismatch_names_the_file(tiny_set: Path, tmp_path: Path) -> None:
    folder = copy_set(tiny_set, tmp_path / "set")
    with (folder / "detrigger.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelLoadError) as err:
        ModelSet.load(folder, settings())
    assert "detrigger.onnx" in err.value.message and "sha256 mismatch" in err.value.message


def test_missing_file_names_the_file(tiny_set: Path, tmp_path: Path) -> None:
    folder = copy_set(tiny_set, tmp_path / "set")
    (folder / "target.onnx").unlink()
    with pytest.raises(ModelLoadError) as err:
        ModelSet.load(folder, settings())
    assert "target.onnx" in err.value.message and "not found" in err.value.message


def test_corrupt_file_with_matching_sha_names_the_file(tiny_set: Path, tmp_path: Path) -> None:
    # The manifest agrees with the bytes, but the bytes are not an ONNX model.
    spec = TinySpec()
    folder = build_model_set(tmp_path / "set", spec)
    (folder / "target.onnx").write_bytes(b"not a protobuf at all" * 10)
    manifest = json.loads((folder / "manifest.json").read_text())
    import hashlib

    manifest["target"]["sha256"] = hashlib.sha256((folder / "target.onnx").read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError) as err:
        ModelSet.load(folder, settings())
    assert "target.onnx" in err.value.message and "cannot load" in err.value.message


def test_manifest_shape_must_match_the_graph(tiny_set: Path, tmp_path: Path) -> None:
    folder = copy_set(tiny_set, tmp_path / "set")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["input"]["height"] = 32
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError) as err:
        ModelSet.load(folder, settings())
    assert "does not match the manifest" in err.value.message


@pytest.mark.parametrize(
    "change",
    [
        {"target": None},
        {"input": {"height": 28, "width": 28, "channels": 2}},
        {"decision": {"rule": "vote"}},
        {
            "detrigger": {
                "file": "../evil.onnx",
                "sha256": "0" * 64,
                "input_name": "a",
                "output_name": "b",
            }
        },
    ],
)
def test_invalid_manifest_is_refused(tiny_set: Path, tmp_path: Path, change: dict) -> None:
    folder = copy_set(tiny_set, tmp_path / "set")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(change)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError) as err:
        ModelSet.load(folder, settings())
    assert "manifest.json" in err.value.message
