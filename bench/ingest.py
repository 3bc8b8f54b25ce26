"""Ingestion benchmark: prints figures, asserts nothing.

(a) batched ingestion over HTTP (batches of 1,000 ≈1 KB interactions, concurrency 4): events/s to
    durable ack, and the ratio to DuckDB's own `read_json` load of the same data as NDJSON;
(b) single-item posts at concurrency 32: req/s, p50/p99 latency;
(c) peak RSS of the server.
(d) `--overload`, alone: the sustainable rate of batched posts (closed loop), then an open loop
    at `--factor` (5) times it: p99 latency of the accepted requests against the unloaded one
    (one client, one request at a time), the share answered 503/429, `/healthz` p99 meanwhile,
    the server's peak RSS, and acknowledged-but-lost items (counted in DuckDB after shutdown).
(e) `--store lake`, alone: (a) and (b) side by side on the file store (one replica), and on a
    DuckLake lake (PostgreSQL catalog, local data folder; flywheel.store.lake) with 1 and with 2
    `flywheel serve` replicas sharing the load, each replica with its own clients; then
    acknowledged-but-lost items and ids stored twice, read back from each store.
The server is a real `flywheel serve` subprocess; the client is a lean asyncio HTTP/1.1 client
sending pre-serialized bodies, so it eats as little of the 2 cores as possible.

    .venv/bin/python bench/ingest.py [--events 200000]
    .venv/bin/python bench/ingest.py --overload [--batch 100] [--seconds 15] [--env FLYWHEEL_X=Y ...]
    .venv/bin/python bench/ingest.py --store lake [--events 50000] [--singles 5000] [--pin]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import Server, make_keys  # noqa: E402
from lake_services import Postgres, lake_home  # noqa: E402

from flywheel import store  # noqa: E402
from flywheel.settings import load_settings  # noqa: E402

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

    async def post(self, path: str, body: bytes, key: str, method: str = "POST") -> tuple[int, bytes]:
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        if not status_line:  # the server closed it (a kept-alive connection idle for too long)
            raise ConnectionResetError("closed by the server")
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


class Batches:
    """Bodies of `size` interactions with unique ids (`ov-N-J` for body N), built when sent from
    pre-serialized items: an overload run sends more bodies than fit in memory."""

    def __init__(self, size: int):
        self.size = size
        self.items = [orjson.dumps({k: v for k, v in e.items() if k != "id"})[1:] for e in make_events(997, seed=2)]
        self.n = 0

    def next(self) -> tuple[int, bytes]:
        n, self.n = self.n, self.n + 1
        items = (b'{"id":"ov-%d-%d",' % (n, j) + self.items[(n * self.size + j) % len(self.items)] for j in range(self.size))
        return n, b'{"interactions":[' + b",".join(items) + b"]}"


PROBE = """
import json, socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
sock, latencies = socket.create_connection(("127.0.0.1", port)), []
end = time.perf_counter() + seconds
while time.perf_counter() < end:
    t0 = time.perf_counter()
    sock.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: probe\\r\\n\\r\\n")
    data = b""
    while b"\\r\\n\\r\\n" not in data or not data.endswith(b"}"):
        data += sock.recv(65536)
    latencies.append(time.perf_counter() - t0)
    time.sleep(0.05)
