"""`flywheel up` starts the service, a local Prefect server and the deployment runner, and
stopping it leaves no process behind."""

from __future__ import annotations

import threading
import time

import httpx
import psutil
import pytest

from flywheel.settings import load_settings
from conftest import free_port


@pytest.mark.slow
def test_up_starts_everything_and_stops_cleanly(tmp_path, capsys):
    from pipelines.up import up

    (tmp_path / "flywheel.toml").write_text('[tasks.triage]\nschedule = "0 3 * * *"\nmin_new_feedback = 50\n')
    settings = load_settings(tmp_path)
    settings.port = free_port()
    prefect_port = free_port()
    stop, errors = threading.Event(), []

    def run():
        try:
            up(settings, prefect_port=prefect_port, stop=stop)
        except Exception as exc:  # surfaced by the assertions below
            errors.append(exc)

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}  # e.g. a Prefect test harness server of this session
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 90
        while "Ctrl-C stops everything" not in capsys.readouterr().out:  # printed once all are up
            assert not errors and thread.is_alive(), errors
            assert time.monotonic() < deadline, "up did not report ready"
            time.sleep(0.2)
        children = [p for p in me.children(recursive=True) if p.pid not in before]
        assert len(children) >= 3  # service, Prefect server, deployment runner
        assert httpx.get(f"http://127.0.0.1:{settings.port}/healthz", timeout=5).status_code == 200
        ui = httpx.get(f"http://127.0.0.1:{prefect_port}/", timeout=5)
        assert ui.status_code == 200 and "<html" in ui.text.lower()
        listed = httpx.post(f"http://127.0.0.1:{prefect_port}/api/deployments/filter", json={}, timeout=5).json()
        assert {d["name"]: d["schedules"][0]["schedule"].get("cron") for d in listed} == {
            "flywheel-triage": "0 3 * * *", "feedback-trigger": None}  # fmt: skip
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive() and not errors, errors
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert [p for p in me.children(recursive=True) if p.pid not in before] == []
    for port in (settings.port, prefect_port):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_up_refuses_a_port_in_use(tmp_path):
    import socket

    from pipelines.up import up

    settings = load_settings(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        settings.port = s.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {settings.port} .* is in use"):
            up(settings, prefect_port=free_port())
