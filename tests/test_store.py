"""The DuckDB store: migrations on open, lock conflicts retried with bounded backoff, batched writes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from flywheel import store
from flywheel.ingest.interactions import read_interactions, write_feedback, write_interactions
from flywheel.store.migrations import MIGRATIONS
from flywheel.store import rows
from flywheel.ingest.records import Limits, feedback_row, interaction_row

HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def hold(db, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_migrations_apply_once_in_order(tmp_path):
    db = tmp_path / "f.duckdb"
    with store.connect(db) as con:
        versions = [v for (v,) in con.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()]
        assert store.migrate(con) == []
    assert versions == sorted(m[0] for m in MIGRATIONS)
    with store.connect(db, read_only=True) as con:
        tables = {t for (t,) in con.execute("SHOW TABLES").fetchall()}
    assert {"interactions", "feedback", "api_keys", "datasets", "models"} <= tables


@pytest.mark.parametrize("table, row", [("interactions", rows.InteractionRow), ("feedback", rows.FeedbackRow)])
def test_migrated_tables_have_the_declared_columns_in_order(tmp_path, table, row):
    """The migrations are history (never edited) and the writes go by position (INSERT … SELECT *):
    the table they made must match the row declared in `flywheel.store.rows`, column by column."""
    with store.connect(tmp_path / "f.duckdb") as con:
        stored = con.execute(
            "SELECT column_name, data_type, is_nullable = 'YES' FROM information_schema.columns"
            " WHERE table_name = ? ORDER BY ordinal_position", [table]).fetchall()  # fmt: skip
    assert stored == [(c.name, c.sql, c.nullable) for c in rows.columns(row)]


def test_lock_held_by_another_process_is_waited_for(tmp_path):
    db = tmp_path / "f.duckdb"
    with store.connect(db):
        pass
    proc = hold(db, 1.0)
    started = time.monotonic()
    assert store.waiting(db) is False
    with store.connect(db, timeout_s=30) as con:
        waited = time.monotonic() - started
        assert con.execute("SELECT 1").fetchone() == (1,)
    proc.wait()
    assert 0.5 < waited < 10
    assert not list((tmp_path / "f.duckdb.wait").iterdir()), "the waiting marker was left behind"


def test_lock_held_too_long_is_a_clear_error(tmp_path):
    db = tmp_path / "f.duckdb"
    with store.connect(db):
        pass
    proc = hold(db, 3.0)
    with pytest.raises(store.StoreBusy, match="locked by another process"):
        store.open_connection(db, timeout_s=0.3)
    proc.kill()
    proc.wait()


def test_the_wait_for_a_held_store_is_the_data_folders_lock_wait_s(tmp_path):
    (tmp_path / "flywheel.toml").write_text("[store]\nlock_wait_s = 0.3\n")
    db = tmp_path / "flywheel.duckdb"
    with store.connect(db):
        pass
    proc = hold(db, 5.0)
    with pytest.raises(store.StoreBusy, match="for 0.3 s"):
        with store.connect(db):
            pass
    proc.kill()
    proc.wait()


def test_threads_of_one_process_open_and_close_the_file_at_once(tmp_path):
    # Readers beside writers in one process (the service's alias refresh beside its writer): DuckDB
    # refuses an open while another thread's instance of the same file is being set up or torn down
    # ("Unique file handle conflict", "different configuration"). It passes at once: waited for.
    import threading

    path = tmp_path / "f.duckdb"
    with store.connect(path):
        pass
    errors = []

    def work(read_only: bool) -> None:
        for _ in range(300):
            try:
                with store.connect(path, read_only=read_only, timeout_s=10) as con:
                    con.execute("SELECT 1").fetchall()
            except Exception as exc:  # noqa: BLE001 (each one is the failure this test looks for)
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_read_only_needs_an_existing_database(tmp_path):
    with pytest.raises(FileNotFoundError, match="flywheel init"):
        store.open_connection(tmp_path / "missing.duckdb", read_only=True)


def test_batched_writes_are_idempotent(tmp_path):
    limits = Limits(1000, 10)
    raw = [b'{"id": "a%d", "task": "t", "model": "m", "prompt": "p", "response": "r"}' % i for i in range(3)]
    rows = [interaction_row(r, project="p1", redact=False, limits=limits) for r in raw]
    with store.connect(tmp_path / "f.duckdb") as con:
        assert write_interactions(con, rows) == {("p1", "a0"), ("p1", "a1"), ("p1", "a2")}
        assert write_interactions(con, rows) == set()
        fb = [feedback_row(b'{"interaction_id": "%s", "kind": "thumbs", "value": true}' % i, project="p1",
                           redact=False, limits=limits) for i in (b"a0", b"zz")]  # fmt: skip
        new, unknown = write_feedback(con, fb)
        assert len(new) == 1 and unknown == {("p1", "zz")}
        page, cursor = read_interactions(con, project="p1", limit=2)
        assert [r["id"] for r in page] == ["a0", "a1"] or len(page) == 2
        assert cursor is not None
        assert read_interactions(con, project="other")[0] == []


def test_append_refuses_a_stored_id_and_writes_nothing_of_that_batch(tmp_path):
    import duckdb

    limits = Limits(1000, 10)
    raw = [b'{"id": "b%d", "task": "t", "model": "m", "prompt": "p", "response": "r"}' % i for i in range(3)]
    rows = [interaction_row(r, project="p1", redact=False, limits=limits) for r in raw]
    with store.connect(tmp_path / "f.duckdb") as con:
        assert write_interactions(con, rows[:1], append=True) is None
        with pytest.raises(duckdb.ConstraintException):  # b0 is stored: the writer redoes such a batch
            write_interactions(con, rows, append=True)
        assert write_interactions(con, rows) == {("p1", "b1"), ("p1", "b2")}
        assert con.execute("SELECT count(*) FROM interactions").fetchone() == (3,)
