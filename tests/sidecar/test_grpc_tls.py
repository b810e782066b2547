"""V2 over gRPC with TLS: the real tritonclient[grpc] with ``ssl=True`` against a real guard
whose gRPC server has a certificate made in the test session (trustme, on the cryptography
package); client certificates required with GUARD_GRPC_TLS_CLIENT_CA (mTLS); and a guard in
proxy mode calling a grpcs:// upstream that it trusts through the upstream's ``ca_file``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg
import trustme
from tritonclient.utils import InferenceServerException

from service.api.v2_grpc import server_credentials
from service.settings import Settings, Upstream
from tests.support.server import RunningServer, serve
from tests.support.tiny_models import TinySpec, add_trigger, clean_image

pytestmark = pytest.mark.slow
SPEC = TinySpec()


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the server's and the client's certificates
    cert: Path  # the server's: 127.0.0.1 and localhost
    key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed neither


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("guard-test-client")
    paths = Pki(*(folder / n for n in ("ca.pem", "cert.pem", "key.pem", "client.pem",
                                       "client-key.pem", "other-ca.pem")))  # fmt: skip
    ca.cert_pem.write_to_path(str(paths.ca))
    server.cert_chain_pems[0].write_to_path(str(paths.cert))
    server.private_key_pem.write_to_path(str(paths.key))
    client.cert_chain_pems[0].write_to_path(str(paths.client_cert))
    client.private_key_pem.write_to_path(str(paths.client_key))
    other.cert_pem.write_to_path(str(paths.other_ca))
    return paths


def tls_env(pki: Pki, **extra: str) -> dict[str, str]:
    return {
        "GUARD_INTRA_OP_THREADS": "1",
        "GUARD_GRPC_TLS_CERT": str(pki.cert),
        "GUARD_GRPC_TLS_KEY": str(pki.key),
        **extra,
    }


@pytest.fixture(scope="module")
def tls_server(tiny_set: Path, pki: Pki) -> Iterator[RunningServer]:
    with serve([tiny_set], tls_env(pki)) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(tiny_set: Path, pki: Pki) -> Iterator[RunningServer]:
    with serve([tiny_set], tls_env(pki, GUARD_GRPC_TLS_CLIENT_CA=str(pki.ca))) as server:
        yield server


def images() -> np.ndarray:
    """A triggered image of class 3 and a clean one of class 6: (2, 1, 28, 28) in [0, 1]."""
    x = [add_trigger(clean_image(SPEC, 3)), clean_image(SPEC, 6, seed=2)]
    return (np.stack(x)[:, None] / 255.0).astype(np.float32)


def infer(target: str, **tls: object) -> dict:
    inp = tg.InferInput("images", [2, 1, 28, 28], "FP32")
    inp.set_data_from_numpy(images())  # raw_input_contents
    with tg.InferenceServerClient(target, **tls) as client:  # type: ignore[arg-type]
        result = client.infer("tiny", [inp], client_timeout=20)
    return result.get_response(as_json=True)["parameters"]


def test_tls_client_gets_the_verdict(tls_server: RunningServer, pki: Pki) -> None:
    params = infer(tls_server.grpc_target, ssl=True, root_certificates=str(pki.ca))
    assert params["guard_flagged"]["string_param"] == "[true, false]"
    assert params["guard_detriggered_class"]["string_param"] == "[3, 6]"


def test_a_plaintext_client_is_refused(tls_server: RunningServer) -> None:
    with (
        tg.InferenceServerClient(tls_server.grpc_target) as client,
        pytest.raises(InferenceServerException),
    ):
        client.is_server_live(client_timeout=5)


def test_a_client_that_trusts_another_ca_is_refused(tls_server: RunningServer, pki: Pki) -> None:
    with pytest.raises(InferenceServerException):
        infer(tls_server.grpc_target, ssl=True, root_certificates=str(pki.other_ca))


def test_mtls_needs_a_client_certificate(mtls_server: RunningServer, pki: Pki) -> None:
    with pytest.raises(InferenceServerException):
        infer(mtls_server.grpc_target, ssl=True, root_certificates=str(pki.ca))
    params = infer(
        mtls_server.grpc_target,
        ssl=True,
        root_certificates=str(pki.ca),
        private_key=str(pki.client_key),
        certificate_chain=str(pki.client_cert),
    )
    assert params["guard_flagged"]["string_param"] == "[true, false]"


def proxy_env(upstream: RunningServer, ca: Path) -> dict[str, str]:
    config = {
        "tiny": {
            "url": f"grpcs://{upstream.grpc_target}",
            "model": "tiny",
            "protocol": "grpc",
            "ca_file": str(ca),
        }
    }
    return {
        "GUARD_UPSTREAMS": json.dumps(config),
        "GUARD_UPSTREAM_PROBE_INTERVAL_S": "0.3",
        "GUARD_INTRA_OP_THREADS": "1",
    }


def test_proxy_mode_calls_a_grpcs_upstream(
    tls_server: RunningServer, tiny_set: Path, pki: Pki
) -> None:
    with serve([tiny_set], proxy_env(tls_server, pki.ca)) as front:
        params = infer(front.grpc_target)  # the caller's transport is the front's own
    assert params["guard_flagged"]["string_param"] == "[true, false]"
    assert params["guard_detriggered_class"]["string_param"] == "[3, 6]"


def test_proxy_mode_refuses_an_upstream_its_ca_did_not_sign(
    tls_server: RunningServer, tiny_set: Path, pki: Pki
) -> None:
    with serve([tiny_set], proxy_env(tls_server, pki.other_ca), wait_ready=False) as front:
        reason = front.readiness_reason("tiny", "UNAVAILABLE")  # loaded, then probed
        with pytest.raises(InferenceServerException) as refused:
            infer(front.grpc_target)
    assert "CERTIFICATE_VERIFY_FAILED" in reason  # the probe says why: the handshake
    assert refused.value.status() == "StatusCode.UNAVAILABLE"
    assert "CERTIFICATE_VERIFY_FAILED" in refused.value.message()


# --- settings -------------------------------------------------------------------------------
def test_a_key_that_does_not_match_its_certificate_stops_the_start(pki: Pki) -> None:
    settings = Settings(grpc_tls_cert=pki.cert, grpc_tls_key=pki.client_key)
    with pytest.raises(RuntimeError, match="key matching the certificate"):
        server_credentials(settings)
    assert server_credentials(Settings()) is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"grpc_tls_cert": "cert"}, "go together"),
        ({"grpc_tls_client_ca": "ca"}, "needs GUARD_GRPC_TLS_CERT"),
    ],
)
def test_tls_settings_refuse_half_a_configuration(
    fields: dict[str, str], message: str, pki: Pki
) -> None:
    files = {"cert": pki.cert, "ca": pki.ca}
    with pytest.raises(ValueError, match=message):
        Settings(**{k: files[v] for k, v in fields.items()})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "extra", "message"),
    [
        ("grpc://127.0.0.1:1", {"ca_file": "ca"}, "are for a grpcs:// upstream"),
        ("grpcs://127.0.0.1:1", {"cert_file": "cert"}, "go together"),
        ("grpcs://127.0.0.1:1/v2", {}, "without a path"),
    ],
)
def test_upstream_tls_settings(url: str, extra: dict[str, str], message: str, pki: Pki) -> None:
    files = {"cert": pki.cert, "ca": pki.ca}
    with pytest.raises(ValueError, match=message):
        Upstream(url=url, model="m", protocol="grpc", **{k: files[v] for k, v in extra.items()})
    ok = Upstream(url="grpcs://10.0.0.1:8001", model="m", protocol="grpc", ca_file=pki.ca)
    assert ok.grpc_tls() and ok.grpc_target() == "10.0.0.1:8001"
