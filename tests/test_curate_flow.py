"""The `curate` Prefect flow under Prefect's test harness: a run registers a dataset version,
publishes the report as an artifact, and fails at once (no retries) on bad input."""

from __future__ import annotations

import random

import pytest

from flywheel import store
from flywheel.settings import load_settings
from curation_data import background, fb, fill


def test_curate_flow_registers_and_publishes(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client

    from pipelines.curate import curate_flow

    settings = load_settings(tmp_path / "data")
    rows = background(random.Random(1), 30)
    fill(settings, rows, [fb(rows[0]["id"], "correction", "a better answer")])
    (tmp_path / "curation.toml").write_text("[curation]\nmin_examples = 5\neval_fraction = 0.2\n")

    result = curate_flow(task="support", data_dir=str(settings.home), config_path=str(tmp_path / "curation.toml"),
                         config={"seed": 3})  # fmt: skip
    assert result["created"] and result["counts"]["kept"] == 30 and result["counts"]["corrections"] == 1
    with store.connect(settings.db_path, read_only=True) as con:
        assert con.execute("SELECT id, config ->> '$.curation.seed' FROM datasets").fetchall() == [(result["id"], "3")]

    async def artifact():
        async with get_client() as client:
            return await client.read_latest_artifacts()

    import asyncio

    published = [a for a in asyncio.run(artifact()) if a.key == "curation-support"]
    assert published and "| exact duplicates | 0 |" in published[0].data and result["id"] in published[0].data

    again = curate_flow(task="support", data_dir=str(settings.home), config_path=str(tmp_path / "curation.toml"),
                        config={"seed": 3})  # fmt: skip
    assert again["id"] == result["id"] and not again["created"]


def test_curate_flow_fails_fast_on_bad_input(prefect_harness, tmp_path):
    from pipelines.curate import curate_flow

    from flywheel.curate.pipeline import CurationError

    settings = load_settings(tmp_path / "data")
    fill(settings, background(random.Random(2), 3))
    state = curate_flow(task="nope", data_dir=str(settings.home), return_state=True)
    assert state.is_failed()
    with pytest.raises(CurationError, match="unknown task"):
        state.result()
    with store.connect(settings.db_path, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM datasets").fetchall() == [(0,)]
