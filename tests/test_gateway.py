"""The gateway with the official `openai` client against real `flywheel serve` processes:
a local tiny model with LoRA adapters, an upstream/vLLM-style route to a second server,
aliases, canaries, fallbacks, recording, adapter hot swap, and bad input."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import Server, auth, make_keys
from tiny_models import make_adapter  # noqa: F401  (other test files import it from here)

from flywheel import store
from flywheel.registry.deployments import assign
from flywheel.settings import load_settings
from serving.routing import canary_bucket

pytestmark = pytest.mark.slow
HELLO = [{"role": "user", "content": "my parcel is late"}]


@pytest.fixture(scope="module")
def servers(tmp_path_factory, tiny_models):
    adapter_dirs = f'[serving]\nadapter_dirs = ["{Path(tiny_models["base"]).parent}"]\n'  # where the test adapters are
    up_dir = tmp_path_factory.mktemp("upstream")
    (up_dir / "flywheel.toml").write_text(f'{adapter_dirs}[routes.tiny]\nkind = "local"\npath = "{tiny_models["base"]}"\n')
    up_key = make_keys(up_dir, "gw", role="admin")["gw"]  # (the gateway loads adapters through it)
    up = Server(up_dir).launch()  # (the gateway does not call it before a request: both start at once)
    up.key = up_key
    gw_dir = tmp_path_factory.mktemp("gateway")
    (gw_dir / "flywheel.toml").write_text(f"""
{adapter_dirs}
[gateway]
max_tokens = 16
alias_refresh_s = 0.2
[routes.tiny]
kind = "local"
path = "{tiny_models['base']}"
adapters = {{ "ada-1" = "{tiny_models['ada-1']}" }}
max_batch = 8
usd_per_1k_completion = 0.5
[routes.remote]
kind = "vllm"
base_url = "{up.url}/v1"
api_key_env = "UPSTREAM_KEY"
model = "tiny"
[routes.dead]
kind = "upstream"
base_url = "http://127.0.0.1:9/v1"
retries = 1
fallback = "tiny"
[routes.dead-end]
kind = "upstream"
base_url = "http://127.0.0.1:9/v1"
retries = 0
""")
    key = make_keys(gw_dir, "gw", role="admin")["gw"]
    gw = Server(gw_dir, env={"UPSTREAM_KEY": up_key}).launch()
    gw.key = key
    up.ready(), gw.ready()
    yield gw, up
    gw.stop()
    up.stop()


@pytest.fixture(scope="module")
def client(servers):
    gw, _ = servers
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key, max_retries=0)


def ask(client, model, content="my parcel is late", **kw):
    kw = {"temperature": 0, "max_tokens": 8, **kw}
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


def recorded(servers, interaction_id: str, timeout: float = 5.0) -> dict:
    gw, _ = servers
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{gw.url}/v1/interactions/{interaction_id}", headers=auth(gw.key))
        if r.status_code == 200:
            return r.json()
        time.sleep(0.05)
    raise AssertionError(f"interaction {interaction_id} was not recorded")


def answered_by(client, alias: str, model: str, timeout: float = 10.0) -> None:
    """Wait until `alias` is answered by `model`: the service re-reads aliases every 0.2 s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ask(client, alias, max_tokens=1).model == model:
                return
        except openai.NotFoundError:  # (a new alias: not read yet)
            pass
        assert time.monotonic() < deadline, f"{alias} is not answered by {model}"
        time.sleep(0.05)


def test_chat_is_answered_and_recorded(client, servers):
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=HELLO, temperature=0, max_tokens=8, extra_headers={"x-flywheel-task": "triage"})
    answer = raw.parse()
    assert answer.choices[0].message.role == "assistant" and answer.usage.completion_tokens >= 1
    row = recorded(servers, raw.headers["x-flywheel-interaction-id"])
    assert row["task"] == "triage" and row["model"] == "tiny" and row["source"] == "gateway"
    assert row["response"] == answer.choices[0].message.content
    assert row["request"]["messages"] == HELLO and row["metadata"]["route"] == "tiny"
    assert row["cost_usd"] == pytest.approx(answer.usage.completion_tokens / 1000 * 0.5)


