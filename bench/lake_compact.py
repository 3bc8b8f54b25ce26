"""The lake's stored-id check and compaction: prints figures, asserts nothing.

A lake (SQLite catalog, local folder) receives `--rows` interactions in commits of `--per-commit`
rows, as a replica's writer makes them, their `received_at` spread over `--days`; then the
writer's check for stored ids (`flywheel.store.lake.stored_keys`, 52 keys, 2 of them stored) is
timed reading the whole table and reading only the last 24 h / 1 h (`[store]
duplicate_check_hours`), before and after `flywheel.store.compact.compact`; the compaction's
report (files, snapshots) is printed between.

    .venv/bin/python bench/lake_compact.py [--rows 50000] [--per-commit 100] [--days 10]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import interaction
from lake_services import lake_home

from flywheel import store
from flywheel.ingest.interactions import write_interactions
from flywheel.ingest.records import Limits, interaction_row
from flywheel.settings import load_settings
from flywheel.store import lake
from flywheel.store.compact import compact


def check_ms(settings, keys, now: datetime) -> None:
    con = store.open_connection(settings.db_path, raw=True)
    for label, hours in (("whole table", None), ("last 24 h", 24), ("last 1 h", 1)):
        times = []
        for _ in range(11):
            con.execute("BEGIN")
            started = time.perf_counter()
            found = lake.stored_keys(con, "interactions", keys, since=None if hours is None else now - timedelta(hours=hours))
            times.append((time.perf_counter() - started) * 1000)
            con.execute("ROLLBACK")
        print(f"  stored-id check, {label:11s}: median {statistics.median(times):6.1f} ms, min {min(times):6.1f} ms "
              f"({len(found)} found)")
    con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--per-commit", type=int, default=100)
    parser.add_argument("--days", type=float, default=10.0)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="flywheel-lake-bench-"))
    settings = load_settings(lake_home(home, extra="keep_snapshots_hours = 0\n"))
    now = datetime.now(UTC).replace(tzinfo=None)
    template = interaction(0, task="support")
    limits = Limits(10_000, 20)
    commits = args.rows // args.per_commit
    con = store.open_connection(settings.db_path, raw=True)
    started = time.perf_counter()
    for c in range(commits):
        received = now - timedelta(days=args.days) * (1 - c / commits)
        write_interactions(con, [interaction_row(orjson.dumps({**template, "id": f"{c}-{i}"}), project="acme", redact=False,
                                                 limits=limits, now=received) for i in range(args.per_commit)],
                           append=True)  # fmt: skip
    con.close()
    print(f"{commits * args.per_commit} rows in {commits} commits over {args.days:g} days "
          f"({time.perf_counter() - started:.0f} s to write)")
    keys = [("acme", f"new-{i}") for i in range(50)] + [("acme", f"{commits - 1}-5"), ("acme", "3-7")]
    print("before compaction:")
    check_ms(settings, keys, now)
    started = time.perf_counter()
    report = compact(settings)
    print(f"compaction: {report.summary()} ({time.perf_counter() - started:.1f} s)")
    print("after compaction:")
    check_ms(settings, keys, now)
    shutil.rmtree(home)


if __name__ == "__main__":
    main()
