"""The ingestion API against a real `flywheel serve` process: contract, auth, errors, PII."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import pytest

from conftest import auth, interaction


@pytest.fixture(scope="module")
def client(shared_server):
    with httpx.Client(base_url=shared_server.url, timeout=30) as c:
        yield c


def post(client, key, path, body, **kw):
    return client.post(path, json=body, headers=auth(key), **kw)


def test_happy_path_stores_and_lists_interactions(client, shared_server):
    key = shared_server.keys["acme"]
    r = post(client, key, "/v1/interactions", {"interactions": [interaction(i, task="happy") for i in range(3)]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 3 and [x["status"] for x in body["results"]] == ["accepted"] * 3
    page = client.get("/v1/interactions", params={"task": "happy"}, headers=auth(key)).json()
    assert [row["id"] for row in page["data"]] == ["it-0", "it-1", "it-2"]
    row = page["data"][0]
    assert row["request"]["messages"][1]["content"].startswith("Ticket 0")
    assert row["response"] == "shipping" and row["latency_ms"] == 820.5 and row["source"] == "ingest"
    assert page["next_cursor"] is None


def test_generated_ids_and_prompt_form(client, shared_server):
    key = shared_server.keys["acme"]
    item = {"task": "completion", "model": "m", "prompt": "Say hi", "response": "hi"}
    r = post(client, key, "/v1/interactions", {"interactions": [item, item]})
    ids = [x["id"] for x in r.json()["results"]]
    assert r.json()["accepted"] == 2 and len(set(ids)) == 2
    got = client.get(f"/v1/interactions/{ids[0]}", headers=auth(key)).json()
    assert got["request"] == {"prompt": "Say hi"}


def test_pagination_walks_every_row_once(client, shared_server):
    key = shared_server.keys["acme"]
    items = [interaction(f"page-{i:03d}", task="paged") for i in range(25)]
    assert post(client, key, "/v1/interactions", {"interactions": items}).json()["accepted"] == 25
    seen, cursor = [], None
    while True:
        params = {"task": "paged", "limit": 10, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/interactions", params=params, headers=auth(key)).json()
        seen += [row["id"] for row in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(i["id"] for i in items) and len(seen) == 25


def test_duplicates_are_answered_and_stored_once(client, shared_server):
    key = shared_server.keys["acme"]
    batch = {"interactions": [interaction("dup-1", task="dups"), interaction("dup-1", task="dups")]}
    first = post(client, key, "/v1/interactions", batch).json()
    assert [x["status"] for x in first["results"]] == ["accepted", "duplicate"]
    again = post(client, key, "/v1/interactions", batch).json()
    assert [x["status"] for x in again["results"]] == ["duplicate", "duplicate"]
    # concurrent retries of the same id: exactly one is accepted
    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(client, key, "/v1/interactions",
                                               {"interactions": [interaction("race", task="dups")]}).json(),
                                range(16)))  # fmt: skip
    assert sum(a["accepted"] for a in answers) == 1 and sum(a["duplicate"] for a in answers) == 15
    page = client.get("/v1/interactions", params={"task": "dups"}, headers=auth(key)).json()
    assert sorted(row["id"] for row in page["data"]) == ["dup-1", "race"]


def test_feedback_attaches_and_unknown_interaction_is_an_item_error(client, shared_server):
    key = shared_server.keys["acme"]
    post(client, key, "/v1/interactions", {"interactions": [interaction("fb-1", task="fb")]})
    r = post(client, key, "/v1/feedback", {"feedback": [
        {"interaction_id": "fb-1", "kind": "thumbs", "value": "down"},
        {"interaction_id": "fb-1", "kind": "correction", "value": "billing", "id": "c1"},
        {"interaction_id": "nope", "kind": "rating", "value": 4},
        {"interaction_id": "fb-1", "kind": "rating", "value": "five"},
    ]})  # fmt: skip
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["accepted", "accepted", "error", "error"]
    assert "interaction_id" in results[2]["error"] and "nope" in results[2]["error"]
    assert results[3]["error"].startswith("value:")
    again = post(client, key, "/v1/feedback", {"feedback": [
        {"interaction_id": "fb-1", "kind": "correction", "value": "billing", "id": "c1"}]}).json()
    assert again["results"][0]["status"] == "duplicate"


def test_auth_is_required_and_keys_are_checked(client, shared_server):
    body = {"interactions": [interaction("auth")]}
    assert client.post("/v1/interactions", json=body).status_code == 401
    r = client.post("/v1/interactions", json=body, headers=auth("fwk_not-a-real-key"))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/interactions").status_code == 401
    assert client.get("/healthz").status_code == 200


def test_projects_are_isolated_both_ways(client, shared_server):
    acme, globex = shared_server.keys["acme"], shared_server.keys["globex"]
    post(client, acme, "/v1/interactions", {"interactions": [interaction("secret-a", task="iso")]})
    post(client, globex, "/v1/interactions", {"interactions": [interaction("secret-g", task="iso")]})
    for key, mine, theirs in ((acme, "secret-a", "secret-g"), (globex, "secret-g", "secret-a")):
        ids = [r["id"] for r in client.get("/v1/interactions", params={"task": "iso"}, headers=auth(key)).json()["data"]]
        assert ids == [mine]
        assert client.get(f"/v1/interactions/{theirs}", headers=auth(key)).status_code == 404
        fb = post(client, key, "/v1/feedback", {"feedback": [{"interaction_id": theirs, "kind": "thumbs", "value": True}]})
        assert fb.status_code == 422 and fb.json()["results"][0]["status"] == "error"
    # the same id in another project is its own interaction, not a duplicate
    r = post(client, globex, "/v1/interactions", {"interactions": [interaction("secret-a", task="iso")]}).json()
    assert r["results"][0]["status"] == "accepted"


def test_one_bad_item_does_not_sink_the_batch(client, shared_server):
    key = shared_server.keys["acme"]
    good = interaction("mixed-ok", task="mixed")
    bad_type = {**interaction("mixed-1", task="mixed"), "latency_ms": "fast"}
    bad_task = {**interaction("mixed-2"), "task": "x" * 300}
    missing = {k: v for k, v in interaction("mixed-3").items() if k != "response"}
    unknown = {**interaction("mixed-4"), "respones": "typo"}
    both = {**interaction("mixed-5"), "prompt": "also a prompt"}
    bad_role = {**interaction("mixed-6"), "messages": [{"role": "wizard", "content": "hi"}]}
    tokens = {**interaction("mixed-7"), "prompt_tokens": 3_000_000_000}  # over the INTEGER column
    ts = {**interaction("mixed-8"), "ts": "0001-01-01T00:00:00+14:00"}  # before year 1 in UTC
    r = post(client, key, "/v1/interactions", {"interactions": [good, bad_type, bad_task, missing, unknown, both, bad_role, tokens, ts]})
    assert r.status_code == 200
    res = r.json()["results"]
    assert res[0]["status"] == "accepted" and r.json()["error"] == 8
    assert res[1]["error"].startswith("latency_ms:") and "float" in res[1]["error"] and "str" in res[1]["error"]
    assert res[2]["error"].startswith("task:")
    assert res[3]["error"] == "response: required field missing"
    assert res[4]["error"] == "respones: unknown field"
    assert res[5]["error"].startswith("messages:") and "exactly one" in res[5]["error"]
    assert res[6]["error"].startswith("messages[0].role:")
    assert res[7]["error"] == "prompt_tokens: Expected `int` <= 2147483647"
    assert res[8]["error"] == "ts: out of range once converted to UTC"


def test_whole_request_errors_name_the_problem(client, shared_server):
    key = shared_server.keys["acme"]
    h = {**auth(key), "content-type": "application/json"}
    r = client.post("/v1/interactions", content=b'{"interactions": [', headers=h)
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    r = client.post("/v1/interactions", content=b'{"items": []}', headers=h)
    assert r.status_code == 422 and r.json()["error"]["message"].startswith("interactions:")
    r = client.post("/v1/interactions", content=b'{"interactions": {"a": 1}}', headers=h)
    assert r.status_code == 422 and "array" in r.json()["error"]["message"]
    r = client.post("/v1/interactions", content=b"[]", headers=h)
    assert r.status_code == 422
    r = client.post("/v1/interactions", content=b'{"interactions": [], "bogus": 1}', headers=h)
    assert r.status_code == 422 and "unknown field `bogus`" in r.json()["error"]["message"]
    r = client.post("/v1/interactions", content=b'{"interactions": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", headers=h)
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    many = {"interactions": [{"task": "t"}] * 5001}
    r = post(client, key, "/v1/interactions", many)
    assert r.status_code == 413 and "5000" in r.json()["error"]["message"]
    huge = b'{"interactions": [' + b'"' + b"x" * (17 * 1024 * 1024) + b'"]}'
    r = client.post("/v1/interactions", content=huge, headers=h)
    assert r.status_code == 413 and str(16 * 1024 * 1024) in r.json()["error"]["message"]
    r = client.get("/v1/interactions", params={"limit": 5000}, headers=auth(key))
    assert r.status_code == 422 and r.json()["error"]["param"] == "limit"
    r = client.get("/v1/interactions", params={"cursor": "garbage"}, headers=auth(key))
    assert r.status_code == 400 and r.json()["error"]["param"] == "cursor"
    r = client.get("/v1/interactions", params={"since": "0001-01-01T00:00:00+14:00"}, headers=auth(key))
    assert r.status_code == 400 and r.json()["error"]["param"] == "since"
    long_text = {**interaction("long"), "response": "y" * 200_001}
    r = post(client, key, "/v1/interactions", {"interactions": [long_text]})
    assert r.status_code == 422 and "200000" in r.json()["results"][0]["error"]


def test_pii_is_redacted_before_it_is_stored(client, shared_server):
    key = shared_server.keys["acme"]
    item = interaction("pii-1", task="pii")
    item["messages"][1]["content"] = "I'm jane.doe@example.com, card 4111 1111 1111 1111, call +1 415 555 0132"
    item["response"] = "Thanks, we emailed jane.doe@example.com"
    post(client, key, "/v1/interactions", {"interactions": [item]})
    post(client, key, "/v1/feedback", {"feedback": [
        {"interaction_id": "pii-1", "kind": "correction", "value": "Reply to jane.doe@example.com"}]})
    stored = client.get("/v1/interactions/pii-1", headers=auth(key)).json()
    user = stored["request"]["messages"][1]["content"]
    assert "jane.doe" not in user and "4111" not in user and "555 0132" not in user
    assert "<EMAIL>" in user and "<CARD>" in user and "<PHONE>" in user
    assert stored["response"] == "Thanks, we emailed <EMAIL>" and stored["pii_redacted"] == 4


def test_metrics_count_items(client, shared_server):
    text = client.get("/metrics").text
    assert 'flywheel_ingest_items_total{kind="interactions",result="accepted"}' in text
    assert "flywheel_writer_commit_seconds_count" in text


def test_any_json_metadata_round_trips(client, shared_server):
    key = shared_server.keys["acme"]
    meta = {"big": 2**70, "nested": {"list": [1, "two", None, 3.5]}, "unicode": "héllo ✓"}
    r = post(client, key, "/v1/interactions", {"interactions": [interaction("meta-1", task="meta", metadata=meta)]})
    assert r.json()["accepted"] == 1
    assert client.get("/v1/interactions/meta-1", headers=auth(key)).json()["metadata"] == meta
