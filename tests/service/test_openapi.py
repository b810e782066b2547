from pathlib import Path

import httpx
import pytest
import yaml
from openapi_spec_validator import validate

from service.main import create_app
from service.settings import Settings
from tests.support.server import RunningServer

SPEC = Path(__file__).resolve().parents[2] / "openapi.yaml"


def committed() -> dict:
    return yaml.safe_load(SPEC.read_text())


def test_openapi_yaml_is_valid_and_matches_the_app() -> None:
    spec = committed()
    validate(spec)
    app_spec = create_app(Settings(models=[Path("models/mnist")])).openapi()
    assert spec == app_spec, "openapi.yaml is stale: run `python -m service.openapi`"


def test_operation_ids_are_stable() -> None:
    ops = {op["operationId"] for path in committed()["paths"].values() for op in path.values()}
    assert ops == {"classify", "list_models", "list_quarantine", "healthz", "readyz", "metrics"}


def test_classify_documents_both_body_types() -> None:
    body = committed()["paths"]["/classify"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    schemas = committed()["components"]["schemas"]
    assert "ClassifyJSONRequest" in schemas and "Base64Image" in schemas


@pytest.mark.slow
def test_served_openapi_is_the_committed_file(guard_server: RunningServer) -> None:
    served = httpx.get(guard_server.url + "/openapi.json").json()
    assert served == committed()
