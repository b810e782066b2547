"""A model set's manifest and file hashes, as the offline half writes them (no torch)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import ValidationError

from contract.manifest import Manifest


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, manifest: dict) -> Path:
    """Write folder/manifest.json, field for field in the order given, once the contract's own
    schema (contract.manifest.Manifest, what the service reads) accepts it: training cannot
    write a manifest that the service would refuse."""
    try:
        Manifest.model_validate(manifest)
    except ValidationError as exc:
        raise ValueError(f"{folder}: the manifest breaks the model contract: {exc}") from exc
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path
