import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_service_never_imports_torch() -> None:
    # A fresh interpreter: importing the app and building it must not pull torch in.
    code = (
        "import sys; from pathlib import Path; from service.main import create_app; "
        "from service.settings import Settings; create_app(Settings(models=[Path('x')])); "
        "print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "True"], out.stdout + out.stderr
