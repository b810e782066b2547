"""A real MLServer (from PyPI, in its own virtualenv) serving an ONNX target over V2 REST: the
benchmark's peer and the sidecar tests' upstream.

MLServer pins its own fastapi / pydantic / uvicorn, so it lives in ``.venv-mlserver/``
(git-ignored), created here on first use (about a minute) and reused while its stamp matches.
The model runs in the custom runtime bench/mlserver_runtime/onnx_logits.py, in MLServer's HTTP
process (``parallel_workers`` 0), without adaptive batching: one model pass per request.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.processes import free_port, stop

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-mlserver"
REQUIREMENTS = ("mlserver==1.7.1", "onnxruntime==1.31.1")
RUNTIME = REPO / "bench" / "mlserver_runtime" / "onnx_logits.py"


def ensure_venv(venv: Path = VENV) -> Path:
    """The mlserver executable, installing MLServer into ``venv`` when needed. A lock file
    keeps two test sessions on one checkout from installing at the same time."""
    lock_path = venv.with_name(venv.name + ".lock")
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return _install(venv)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _install(venv: Path) -> Path:
    stamp = venv / ".requirements"
    wanted = "\n".join(REQUIREMENTS)
    exe = venv / "bin" / "mlserver"
    if exe.exists() and stamp.exists() and stamp.read_text() == wanted:
        return exe
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", *REQUIREMENTS],
        check=True,
    )  # fmt: skip
    stamp.write_text(wanted)
    return exe


@dataclass
class RunningMLServer:
    url: str
    model: str
    version: str
    port: int
    log_path: Path
    slow_file: Path
    repo: Path
    exe: Path
    runtime_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = field(default=None)
    grpc_port: int = 0  # its V2 gRPC server (tests/sidecar/test_proxy_grpc.py)

    @property
    def grpc_url(self) -> str:
        """The gRPC endpoint as GUARD_UPSTREAMS takes it (protocol grpc)."""
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self, timeout: float = 90.0) -> None:
        """Start (or restart) MLServer on the same port; wait until the model is ready."""
        assert self.process is None or self.process.poll() is not None
        env = {
            **os.environ, "SLOW_FILE": str(self.slow_file), "PYTHONUNBUFFERED": "1",
            **self.runtime_env,
        }  # fmt: skip
        env.pop("PYTHONPATH", None)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(self.exe), "start", str(self.repo)],
                cwd=self.repo, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        ready = f"{self.url}/v2/models/{self.model}/versions/{self.version}/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlserver exited:\n{self.log_text()[-4000:]}")
            try:
                if httpx.get(ready, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"mlserver did not get ready:\n{self.log_text()[-4000:]}")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, timeout=15)

    def slow_down(self, seconds: float) -> None:
        self.slow_file.write_text(str(seconds))

    def speed_up(self) -> None:
        self.slow_file.unlink(missing_ok=True)


def runtime_env(
    intra_op_threads: int, inter_op_threads: int, spinning: bool | None, test_hooks: bool
) -> dict[str, str]:
    """The environment that bench/mlserver_runtime/onnx_logits.py reads its options from."""
    env = {
        "ONNX_LOGITS_INTRA_OP_THREADS": str(intra_op_threads),
        "ONNX_LOGITS_INTER_OP_THREADS": str(inter_op_threads),
        "ONNX_LOGITS_TEST_HOOKS": "1" if test_hooks else "0",
    }
    if spinning is not None:
        env["ONNX_LOGITS_SPINNING"] = "1" if spinning else "0"
    return env


@contextmanager
def run_mlserver(
    target_onnx: Path, input_chw: tuple[int, int, int], classes: int, *, model: str = "target",
    version: str = "1", intra_op_threads: int = 1, inter_op_threads: int = 1,
    spinning: bool | None = None, test_hooks: bool = True,
) -> Iterator[RunningMLServer]:  # fmt: skip
    """MLServer serving ``target_onnx`` (logits) as ``model`` version ``version``.

    The ONNX Runtime session gets ``intra_op_threads`` / ``inter_op_threads`` (0: ONNX Runtime's
    default) and, unless None, ``spinning``; ``test_hooks`` turns on the runtime's slow-down
    file and header echo (the sidecar tests); the benchmark leaves them off.
    """
    exe = ensure_venv()
    work = Path(tempfile.mkdtemp(prefix="mlserver-"))
    repo = work / "repo"
    model_dir = repo / model
    model_dir.mkdir(parents=True)
    shutil.copy(RUNTIME, model_dir / "onnx_logits.py")
    c, h, w = input_chw
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": model,
        "implementation": "onnx_logits.OnnxLogits",
        "parameters": {"uri": str(target_onnx), "version": version},
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, c, h, w]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, classes]}],
    }))  # fmt: skip
    port, grpc, metrics = free_port(), free_port(), free_port()
    (repo / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": grpc, "metrics_port": metrics,
        "parallel_workers": 0, "debug": False,
    }))  # fmt: skip
    options = runtime_env(intra_op_threads, inter_op_threads, spinning, test_hooks)
    server = RunningMLServer(
        f"http://127.0.0.1:{port}", model, version, port, work / "mlserver.log",
        work / "slow", repo, exe, options, grpc_port=grpc,
    )  # fmt: skip
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
