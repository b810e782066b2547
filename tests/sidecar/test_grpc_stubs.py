"""The committed gRPC stubs are what grpcio-tools makes from the committed proto, and they can
be imported beside tritonclient's (which define the same protocol names)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.protocol.grpc import generate

ORIGINAL = Path(generate.__file__).resolve().parent
STUBS = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2.pyi", "grpc_predict_v2_pb2_grpc.py")


def test_committed_stubs_are_regenerated_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("grpc_tools")
    repo = tmp_path / "repo"
    here = repo / "service" / "protocol" / "grpc"
    here.mkdir(parents=True)
    shutil.copy(generate.PROTO, here / generate.PROTO.name)
    monkeypatch.setattr(generate, "REPO", repo)
    monkeypatch.setattr(generate, "HERE", here)
    monkeypatch.setattr(generate, "PROTO", here / generate.PROTO.name)
    monkeypatch.setattr(generate, "PB2", here / "grpc_predict_v2_pb2.py")
    assert generate.main() == 0
    for name in STUBS:
        assert (here / name).read_text() == (ORIGINAL / name).read_text(), name


def test_stubs_live_beside_tritonclient() -> None:
    from tritonclient.grpc import service_pb2

    from service.protocol.grpc import grpc_predict_v2_pb2 as pb

    ours = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"\x00\x01"])
    ours.parameters["guard_mode"].string_param = "block"
    theirs = service_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.model_name == "m"
    assert theirs.parameters["guard_mode"].string_param == "block"
    assert list(theirs.raw_input_contents) == [b"\x00\x01"]
