"""Ingestion benchmark: prints figures, asserts nothing.

(a) batched ingestion over HTTP (batches of 1,000 ≈1 KB interactions, concurrency 4): events/s to
    durable ack, and the ratio to DuckDB's own `read_json` load of the same data as NDJSON;
(b) single-item posts at concurrency 32: req/s, p50/p99 latency;
(c) peak RSS of the server.
The server is a real `flywheel serve` subprocess; the client is a lean asyncio HTTP/1.1 client
sending pre-serialized bodies, so it eats as little of the 2 cores as possible.

    .venv/bin/python bench/ingest.py [--events 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import Server, make_keys  # noqa: E402

WORDS = ("order parcel refund invoice account password delivery broken late charge twice cancel subscription "
         "upgrade plan address warehouse courier tracking number support agent reply please thanks today "
         "yesterday week app crash login error payment card bank statement").split()  # fmt: skip


def text(rng: random.Random, chars: int) -> str:
    out, n = [], 0
    while n < chars:
        w = rng.choice(WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)


def make_events(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    tasks = ["support-triage", "refund-policy", "summarize-ticket"]
    return [{
        "id": f"ev-{i}", "task": tasks[i % 3], "model": "gpt-big",
        "messages": [{"role": "system", "content": "You are a support assistant. Answer briefly."},
                     {"role": "user", "content": f"Order {100000 + i}: " + text(rng, 560)}],
        "response": text(rng, 280), "latency_ms": rng.uniform(200, 2000), "prompt_tokens": 160,
        "completion_tokens": 70, "cost_usd": 0.0012, "user_id": f"user-{i % 5000}",
        "session_id": f"sess-{i // 4}", "metadata": {"app_version": "3.2.1", "region": "eu"},
    } for i in range(n)]  # fmt: skip


class Conn:
    """One keep-alive HTTP/1.1 connection sending pre-built requests."""

    def __init__(self, port: int):
        self.port = port

    async def open(self) -> Conn:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def post(self, path: str, body: bytes, key: str) -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return int(status_line.split()[1]), await self.reader.readexactly(length)


async def batched(port: int, key: str, bodies: list[bytes], concurrency: int) -> float:
    queue = list(reversed(bodies))

    async def worker():
        conn = await Conn(port).open()
        while queue:
            status, answer = await conn.post("/v1/interactions", queue.pop(), key)
            if status != 200 or b'"error":0' not in answer:
                raise RuntimeError(f"ingestion failed: {status} {answer[:200]!r}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def singles(port: int, key: str, bodies: list[bytes], concurrency: int) -> tuple[float, list[float]]:
    queue, latencies = list(reversed(bodies)), []

    async def worker():
        conn = await Conn(port).open()
        while queue:
            body = queue.pop()
            t0 = time.perf_counter()
            status, _ = await conn.post("/v1/interactions", body, key)
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"single post failed: {status}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


def duckdb_load(ndjson: Path, db: Path) -> float:
    started = time.perf_counter()
    con = duckdb.connect(str(db))
    con.execute(f"CREATE TABLE interactions AS SELECT * FROM read_json('{ndjson}', format='newline_delimited')")
    con.close()
    return time.perf_counter() - started


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--singles", type=int, default=20_000)
    parser.add_argument("--singles-only", action="store_true", help="(b) alone, on a fresh database")
    args = parser.parse_args()
    if args.singles_only:
        args.events = 0

    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    events = make_events(args.events)
    bodies = [orjson.dumps({"interactions": events[i:i + 1000]}) for i in range(0, len(events), 1000)]
    size = sum(len(b) for b in bodies)
    ndjson = work / "events.ndjson"
    ndjson.write_bytes(b"\n".join(orjson.dumps(e) for e in events))
    print(f"{len(events):,} events, {size / max(1, len(events)):.0f} bytes each on the wire")

    key = make_keys(work / "data", "bench")["bench"]
    server = Server(work / "data").start()
    try:
        http_s = asyncio.run(batched(server.port, key, bodies, concurrency=4)) if bodies else 0.0
        single_events = make_events(args.singles, seed=1)
        for e in single_events:
            e["id"] = "single-" + e["id"]
        single_bodies = [orjson.dumps({"interactions": [e]}) for e in single_events]
        single_s, latencies = asyncio.run(singles(server.port, key, single_bodies, concurrency=32))
        rss = peak_rss_mb(server.proc.pid)
    finally:
        server.stop()
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    single = (f"(b) single-item posts, concurrency 32: {len(latencies) / single_s:,.0f} req/s, "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms  [target >= 3,000 req/s, p99 < 25 ms]")  # fmt: skip
    if not events:
        print(single)
        return
    load_s = duckdb_load(ndjson, work / "baseline.duckdb")
    ours = len(events) / http_s
    base = len(events) / load_s
    print(f"(a) batched HTTP ingest, 1,000/batch, concurrency 4: {ours:,.0f} events/s to durable ack "
          f"({http_s:.2f} s)  [target >= 50,000]")
    print(f"    DuckDB read_json of the same NDJSON:           {base:,.0f} events/s ({load_s:.2f} s)")
    print(f"    ratio ours / DuckDB load:                      {ours / base:.2f}x  [target >= 0.3x]")
    print(single)
    print(f"(c) server peak RSS: {rss:,.0f} MB")
    print(f"    (machine: {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
