"""Compaction: the lake's maintenance, so that a busy lake does not grow into thousands of small files.

Every commit to a DuckLake lake writes at least one Parquet file and one snapshot, and each
replica's writer commits once per batch: a day of traffic is thousands of files, and every
query pays catalog work and a file open per file (the stored-id check at 50k rows in 507 files:
≈150-260 ms; in 8 files: ≈40-60 ms; bench/lake_compact.py). `compact` runs DuckLake's own
maintenance, in this order:
1. `ducklake_merge_adjacent_files`: rewrites runs of small files of a table into few large ones
   (the rows and their order stay; the replaced files are scheduled for deletion);
2. `ducklake_expire_snapshots`: forgets snapshots older than `[store] keep_snapshots_hours`
   (time travel reaches back that far, no further);
3. `ducklake_cleanup_old_files`: deletes the scheduled files no snapshot uses any more, once they
   have been unused for `keep_snapshots_hours` too, so a reader that started on an older snapshot
   finishes its query.
Each step is one catalog transaction that replicas' commits run beside: DuckLake lets a merge and
appends to the same table commit in either order (the appended files are not among those
merged), and a step that loses a race all the same is retried like any lake transaction
(`flywheel.store.lake.retrying`; a SQLite catalog needs its write-ahead log for that, which
`flywheel.store.lake` turns on). Safe to run while replicas ingest, and on a schedule
(`pipelines.compact`) or by hand (`flywheel compact`).

The file store has nothing to compact: DuckDB checkpoints its one file whenever the writer closes
it (idle, hand-over, shutdown), so `compact` there reports that and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flywheel import store
from flywheel.settings import Settings
from flywheel.store import lake


@dataclass(frozen=True)
class CompactionReport:
    """What a compaction did. Files are the tables' live data files, as the catalog lists them."""

    store: str  # file | lake
    files_before: int = 0
    files_after: int = 0
    snapshots_before: int = 0
    snapshots_after: int = 0
    files_deleted: int = 0  # data files removed from storage (replaced earlier, unused long enough)

    @property
    def snapshots_expired(self) -> int:
        return self.snapshots_before - self.snapshots_after

    def summary(self) -> str:
        if self.store == "file":
            return "the file store has nothing to compact: DuckDB checkpoints its file whenever the writer closes it"
        return (f"data files {self.files_before} -> {self.files_after}; snapshots {self.snapshots_before} -> "
                f"{self.snapshots_after} ({self.snapshots_expired} expired); {self.files_deleted} old files deleted")


def _counts(con: store.Connection) -> tuple[int, int]:
    meta = f"__ducklake_metadata_{lake.ALIAS}"
    return con.execute(f"SELECT (SELECT count(*) FROM {meta}.ducklake_data_file WHERE end_snapshot IS NULL),"
                       f" (SELECT count(*) FROM {meta}.ducklake_snapshot)").fetchone()  # fmt: skip


def compact(settings: Settings, *, timeout_s: float = 60.0) -> CompactionReport:
    """Merge the lake's small files, expire old snapshots, delete the files nothing uses (see the module)."""
    if settings.store.kind != "lake":
        return CompactionReport(store="file")
    keep = timedelta(hours=settings.store.keep_snapshots_hours)
    name = f"'{lake.ALIAS}'"

    def step(sql: str, **params) -> int:
        """One maintenance call, retried while the catalog is busy; how many rows it answered."""

        def attempt() -> int:
            with store.connect(settings.db_path, timeout_s=timeout_s) as con:
                return len(con.execute(sql, params).fetchall())

        return lake.retrying(settings.db_path, timeout_s, attempt)

    with store.connect(settings.db_path, read_only=True, timeout_s=timeout_s) as con:
        files_before, snapshots_before = _counts(con)
    step(f"CALL ducklake_merge_adjacent_files({name})")
    before = datetime.now(UTC) - keep
    step(f"CALL ducklake_expire_snapshots({name}, older_than => $before)", before=before)
    deleted = step(f"CALL ducklake_cleanup_old_files({name}, older_than => $before)", before=before)
    with store.connect(settings.db_path, read_only=True, timeout_s=timeout_s) as con:
        files_after, snapshots_after = _counts(con)
    return CompactionReport("lake", files_before, files_after, snapshots_before, snapshots_after, deleted)