def test_streaming_matches_the_plain_answer(client):
    plain = ask(client, "tiny").choices[0].message.content
    chunks = list(ask(client, "tiny", stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain and chunks[-1].usage.completion_tokens >= 1
    done = client.completions.create(model="tiny", prompt="Hello", max_tokens=5, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="Hello", max_tokens=5, temperature=0, stream=True))
    assert streamed == done.choices[0].text


def test_adapters_change_answers_and_batch_with_the_base(client):
    alone = {m: ask(client, m).choices[0].message.content for m in ("tiny", "ada-1")}
    assert alone["tiny"] != alone["ada-1"]
    results, errors = {}, []

    def one(i):
        model = ("tiny", "ada-1")[i % 2]
        try:
            results[i] = (model, ask(client, model).choices[0].message.content)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert all(text == alone[model] for model, text in results.values())


def test_models_lists_routes_and_adapters(client):
    ids = {m.id for m in client.models.list()}
    assert {"tiny", "ada-1", "remote", "dead"} <= ids


def test_aliases_and_a_deterministic_canary(client, servers):
    gw, _ = servers
    with store.connect(load_settings(gw.data_dir).db_path) as con:
        assign(con, project="gw", task="triage", alias="production", model="tiny", reason="test")
        assign(con, project="gw", task="triage", alias="canary", model="ada-1", share=0.5, reason="test")
    answered_by(client, "triage:canary", "ada-1")  # the aliases were re-read
    for user in [f"user-{i}" for i in range(12)]:
        raw = client.chat.completions.with_raw_response.create(model="triage", messages=HELLO, max_tokens=2, user=user)
        row = recorded(servers, raw.headers["x-flywheel-interaction-id"])
        expected = "ada-1" if canary_bucket(user) < 0.5 else "tiny"
        assert (row["model"], row["task"]) == (expected, "triage")
        assert row["metadata"]["alias"] == ("canary" if expected == "ada-1" else "production")
    assert ask(client, "triage:canary").model == "ada-1"


def test_upstream_route_and_its_recording(client, servers):
    plain = ask(client, "remote")
    assert plain.choices[0].message.content == ask(client, "tiny").choices[0].message.content
    raw = client.chat.completions.with_raw_response.create(model="remote", messages=HELLO, max_tokens=4, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    row = recorded(servers, raw.headers["x-flywheel-interaction-id"])
    assert row["metadata"]["route"] == "remote" and row["response"] == text


def test_fallback_and_a_failed_upstream(client, servers):
    raw = client.chat.completions.with_raw_response.create(model="dead", messages=HELLO, max_tokens=4)
    row = recorded(servers, raw.headers["x-flywheel-interaction-id"])
    assert row["metadata"]["route"] == "tiny" and row["status"] == "ok"
    with pytest.raises(openai.APIStatusError) as info:
        ask(client, "dead-end")
    assert info.value.status_code == 502 and "127.0.0.1:9" in info.value.message
    row = recorded(servers, info.value.response.headers["x-flywheel-interaction-id"])
    assert row["status"] == "error" and "http://<IP>:9/v1" in row["metadata"]["error"]  # (metadata is redacted)


def test_adapters_load_and_unload_at_runtime(client, servers, tiny_models):
    gw, up = servers
    admin = httpx.Client(base_url=gw.url, headers=auth(gw.key), timeout=60)
    r = admin.post("/v1/load_lora_adapter", json={"lora_name": "ada-2", "lora_path": tiny_models["ada-2"], "route": "tiny"})
    assert r.status_code == 200 and "ada-2" in r.text
    assert ask(client, "ada-2").model == "ada-2"
    assert admin.post("/v1/unload_lora_adapter", json={"lora_name": "ada-2"}).status_code == 200
    with pytest.raises(openai.NotFoundError):
        ask(client, "ada-2")
    # the same calls reach a vLLM-style route (here: the second server speaks the same API)
    r = admin.post("/v1/load_lora_adapter", json={"lora_name": "ada-3", "lora_path": tiny_models["ada-3"], "route": "remote"})
    assert r.status_code == 200, r.text
    direct = openai.OpenAI(base_url=f"{up.url}/v1", api_key=up.key, max_retries=0)
    # (vLLM's names are global: there it is the loading project's `gw/ada-3`)
    assert ask(client, "ada-3").choices[0].message.content == ask(direct, "gw/ada-3").choices[0].message.content
    # a whole model folder (e.g. a fully fine-tuned student) is served beside the base
    r = admin.post("/v1/load_lora_adapter", json={"lora_name": "full-1", "lora_path": tiny_models["base"], "route": "tiny"})
    assert r.status_code == 200, r.text
    assert ask(client, "full-1").choices[0].message.content == ask(client, "tiny").choices[0].message.content
    bad = admin.post("/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/nope", "route": "tiny"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "lora_path"
    assert admin.post("/v1/load_lora_adapter", json={"lora_name": "x"}).status_code == 400
    assert admin.post("/v1/unload_lora_adapter", json={"lora_name": "never"}).status_code == 404


def test_hot_swap_under_load_fails_nothing(client, servers, tiny_models):
    gw, _ = servers
    admin = httpx.Client(base_url=gw.url, headers=auth(gw.key), timeout=60)
    db = load_settings(gw.data_dir).db_path
    with store.connect(db) as con:
        assign(con, project="gw", task="hot", alias="production", model="tiny", reason="start")
    answered_by(client, "hot", "tiny")
    stop, failures, served = threading.Event(), [], []

    def load():
        while not stop.is_set():
            try:
                served.append(ask(client, "hot", max_tokens=4).model)
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                failures.append(exc)

    threads = [threading.Thread(target=load) for _ in range(6)]
    [t.start() for t in threads]
    try:
        for i, model in enumerate(["ada-1", "hot-a", "tiny", "hot-a"]):
            if model == "hot-a" and i == 1:
                assert admin.post("/v1/load_lora_adapter", json={"lora_name": "hot-a", "lora_path": tiny_models["ada-2"],
                                                                 "route": "tiny"}).status_code == 200  # fmt: skip
            with store.connect(db) as con:
                assign(con, project="gw", task="hot", alias="production", model=model, reason=f"swap {i}")
            since, deadline = len(served), time.monotonic() + 60
            while served[since:].count(model) < 6 and not failures:  # the swap took, and load went on through it
                assert time.monotonic() < deadline, f"swap {i} to {model} not served: {served[since:]}"
                time.sleep(0.05)
    finally:
        stop.set()
        [t.join() for t in threads]
    assert not failures and len(served) > 20


def test_bad_input_is_a_clear_400(client, servers):
    gw, _ = servers
    for kwargs, param in (({"temperature": 5}, "temperature"), ({"n": 2}, "n"), ({"top_p": 0}, "top_p"),
                          ({"stop": ["a", "b", "c", "d", "e"]}, "stop")):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="tiny", messages=HELLO, **kwargs)
        assert info.value.body["param"] == param
    with pytest.raises(openai.NotFoundError) as info:
        ask(client, "no-such-model")
    assert "tiny" in info.value.message and "ada-1" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, "tiny", content="word " * 400)
    assert "context is 96 tokens" in info.value.message
    capped = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=10_000, temperature=1.0, seed=1)
    assert capped.usage.completion_tokens <= 16
    r = httpx.post(f"{gw.url}/v1/chat/completions", headers=auth(gw.key) | {"x-flywheel-task": "bad task!"},
                   json={"model": "tiny", "messages": HELLO})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-flywheel-task"
    r = httpx.post(f"{gw.url}/v1/chat/completions", headers=auth(gw.key), json={"model": "tiny"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as info:  # it would be recorded as the user id (at most 256)
        client.chat.completions.create(model="tiny", messages=HELLO, user="u" * 300)
    assert info.value.body["param"] == "user" and "256" in info.value.message
    r = httpx.post(f"{gw.url}/v1/chat/completions", headers=auth(gw.key), content=b'{"model": "tiny", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]


def test_a_busy_database_does_not_hold_up_the_gateway(client, servers):
    """Another process holds the database (a curation's read, a CLI command): chat is answered
    by the aliases last read, not after the store's 30 s wait, and the call is recorded after."""
    gw, _ = servers
    with store.connect(load_settings(gw.data_dir).db_path):
        time.sleep(0.3)  # the aliases are due for a re-read (alias_refresh_s = 0.2)
        answer = client.with_options(timeout=10).chat.completions.with_raw_response.create(
            model="tiny", messages=HELLO, max_tokens=4)  # fmt: skip
    assert answer.parse().choices[0].message.content
    assert recorded(servers, answer.headers["x-flywheel-interaction-id"], timeout=10)["model"] == "tiny"


def test_client_disconnect_mid_stream_frees_the_slot(client, servers):
    """The client hangs up after the first line: the call is recorded as cut off, and the slot serves
    the next request. On a fast machine the tiny model may write all its 16 tokens before the hang-up
    reaches the server (then the answer is whole and recorded as such), so a few tries are allowed."""
    gw, _ = servers
    outcomes = []
    while len(outcomes) < 8 and "client disconnected" not in outcomes:
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions", headers=auth(gw.key), timeout=30,
                          json={"model": "tiny", "messages": HELLO, "stream": True, "max_tokens": 16}) as r:  # fmt: skip
            first = next(r.iter_lines())
            interaction_id = r.headers["x-flywheel-interaction-id"]
        assert first.startswith("data: ")
        row = recorded(servers, interaction_id)
        outcomes.append(row["metadata"].get("error") if row["status"] == "error" else row["status"])
    assert outcomes[-1] == "client disconnected" and set(outcomes) <= {"ok", "client disconnected"}, outcomes
    assert ask(client, "tiny").choices[0].finish_reason in ("stop", "length")


def test_every_route_kind_has_a_backend():
    """The kinds a config may name (flywheel.settings) are the kinds the table serves; an unknown one is refused."""
    from typing import get_args

    from flywheel.settings import RouteSettings
    from serving.backends import KINDS, build

    assert set(get_args(RouteSettings.model_fields["kind"].annotation)) <= set(KINDS)
    built = build({"big": RouteSettings(kind="upstream", base_url="http://127.0.0.1:9/v1"),
                   "gpu": RouteSettings(kind="vllm", base_url="http://127.0.0.1:9/v1")})  # fmt: skip
    assert [type(b).__name__ for b in built.values()] == ["UpstreamBackend", "VllmBackend"]
    assert [b.holds_adapters for b in built.values()] == [False, True]
    with pytest.raises(ValueError, match="routes.odd.kind"):
        build({"odd": RouteSettings.model_construct(kind="telepathy")})


def test_an_adapter_loads_again_after_the_last_one_was_unloaded(tiny_models):
    # The engine on its own: unloading its only adapter used to leave PEFT pointing at it, and the
    # next load (the demo's second turn) failed with a KeyError.
    from serving.engine import Engine

    engine = Engine(tiny_models["base"], route="tiny")
    try:
        for _ in range(2):
            engine.load_adapter("ada-2", tiny_models["ada-2"]).result(timeout=60)
            assert engine.adapters == {"ada-2": tiny_models["ada-2"]}
            engine.unload_adapter("ada-2").result(timeout=60)
            assert engine.adapters == {}
        engine.load_adapter("ada-2", tiny_models["ada-2"]).result(timeout=60)
        engine.load_adapter("ada-3", tiny_models["ada-3"]).result(timeout=60)
        engine.unload_adapter("ada-2").result(timeout=60)  # not the last: the other one stays usable
        engine.load_adapter("ada-2", tiny_models["ada-2"]).result(timeout=60)
        assert set(engine.adapters) == {"ada-2", "ada-3"}
    finally:
        engine.close()
