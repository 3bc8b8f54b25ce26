"""Overload is answered, not queued: a full queue gets 503 + Retry-After at the door (before the
body is read), a key over its rate gets 429 + Retry-After, liveness answers while the writer
cannot commit, readiness says when the queue is full, and slow clients are dropped."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from conftest import Server, auth, interaction, make_keys
from flywheel import store
from flywheel.settings import Settings, load_settings
from serving.app import running

HOLD = """
import sys
from flywheel import store
with store.connect(sys.argv[1], timeout_s=60):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextmanager
def database_held(data_dir):
    """Another process holds the database, so the service's writer cannot commit."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(load_settings(data_dir).db_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "held"
        yield
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def serving(tmp_path, **sections):
    return running(Settings(home=tmp_path, port=0, **sections))


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    return sock


def head(path: str, key: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()  # fmt: skip


def answer(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, orjson.loads(body)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server ends the connection (the socket's 30 s timeout raises if it never does)."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def stored(data_dir, prefix: str) -> set[str]:
    with store.connect(load_settings(data_dir).db_path, read_only=True) as con:
        return {r[0] for r in con.execute("SELECT id FROM interactions WHERE id LIKE ?", [prefix + "%"]).fetchall()}


def wait_for(predicate, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def test_a_full_queue_is_refused_at_the_door_while_healthz_answers(tmp_path):
    key = make_keys(tmp_path, "acme")["acme"]
    with serving(tmp_path, ingest={"max_queue_items": 3, "ack_timeout_s": 60}) as url, \
            httpx.Client(base_url=url, timeout=60) as client:  # fmt: skip
        first: list[httpx.Response] = []
        with database_held(tmp_path):
            items = [interaction(f"q-{i}") for i in range(3)]
            poster = threading.Thread(target=lambda: first.append(
                client.post("/v1/interactions", json={"interactions": items}, headers=auth(key))))  # fmt: skip
            poster.start()
            # the writer cannot commit: liveness answers all the same, with the queue it sees
            wait_for(lambda: client.get("/healthz").json()["queue_items"] == 3, "3 items queued")
            health = client.get("/healthz")
            assert health.status_code == 200 and health.json()["status"] == "ok"
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
            assert "ingest.max_queue_items" in ready.json()["reason"]

            # refused from the headers alone: the 10 kB body announced is never sent
            with connect(url) as sock:
                sock.sendall(head("/v1/interactions", key, 10_000))
                status, headers, body = answer(sock)
            assert status == 503 and headers["retry-after"] == "1"
            assert body["error"]["code"] == "queue_full" and "limit 3, ingest.max_queue_items" in body["error"]["message"]
            late = client.post("/v1/interactions", json={"interactions": [interaction("q-late")]}, headers=auth(key))
            assert late.status_code == 503 and late.headers["retry-after"] == "1"
            assert not first, "the first request was answered before its items could be committed"
        poster.join(timeout=60)
        assert first[0].status_code == 200 and first[0].json()["accepted"] == 3
        assert client.get("/readyz").status_code == 200
    assert stored(tmp_path, "q-") == {"q-0", "q-1", "q-2"}


def test_bytes_in_progress_are_bounded(tmp_path):
    key = make_keys(tmp_path, "acme")["acme"]
    slow = orjson.dumps({"interactions": [interaction("b-slow")]})
    with serving(tmp_path, ingest={"max_queue_bytes": len(slow) + 100}) as url, \
            httpx.Client(base_url=url, timeout=60) as client:  # fmt: skip
        with connect(url) as sock:
            sock.sendall(head("/v1/interactions", key, len(slow)) + slow[:100])  # admitted, its body half sent
            wait_for(lambda: client.get("/readyz").json()["bytes_in_progress"] == len(slow), "the body reserved")
            other = client.post("/v1/interactions", json={"interactions": [interaction("b-other")]}, headers=auth(key))
            assert other.status_code == 503 and other.headers["retry-after"] == "1"
            assert "ingest.max_queue_bytes" in other.json()["error"]["message"]
            sock.sendall(slow[100:])
            status, _, body = answer(sock)
        assert status == 200 and body["accepted"] == 1
        again = client.post("/v1/interactions", json={"interactions": [interaction("b-other")]}, headers=auth(key))
        assert again.status_code == 200 and again.json()["accepted"] == 1
    assert stored(tmp_path, "b-") == {"b-slow", "b-other"}


def test_a_key_over_its_request_rate_gets_429_with_retry_after(tmp_path):
    keys = make_keys(tmp_path, "acme", "globex")
    with serving(tmp_path, serving={"key_requests_per_s": 0.1}) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/v1/models", headers=auth(keys["acme"])).status_code == 200
        limited = client.get("/v1/models", headers=auth(keys["acme"]))
        assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 10
        assert limited.json()["error"]["code"] == "rate_limited"
        assert "serving.key_requests_per_s" in limited.json()["error"]["message"]
        assert client.get("/v1/models", headers=auth(keys["globex"])).status_code == 200  # its own bucket
        assert client.get("/v1/models", headers=auth("fw-made-up")).status_code == 401  # no bucket, the usual 401


def test_a_key_over_its_item_rate_gets_429_and_nothing_is_stored(tmp_path):
    keys = make_keys(tmp_path, "acme", "globex")
    with serving(tmp_path, serving={"key_items_per_s": 0.5}) as url, httpx.Client(base_url=url, timeout=30) as client:
        def post(key: str, *ids: str) -> httpx.Response:
            return client.post("/v1/interactions", json={"interactions": [interaction(i) for i in ids]}, headers=auth(key))

        assert post(keys["acme"], "r-1", "r-2", "r-3").json()["accepted"] == 3  # a full bucket lets a batch through
        limited = post(keys["acme"], "r-4")
        assert limited.status_code == 429 and 1 <= int(limited.headers["retry-after"]) <= 6
        assert "serving.key_items_per_s" in limited.json()["error"]["message"]
        assert post(keys["globex"], "r-other").json()["accepted"] == 1
    assert stored(tmp_path, "r-") == {"r-1", "r-2", "r-3", "r-other"}


def test_slow_clients_are_dropped_and_others_served(tmp_path):
    key = make_keys(tmp_path, "acme")["acme"]
    body = orjson.dumps({"interactions": [interaction("s-trickled")]})
    with serving(tmp_path, serving={"client_timeout_s": 0.5}) as url:
        with connect(url) as idle, connect(url) as half_headers, connect(url) as half_body:
            half_headers.sendall(b"POST /v1/interactions HTTP/1.1\r\nHost: test\r\n")
            half_body.sendall(head("/v1/interactions", key, len(body)) + body[:50])
            assert closed_by_server(idle) and closed_by_server(half_headers) and closed_by_server(half_body)
        ok = httpx.post(f"{url}/v1/interactions", json={"interactions": [interaction("s-ok")]}, headers=auth(key))
        assert ok.status_code == 200
    assert stored(tmp_path, "s-") == {"s-ok"}


@pytest.mark.slow
def test_flywheel_serve_drops_slow_clients(tmp_path):
    server = Server(tmp_path, env={"FLYWHEEL_SERVING__CLIENT_TIMEOUT_S": "0.5"}).start()
    try:
        with connect(server.url) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: te")
            assert closed_by_server(sock)
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        assert server.stop()
