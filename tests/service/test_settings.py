from pathlib import Path

import pytest
from pydantic import ValidationError

from contract.modes import Mode
from service.settings import KNOWN_PROVIDERS, Settings


def test_defaults_load_models_mnist_in_flag_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("GUARD_"):
            monkeypatch.delenv(key)
    s = Settings()
    assert s.models == [Path("models/mnist")]
    assert s.default_mode is Mode.flag
    assert s.providers == list(KNOWN_PROVIDERS)
    assert s.api_keys == []


def test_env_prefix_and_list_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUARD_MODELS", "models/a, models/b")
    monkeypatch.setenv("GUARD_PROVIDERS", '["CUDAExecutionProvider", "CPUExecutionProvider"]')
    monkeypatch.setenv("GUARD_DEFAULT_MODE", "block")
    monkeypatch.setenv("GUARD_MAX_BATCH_WAIT_MS", "5.5")
    monkeypatch.setenv("GUARD_API_KEYS", "0123456789abcdef,fedcba9876543210")
    s = Settings()
    assert s.models == [Path("models/a"), Path("models/b")]
    assert s.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert s.default_mode is Mode.block
    assert s.max_batch_wait_ms == 5.5
    assert [k.get_secret_value() for k in s.api_keys] == ["0123456789abcdef", "fedcba9876543210"]
    assert "0123456789abcdef" not in repr(s)  # secrets stay out of reprs and logs


@pytest.mark.parametrize(
    "env",
    [
        {"GUARD_PROVIDERS": "CUDAExecutionProvider"},  # no CPU fallback
        {"GUARD_PROVIDERS": "OpenVINOExecutionProvider,CPUExecutionProvider"},
        {"GUARD_API_KEYS": "short"},
        {"GUARD_PROTECT_METRICS": "true"},  # protection without keys
        {"GUARD_MAX_BATCH_SIZE": "0"},
        {"GUARD_MAX_BODY_BYTES": str(4 * 1024**3)},
        {"GUARD_MAX_QUEUE_IMAGES": "8", "GUARD_MAX_IMAGES_PER_REQUEST": "16"},
        {"GUARD_GRAPH_OPTIMIZATION": "max"},
        {"GUARD_DEFAULT_MODE": "ignore"},
        {"GUARD_MODELS": ""},
        {"GUARD_TRT_CACHE_DIR": "/etc/passwd"},  # a file, not a folder
    ],
)
def test_unsafe_values_are_refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        Settings()


def test_every_setting_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"| `GUARD_{name.upper()}` |" in doc, name
