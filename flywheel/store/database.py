"""The one way into the DuckDB database.

DuckDB lets one process at a time hold the file (a second process cannot even read). So:
every open goes through `connect`/`open_connection`, which retries a lock conflict with bounded
backoff (tenacity); nobody keeps the file longer than one unit of work; and a process that has to wait
leaves a marker in `<db>.wait/`, so that a long-running writer (the ingestion service) can see
someone is waiting and hand the file over between two batches (`waiting`).
Migrations are applied on every read-write open.
A path ending in `.lake` (`settings.db_path` of a data folder with `[store] kind = "lake"`) opens
that folder's DuckLake lake instead (`flywheel.store.lake`), which several processes write at once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import tenacity

from flywheel.store import lake
from flywheel.store.migrations import LEDGER, MIGRATIONS

Connection = duckdb.DuckDBPyConnection


class StoreBusy(RuntimeError):
    """The database stayed locked by another process for longer than the timeout."""


class StoreMisconfigured(ValueError):
    """`[store]` names a store that cannot be the one found there (a lake's data path): no retry helps."""


def naive_utc(ts: datetime | None) -> datetime | None:
    """`ts` as the naive UTC every stored timestamp is (a naive `ts` is taken as UTC already)."""
    return ts.astimezone(UTC).replace(tzinfo=None) if ts is not None and ts.tzinfo else ts


def _is_lock_conflict(exc: BaseException) -> bool:
    text = str(exc)
    if isinstance(exc, duckdb.BinderException | duckdb.ConnectionException):
        # Another thread of this process holds the file read-only, or is opening or closing it, at
        # this instant (readers beside writers: measured with 6 threads, hundreds a second; the
        # gateway's alias refresh hit it in CI): it is over as soon as that one closes.
        return "Unique file handle conflict" in text or "different configuration" in text
    return isinstance(exc, duckdb.IOException) and ("Could not set lock" in text or "Conflicting lock" in text)


def _wait_dir(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + ".wait")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def waiting(db_path: Path) -> bool:
    """True when another live process is waiting to open the database (stale markers are removed)."""
    folder = _wait_dir(Path(db_path))
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return False
    me = os.getpid()
    for name in names:
        pid = int(name.split("-", 1)[0]) if name.split("-", 1)[0].isdigit() else -1
        if pid == me:
            continue
        if pid > 0 and pid_alive(pid):
            return True
        (folder / name).unlink(missing_ok=True)
    return False


def rollback(con: Connection) -> None:
    """End a failed transaction. A failed COMMIT has already rolled back; the ROLLBACK's own error
    must not hide the one that brought us here."""
    with contextlib.suppress(duckdb.Error):
        con.execute("ROLLBACK")


def migrate(con: Connection, translate=lambda sql: sql) -> list[int]:
    """Apply the migrations this database has not seen yet; return their versions.
    `translate` turns each statement into the backend's dialect (`flywheel.store.lake.lake_sql`)."""
    con.execute(translate(LEDGER))
    done = {v for (v,) in con.execute("SELECT version FROM schema_migrations").fetchall()}
    applied = []
    for version, name, sql in sorted(MIGRATIONS):
        if version in done:
            continue
        con.execute("BEGIN")
        try:
            con.execute(translate(sql))
            con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
            con.execute("COMMIT")
        except Exception:
            rollback(con)
            raise
        applied.append(version)
    return applied


def _connect_once(db_path: Path, read_only: bool) -> tuple[Connection, bool]:
    """One try at opening the file: (the connection, whether it is read-only)."""
    try:
        return duckdb.connect(str(db_path), read_only=read_only), read_only
    except duckdb.ConnectionException as exc:
        # This process already holds the file read-write (e.g. the service runs in a thread of
        # the demo): share that instance; a reader just doesn't write.
        if not (read_only and "different configuration" in str(exc)):
            raise
    return duckdb.connect(str(db_path), read_only=False), False


def is_lake(db_path: Path | str) -> bool:
    """Whether this `settings.db_path` names a lake rather than a DuckDB file."""
    return Path(db_path).suffix == ".lake"


@functools.cache
def _lock_wait_s(home: Path) -> float:
    from flywheel.settings import load_settings  # (here: the settings import much that the store does not need)

    return load_settings(home).store.lock_wait_s


def lock_wait_s(db_path: Path | str) -> float:
    """`[store] lock_wait_s` of the data folder holding `db_path`, read once per process."""
    return _lock_wait_s(Path(db_path).resolve().parent)


def open_connection(db_path: Path | str, *, read_only: bool = False, timeout_s: float | None = None,
                    raw: bool = False) -> Connection:
    """Open the database, retrying a lock held by another process for up to `timeout_s` (default:
    `[store] lock_wait_s`). A lake: see `flywheel.store.lake.open_connection` (`raw` is for its
    ingestion writer)."""
    timeout_s = lock_wait_s(db_path) if timeout_s is None else timeout_s
    if is_lake(db_path):
        return lake.open_connection(db_path, read_only=read_only, raw=raw, timeout_s=timeout_s)
    db_path = Path(db_path)
    if read_only and not db_path.exists():
        raise FileNotFoundError(f"no Flywheel database at {db_path} (run `flywheel init`)")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    marker: Path | None = None

    def announce(_: tenacity.RetryCallState) -> None:
        # Before the first wait: the process holding the file sees the marker (`waiting`) and
        # hands the file over between two of its batches.
        nonlocal marker
        if marker is None:
            marker = _wait_dir(db_path) / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            marker.parent.mkdir(exist_ok=True)
            marker.touch()

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_is_lock_conflict),
        stop=tenacity.stop_after_delay(timeout_s),
        # A random wait below a bound that starts at 10 ms and doubles up to 150 ms ("full jitter"):
        # short while the holder is about to let go, and waiting processes do not retry in step.
        wait=tenacity.wait_random_exponential(multiplier=0.01, max=0.15),
        before_sleep=announce,
    )
    try:
        con, read_only = retrying(_connect_once, db_path, read_only)
    except tenacity.RetryError as exc:
        raise StoreBusy(f"database {db_path} stayed locked by another process for {timeout_s:g} s") from (
            exc.last_attempt.exception()
        )
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)
    # Every timestamp we store is naive UTC; make DuckDB's own defaults (current_timestamp) agree.
    con.execute("SET TimeZone = 'UTC'")
    if not read_only:
        try:
            migrate(con)
        except Exception:
            con.close()
            raise
    return con


@contextmanager
def connect(db_path: Path | str, *, read_only: bool = False, timeout_s: float | None = None) -> Iterator[Connection]:
    """One unit of work on the database: open (with retries for up to `timeout_s`, default
    `[store] lock_wait_s`), yield, close."""
    timeout_s = lock_wait_s(db_path) if timeout_s is None else timeout_s
    if is_lake(db_path):
        with lake.connect(db_path, read_only=read_only, timeout_s=timeout_s) as con:
            yield con
        return
    con = open_connection(db_path, read_only=read_only, timeout_s=timeout_s)
    try:
        yield con
    finally:
        con.close()
