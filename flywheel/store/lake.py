"""The `lake` store: DuckLake, so that several `flywheel serve` replicas ingest into one store at once.

A DuckDB file has one writer process. A DuckLake lake keeps DuckDB's SQL and our tables, with its
catalog in PostgreSQL (or SQLite, for one host) and its rows as Parquet files in a folder or on
S3-compatible storage; each process appends in its own transaction. `[store] kind = "lake"` in
flywheel.toml (flywheel.settings.StoreSettings) selects it; `settings.db_path` is then
`<home>/flywheel.lake`, and `flywheel.store.connect` opens the lake that folder's settings name.

What differs from the file, and how it is absorbed here, in one place:
- The tables come from the same `MIGRATIONS`, translated by `lake_sql`: DuckLake has no PRIMARY
  KEY/UNIQUE constraints and only literal defaults. A `DEFAULT current_timestamp` column is
  created nullable and stamped when the unit of work that inserted the row ends (`_stamp`).
- Idempotency: without a key constraint, two replicas that receive the same interaction or
  feedback id at the same moment can both store it. Each replica's writer skips ids already
  stored among the rows received in the last `[store] duplicate_check_hours` (`stored_keys`, in
  its transaction: reading the whole table would grow with it), and every reader sees
  `interactions` and `feedback` through views that keep one row per (project, id), the earliest
  received (`_READ_VIEWS`), so a duplicate stored twice, at once or beyond the window, is
  counted, listed and curated once. Only the writer sees the stored rows as they are (`raw=True`).
- Every commit is a Parquet file and a snapshot: `flywheel.store.compact` merges and expires them.
- Opening costs ≈2 s (loading the extensions), so each process keeps one DuckDB instance with the
  lake attached and every unit of work is a cursor on it; there is no file lock to hand over.
- The extensions come from the `duckdb-ext-*` wheels on PyPI, built for one duckdb version
  (1.4.4): `extension_file` finds them for the running duckdb, or says what to install.
- A catalog that cannot be reached, or a commit that lost its race after DuckLake's own
  retries, is `StoreBusy`: the service answers 503 with Retry-After and acknowledges nothing.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

import duckdb
import tenacity

from flywheel.store.migrations import LEDGER, MIGRATIONS

T = TypeVar("T")
ALIAS = "lake"  # the name the lake is attached under

# Which wheel holds each extension DuckLake needs, by file name.
_WHEELS = {"ducklake": "duckdb-ext-ducklake", "sqlite_scanner": "duckdb-ext-sqlite",
           "postgres_scanner": "duckdb-ext-postgres", "httpfs": "duckdb-ext-httpfs"}

# The tables replicas write at once, read through views that keep one row per (project, id).
_READ_VIEWS = ("interactions", "feedback")

_KEY = re.compile(r",\s*PRIMARY KEY\s*\([^)]*\)|\s+PRIMARY KEY\b", re.IGNORECASE)
_NOW_DEFAULT = re.compile(r"\s+NOT NULL\s+DEFAULT\s+current_timestamp|\s+DEFAULT\s+current_timestamp", re.IGNORECASE)
_SET_NOT_NULL = re.compile(r"ALTER TABLE\s+\w+\s+ALTER COLUMN\s+\w+\s+SET NOT NULL\s*;", re.IGNORECASE)
_TABLE = re.compile(r"CREATE TABLE(?: IF NOT EXISTS)?\s+(\w+)\s*\((.*?)\n\s*\)", re.IGNORECASE | re.DOTALL)
_NOW_COLUMN = re.compile(r"^\s*(\w+)\s+TIMESTAMP\b[^,\n]*DEFAULT\s+current_timestamp", re.IGNORECASE | re.MULTILINE)


def lake_sql(sql: str) -> str:
    """A migration as DuckLake takes it: no key constraints, no `current_timestamp` defaults (those
    columns are stamped by `_stamp`), and no SET NOT NULL on a column added to a table with rows
    (DuckLake cannot check it; the code always sets those columns)."""
    return _SET_NOT_NULL.sub("", _NOW_DEFAULT.sub("", _KEY.sub("", sql)))


def stamped_columns(sqls: list[str]) -> list[tuple[str, str]]:
    """(table, column) of every `DEFAULT current_timestamp` column the statements create."""
    return [(table, col) for sql in sqls for table, body in _TABLE.findall(sql) for col in _NOW_COLUMN.findall(body)]


def extension_file(name: str) -> Path:
    """The extension's file from its `duckdb-ext-*` wheel, for the running duckdb and platform."""
    platform = duckdb.execute("PRAGMA platform").fetchone()[0]
    relative = Path("extensions") / f"v{duckdb.__version__}" / platform / f"{name}.duckdb_extension"
    spec = importlib.util.find_spec("duckdb_ext")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / relative).is_file():
            return Path(folder) / relative
    raise RuntimeError(
        f"store.kind = 'lake' needs the DuckDB extension {name!r} built for the running duckdb "
        f"{duckdb.__version__}, from the {_WHEELS[name]} wheel; those exist for duckdb 1.4.4 only: "
        f"pip install 'duckdb==1.4.4' '{_WHEELS[name]}==1.4.4.*'")


