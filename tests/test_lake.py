"""The `lake` store (flywheel.store.lake): DuckLake with a SQLite or PostgreSQL catalog, written by
several real `flywheel serve` replicas at once; reads and curation see each id once; a replica
killed with SIGKILL loses no acknowledged event; an unreachable catalog is a 503 with Retry-After.

These need duckdb 1.4.x and the `duckdb-ext-*` wheels (the DuckLake extension exists for 1.4.4
only), and PostgreSQL for the catalog tests (tests/lake_services.py).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import duckdb
import httpx
import orjson
import pytest
from conftest import Server, auth, interaction, make_keys
from lake_services import Postgres, S3Server, lake_home

from flywheel import store
from flywheel.curate.pipeline import CurationConfig, curate
from flywheel.ingest.interactions import read_interactions, write_interactions
from flywheel.ingest.records import Limits, interaction_row
from flywheel.settings import load_settings
from flywheel.status import task_overview
from flywheel.store import lake, rows
from flywheel.store.compact import compact
from serving.writer import Writer

LIMITS = Limits(10_000, 20)


def row(i: int | str, received_at: datetime, **extra) -> rows.InteractionRow:
    return interaction_row(orjson.dumps(interaction(i, task="support", **extra)), project="acme", redact=False,
                           limits=LIMITS, now=received_at)


@pytest.mark.parametrize("toml, message", [
    ('[store]\nkind = "lake"\ndata_path = "d/"\n', "store.catalog: a lake needs"),
    ('[store]\nkind = "lake"\ncatalog = "mysql:db"\ndata_path = "d/"\n', "store.catalog: a lake needs"),
    ('[store]\nkind = "lake"\ncatalog = "sqlite:c.sqlite"\n', "store.data_path: a lake needs"),
    ('[store]\nkind = "lakehouse"\n', "store.kind"),
])  # fmt: skip
def test_a_lake_without_its_location_is_refused_when_settings_load(tmp_path, toml, message):
    (tmp_path / "flywheel.toml").write_text(toml)
    with pytest.raises(ValueError, match=message):
        load_settings(tmp_path)


@pytest.mark.parametrize("table, declared", [("interactions", rows.InteractionRow), ("feedback", rows.FeedbackRow)])
def test_lake_tables_come_from_the_same_migrations(tmp_path, table, declared):
    """One definition for both backends: the lake's tables have the declared columns and
    nullability, without the key constraints DuckLake lacks."""
    settings = load_settings(lake_home(tmp_path))
    with store.connect(settings.db_path) as con:
        stored = con.execute(
            "SELECT column_name, data_type, is_nullable = 'YES' FROM information_schema.columns"
            " WHERE table_catalog = 'lake' AND table_name = ? ORDER BY ordinal_position", [table]).fetchall()  # fmt: skip
        versions = [v for (v,) in con.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()]
    assert stored == [(c.name, c.sql, c.nullable) for c in rows.columns(declared)]
    assert versions == sorted(versions) and len(versions) == len(set(versions)) >= 7
    assert "PRIMARY KEY" not in lake.lake_sql("CREATE TABLE t (a INT PRIMARY KEY, b INT, PRIMARY KEY (a, b)\n)")


@pytest.fixture(scope="module")
def postgres():
    """One PostgreSQL server for the module; each test makes its own catalog database in it."""
    server = Postgres().start()
    yield server
    server.remove()


def catalog(kind: str, postgres: Postgres, name: str) -> str:
    return "sqlite:lake/catalog.sqlite" if kind == "sqlite" else postgres.database(name)


def test_a_racing_duplicate_is_read_and_curated_once(tmp_path, postgres):
    """Two replicas that receive the same id at the same moment both store it (DuckLake has no key
    to refuse the second, and PostgreSQL lets both transactions commit): every read keeps the
    earliest received row, and curation sees it once. (With a SQLite catalog the second commit
    is refused while the first holds the catalog; its retry finds the id and skips it.)"""
    settings = load_settings(lake_home(tmp_path, catalog=postgres.database("race")))
    t0 = datetime(2026, 11, 2, 9, 0)
    first = row("race", t0, response="shipping")
    second = row("race", t0 + timedelta(seconds=1), response="billing, this reply differs",
                 messages=[{"role": "user", "content": "A different question under the same id"}])
    with store.connect(settings.db_path):  # (migrations)
        pass
    a = store.open_connection(settings.db_path, raw=True)  # the writers' connections
    write_interactions(a, [row(i, t0) for i in range(12)], append=True)  # the traffic around it, for curation
    write_interactions(a, [row("early", t0)], append=True)  # stored before the race: both skip it
    b = store.open_connection(settings.db_path, raw=True)
    for con in (a, b):
        con.execute("BEGIN")
    # Each replica's writer looks for the id in its own transaction, before the other commits.
    assert lake.stored_keys(a, "interactions", [("acme", "race"), ("acme", "early")]) == {("acme", "early")}
    assert lake.stored_keys(b, "interactions", [("acme", "race")]) == set()
    write_interactions(a, [first], append=True)
    write_interactions(b, [second], append=True)
    a.execute("COMMIT")
    b.execute("COMMIT")
    assert a.execute("SELECT count(*) FROM lake.main.interactions WHERE id = 'race'").fetchone() == (2,)
    a.close(), b.close()

    with store.connect(settings.db_path, read_only=True) as con:
        assert con.execute("SELECT count(*), any_value(response) FROM interactions WHERE id = 'race'").fetchone() == (1, "shipping")
        page, _ = read_interactions(con, project="acme", task="support", limit=100)
        assert [r["id"] for r in page].count("race") == 1 and len(page) == 14
        assert task_overview(con)[0][:3] == ("acme", "support", 14)
    version = curate(settings, project="acme", task="support", config=CurationConfig(min_examples=5, eval_fraction=0.0))
    with store.connect(settings.db_path, read_only=True) as con:
        lineage = [i for (i,) in con.execute("SELECT interaction_id FROM dataset_interactions WHERE dataset_id = ?",
                                             [version.id]).fetchall()]  # fmt: skip
        created = con.execute("SELECT created_at FROM datasets WHERE id = ?", [version.id]).fetchone()[0]
    assert lineage.count("race") == 1 and len(lineage) == len(set(lineage))
    assert created is not None  # (the lake's stand-in for DEFAULT current_timestamp)


@pytest.mark.slow
def test_lake_on_s3_compatible_storage(tmp_path, monkeypatch):
    """The data files on an S3-compatible server (moto), keys from the environment: a replica
    ingests, the Parquet files are in the bucket, and reads see the rows."""
    s3 = S3Server(tmp_path / "moto.log")
    try:
        env = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        home = lake_home(tmp_path / "home", data_path=s3.bucket("flywheel") + "lake/",
                         extra=f's3_endpoint = "{s3.endpoint}"\ns3_use_ssl = false\ns3_url_style = "path"\n')
        key = make_keys(home, "acme")["acme"]
        replica = Server(home, env=env).start()
        acked, refused = set(), []
        try:
            post(replica, key, [interaction(i) for i in range(30)], acked, refused)
        finally:
            replica.stop()
        listing = httpx.get(f"http://{s3.endpoint}/flywheel?list-type=2&prefix=lake/", timeout=10).text
        seen, _ = stored_ids(load_settings(home))  # (this process reads the bucket too)
    finally:
        s3.stop()
    assert len(acked) == 30 and not refused
    assert ".parquet</Key>" in listing
    assert sorted(seen) == sorted(acked)


def post(server: Server, key: str, items: list[dict], acked: set[str], refused: list[httpx.Response]) -> None:
    """POST a batch; on 200 add the ids acknowledged (accepted or duplicate) to `acked`."""
    try:
        r = httpx.post(f"{server.url}/v1/interactions", json={"interactions": items}, headers=auth(key), timeout=60)
    except httpx.TransportError:  # (the replica was killed mid-request: nothing acknowledged)
        return
    if r.status_code != 200:
        refused.append(r)
        return
    acked.update(x["id"] for x in r.json()["results"] if x["status"] in ("accepted", "duplicate"))


def stored_ids(settings) -> tuple[list[str], int]:
    """(the ids every reader sees, how many rows the lake holds with duplicates)."""
    with store.connect(settings.db_path, read_only=True) as con:
        seen = [i for (i,) in con.execute("SELECT id FROM interactions WHERE project = 'acme'").fetchall()]
        raw = con.execute("SELECT count(*) FROM lake.main.interactions").fetchone()[0]
    return seen, raw


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_two_replicas_ingest_into_one_lake_each_id_once(tmp_path, postgres, kind):
    """Two `flywheel serve` replicas take batches at the same time, half of each batch's ids
    also sent to the other replica at that moment (a client retrying on another replica)."""
    home = lake_home(tmp_path, catalog=catalog(kind, postgres, "replicas"))
    key = make_keys(home, "acme")["acme"]
    replicas = [Server(home).start(), Server(home).start()]
    try:
        acked, refused = set(), []
        for round_ in range(6):
            shared = [interaction(f"shared-{round_}-{i}") for i in range(20)]
            threads = [threading.Thread(target=post, args=(s, key, shared + [interaction(f"r{n}-{round_}-{i}")
                                                                            for i in range(20)], acked, refused))
                       for n, s in enumerate(replicas)]  # fmt: skip
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert not refused, [r.text for r in refused]
        r = httpx.get(f"{replicas[1].url}/v1/interactions", params={"limit": 1000}, headers=auth(key), timeout=30)
        listed = [x["id"] for x in r.json()["data"]]
    finally:
        for s in replicas:
            s.stop()
    seen, raw = stored_ids(load_settings(home))
    assert len(acked) == 6 * 60
    assert sorted(seen) == sorted(acked) == sorted(listed)  # each acknowledged id once, through SQL and the API
    assert raw >= len(acked)  # (a racing duplicate is stored twice and read once)


@pytest.mark.slow
def test_kill_9_of_a_replica_loses_no_acknowledged_event(tmp_path):
    home = lake_home(tmp_path)
    key = make_keys(home, "acme")["acme"]
    victim, survivor = Server(home).start(), Server(home).start()
    acked, refused = set(), []
    stop = threading.Event()

    def load(server: Server, name: str) -> None:
        n = 0
        while not stop.is_set() and n < 400:
            post(server, key, [interaction(f"{name}-{n}-{i}") for i in range(25)], acked, refused)
            n += 1

    loaders = [threading.Thread(target=load, args=(s, name)) for s, name in ((victim, "v"), (survivor, "s"))]
    for t in loaders:
        t.start()
    try:
        deadline = datetime.now() + timedelta(seconds=60)
        while not any(i.startswith("v-") for i in list(acked)) and datetime.now() < deadline:
            threading.Event().wait(0.05)
        victim.kill()  # SIGKILL, mid-load: its writer may be between two commits or inside one
        threading.Event().wait(1.0)
        stop.set()
        for t in loaders:
            t.join()
    finally:
        survivor.stop()
    seen, _ = stored_ids(load_settings(home))
    assert any(i.startswith("v-") for i in acked) and any(i.startswith("s-") for i in acked)
    assert acked <= set(seen) and len(seen) == len(set(seen))
    # A restarted replica opens the same lake and serves on.
    restarted = Server(home).start()
    try:
        post(restarted, key, [interaction("after-restart")], acked, refused)
    finally:
        restarted.stop()
    assert "after-restart" in stored_ids(load_settings(home))[0]


@pytest.mark.slow
def test_unreachable_catalog_is_503_with_retry_after_and_nothing_acknowledged(tmp_path, postgres):
    """The catalog in PostgreSQL goes away mid-service: every request in flight is answered 503 with
    Retry-After (not 500), nothing is acknowledged, and the same ids are taken once the catalog is back."""
    home = lake_home(tmp_path, catalog=postgres.database("unreachable"))
    key = make_keys(home, "acme")["acme"]
    replica = Server(home).start()
    try:
        acked, refused = set(), []
        post(replica, key, [interaction(f"before-{i}") for i in range(10)], acked, refused)
        assert len(acked) == 10 and not refused
        postgres.stop()
        # Eight requests in flight at once, so the writer batches them: the failed batch is not
        # retried request by request (≈5 s each, which would leave the later ones to time out
        # waiting, code ack_timeout); each gets the catalog's own 503.
        batches = [[interaction(f"during-{n}-{i}") for i in range(5)] for n in range(8)]
        threads = [threading.Thread(target=post, args=(replica, key, b, acked, refused)) for b in batches]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status_code for r in refused] == [503] * 8
        assert {r.json()["error"]["code"] for r in refused} == {"store_busy"}, [r.text for r in refused]
        assert all(r.headers["Retry-After"] and "retry" in r.json()["error"]["message"] for r in refused)
        assert len(acked) == 10
        assert httpx.get(f"{replica.url}/healthz", timeout=10).status_code == 200  # the service itself lives on
        postgres.start()
        for b in batches:
            post(replica, key, b, acked, refused)  # the client's retries, same ids
        assert len(acked) == 50 and len(refused) == 8
    finally:
        replica.stop()
    seen, raw = stored_ids(load_settings(home))
    assert sorted(seen) == sorted(acked) and raw == 50


def test_an_old_duplicate_beyond_the_check_window_is_read_once(tmp_path):
    """The writer looks for stored ids only among the rows received in the last
    `duplicate_check_hours`: a retry within the window is a duplicate, one beyond it is stored
    again, and every reader still sees the id once, as first received."""
    settings = load_settings(lake_home(tmp_path, extra="duplicate_check_hours = 1\n"))
    now = datetime.now(UTC).replace(tzinfo=None)
    con = store.open_connection(settings.db_path, raw=True)  # (a writer's view: the tables as stored)
    write_interactions(con, [row("old", now - timedelta(days=3), response="shipping"),
                             row("recent", now - timedelta(minutes=10), response="billing")], append=True)
    con.close()
    writer = Writer(settings.db_path, max_queue_items=100, max_batch_items=100)
    retried = writer.submit("interactions", [row("old", now, response="refund"), row("recent", now, response="refund")])
    writer.start()
    try:
        assert retried.result(60).stored == [True, False]  # "old" is beyond the window: stored again
    finally:
        writer.stop()
    with store.connect(settings.db_path, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM lake.main.interactions WHERE id = 'old'").fetchone() == (2,)
        assert con.execute("SELECT id, response FROM interactions ORDER BY id").fetchall() == [("old", "shipping"),
                                                                                              ("recent", "billing")]
        page, _ = read_interactions(con, project="acme", task="support", limit=100)
        assert sorted(r["id"] for r in page) == ["old", "recent"]


def test_a_bad_row_fails_only_its_own_request_in_a_lake_batch(tmp_path):
    """A batch refused for one request's row (not the catalog) is retried request by request:
    the others are stored, the bad one gets its own error."""
    settings = load_settings(lake_home(tmp_path))
    now = datetime.now(UTC).replace(tzinfo=None)
    writer = Writer(settings.db_path, max_queue_items=100, max_batch_items=100)
    futures = [writer.submit("interactions", [row("a", now)]),
               writer.submit("interactions", [row("b", now)._replace(task=None)]),  # NOT NULL
               writer.submit("interactions", [row("c", now)])]  # fmt: skip
    writer.start()  # (after the submits: one batch)
    try:
        assert futures[0].result(60).stored == futures[2].result(60).stored == [True]
        with pytest.raises(duckdb.ConstraintException, match="task"):
            futures[1].result(60)
    finally:
        writer.stop()
    assert sorted(stored_ids(settings)[0]) == ["a", "c"]


@pytest.mark.parametrize("command", [["status"], ["serve", "--port", "1"]])
def test_a_data_path_the_catalog_does_not_know_is_a_configuration_error(tmp_path, command):
    """The catalog keeps its data path: a flywheel.toml naming another is exit 2 naming the
    setting at once, not "unreachable or busy" after the catalog's retries (nor a bound port)."""
    home = lake_home(tmp_path)
    with store.connect(load_settings(home).db_path):
        pass
    lake_home(home, data_path="elsewhere/")
    out = subprocess.run([sys.executable, "-m", "flywheel.cli", *command, "--data-dir", str(home)],
                         check=False, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "store.data_path" in out.stderr and "lake/data/" in out.stderr and "busy" not in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_compact_on_the_file_store_has_nothing_to_do(tmp_path):
    with store.connect(load_settings(tmp_path).db_path):
        pass
    out = subprocess.run([sys.executable, "-m", "flywheel.cli", "compact", "--data-dir", str(tmp_path)],
                         check=False, capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0 and "nothing to compact" in out.stdout, out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_compact_while_a_replica_ingests(tmp_path, postgres, kind):
    """Compaction runs beside a replica that keeps committing small batches: the files merge, old
    snapshots expire, and every acknowledged id is there exactly once."""
    home = lake_home(tmp_path, catalog=catalog(kind, postgres, "compact"),
                     extra="keep_snapshots_hours = 0\n")  # (delete replaced files at once)
    settings = load_settings(home)
    key = make_keys(home, "acme")["acme"]
    replica = Server(home).start()
    acked, refused, reports = set(), [], []
    stop = threading.Event()

    def load() -> None:
        n = 0
        while not stop.is_set() or n < 30:
            post(replica, key, [interaction(f"{n}-{i}") for i in range(5)], acked, refused)
            n += 1

    loader = threading.Thread(target=load)
    loader.start()
    try:
        for _ in range(3):
            target = len(acked) + 5 * 10  # ten more commits before each compaction
            while len(acked) < target:
                threading.Event().wait(0.05)
            reports.append(compact(settings))
    finally:
        stop.set()
        loader.join()
        replica.stop()
    assert not refused, [r.text for r in refused]
    assert all(r.files_after < r.files_before and r.snapshots_expired > 0 for r in reports), reports
    assert sum(r.files_deleted for r in reports) > 0
    seen, raw = stored_ids(settings)
    assert sorted(seen) == sorted(acked) and raw == len(acked)  # each acknowledged id, once
    out = subprocess.run([sys.executable, "-m", "flywheel.cli", "compact", "--data-dir", str(home)],
                         check=False, capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0 and "data files" in out.stdout, out.stderr
    assert sorted(stored_ids(settings)[0]) == sorted(acked)


@pytest.mark.slow
def test_the_compact_flow_compacts_a_lake_and_is_scheduled_for_a_lake_only(prefect_harness, tmp_path):
    from pipelines.compact import compact_deployment, compact_flow

    settings = load_settings(lake_home(tmp_path / "lake", extra="keep_snapshots_hours = 0\n"))
    con = store.open_connection(settings.db_path, raw=True)
    for n in range(3):  # three commits, three files
        write_interactions(con, [row(n, datetime.now(UTC).replace(tzinfo=None))], append=True)
    con.close()
    result = compact_flow(data_dir=str(settings.home))
    assert result["store"] == "lake" and result["files_after"] < result["files_before"] and result["files_deleted"] > 0
    assert sorted(stored_ids(settings)[0]) == ["it-0", "it-1", "it-2"]
    assert compact_deployment(settings).entrypoint == "pipelines.compact.compact_flow"
    assert compact_deployment(load_settings(tmp_path / "file")) is None  # the file store: nothing to schedule
    from pipelines.deployments import build_deployments  # what `flywheel up` serves

    assert "compact" in [d.name for d in build_deployments(settings)]
    assert "compact" not in [d.name for d in build_deployments(load_settings(tmp_path / "file"))]
