"""Shared fixtures: a data folder with keys, and a real `flywheel serve` subprocess on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from flywheel import store
from flywheel.registry.keys import create_key
from flywheel.settings import load_settings

# real_base, small_real_model: one SmolLM2 import per session; tiny_models: the serving tests' tiny base and adapters
pytest_plugins = ["real_model", "tiny_models"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`flywheel serve` in its own process, as a user runs it."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log = data_dir / f"server-{self.port}.log"

    def start(self) -> Server:
        return self.launch().ready()

    def launch(self) -> Server:
        """Start the process without waiting for it: servers that do not need each other to start
        come up side by side (most of a start is the interpreter importing torch, on one core)."""
        cmd = [sys.executable, "-m", "flywheel.cli", "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        return self

    def ready(self) -> Server:
        """Wait until the launched server answers /healthz."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not come up in 60 s")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> bool:
        """SIGTERM, as a process manager does; True when the server shut down gracefully
        (uvicorn re-raises the signal after its shutdown, so the exit status is -SIGTERM)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        return code in (0, -signal.SIGTERM) and "Application shutdown complete" in self.log.read_text()


def make_keys(data_dir: Path, *projects: str, role: str = "app") -> dict[str, str]:
    with store.connect(load_settings(data_dir).db_path) as con:
        return {p: create_key(con, p, role) for p in projects}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def interaction(i: int | str, task: str = "support-triage", **extra) -> dict:
    return {
        "id": i if isinstance(i, str) else f"it-{i}", "task": task, "model": "big-llm",
        "messages": [{"role": "system", "content": "Route the ticket to a queue."},
                     {"role": "user", "content": f"Ticket {i}: my parcel has not arrived yet, what now?"}],
        "response": "shipping", "latency_ms": 820.5, "prompt_tokens": 31, "completion_tokens": 2,
        "cost_usd": 0.00041, "user_id": f"u{i}", "session_id": f"s{i}", **extra,
    }  # fmt: skip


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for the read-only-ish API tests of a module, with projects `acme` and `globex`."""
    data_dir = tmp_path_factory.mktemp("flywheel")
    keys = make_keys(data_dir, "acme", "globex")
    admin = make_keys(data_dir, "acme", role="admin")["acme"]  # (for /metrics)
    server = Server(data_dir).start()
    server.keys, server.admin = keys, admin
    yield server
    server.stop()


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    # Prefect reads these when its settings load: set them before the harness starts, in a
    # folder of our own, so the tests never touch ~/.prefect or phone home.
    saved = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):  # a busy 2-core box needs more than 30 s
        yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
