"""`flywheel up --workers N`: the flywheel deployments on a Prefect process work pool run by real
workers against a real `prefect server`: two tasks' turns at once on different workers, two turns
of one task one after the other, and the workers stopped before the server."""

from __future__ import annotations

import threading
import time
from datetime import datetime

import httpx
import psutil
import pytest

from conftest import free_port
from flywheel import store
from flywheel.settings import load_settings


def _post(url: str) -> list | dict:
    """POST to the Prefect API; a 503 (its SQLite database busy on a loaded box) or no answer within
    30 s (the server starved of CPU while three workers start flow runs on 2 cores: seen once in CI)
    is tried again."""
    for attempt in range(20):
        try:
            r = httpx.post(url, json={}, timeout=30)
        except httpx.TimeoutException:
            if attempt == 19:
                raise
            continue
        if r.status_code != 503:
            break
        time.sleep(0.5)
    r.raise_for_status()
    return r.json()


def _runs(api: str) -> dict[str, dict]:
    return {r["id"]: r for r in _post(f"{api}/flow_runs/filter")}


def _wait(what: str, ready, timeout_s: float = 90):
    deadline = time.monotonic() + timeout_s
    while not (value := ready()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)
    return value


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.slow
def test_workers_run_two_tasks_at_once_and_one_tasks_turns_in_turn(tmp_path, capsys, monkeypatch):
    from pipelines.up import up

    # Workers look for work every second, and a run refused a slot retries after one (defaults 10 s, 30 s).
    monkeypatch.setenv("PREFECT_WORKER_QUERY_SECONDS", "1")
    monkeypatch.setenv("PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS", "1")
    # The turns wait for the store the test holds below for as long as the test needs, not 30 s.
    (tmp_path / "flywheel.toml").write_text('[store]\nlock_wait_s = 600\n\n[tasks.alpha]\nschedule = ""\n\n'
                                            '[tasks.beta]\nschedule = ""\n')
    settings = load_settings(tmp_path)
    settings.port, prefect_port = free_port(), free_port()
    api = f"http://127.0.0.1:{prefect_port}/api"
    stop, errors = threading.Event(), []

    def run():
        try:
            up(settings, prefect_port=prefect_port, workers=3, stop=stop, ready_timeout_s=170)
        except Exception as exc:  # surfaced by the assertions below
            errors.append(exc)

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    workers, server = {}, None
    try:
        _wait("up", lambda: "Ctrl-C stops everything" in capsys.readouterr().out or errors or not thread.is_alive(), 180)
        assert not errors and thread.is_alive(), errors
        workers = {p.pid: p for p in me.children(recursive=True)
                   if p.pid not in before and "worker" in p.cmdline() and "start" in p.cmdline()}  # fmt: skip
        assert len(workers) == 3
        (server,) = [p for p in me.children(recursive=True) if p.pid not in before and "server" in p.cmdline()]
        deployments = {d["name"]: d for d in _post(f"{api}/deployments/filter")}
        assert {d["work_pool_name"] for d in deployments.values()} == {"flywheel-process"}
        limits = {n: (d["global_concurrency_limit"] or {}).get("limit") for n, d in deployments.items()}
        assert limits == {"flywheel-alpha": 1, "flywheel-beta": 1}

        # Hold the store: a turn's first step (its service key) waits on it, so the turns that
        # start stay running until it is released (no timing: what runs is read from the server).
        with store.connect(settings.db_path):
            def start(name: str) -> str:
                return _post(f"{api}/deployments/{deployments[name]['id']}/create_flow_run")["id"]

            alpha1, beta, alpha2 = start("flywheel-alpha"), start("flywheel-beta"), start("flywheel-alpha")

            def held() -> dict | None:
                runs = _runs(api)
                states = {i: runs[i]["state"]["name"] for i in (alpha1, beta, alpha2)}
                assert (states[alpha1], states[alpha2]) != ("Running", "Running"), states  # never, at any poll
                # one alpha turn and the beta turn running, the other alpha turn refused its slot
                # although the third worker was free for it
                waiting = {states[alpha1], states[alpha2]} == {"Running", "AwaitingConcurrencySlot"}
                return runs if states[beta] == "Running" and waiting else None

            runs = _wait("one turn of each task running, the other alpha turn waiting for its slot", held)
            first, second = (alpha1, alpha2) if runs[alpha1]["state"]["name"] == "Running" else (alpha2, alpha1)
            ran_by = {i: psutil.Process(int(runs[i]["infrastructure_pid"].split(":")[-1])).ppid() for i in (first, beta)}
            assert ran_by[first] in workers and ran_by[beta] in workers and ran_by[first] != ran_by[beta]

        ids = (first, second, beta)

        def ended() -> dict | None:
            runs = _runs(api)
            return runs if all(runs[i]["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED") for i in ids) else None

        runs = _wait("the three turns to end", ended)
        for i in ids:  # each turn really ran the loop: a data folder without traffic stops it at curation
            assert "CurationError: unknown task" in runs[i]["state"]["message"], runs[i]["state"]
        assert _when(runs[second]["start_time"]) >= _when(runs[first]["end_time"])  # alpha's turns one after the other
        assert _when(runs[beta]["start_time"]) < _when(runs[first]["end_time"])  # beta's during alpha's
        assert _when(runs[first]["start_time"]) < _when(runs[beta]["end_time"])
    finally:
        stop.set()
        gone = _watch_exits(thread, {"server": server, **{f"worker {pid}": p for pid, p in workers.items()}}) if server else []
        thread.join(90)
    assert not thread.is_alive() and not errors, errors
    assert [p for p in me.children(recursive=True) if p.pid not in before] == []
    assert len(gone) == 4 and gone[-1] == "server", gone  # every worker had stopped before the server did


def _watch_exits(thread: threading.Thread, procs: dict[str, psutil.Process]) -> list[str]:
    """The names of `procs` in the order they exit, while `up` stops them."""
    order: list[str] = []

    def look() -> None:
        order.extend(name for name, proc in procs.items() if name not in order and not _alive(proc))

    while thread.is_alive() and len(order) < len(procs):
        look()
        time.sleep(0.05)
    look()  # those that exited after the last look, as `up` returned (the server, last: seen in CI)
    return order


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