print(json.dumps(latencies))
"""


def p99(latencies: list[float]) -> float:
    return sorted(latencies)[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan")


async def overload(port: int, key: str, batches: Batches, args) -> dict:
    """(d): unloaded latency, sustainable rate, then the open loop at `args.factor` times it."""
    acked: set[int] = set()  # bodies whose items were all acknowledged

    async def send(conn: Conn, batch: tuple[int, bytes] | None = None) -> tuple[int, float]:
        n, body = batch or batches.next()
        t0 = time.perf_counter()
        status, answer = await conn.post("/v1/interactions", body, key)
        if status == 200 and b'"error":0' in answer:
            acked.add(n)
        return status, time.perf_counter() - t0

    conn, unloaded = await Conn(port).open(), []
    end = time.perf_counter() + args.unloaded_seconds
    while time.perf_counter() < end:
        status, latency = await send(conn)
        assert status == 200, f"unloaded post answered {status}"
        unloaded.append(latency)

    done = 0

    async def closed_loop(end: float) -> None:
        nonlocal done
        conn = await Conn(port).open()
        while time.perf_counter() < end:
            status, _ = await send(conn)
            done += status == 200

    started = time.perf_counter()
    await asyncio.gather(*(closed_loop(started + args.seconds / 2) for _ in range(args.concurrency)))
    sustainable = done / (time.perf_counter() - started)

    rate, idle, tasks, outcomes = sustainable * args.factor, [], set(), []
    opened = 0

    async def one() -> None:
        nonlocal opened
        batch = batches.next()
        for _ in range(2):  # as a client does: a kept-alive connection the server closed is retried on a new one
            reused = bool(idle)
            if reused:
                conn = idle.pop()
            else:
                conn, opened = await Conn(port).open(), opened + 1
            try:
                outcomes.append(await send(conn, batch))
                idle.append(conn)
                return
            except (ConnectionError, asyncio.IncompleteReadError):
                if not reused:
                    break
        outcomes.append(("error", 0.0))

    probe = subprocess.Popen([sys.executable, "-c", PROBE, str(port), str(args.seconds)], stdout=subprocess.PIPE)
    started, sent = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - started) < args.seconds:
        while sent < int(elapsed * rate):
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(0.001)
    offered = sent / (time.perf_counter() - started)
    await asyncio.gather(*tasks)
    health = orjson.loads(probe.communicate()[0])
    return {"unloaded": unloaded, "sustainable": sustainable, "rate": rate, "offered": offered,
            "outcomes": outcomes, "health": health, "acked": acked, "connections": opened}  # fmt: skip


def lost_items(db: Path, acked: set[int], size: int) -> int:
    with duckdb.connect(str(db), read_only=True) as con:
        stored = {r[0] for r in con.execute("SELECT id FROM interactions WHERE id LIKE 'ov-%'").fetchall()}
    return sum(f"ov-{n}-{j}" not in stored for n in acked for j in range(size))


def report_overload(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    key = make_keys(work / "data", "bench")["bench"]
    env = dict(e.split("=", 1) for e in args.env)
    batches = Batches(args.batch)
    server = Server(work / "data", env=env).start()
    try:
        d = asyncio.run(overload(server.port, key, batches, args))
        rss = peak_rss_mb(server.proc.pid)
    finally:
        clean = server.stop()
    lost = lost_items(load_settings(work / "data").db_path, d["acked"], args.batch)
    outcomes = d["outcomes"]
    accepted = [t for s, t in outcomes if s == 200]
    share = {s: sum(o[0] == s for o in outcomes) / max(1, len(outcomes)) for s in (200, 503, 429)}
    other = 1 - sum(share.values())
    base = p99(d["unloaded"])
    size = len(batches.next()[1])
    print(f"(d) overload, batches of {args.batch} interactions ({size / 1000:.0f} kB), server env {env or 'defaults'}")
    print(f"    unloaded (one request at a time): p50 {statistics.median(d['unloaded']) * 1000:.1f} ms, "
          f"p99 {base:.1f} ms ({len(d['unloaded'])} requests)")
    print(f"    sustainable (closed loop, concurrency {args.concurrency}): {d['sustainable']:,.1f} req/s "
          f"= {d['sustainable'] * args.batch:,.0f} events/s")
    print(f"    overload: {args.factor:g}x = {d['rate']:,.1f} req/s for {args.seconds:g} s (offered {d['offered']:,.1f} "
          f"req/s = {d['offered'] / d['sustainable']:.1f}x; {len(outcomes):,} requests, {d['connections']} connections)")
    print(f"    answered: 200 {share[200]:.1%}, 503 {share[503]:.1%}, 429 {share[429]:.1%}, other {other:.1%}")
    print(f"    accepted p99 {p99(accepted):.1f} ms = {p99(accepted) / base:.2f}x unloaded  [target <= 2x]")
    print(f"    /healthz p99 {p99(d['health']):.1f} ms, max {max(d['health']) * 1000:.1f} ms "
          f"({len(d['health'])} probes)  [target < 100 ms]")
    print(f"    server peak RSS: {rss:,.0f} MB  [target <= 1,536 MB]")
    print(f"    acknowledged-but-lost: {lost} of {len(d['acked']) * args.batch:,} acknowledged items  [must be 0]"
          f"{'' if clean else '  (the server did not shut down gracefully)'}")
    print(f"    (machine: {os.cpu_count()} cores, shared: figures are noisy)")


def measure_store(home: Path, replicas: int, bodies: list[bytes], single_bodies: list[bytes], n_events: int,
                  pin: bool = False) -> dict:  # fmt: skip
    """(e) for one store: batches then single items, spread over `replicas` servers on `home`; `pin`:
    each replica's threads on a core of its own (a machine per replica), the rest unpinned."""
    key = make_keys(home, "bench")["bench"]
    servers = [Server(home).start() for _ in range(replicas)]
    for core, server in enumerate(servers if pin else []):
        for thread in os.listdir(f"/proc/{server.proc.pid}/task"):  # (threads started later inherit it)
            os.sched_setaffinity(int(thread), {core % os.cpu_count()})
    try:
        async def spread(work, share: list[bytes], concurrency: int):
            return await asyncio.gather(*(work(s.port, key, share[i::replicas], concurrency)
                                          for i, s in enumerate(servers)))  # fmt: skip

        started, cpu = time.perf_counter(), psutil.cpu_times()
        asyncio.run(spread(batched, bodies, 4))
        batch_s, busy = time.perf_counter() - started, _busy_share(cpu, psutil.cpu_times())
        started = time.perf_counter()
        latencies = [t for _, lat in asyncio.run(spread(singles, single_bodies, 32 // replicas)) for t in lat]
        single_s = time.perf_counter() - started
    finally:
        for s in servers:
            s.stop()
    with store.connect(load_settings(home).db_path, read_only=True) as con:
        seen, distinct = con.execute("SELECT count(*), count(DISTINCT id) FROM interactions").fetchone()
    return {"batch": n_events / batch_s, "single": len(latencies) / single_s, "p99": p99(latencies),
            "lost": n_events + len(single_bodies) - distinct, "twice": seen - distinct, "busy": busy}  # fmt: skip


def _busy_share(before, after) -> float:
    """The machine's CPU time used between two `psutil.cpu_times()`, as a share of all its cores:
    near 1.0 with one replica means a second one has no core to run on."""
    total = sum(after) - sum(before)
    return 1 - ((after.idle - before.idle) + (after.iowait - before.iowait)) / total if total > 0 else 0.0


def report_stores(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    events = make_events(args.events)
    bodies = [orjson.dumps({"interactions": events[i:i + 1000]}) for i in range(0, len(events), 1000)]
    single_bodies = [orjson.dumps({"interactions": [{**e, "id": "single-" + e["id"]}]})
                     for e in make_events(args.singles, seed=1)]  # fmt: skip
    postgres = Postgres().start()
    try:
        runs = [("file", 1, work / "file")]
        for n in (1, 2):
            runs.append(("lake: PostgreSQL catalog, local data", n,
                         lake_home(work / f"lake{n}", catalog=postgres.database(f"bench{n}"), data_path="lake-data/")))
        results = [(label, n, measure_store(home, n, bodies, single_bodies, len(events), args.pin))
                   for label, n, home in runs]  # fmt: skip
    finally:
        postgres.remove()
    print(f"(e) {len(events):,} events in batches of 1,000 (4 clients per replica), then {len(single_bodies):,} "
          f"single-item posts (32 clients in all); events/s to durable ack"
          + ("; each replica pinned to a core of its own" if args.pin else ""))
    print(f"    {'store':40} {'replicas':>8} {'batches ev/s':>13} {'CPU busy':>9} {'singles ev/s':>13} "
          f"{'singles p99':>12} {'lost':>5} {'stored twice':>13}")
    for label, n, r in results:
        print(f"    {label:40} {n:>8} {r['batch']:>13,.0f} {r['busy']:>9.0%} {r['single']:>13,.0f} {r['p99']:>9.1f} ms "
              f"{r['lost']:>5} {r['twice']:>13}")
    file, one, two = (r for _, _, r in results)
    print(f"    lake, 2 replicas / 1, batches: {two['batch'] / one['batch']:.2f}x  [target >= 1.5x];  "
          f"singles: {two['single'] / one['single']:.2f}x")
    print(f"    lake, 1 replica / file store, batches: {one['batch'] / file['batch']:.2f}x  [target >= 0.5x];  "
          f"singles: {one['single'] / file['single']:.2f}x")
    print(f"    (machine: {os.cpu_count()} cores, shared with the clients, the replicas and PostgreSQL: figures are noisy;"
          " CPU busy: the share of all cores in use during the batches)")


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
    parser.add_argument("--overload", action="store_true", help="(d) alone, on a fresh database")
    parser.add_argument("--batch", type=int, default=100, help="(d): interactions per request")
    parser.add_argument("--seconds", type=float, default=15, help="(d): length of the overload (sustainable: half)")
    parser.add_argument("--unloaded-seconds", type=float, default=4, help="(d): length of the unloaded measure")
    parser.add_argument("--concurrency", type=int, default=4, help="(d): clients measuring the sustainable rate")
    parser.add_argument("--factor", type=float, default=5, help="(d): the overload, times the sustainable rate")
    parser.add_argument("--env", nargs="*", default=[], metavar="FLYWHEEL_X=Y", help="(d): server settings")
    parser.add_argument("--store", choices=["lake"], help="(e) alone: the file store against a lake with 1 and 2 replicas")
    parser.add_argument("--pin", action="store_true", help="(e): each replica on a core of its own, as if on a "
                        "machine of its own (one replica then has one core, not the box)")
    args = parser.parse_args()
    if args.store:
        report_stores(args)
        return
    if args.overload:
        report_overload(args)
        return
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