def _lost_race(exc: BaseException) -> bool:
    text = str(exc)
    return "database is locked" in text or "onflict" in text


def transient(exc: BaseException) -> bool:
    """A catalog that cannot be reached or a commit that lost a race: retry later, nothing is stored.
    The catalog's own failures (a PostgreSQL connection closed or refused) come through the
    extensions as a bare `duckdb.Error`; mistakes in our SQL or data have their own classes."""
    return type(exc) in (duckdb.Error, duckdb.IOException, duckdb.ConnectionException, duckdb.TransactionException,
                         duckdb.HTTPException) or _lost_race(exc)


class _Lake:
    """This process's DuckDB instance with the lake attached."""

    def __init__(self, home: Path):
        # (imported here: the settings are read once per process, when the lake is first opened)
        from flywheel.settings import load_settings

        cfg = load_settings(home).store
        self.db = duckdb.connect(":memory:")
        kind, location = cfg.catalog.split(":", 1)
        names = ["ducklake", "sqlite_scanner" if kind == "sqlite" else "postgres_scanner"]
        data_path = cfg.data_path
        if data_path.startswith("s3://"):
            names.append("httpfs")
        else:
            data_path = str((home / data_path).resolve()) + "/"  # (a relative folder is in the data folder)
            Path(data_path).mkdir(parents=True, exist_ok=True)
        if kind == "sqlite":
            location = str((home / location).resolve())
            Path(location).parent.mkdir(parents=True, exist_ok=True)
            # Write-ahead logging (kept in the file): readers no longer block a commit. In the
            # default journal mode every replica's reads of the catalog hold off a long commit
            # (a compaction's) until its retries run out.
            with contextlib.closing(sqlite3.connect(location)) as catalog:
                catalog.execute("PRAGMA journal_mode=WAL")
        for name in names:
            self.db.execute(f"LOAD '{extension_file(name)}'")
        if data_path.startswith("s3://"):
            self.db.execute(
                "CREATE SECRET lake_s3 (TYPE s3, KEY_ID $key, SECRET $secret, REGION $region, URL_STYLE $style,"
                " USE_SSL $ssl" + (", ENDPOINT $endpoint" if cfg.s3_endpoint else "") + ")",
                {"key": os.environ.get("AWS_ACCESS_KEY_ID", ""), "secret": os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
                 "region": cfg.s3_region, "style": cfg.s3_url_style, "ssl": cfg.s3_use_ssl}
                | ({"endpoint": cfg.s3_endpoint} if cfg.s3_endpoint else {}))
        try:
            self.db.execute(f"ATTACH 'ducklake:{kind}:{_quote(location)}' AS {ALIAS} (DATA_PATH '{_quote(data_path)}')")
        except duckdb.Error as exc:
            # (a bare duckdb.Error, as an unreachable catalog's: retrying it would only delay the message)
            if "does not match existing data path" not in str(exc):
                raise
            from flywheel.store.database import StoreMisconfigured

            raise StoreMisconfigured(f"store.data_path: {data_path!r} is not where the lake's catalog "
                                     f"({kind}:{location}) keeps its files: {str(exc).splitlines()[0]}") from None
        self.description = f"DuckLake: catalog {kind}:{location}, data {data_path}"
        self.settings = cfg
        self.migrated = False

    def cursor(self) -> duckdb.DuckDBPyConnection:
        con = self.db.cursor()
        con.execute(f"USE {ALIAS}")
        con.execute("SET TimeZone = 'UTC'")
        return con


def _quote(text: str) -> str:
    return text.replace("'", "''")


_lakes: dict[Path, _Lake] = {}
_lakes_lock = threading.Lock()


def _lake(locator: Path) -> _Lake:
    key = locator.resolve()
    with _lakes_lock:
        if key not in _lakes:
            _lakes[key] = _Lake(key.parent)
        return _lakes[key]


def forget(locator: Path) -> None:
    """Drop this process's instance (after the catalog failed): the next open attaches afresh.
    Cursors still in use keep the old one alive until they close."""
    with _lakes_lock:
        _lakes.pop(Path(locator).resolve(), None)


def retrying(locator: Path, timeout_s: float, work: Callable[[], T]) -> T:
    """`work()`, retried while the catalog is busy or away for up to `timeout_s` (jittered
    backoff, as the file store waits for its lock), then `StoreBusy`. A SQLite catalog answers
    "database is locked" to a commit while another process commits; DuckLake's own retries do
    not cover that. Between tries the instance is dropped, so a catalog that comes back is
    attached afresh."""
    from flywheel.store.database import StoreBusy

    def drop(state: tenacity.RetryCallState) -> None:
        if not _lost_race(state.outcome.exception()):
            forget(locator)

    try:
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(transient), stop=tenacity.stop_after_delay(timeout_s),
            wait=tenacity.wait_random_exponential(multiplier=0.01, max=0.25), before_sleep=drop)(work)
    except tenacity.RetryError as exc:
        forget(locator)
        raise StoreBusy(f"the lake's catalog is unreachable or busy ({timeout_s:.0f}s): "
                        f"{exc.last_attempt.exception()}") from exc.last_attempt.exception()


