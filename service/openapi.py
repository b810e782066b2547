"""Write the app's OpenAPI document to openapi.yaml: ``python -m service.openapi [PATH]``.

tests/service/test_openapi.py checks that the file is exactly what the app serves.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from service.main import create_app
from service.settings import Settings


def document() -> dict[str, Any]:
    return create_app(Settings(models=[Path("models/mnist")])).openapi()


def main(argv: list[str]) -> None:
    import yaml  # a dev dependency; the service itself never needs it

    path = Path(argv[0]) if argv else Path("openapi.yaml")
    path.write_text(yaml.safe_dump(document(), sort_keys=False, allow_unicode=True))
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
