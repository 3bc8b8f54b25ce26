"""The single writer: every item the service acknowledges goes through here into DuckDB.

Requests hand over validated rows and wait; one thread takes everything pending (group commit),
writes it in one transaction and only then answers, so an acknowledged item is committed. The
queue is bounded (callers get `QueueFull` and answer 503; serving.admission refuses at the door
already, before a body is read, once the queue is full). The thread keeps the database open
while busy, closes it when idle, and hands it over between two batches whenever another process
waits for it (see `flywheel.store.waiting`), so curation and the CLI can read while we ingest.

Two measured costs shape the commit (DuckDB 2.0, 2 cores, ≈1.2 KB rows):
- A checkpoint runs inside the COMMIT that pushes the WAL past `checkpoint_threshold` (16 MB by
  default): 70-550 ms every ≈13k rows, ≈10 µs per row in all, and a stall for every request
  waiting on that commit. We raise the threshold, so the checkpoint mostly happens when the
  connection closes (idle, hand-over, shutdown): one ≈1 s checkpoint per 256 MB instead.
- `INSERT … ON CONFLICT DO NOTHING` costs ≈4 ms per statement; ids are almost always new, so
  the batch is appended with a plain INSERT and redone the skipping way only when the primary
  key refuses it (see `flywheel.ingest.interactions`).

On a lake (`flywheel.store.lake`) there is no key to refuse a stored id and no file to hand over:
the batch first drops the ids the lake holds already, in the same transaction, then appends; a
commit the catalog refuses (unreachable, or a race lost after DuckLake's retries) fails the batch
with `StoreBusy`: every request in it is answered 503 at once, nothing acknowledged. The check
for stored ids reads only the rows received in the last `[store] duplicate_check_hours`.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from flywheel import store
from flywheel.ingest.interactions import warm_up, write_feedback, write_interactions
from flywheel.store import lake
from flywheel.store.rows import FeedbackRow, InteractionRow
from serving import metrics

log = logging.getLogger("flywheel.writer")


class QueueFull(RuntimeError):
    """More items are waiting for the writer than the configured limit."""


@dataclass
class Outcome:
    """What happened to one request's rows: for each row (in order) whether it was stored now
    (False: its id was already stored, or came earlier), and for feedback the (project,
    interaction_id) that do not exist."""

    stored: list[bool]
    unknown: set[tuple] = field(default_factory=set)


Row = InteractionRow | FeedbackRow


@dataclass
class _Job:
    kind: str  # interactions | feedback
    rows: list[Row]
    future: Future


class Writer:
    def __init__(self, db_path: Path, *, max_queue_items: int, max_batch_items: int,
                 idle_close_s: float = 0.5, handover_wait_s: float = 2.0, checkpoint_mb: int = 256,
                 lake_retry_s: float = 5.0):
        self.db_path = Path(db_path)
        self.lake = store.is_lake(db_path)
        self.max_queue_items = max_queue_items
        self.max_batch_items = max_batch_items
        self.idle_close_s = idle_close_s
        self.handover_wait_s = handover_wait_s
        self.checkpoint_mb = checkpoint_mb
        self.lake_retry_s = lake_retry_s  # a lake: how long a batch retries a busy or unreachable catalog
        self._jobs: deque[_Job] = deque()  # (a backlog of many small requests: popleft is O(1))
        self._pending_items = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._con: store.Connection | None = None
        self._thread = threading.Thread(target=self._run, name="flywheel-writer", daemon=True)

    def start(self) -> None:
        """Start the thread. Called once the service is built, it also tunes the process for a
        latency-sensitive writer (measured on single-item posts at concurrency 32)."""
        warm_up()
        # The service's long-lived objects (modules, app, settings, pyarrow's lazy imports) exist
        # now: take them out of the garbage collector's view. Otherwise each full collection
        # walks ≈130k objects, 55 ms every ≈0.5 s under load, and stalls every request in flight.
        gc.freeze()
        # Every DuckDB call gives the GIL up and must take it back; while requests keep the event
        # loop busy, Python hands it over only every switch interval (5 ms by default), which
        # can multiply the time of a small commit. 1 ms costs the event loop little.
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
        self._thread.start()

    def stop(self) -> None:
        """Write everything already accepted, then close the database."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    @property
    def pending_items(self) -> int:
        return self._pending_items

    def submit(self, kind: str, rows: list[Row]) -> Future:
        """Queue rows for the next commit; the future resolves to an `Outcome` once committed."""
        future: Future = Future()
        # Running from the start, so it cannot be cancelled: a request that stops waiting (ack
        # timeout) cancels its asyncio wrapper, and a cancelled future would make the writer's
        # set_result raise and end its thread; the rows are committed all the same.
        future.set_running_or_notify_cancel()
        with self._cond:
            if self._stopping:
                raise QueueFull("the service is shutting down")
            if self._pending_items + len(rows) > self.max_queue_items:
                raise QueueFull(f"{self._pending_items} items are waiting to be written (limit {self.max_queue_items})")
            self._jobs.append(_Job(kind, rows, future))
            self._pending_items += len(rows)
            metrics.QUEUE_ITEMS.set(self._pending_items)
            self._cond.notify()
        return future

    def _take(self) -> list[_Job] | None:
        with self._cond:
            if not self._jobs and not self._stopping:
                self._cond.wait(timeout=self.idle_close_s)
            if not self._jobs:
                return None
            taken, n = [], 0
            while self._jobs and (not taken or n + len(self._jobs[0].rows) <= self.max_batch_items):
                job = self._jobs.popleft()
                taken.append(job)
                n += len(job.rows)
            return taken

    def _release(self, n_items: int) -> None:
        with self._cond:
            self._pending_items -= n_items
            metrics.QUEUE_ITEMS.set(self._pending_items)

    def _close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                self._close()  # idle: let other processes in
                if self._stopping:
                    return
                continue
            try:
                self._commit(jobs)
            finally:
                self._release(sum(len(j.rows) for j in jobs))
            if store.waiting(self.db_path):
                self._hand_over()

    def _hand_over(self) -> None:
        self._close()
        deadline = time.monotonic() + self.handover_wait_s
        while store.waiting(self.db_path) and time.monotonic() < deadline:
            time.sleep(0.005)
        metrics.HANDOVERS.inc()

    def _commit(self, jobs: list[_Job]) -> None:
        """Write all jobs in one transaction; if that fails, each job alone, so one bad job
        fails only its own request. Unless the store itself failed (`StoreBusy`: locked too
        long, or a lake's catalog unreachable after `lake_retry_s`): trying each job alone would
        only wait that long again per request, so every request gets its 503 now."""
        started = time.perf_counter()
        try:
            outcomes = self._write(jobs)
        except store.StoreBusy as exc:
            log.warning("batch of %d requests not written, the store is unavailable: %s", len(jobs), exc)
            for job in jobs:
                job.future.set_exception(exc)
            return
        except Exception:
            log.exception("batch of %d requests failed; retrying them one by one", len(jobs))
            for job in jobs:
                try:
                    (outcome,) = self._write([job])
                    job.future.set_result(outcome)
                except Exception as exc:
                    job.future.set_exception(exc)
            return
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        for job, outcome in zip(jobs, outcomes):
            job.future.set_result(outcome)

    def _connection(self) -> store.Connection:
        if self._con is None:
            self._con = store.open_connection(self.db_path, timeout_s=self.lake_retry_s if self.lake else 60.0, raw=True)
            if not self.lake:
                self._con.execute(f"SET checkpoint_threshold = '{self.checkpoint_mb}MB'")
        return self._con

    def _write(self, jobs: list[_Job]) -> list[Outcome]:
        # A retried id may arrive twice in one batch: only its first occurrence is written.
        seen: set[tuple] = set()
        rows: dict[str, list[Row]] = {"interactions": [], "feedback": []}
        firsts: list[list[bool]] = []  # per job, per row: the first occurrence of its key
        for job in jobs:
            first = []
            for row in job.rows:
                key = (job.kind, row.project, row.id)
                first.append(key not in seen)
                if first[-1]:
                    seen.add(key)
                    rows[job.kind].append(row)
            firsts.append(first)
        try:
            if self.lake:
                new, unknown = self._insert_lake(rows)
            else:
                con = self._connection()
                try:
                    new, unknown = self._insert(con, rows, append=True)  # new is None: all were new
                except duckdb.ConstraintException:  # some id is stored already (a retry): skip those
                    new, unknown = self._insert(con, rows, append=False)
        except Exception:
            self._close()  # a broken connection: start clean next time
            raise
        outcomes = []
        for job, first in zip(jobs, firsts):
            if new is None:
                stored = first
            else:  # a new key is credited to the first row that carried it
                stored = [f and (r.project, r.id) in new[job.kind] for r, f in zip(job.rows, first)]
            outcome = Outcome(stored=stored)
            if job.kind == "feedback":
                outcome.unknown = {(r.project, r.interaction_id) for r in job.rows} & unknown
            outcomes.append(outcome)
        return outcomes

    def _insert_lake(self, rows: dict[str, list[Row]]) -> tuple[dict, set]:
        """One lake transaction: skip the ids stored already, append the rest; ({kind: new keys},
        unknown feedback targets). Another replica may store the same id at the same moment:
        the lake's readers keep one row per id (see `flywheel.store.lake`)."""

        def attempt() -> tuple[dict, set]:
            con = self._connection()
            con.execute("BEGIN")
            try:
                fresh = {}
                window = lake.duplicate_window(self.db_path)
                for kind, kind_rows in rows.items():
                    since = min(r.received_at for r in kind_rows) - window if kind_rows else None
                    stored = lake.stored_keys(con, kind, [(r.project, r.id) for r in kind_rows], since=since)
                    fresh[kind] = [r for r in kind_rows if (r.project, r.id) not in stored]
                write_interactions(con, fresh["interactions"], append=True)
                _, unknown = write_feedback(con, fresh["feedback"], append=True)
                con.execute("COMMIT")
            except Exception:
                store.rollback(con)
                self._close()  # the next try starts on a fresh cursor
                raise
            # (feedback about an unknown interaction was not written)
            return {"interactions": {(r.project, r.id) for r in fresh["interactions"]},
                    "feedback": {(r.project, r.id) for r in fresh["feedback"] if (r.project, r.interaction_id) not in unknown}
                    }, unknown  # fmt: skip

        return lake.retrying(self.db_path, self.lake_retry_s, attempt)

    @staticmethod
    def _insert(con: store.Connection, rows: dict[str, list[Row]], append: bool) -> tuple[dict | None, set]:
        """One transaction; returns ({kind: new keys}, or None when append; unknown feedback targets)."""
        if append and not rows["feedback"]:
            # The common case in a single DuckDB call, its own transaction (autocommit): each
            # call costs a GIL hand-over, see `start`.
            write_interactions(con, rows["interactions"], append=True)
            return None, set()
        con.execute("BEGIN")
        try:
            new_interactions = write_interactions(con, rows["interactions"], append=append)
            new_feedback, unknown = write_feedback(con, rows["feedback"], append=append)
            con.execute("COMMIT")
        except Exception:
            store.rollback(con)
            raise
        return (None if append else {"interactions": new_interactions, "feedback": new_feedback}), unknown
