"""What the ingestion service promises under stress: acknowledged means durable (kill -9),
a bounded queue answers 503 + Retry-After, shutdown flushes, and other processes can read
the database while the server ingests."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import Server, auth, interaction, make_keys
from flywheel import store
from flywheel.settings import load_settings

pytestmark = pytest.mark.slow


class Load:
    """Threads posting batches with client ids until stopped; records what was acknowledged."""

    def __init__(self, url: str, key: str, threads: int = 4, batch: int = 100, prefix: str = "load"):
        self.url, self.key, self.batch, self.prefix = url, key, batch, prefix
        self.acked: set[str] = set()
        self.statuses: list[int] = []
        self.refusals: list[httpx.Response] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(threads)]

    def _run(self, t: int) -> None:
        with httpx.Client(base_url=self.url, timeout=60, headers=auth(self.key)) as client:
            n = 0
            while not self.stop.is_set():
                items = [interaction(f"{self.prefix}-{t}-{n}-{i}", task="load") for i in range(self.batch)]
                n += 1
                try:
                    r = client.post("/v1/interactions", json={"interactions": items})
                except httpx.HTTPError:
                    if self.stop.is_set():
                        return
                    time.sleep(0.05)
                    continue
                with self.lock:
                    self.statuses.append(r.status_code)
                    if r.status_code != 200:
                        self.refusals.append(r)
                    if r.status_code == 200:
                        self.acked |= {x["id"] for x in r.json()["results"] if x["status"] in ("accepted", "duplicate")}

    def __enter__(self) -> Load:
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(timeout=90)


def stored_ids(data_dir, prefix: str) -> list[str]:
    with store.connect(load_settings(data_dir).db_path, read_only=True) as con:
        return [r[0] for r in con.execute("SELECT id FROM interactions WHERE id LIKE ?", [prefix + "-%"]).fetchall()]


def test_kill_9_loses_nothing_acknowledged(tmp_path):
    key = make_keys(tmp_path, "acme")["acme"]
    server = Server(tmp_path).start()
    with Load(server.url, key, prefix="k9") as load:
        time.sleep(1.5)
        server.kill()  # mid-load, no chance to flush
    assert len(load.acked) >= 300, "the load should have been acknowledged for a while before the kill"
    server = Server(tmp_path).start()  # restart on the same data: the database recovers its WAL
    server.stop()
    ids = stored_ids(tmp_path, "k9")
    assert len(ids) == len(set(ids)), "an id was stored twice"
    assert load.acked <= set(ids), f"{len(load.acked - set(ids))} acknowledged ids were lost"
    # a client retrying after the crash is told its acknowledged items are duplicates
    server = Server(tmp_path).start()
    sample = sorted(load.acked)[:50]
    items = [interaction(i, task="load") for i in sample]
    r = httpx.post(f"{server.url}/v1/interactions", json={"interactions": items}, headers=auth(key), timeout=30)
    server.stop()
    assert r.json()["duplicate"] == 50


def test_full_queue_answers_503_with_retry_after_and_recovers(tmp_path):
    key = make_keys(tmp_path, "acme")["acme"]
    server = Server(tmp_path, env={"FLYWHEEL_INGEST__MAX_QUEUE_ITEMS": "250"}).start()
    try:
        db = load_settings(tmp_path).db_path
        with Load(server.url, key, threads=6, batch=100, prefix="bp") as load:
            with store.connect(db):  # hold the database: the writer cannot commit, the queue fills
                deadline = time.monotonic() + 20
                while not load.refusals and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert load.refusals, "the queue never filled"
                busy = load.refusals[0]
                assert busy.status_code == 503
                assert busy.headers["retry-after"] == "1" and "limit 250" in busy.json()["error"]["message"]
                refused_while_held = len(load.refusals)
            time.sleep(1.5)  # released: the writer drains the queue and the load goes on
            acked_after_release = len(load.acked)
        assert refused_while_held > 0 and acked_after_release >= 200
        assert set(load.statuses) <= {200, 503}
        health = httpx.get(f"{server.url}/healthz").json()
        assert health["queue_items"] <= 250
    finally:
        assert server.stop()
    ids = stored_ids(tmp_path, "bp")
    assert load.acked <= set(ids) and len(ids) == len(set(ids))


def test_an_ack_timeout_does_not_stop_the_writer(tmp_path):
    """A request that gave up waiting (503 ack_timeout) while another process held the database:
    its rows are still committed, and the service goes on acknowledging."""
    key = make_keys(tmp_path, "acme")["acme"]
    server = Server(tmp_path, env={"FLYWHEEL_INGEST__ACK_TIMEOUT_S": "1"}).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30, headers=auth(key)) as client:
            def post(i: str) -> httpx.Response:
                return client.post("/v1/interactions", json={"interactions": [interaction(i, task="ack")]})

            with store.connect(load_settings(tmp_path).db_path):
                late = post("ack-late")
            assert late.status_code == 503 and late.json()["error"]["code"] == "ack_timeout"
            after = [post(f"ack-after-{n}") for n in range(3)]
            assert [r.status_code for r in after] == [200, 200, 200]
    finally:
        assert server.stop()
    assert sorted(stored_ids(tmp_path, "ack")) == ["ack-after-0", "ack-after-1", "ack-after-2", "ack-late"]


def test_graceful_shutdown_flushes_and_exits_cleanly(tmp_path):
    key = make_keys(tmp_path, "acme")["acme"]
    server = Server(tmp_path).start()
    with Load(server.url, key, prefix="term") as load:
        time.sleep(1.0)
        assert server.stop()
    assert load.acked and set(load.statuses) <= {200}
    assert load.acked <= set(stored_ids(tmp_path, "term"))


READER = """
import sys, time
from flywheel import store
counts = []
for _ in range(5):
    with store.connect(sys.argv[1], read_only=True, timeout_s=30) as con:
        counts.append(con.execute("SELECT count(*) FROM interactions").fetchone()[0])
    time.sleep(0.2)
print(counts)
"""


def test_another_process_reads_while_the_server_ingests(tmp_path):
    key = make_keys(tmp_path, "acme")["acme"]
    server = Server(tmp_path).start()
    try:
        with Load(server.url, key, prefix="rd") as load:
            time.sleep(0.5)
            db = str(load_settings(tmp_path).db_path)
            out = subprocess.run([sys.executable, "-c", READER, db], capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            counts = eval(out.stdout)
            time.sleep(0.5)
        assert len(counts) == 5 and counts[-1] > counts[0] > 0, counts  # it read, and ingestion went on
        assert set(load.statuses) == {200}
    finally:
        server.stop()
    assert load.acked <= set(stored_ids(tmp_path, "rd"))
