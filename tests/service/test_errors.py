"""The one table of domain errors and their HTTP statuses."""

from __future__ import annotations

import pytest

from contract import errors
from contract.errors import GuardError, ModelFailed, ModelLoadError
from service.api.error_responses import status_of


def every_error() -> list[type[GuardError]]:
    found, todo = [], [GuardError]
    while todo:
        cls = todo.pop()
        found += cls.__subclasses__()
        todo += cls.__subclasses__()
    return sorted(set(found), key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", every_error(), ids=lambda c: c.__name__)
def test_no_domain_error_is_a_500(cls: type[GuardError]) -> None:
    """Issue 19 #8: ModelLoadError raised at inference time (logits of the wrong shape) mapped
    to 500 through the base class. Every error the guard raises on purpose has its status."""
    assert cls.__module__ == errors.__name__
    assert status_of(cls("m")) != 500
    assert cls.kind != GuardError.kind


def test_a_broken_model_set_is_a_503() -> None:
    assert status_of(ModelFailed("logits (2, 9), expected (2, 10)")) == 503
    assert status_of(ModelLoadError("target.onnx: file not found")) == 503
