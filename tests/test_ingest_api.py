"""The ingestion API against a real `flywheel serve` process: contract, auth, errors, PII, and
totality (any JSON in any field is one item's error, never a 500 or a neighbour's loss)."""

from __future__ import annotations

import concurrent.futures as cf
import json

import httpx
import msgspec
import pytest
from conftest import auth, interaction, make_keys
from pii_cases import field_corpus
from test_records import FEEDBACK_FIELDS, FIELDS, MESSAGE_KEYS, ODD, nested, with_odd

from flywheel import store
from flywheel.ingest.pii import (
    PSEUDONYM_PREFIX,
    installation_secret,
    normalize,
    pseudonym,
)
from flywheel.settings import load_settings


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


def test_a_key_created_while_the_service_runs_works_at_once(client, shared_server):
    """Even right after a bad key made the service re-read its keys (it reads at most once a second)."""
    for _ in range(5):
        assert client.get("/v1/interactions", headers=auth("fwk_not-a-real-key")).status_code == 401
        key = make_keys(shared_server.data_dir, "acme")["acme"]
        assert client.get("/v1/interactions", headers=auth(key)).status_code == 200


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
    assert r.status_code == 422 and r.json()["results"][0]["error"] == "Expected `object`, got `array`"
    r = client.post("/v1/interactions", content=b'{"interactions": [' + b"[" * 100_000 + b"]", headers=h)
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
    assert client.get("/metrics").status_code == 401  # an admin key's only
    assert client.get("/metrics", headers=auth(shared_server.keys["acme"])).status_code == 403
    text = client.get("/metrics", headers=auth(shared_server.admin)).text
    assert 'flywheel_ingest_items_total{kind="interactions",result="accepted"}' in text
    assert "flywheel_writer_commit_seconds_count" in text


def test_any_json_metadata_round_trips(client, shared_server):
    key = shared_server.keys["acme"]
    meta = {"big": 2**70, "nested": {"list": [1, "two", None, 3.5]}, "unicode": "héllo ✓"}
    r = post(client, key, "/v1/interactions", {"interactions": [interaction("meta-1", task="meta", metadata=meta)]})
    assert r.json()["accepted"] == 1
    assert client.get("/v1/interactions/meta-1", headers=auth(key)).json()["metadata"] == meta


def _odd_items(task: str):
    """(field the error must name, item JSON) for every field of an interaction and every odd value."""
    base = {k: v for k, v in interaction(0, task=task).items() if k != "id"}
    prompt_form = {k: v for k, v in base.items() if k != "messages"} | {"prompt": "p"}
    for field in FIELDS:
        for odd in ODD:
            yield field, with_odd({**(prompt_form if field == "prompt" else base), field: "__ODD__"}, odd)
    for key in MESSAGE_KEYS:
        for odd in ODD:
            yield "messages", with_odd({**base, "messages": [{"role": "user", "content": "x", key: "__ODD__"}]}, odd)


def test_odd_json_in_any_field_is_that_items_error_and_costs_no_valid_item(client, shared_server):
    """Issue 19, finding 3: one odd item, any JSON in any field, never sinks its batch."""
    key = shared_server.keys["acme"]
    h = {**auth(key), "content-type": "application/json"}
    by_field: dict[str, list[bytes]] = {}
    for field, raw in _odd_items("odd"):
        by_field.setdefault(field, []).append(raw)
    valid_ids = []
    for n, (field, raws) in enumerate(by_field.items()):
        ids = [f"odd-valid-{n}-a", f"odd-valid-{n}-b"]
        valid = [msgspec.json.encode(interaction(i, task="odd")) for i in ids]
        body = b'{"interactions": [' + b",".join([valid[0], *raws, valid[1]]) + b"]}"
        r = client.post("/v1/interactions", content=body, headers=h)
        assert r.status_code == 200, (field, r.status_code, r.text[:300])
        results = r.json()["results"]
        assert results[0]["status"] == results[-1]["status"] == "accepted", (field, results[0], results[-1])
        for result, raw in zip(results[1:-1], raws):
            if result["status"] == "error":
                allowed = ("prompt", "messages") if field == "prompt" else (field,)
                assert result["error"].startswith(allowed), (field, raw[:120], result["error"])
        valid_ids += ids
    page = client.get("/v1/interactions", params={"task": "odd", "limit": 1000}, headers=auth(key)).json()
    assert set(valid_ids) <= {row["id"] for row in page["data"]}


