"""docs/v2-openapi.yaml: a valid OpenAPI document that lists every V2 route the app serves."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml
from fastapi.routing import APIRoute
from openapi_spec_validator import validate
from starlette.routing import BaseRoute

from service.main import create_app
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
V2_SPEC = REPO / "docs" / "v2-openapi.yaml"
METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}


def documented() -> dict:
    return yaml.safe_load(V2_SPEC.read_text())


def _walk(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(path, method) of every API route, inside included routers too (FastAPI >= 0.165 keeps
    an included router as one route that wraps the original)."""
    for route in routes:
        if isinstance(route, APIRoute):
            for method in route.methods:
                yield prefix + route.path, method.lower()
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from _walk(inner.routes, prefix + getattr(context, "prefix", ""))


def served_v2_routes() -> set[tuple[str, str]]:
    app = create_app(Settings(models=[REPO / "models" / "mnist"]))
    return {
        (path, method)
        for path, method in _walk(app.routes)
        if (path == "/v2" or path.startswith("/v2/")) and method != "head"
    }


def test_v2_openapi_is_a_valid_openapi_document() -> None:
    validate(documented())


def test_every_served_v2_route_is_documented_and_nothing_else() -> None:
    spec = documented()
    in_doc = {
        (path, method)
        for path, item in spec["paths"].items()
        for method in item
        if method in METHODS
    }
    served = served_v2_routes()
    assert served, "the app serves no /v2 routes: the comparison would be empty"
    assert served - in_doc == set(), "served V2 routes missing from docs/v2-openapi.yaml"
    assert in_doc - served == set(), "docs/v2-openapi.yaml documents routes the app does not serve"


def test_every_v2_error_answer_has_the_protocol_error_shape() -> None:
    spec = documented()
    shape = spec["components"]["schemas"]["error_response"]
    assert shape["properties"]["error"]["type"] == "string"
    assert set(shape["required"]) == {"error", "type", "accepted", "request_id"}
    infer = spec["paths"]["/v2/models/{model_name}/infer"]["post"]["responses"]
    # The guard's status table (service/errors.py) for an inference, all documented.
    assert {"400", "401", "403", "404", "413", "415", "422", "502", "503", "504"} <= set(infer)
    for status, answer in infer.items():
        if status.startswith(("4", "5")):
            name = answer["$ref"].rsplit("/", 1)[-1]
            content = spec["components"]["responses"][name]["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/error_response"}, status
