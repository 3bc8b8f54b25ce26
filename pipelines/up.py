"""`flywheel up`: the whole product on one machine, on 127.0.0.1, until Ctrl-C.

Child processes, each with its log under `<data dir>/logs/`:
1. `flywheel serve` — ingestion, feedback and the gateway (the loop loads candidates through it);
2. `prefect server start` — a local Prefect API and UI, its database under `<data dir>/prefect`;
3. the flows, one of two ways:
   - by default, `python -m pipelines.up --serve-deployments` — `prefect.serve` of the `flywheel`
     deployments (one per `[tasks.NAME]`, cron from config) and the feedback trigger; flow runs
     execute as subprocesses of this one;
   - with `workers=N`, the same deployments registered on the process work pool `flywheel-process`
     and N `prefect worker start` processes, each running one flow run at a time: N turns at once,
     what a cluster does with more hosts (infra/SCALING.md). Either way every `flywheel` deployment
     has `concurrency_limit=1`, so two turns of one task never overlap while other tasks' turns do.
   Flow runs are pointed at the local server and the local service.

Why separate processes rather than threads: each is what a user would run on its own (and what
infra/compose.yaml runs as separate containers); a crash in one is reported instead of taking
the others down; and each can be stopped in the order that works. Children run in their own
sessions, so a Ctrl-C in the terminal reaches only `up`, which then stops them in order: the
deployment runner or the workers first (SIGINT: a Prefect worker or runner left without its server
once ignored SIGTERM), then the service, then the Prefect server; whatever a child left behind in
its process group (a flow run in progress) is killed after it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from flywheel.settings import Settings, load_settings

HOST = "127.0.0.1"
POOL = "flywheel-process"  # the work pool of `up --workers` (infra/prefect.yaml uses the same name)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def prefect_env(home: Path) -> dict[str, str]:
    """Prefect kept under the data folder and offline (no analytics)."""
    return {"PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def child_env(home: Path, *, api_port: int, prefect_port: int) -> dict[str, str]:
    """The environment of every child: Prefect kept under the data folder, offline, talking to the
    local server; FLYWHEEL_* so flow runs (which load settings from the data folder) find the
    service on the port `up` started it on, even when that differs from flywheel.toml."""
    return {
        **os.environ,
        **prefect_env(home),
        "PREFECT_API_URL": f"http://{HOST}:{prefect_port}/api",
        "FLYWHEEL_HOME": str(home),
        "FLYWHEEL_HOST": HOST,
        "FLYWHEEL_PORT": str(api_port),
    }


def _start(name: str, cmd: list[str], env: dict[str, str], logs: Path) -> Child:
    log = logs / f"{name}.log"
    with log.open("ab") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
    return Child(name, proc, log)


def _check_alive(children: list[Child]) -> None:
    for child in children:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with status {child.proc.returncode}; "
                               f"the end of {child.log}:\n{child.tail()}")  # fmt: skip


def _wait_until(ready, what: str, children: list[Child], stop: threading.Event, timeout_s: float) -> bool:
    """Poll `ready()` until true; False when `stop` was set meanwhile."""
    deadline = time.monotonic() + timeout_s
    while not stop.is_set():
        _check_alive(children)
        try:
            if ready():
                return True
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up in {timeout_s:.0f} s")
        stop.wait(0.2)
    return False


def _registered(prefect_api: str) -> set[str]:
    r = httpx.post(f"{prefect_api}/deployments/filter", json={"limit": 200}, timeout=5)
    r.raise_for_status()
    return {d["name"] for d in r.json()}


def _online_workers(prefect_api: str) -> int:
    r = httpx.post(f"{prefect_api}/work_pools/{POOL}/workers/filter", json={}, timeout=5)
    if r.status_code == 404:  # the pool is created by the deploy step, a moment before
        return 0
    r.raise_for_status()
    return sum(w["status"] == "ONLINE" for w in r.json())


def _deploy_to_pool(home: Path, env: dict[str, str], logs: Path, trigger_every_s: float, timeout_s: float) -> None:
    """Create the work pool and register the deployments on it, in a process of its own (it talks
    to the local server through PREFECT_API_URL, which `up`'s own process does not set)."""
    log = logs / "deploy.log"
    try:
        with log.open("ab") as out:
            done = subprocess.run([sys.executable, "-m", "pipelines.up", "--deploy-to-pool", str(home),
                                   "--trigger-every", str(trigger_every_s)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout_s)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"registering the deployments on work pool {POOL} took over {timeout_s:.0f} s; see {log}") from None
    if done.returncode != 0:
        raise RuntimeError(f"registering the deployments on work pool {POOL} failed; the end of {log}:\n"
                           f"{log.read_text(errors='replace')[-3000:]}")  # fmt: skip


def _stop_child(child: Child, first: int, timeout_s: float) -> None:
    """`first` to the child, escalating to SIGTERM and SIGKILL if it lingers; then whatever is
    left of its process group (grandchildren such as a flow run in progress) is killed."""
    proc = child.proc
    for sig, wait in ((first, timeout_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            proc.send_signal(sig)
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            break
    _kill_group(proc.pid)  # the leader is gone: clear the rest of its group


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def stop_children(children: list[Child]) -> None:
    """Stop in the reverse order of start: the runner, then the service, then the Prefect server.
    SIGINT first (what a Ctrl-C would send them); but a process started with SIGINT ignored (in
    the background by a non-interactive shell) passes that on to its children, so then SIGTERM."""
    first = signal.SIGTERM if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else signal.SIGINT
    try:
        for child in reversed(children):
            _stop_child(child, first, timeout_s=20)
    except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
        for child in children:
            _kill_group(child.proc.pid)
        raise


def _on_termination(stop: threading.Event) -> dict[int, object]:
    """In the main thread: SIGTERM and SIGHUP (a process manager, a closed terminal) set `stop`,
    so the children, in their own sessions, are stopped too instead of being orphaned."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGHUP)}


def up(settings: Settings, *, prefect_port: int = 4200, workers: int = 0, stop: threading.Event | None = None,
       trigger_every_s: float = 60.0, ready_timeout_s: float = 120.0) -> None:
    """Run the service, a local Prefect server and the scheduled flywheel deployments until Ctrl-C
    (KeyboardInterrupt) or `stop` is set; then stop them all. `workers`: 0 serves the flows from one
    process (`prefect.serve`); N runs them on the work pool `flywheel-process` with N workers.
    Raises RuntimeError when a port is taken, a process does not come up, or one exits on its own
    (the others are stopped first)."""
    from pipelines.deployments import build_deployments
    from pipelines.settle import SETTLE_DEPLOYMENT
    from pipelines.turn import deployment_name

    stop = stop or threading.Event()
    home = settings.home.resolve()
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    api_port = settings.port
    for what, port in (("the Flywheel service", api_port), ("the Prefect server", prefect_port)):
        if not _port_free(port):
            raise RuntimeError(f"port {port} on {HOST}, wanted for {what}, is in use (another `flywheel up` or "
                               f"`prefect server start`?); choose another port")  # fmt: skip
    api_url, prefect_url = f"http://{HOST}:{api_port}", f"http://{HOST}:{prefect_port}"
    env = child_env(home, api_port=api_port, prefect_port=prefect_port)
    (home / "prefect").mkdir(exist_ok=True)
    expected = {d.name for d in build_deployments(settings)}  # what the deployments child will register

    children: list[Child] = []
    previous_handlers = _on_termination(stop)
    try:
        # The service and the Prefect server start side by side; the runner needs the server.
        children.append(_start("prefect-server", [sys.executable, "-m", "prefect", "server", "start",
                                                  "--host", HOST, "--port", str(prefect_port)], env, logs))  # fmt: skip
        children.append(_start("api", [sys.executable, "-m", "flywheel.cli", "serve", "--data-dir", str(home),
                                       "--host", HOST, "--port", str(api_port)], env, logs))  # fmt: skip
        if not _wait_until(lambda: httpx.get(f"{api_url}/healthz", timeout=2).status_code == 200, "the Flywheel service",
                           children, stop, ready_timeout_s):  # fmt: skip
            return
        if not _wait_until(lambda: httpx.get(f"{prefect_url}/api/health", timeout=2).status_code == 200,
                           "the Prefect server", children, stop, ready_timeout_s):  # fmt: skip
            return
        if workers:
            _deploy_to_pool(home, env, logs, trigger_every_s, ready_timeout_s)
            for i in range(1, workers + 1):  # --limit 1: a worker runs one flow run (one turn, one training) at a time
                children.append(_start(f"worker-{i}", [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL,
                                                       "--type", "process", "--name", f"flywheel-worker-{i}", "--limit", "1"],
                                       env, logs))  # fmt: skip
            if not _wait_until(lambda: _online_workers(f"{prefect_url}/api") >= workers, f"{workers} Prefect workers",
                               children, stop, ready_timeout_s):  # fmt: skip
                return
        else:
            children.append(_start("deployments", [sys.executable, "-m", "pipelines.up", "--serve-deployments", str(home),
                                                   "--trigger-every", str(trigger_every_s)], env, logs))  # fmt: skip
        if not _wait_until(lambda: expected <= _registered(f"{prefect_url}/api"), "the flywheel deployments",
                           children, stop, ready_timeout_s):  # fmt: skip
            return
        print(f"Flywheel API:  {api_url}   (OpenAPI docs: {api_url}/docs; OpenAI base_url: {api_url}/v1)")
        print(f"Prefect UI:    {prefect_url}   (API: {prefect_url}/api)")
        if workers:
            print(f"work pool {POOL}: {workers} process worker(s), one flow run at a time each")
        for name, cfg in settings.tasks.items():
            trigger = f", or after {cfg.min_new_feedback} new feedback" if cfg.min_new_feedback else ""
            print(f"  deployment flywheel/{deployment_name(name)}: cron {cfg.schedule or '(none)'} UTC{trigger}")
        if SETTLE_DEPLOYMENT in expected:
            print(f"  deployment settle/{SETTLE_DEPLOYMENT}: every hour, decides running canaries from live thumbs")
        if not settings.tasks:
            print("  no [tasks.*] in flywheel.toml: nothing is scheduled")
        print(f"logs in {logs}; Ctrl-C stops everything", flush=True)
        while not stop.wait(0.5):
            _check_alive(children)
    except KeyboardInterrupt:
        pass
    finally:
        if children:
            print("stopping…", flush=True)
        stop_children(children)
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)


def serve_deployments(data_dir: str, trigger_every_s: float) -> None:
    """The runner process: serve the deployments until SIGINT/SIGTERM (prefect.serve handles both)."""
    from prefect import serve

    from pipelines.deployments import build_deployments

    deployments = build_deployments(load_settings(data_dir), trigger_every_s=trigger_every_s)
    if not deployments:  # nothing to serve; stay up so `up` treats an exit as a crash
        threading.Event().wait()
    serve(*deployments, print_starting_message=True)


def deploy_to_pool(data_dir: str, trigger_every_s: float) -> None:
    """Create the process work pool (when missing) and register the deployments on it; workers run them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    from pipelines.deployments import build_deployments

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(POOL)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=POOL, type=ProcessWorker.type,
                                                   base_job_template=ProcessWorker.get_default_base_job_template()))  # fmt: skip
    for deployment in build_deployments(load_settings(data_dir), trigger_every_s=trigger_every_s):
        deployment.apply(work_pool_name=POOL)
        print(f"deployment {deployment.flow_name}/{deployment.name} on work pool {POOL}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The deployment runner of `flywheel up`, or the registration of its "
                                     "deployments on a work pool for workers (`up --workers`, infra/compose.yaml); "
                                     "both talk to the server at PREFECT_API_URL.")  # fmt: skip
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--serve-deployments", metavar="DATA_DIR", help="Serve the deployments from this process.")
    what.add_argument("--deploy-to-pool", metavar="DATA_DIR", help=f"Register them on work pool {POOL}, then exit.")
    parser.add_argument("--trigger-every", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.deploy_to_pool:
        deploy_to_pool(args.deploy_to_pool, args.trigger_every)
        return
    try:
        serve_deployments(args.serve_deployments, args.trigger_every)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
