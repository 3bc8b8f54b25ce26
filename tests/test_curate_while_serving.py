"""Curation reads the database while `flywheel serve` keeps ingesting (the DuckDB rule)."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from conftest import Server, auth, make_keys
from flywheel.curate.pipeline import curate
from flywheel.settings import load_settings
from flywheel.demo.world import TASK, traffic

pytestmark = pytest.mark.slow


def test_curation_runs_while_the_server_ingests(tmp_path):
    key = make_keys(tmp_path, "shop")["shop"]
    server = Server(tmp_path).start()
    first, feedback = traffic(300, seed=1)
    with httpx.Client(base_url=server.url, headers=auth(key), timeout=60) as client:
        assert client.post("/v1/interactions", json={"interactions": first}).json()["accepted"] == 300
        client.post("/v1/feedback", json={"feedback": feedback})
        statuses, stop = [], threading.Event()

        def ingest():
            turn = 2
            while not stop.is_set():
                items, _ = traffic(100, seed=turn)
                statuses.append(client.post("/v1/interactions", json={"interactions": items}).status_code)
                turn += 1

        loader = threading.Thread(target=ingest)
        loader.start()
        try:
            version = curate(load_settings(tmp_path), project="shop", task=TASK)
        finally:
            stop.set()
            loader.join()
    server.stop()
    assert version.created and len(statuses) > 0 and set(statuses) == {200}
    assert version.counts["selected"] >= 300 and (Path(version.path) / "report.md").exists()