def _migrate(con: duckdb.DuckDBPyConnection) -> None:
    from flywheel.store.database import migrate, rollback

    try:
        migrate(con, translate=lake_sql)
    except duckdb.Error as exc:
        rollback(con)
        if "already exists" in str(exc):  # another replica created it meanwhile: look again
            raise duckdb.TransactionException(str(exc)) from exc
        raise


def open_connection(locator: Path | str, *, read_only: bool = False, raw: bool = False,
                    timeout_s: float = 30.0) -> duckdb.DuckDBPyConnection:
    """A cursor on the lake named by the settings of the data folder holding `locator`.
    raw=True: `interactions` and `feedback` as stored (the writer); else one row per (project, id)."""
    locator = Path(locator)

    def attempt() -> duckdb.DuckDBPyConnection:
        lake = _lake(locator)
        con = lake.cursor()
        try:
            if not read_only and not lake.migrated:
                _migrate(con)
                lake.migrated = True
                locator.write_text(f"This data folder's store is a lake ({lake.description}); see [store] in flywheel.toml.\n")
            if not raw:
                for table in _READ_VIEWS:
                    con.execute(f"CREATE TEMP VIEW {table} AS SELECT * FROM {ALIAS}.main.{table}"
                                " QUALIFY row_number() OVER (PARTITION BY project, id ORDER BY received_at) = 1")
        except BaseException:
            con.close()
            raise
        return con

    return retrying(locator, timeout_s, attempt)


def duplicate_window(locator: Path | str) -> timedelta:
    """How far back, by `received_at`, the writer looks for ids it is about to store
    (`[store] duplicate_check_hours` of the lake's data folder)."""
    return timedelta(hours=_lake(Path(locator)).settings.duplicate_check_hours)


def stored_keys(con: duckdb.DuckDBPyConnection, table: str, keys: list[tuple[str, str]], *,
                since: datetime | None = None) -> set[tuple[str, str]]:
    """Which of these (project, id) the lake's `table` already holds among the rows received from
    `since` on (the writer skips them). Without `since` the whole table is read, which grows
    with it; a window reads only the data files whose `received_at` range reaches into it
    (DuckLake keeps each file's min/max). At 50k rows in 500 files, on 2 busy cores: ≈260 ms
    whole, ≈85 ms for the last hour, ≈40 ms once compacted (bench/lake_compact.py)."""
    if not keys:
        return set()
    import pyarrow as pa

    wanted = pa.table({"project": [k[0] for k in keys], "id": [k[1] for k in keys]})  # noqa: F841
    window = "" if since is None else " WHERE received_at >= $since"
    return set(con.execute(f"SELECT DISTINCT project, id FROM {ALIAS}.main.{table} SEMI JOIN wanted USING (project, id){window}",
                           {} if since is None else {"since": since}).fetchall())


_STAMPED = dict(stamped_columns([LEDGER, *(sql for _, _, sql in MIGRATIONS)]))
# DuckLake's own tables in the catalog, read directly: ≈5 ms where its table functions take ≈30.
_META = f"__ducklake_metadata_{ALIAS}"


def _snapshot(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute(f"SELECT max(snapshot_id) FROM {_META}.ducklake_snapshot").fetchone()[0]


def _stamp(con: duckdb.DuckDBPyConnection, since: int) -> None:
    """Give rows inserted since snapshot `since` their `current_timestamp` default (DuckLake has
    only literal defaults): a cheap look at the catalog when nothing was inserted into those
    tables, else one UPDATE per table. A replica stamping the same rows at once wins the race."""
    if _snapshot(con) == since:
        return
    touched = {name for (name,) in con.execute(
        f"SELECT DISTINCT t.table_name FROM {ALIAS}.snapshots() s, unnest(s.changes['tables_inserted_into']) AS i(id)"
        f" JOIN {_META}.ducklake_table t ON t.table_id = i.id::BIGINT AND t.end_snapshot IS NULL"
        " WHERE s.snapshot_id > ?", [since]).fetchall()}  # fmt: skip
    for table in touched & _STAMPED.keys():
        column = _STAMPED[table]
        try:
            con.execute(f"UPDATE {ALIAS}.main.{table} SET {column} = now()::TIMESTAMP WHERE {column} IS NULL")
        except duckdb.Error as exc:
            if not transient(exc):
                raise


@contextmanager
def connect(locator: Path | str, *, read_only: bool = False, timeout_s: float = 30.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """One unit of work on the lake: a cursor, the rows it inserted stamped at the end, closed."""
    con = open_connection(locator, read_only=read_only, timeout_s=timeout_s)
    try:
        since = None if read_only else _snapshot(con)
        yield con
        if since is not None:
            _stamp(con, since)
    finally:
        con.close()
