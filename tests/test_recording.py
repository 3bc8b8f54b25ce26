"""Gateway recording through a real service (in a thread) and a simulated upstream provider:
a call whose messages are odd but which the route answered is recorded, redacted like any
interaction; one that cannot be recorded is counted and logged with the reason (issue 19)."""

from __future__ import annotations

import logging
import re
import time

import httpx
import pytest
from conftest import auth, make_keys

from flywheel.ingest.pii import PSEUDONYM_PREFIX, installation_secret, pseudonym
from flywheel.settings import load_settings
from serving import simulated
from serving.app import create_app, in_thread

MAX_TEXT = 300


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("recording")
    with in_thread(simulated.create_app(latency_scale=0)) as provider:
        (data_dir / "flywheel.toml").write_text(
            f'[ingest]\nmax_text_chars = {MAX_TEXT}\n[routes.sim]\nkind = "upstream"\nbase_url = "{provider}/v1"\n')
        key = make_keys(data_dir, "shop")["shop"]
        admin = make_keys(data_dir, "shop", role="admin")["shop"]
        with in_thread(create_app(load_settings(data_dir))) as url, httpx.Client(base_url=url, timeout=30) as client:
            yield client, key, admin, data_dir


def chat(client, key, messages, **extra):
    r = client.post("/v1/chat/completions", json={"model": "sim", "messages": messages, **extra}, headers=auth(key))
    assert r.status_code == 200, r.text
    return r


def recorded(client, key, interaction_id: str, timeout: float = 10.0) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"/v1/interactions/{interaction_id}", headers=auth(key))
        if r.status_code == 200:
            return r.json()
        time.sleep(0.05)
    return None


def failures(client, admin) -> float:
    text = client.get("/metrics", headers=auth(admin)).text
    return float(re.search(r"^flywheel_recording_failures_total (\S+)$", text, re.M).group(1))


def test_odd_messages_the_route_answered_are_recorded_and_redacted(service):
    client, key, _, data_dir = service
    messages = [{"role": {"odd": "ann@example.com"}, "content": "my parcel is late"},
                {"role": "user", "name": "ann.smith@example.com", "content": ["parts", 7, {"text": "+1 415 555 0132"}]},
                {"role": "wizard", "content": {"call me": "ann [at] example [dot] com"}}]  # fmt: skip
    r = chat(client, key, messages, user="ann@example.com")
    row = recorded(client, key, r.headers["x-flywheel-interaction-id"])
    assert row is not None, "the answered call was not recorded"
    assert row["source"] == "gateway" and row["response"] == r.json()["choices"][0]["message"]["content"]
    assert row["request"]["messages"] == [
        {"role": {"odd": "<EMAIL>"}, "content": "my parcel is late"},
        {"role": "user", "name": "<EMAIL>", "content": ["parts", 7, {"text": "<PHONE>"}]},
        {"role": "wizard", "content": {"call me": "<EMAIL>"}},
    ]
    secret = installation_secret(data_dir)
    assert row["user_id"] == pseudonym("ann@example.com", secret) and row["user_id"].startswith(PSEUDONYM_PREFIX)
    assert row["pii_redacted"] == 4


def test_a_call_that_cannot_be_recorded_is_counted_and_logged(service, caplog):
    client, key, admin, _ = service
    before = failures(client, admin)
    with caplog.at_level(logging.WARNING, logger="flywheel.recording"):
        r = chat(client, key, [{"role": "user", "content": "x" * (MAX_TEXT + 1)}])  # answered all the same
        interaction_id = r.headers["x-flywheel-interaction-id"]
        deadline = time.monotonic() + 10
        while failures(client, admin) == before and time.monotonic() < deadline:
            time.sleep(0.05)
    assert failures(client, admin) == before + 1
    assert recorded(client, key, interaction_id, timeout=0.5) is None
    reasons = [rec.getMessage() for rec in caplog.records if rec.name == "flywheel.recording"]
    assert any(interaction_id in m and f"over the limit of {MAX_TEXT}" in m for m in reasons), reasons