def test_the_reported_batch_keeps_its_valid_item(client, shared_server):
    key = shared_server.keys["acme"]
    odd = {"task": "t", "model": "m", "response": "r", "messages": [{"role": {}, "content": "x"}]}
    r = post(client, key, "/v1/interactions", {"interactions": [odd, interaction("reported-ok", task="reported")]})
    assert r.status_code == 200
    assert r.json()["results"][0]["error"].startswith("messages[0].role: expected one of")
    assert client.get("/v1/interactions/reported-ok", headers=auth(key)).status_code == 200
    h = {**auth(key), "content-type": "application/json"}
    deep = b'{"interactions": [' + msgspec.json.encode(interaction("deep-ok", task="reported")) + b"," + \
        with_odd({**interaction("deep-bad"), "metadata": "__ODD__"}, nested(5000)) + b"]}"
    r = client.post("/v1/interactions", content=deep, headers=h)
    assert r.status_code == 200 and r.json()["results"][1]["error"] == "metadata: JSON nested too deeply"
    assert client.get("/v1/interactions/deep-ok", headers=auth(key)).status_code == 200


def test_odd_json_in_any_feedback_field_is_that_items_error(client, shared_server):
    key = shared_server.keys["acme"]
    post(client, key, "/v1/interactions", {"interactions": [interaction("odd-fb", task="odd-fb")]})
    h = {**auth(key), "content-type": "application/json"}
    base = {"interaction_id": "odd-fb", "kind": "label", "value": "billing"}
    for field in FEEDBACK_FIELDS:
        raws = [with_odd({**base, field: "__ODD__"}, odd) for odd in ODD]
        body = b'{"feedback": [' + b",".join([msgspec.json.encode(base), *raws, msgspec.json.encode(base)]) + b"]}"
        r = client.post("/v1/feedback", content=body, headers=h)
        assert r.status_code == 200, (field, r.text[:300])
        results = r.json()["results"]
        assert results[0]["status"] == results[-1]["status"] == "accepted"
        assert all(x["error"].startswith(field) for x in results[1:-1] if x["status"] == "error"), (field, results)


def test_pii_in_every_field_is_redacted_before_it_is_stored(client, shared_server):
    """Issue 18, finding 5: every text field, plain and evasive values; ids become keyed hashes."""
    key = shared_server.keys["acme"]
    cases = [c for c in field_corpus(3, seed=5) if c[1] != "gateway"]  # (the gateway's own: test_recording.py)
    items = [{**item, "id": f"pf-{i}", "task": "pii-fields"} for i, (_, source, _, _, item) in enumerate(cases)
             if source == "interaction"]  # fmt: skip
    assert post(client, key, "/v1/interactions", {"interactions": items}).json()["accepted"] == len(items)
    post(client, key, "/v1/interactions", {"interactions": [interaction("pf-target", task="pii-fields")]})
    feedback = [{**item, "interaction_id": "pf-target"} for _, source, _, _, item in cases if source == "feedback"]
    assert post(client, key, "/v1/feedback", {"feedback": feedback}).json()["accepted"] == len(feedback)
    rows = client.get("/v1/interactions", params={"task": "pii-fields", "limit": 1000}, headers=auth(key)).json()
    stored = normalize(json.dumps(rows["data"], ensure_ascii=False))
    with store.connect(load_settings(shared_server.data_dir).db_path, read_only=True) as con:
        stored += normalize(str(con.execute("SELECT * FROM feedback WHERE interaction_id = 'pf-target'").fetchall()))
    leaked = [(field, written) for field, _, written, plain, _ in cases
              if written in stored or normalize(plain) in stored]  # fmt: skip
    assert not leaked, leaked
    secret = installation_secret(shared_server.data_dir)
    user_ids = {row["id"]: row["user_id"] for row in rows["data"]}
    planted = [(f"pf-{i}", item["user_id"]) for i, (field, source, _, _, item) in enumerate(cases) if field == "user_id"]
    assert planted and all(user_ids[i] == pseudonym(v, secret) and user_ids[i].startswith(PSEUDONYM_PREFIX)
                           for i, v in planted)  # fmt: skip
    assert user_ids["pf-target"] == "upf-target"  # an id without PII stays as it is
