"""/v1/models shows the manifest's optional `audit` entry (written by training.audit)."""

from __future__ import annotations

import json
from pathlib import Path

from service.api.schemas import model_summary
from service.repository import Slot, SlotState
from service.runtime.modelset import ModelSet
from service.settings import Settings
from tests.support.tiny_models import build_model_set


def _summary(folder: Path):
    model_set = ModelSet.load(folder, Settings(models=[folder]))
    slot = Slot(
        name=folder.name, folder=folder, state=SlotState.ready, reason="ready", model_set=model_set
    )
    return model_summary(slot, default=True)


def test_audit_summary_shown_when_present(tmp_path: Path) -> None:
    folder = build_model_set(tmp_path / "tiny")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["audit"] = {
        "flagged": True,
        "target_classes": [0],
        "anomaly_index": [3.1, 0.2],
        "report": "reports/audit/mnist/mnist/audit.json",
    }
    manifest["repair"] = {"method": "unlearning", "class": 0}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    s = _summary(folder)
    assert s.audit is not None
    assert s.audit.flagged is True and s.audit.target_classes == [0]
    assert s.audit.repair == "unlearning"
    assert s.audit.report == "reports/audit/mnist/mnist/audit.json"


def test_no_audit_field_without_audit(tmp_path: Path) -> None:
    assert _summary(build_model_set(tmp_path / "plain")).audit is None


def test_an_audit_recorded_into_the_audited_set_is_shown(tmp_path: Path) -> None:
    """training.audit writes its verdict into the audited set itself (record_audit): the guard
    serving that set shows it, and every other manifest field is kept."""
    from training.audit.__main__ import record_audit

    folder = build_model_set(tmp_path / "audited")
    before = json.loads((folder / "manifest.json").read_text())
    summary = {
        "flagged": True,
        "target_classes": [1],
        "per_class": [{"anomaly_index": 0.3}, {"anomaly_index": 2.9}],
        "report": "reports/audit/x/audited/audit.json",
    }
    record_audit(folder, summary)
    after = json.loads((folder / "manifest.json").read_text())
    assert {k: v for k, v in after.items() if k != "audit"} == before
    s = _summary(folder)
    assert s.audit is not None and s.audit.flagged is True and s.audit.target_classes == [1]
    assert s.audit.repair is None  # the set itself is not repaired
