"""Tool calling through the gateway's upstream route and through ingestion, with the official
`openai` client against `flywheel serve` (in this process) and a fake provider that answers with
tool calls, streamed and not: what reaches the provider, what is recorded, and every bad input."""

from __future__ import annotations

import json
import time

import httpx
import msgspec
import openai
import pytest
from conftest import auth, make_keys
from curation_data import sft_rows
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel import tools
from flywheel.curate.pipeline import CurationConfig, curate
from flywheel.ingest.records import ItemError, Limits, interaction_row
from flywheel.settings import load_settings
from serving.app import create_app, in_thread

OBJECT = {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}
TOOLS = [
    {"type": "function", "function": {"name": "lookup_order", "description": "Find an order", "parameters": OBJECT}},
    {"type": "function", "function": {"name": "escalate", "parameters": {
        "type": "object", "properties": {"reason": {"type": "string"}}}}},
]  # fmt: skip
ASK = [{"role": "user", "content": "where is order A-17?"}]
ARGS = {"lookup_order": '{"order_id": "A-17"}', "escalate": '{"reason": "late"}'}
# A conversation that went through a call: the assistant called, the tool answered.
CALLED = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
              {"id": "call_0", "type": "function", "function": {"name": "lookup_order", "arguments": ARGS["lookup_order"]}}]},
          {"role": "tool", "tool_call_id": "call_0", "content": '{"status": "shipped", "eta": "Friday"}'}]  # fmt: skip
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": {
    "type": "object", "properties": {"queue": {"type": "string"}}, "required": ["queue"]}}}


def _calls_for(body: dict) -> list[str]:
    """The functions the fake provider calls: none when told so, after a tool result or without tools;
    the named one; else the first tool, and every tool when parallel calls are allowed."""
    choice, tools = body.get("tool_choice", "auto"), body.get("tools") or []
    if choice == "none" or not tools or body["messages"][-1]["role"] == "tool":
        return []
    if isinstance(choice, dict):
        return [choice["function"]["name"]]
    names = [t["function"]["name"] for t in tools]
    return names if body.get("parallel_tool_calls") else names[:1]


def _sse(chunks: list[dict]):
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


@pytest.fixture(scope="module")
def provider():
    """A fake OpenAI-compatible provider that keeps every body it got and answers with calls."""
    app, bodies = FastAPI(), []

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        bodies.append(body)
        names = _calls_for(body)
        text = None if names else ('{"queue": "billing"}' if body.get("response_format") else "It ships Friday.")
        usage = {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}
        finish = "tool_calls" if names else "stop"
        head = {"id": "fake", "created": 0, "model": "fake"}
        if not body.get("stream"):
            calls = [{"id": f"call_{i + 1}", "type": "function", "function": {"name": n, "arguments": ARGS[n]}}
                     for i, n in enumerate(names)]  # fmt: skip
            message = {"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}
            return {**head, "object": "chat.completion", "usage": usage,
                    "choices": [{"index": 0, "finish_reason": finish, "message": message}]}  # fmt: skip
        # Streamed as providers do: the call's id and name first, then its arguments in fragments,
        # the calls of a parallel answer interleaved by index.
        deltas = [{"role": "assistant", "content": text}]
        deltas += [{"tool_calls": [{"index": i, "id": f"call_{i + 1}", "type": "function",
                                    "function": {"name": n, "arguments": ""}}]} for i, n in enumerate(names)]  # fmt: skip
        for k in range(0, 24, 6):
            deltas += [{"tool_calls": [{"index": i, "function": {"arguments": ARGS[n][k : k + 6]}}]}
                       for i, n in enumerate(names) if ARGS[n][k : k + 6]]  # fmt: skip
        chunks = [{**head, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d, "finish_reason": None}]}
                  for d in deltas]  # fmt: skip
        chunks.append({**head, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        chunks.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        return StreamingResponse(_sse(chunks), media_type="text/event-stream")

    with in_thread(app) as url:
        yield url, bodies


@pytest.fixture(scope="module")
def service(tmp_path_factory, provider):
    home = tmp_path_factory.mktemp("home")
    (home / "flywheel.toml").write_text(f'[routes.up]\nkind = "upstream"\nbase_url = "{provider[0]}/v1"\nretries = 0\n')
    key = make_keys(home, "acme")["acme"]
    with in_thread(create_app(load_settings(home))) as url:
        yield url, key, home


@pytest.fixture(scope="module")
def client(service):
    url, key, _ = service
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)


def recorded(service, interaction_id: str) -> dict:
    url, key, _ = service
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/v1/interactions/{interaction_id}", headers=auth(key))
        if r.status_code == 200:
            return r.json()
        time.sleep(0.05)
    raise AssertionError(f"interaction {interaction_id} was not recorded")


def chat(client, **kw):
    raw = client.chat.completions.with_raw_response.create(model="up", **{"messages": ASK, **kw})
    return raw.parse(), raw.headers["x-flywheel-interaction-id"]


@pytest.mark.parametrize("choice", ["auto", "none", "required", {"type": "function", "function": {"name": "escalate"}}])
def test_tool_choice_reaches_the_provider_and_the_call_is_recorded(client, service, provider, choice):
    answer, id = chat(client, tools=TOOLS, tool_choice=choice)
    sent = provider[1][-1]
    assert sent["tools"] == TOOLS and sent["tool_choice"] == choice
    want = [] if choice == "none" else ["escalate"] if isinstance(choice, dict) else ["lookup_order"]
    message = answer.choices[0].message
    assert [c.function.name for c in message.tool_calls or []] == want
    assert answer.choices[0].finish_reason == ("tool_calls" if want else "stop")
    row = recorded(service, id)
    assert row["request"]["tools"] == TOOLS and row["request"]["params"]["tool_choice"] == choice
    if want:
        assert row["response"] == "" and row["response_tool_calls"] == [
            {"id": "call_1", "type": "function", "function": {"name": want[0], "arguments": ARGS[want[0]]}}]
    else:
        assert row["response"] == "It ships Friday." and row["response_tool_calls"] is None


def test_streamed_tool_calls_are_assembled_and_recorded(client, service, provider):
    raw = client.chat.completions.with_raw_response.create(
        model="up", messages=ASK, tools=TOOLS, parallel_tool_calls=True, stream=True,
        stream_options={"include_usage": True})  # fmt: skip
    got: dict[int, dict] = {}
    for chunk in raw.parse():
        for choice in chunk.choices:
            for d in choice.delta.tool_calls or []:
                call = got.setdefault(d.index, {"id": d.id, "name": d.function.name, "arguments": ""})
                call["arguments"] += d.function.arguments or ""
    assert provider[1][-1]["parallel_tool_calls"] is True and provider[1][-1]["stream"] is True
    assert [c["name"] for c in got.values()] == ["lookup_order", "escalate"]  # (the client saw it in pieces)
    row = recorded(service, raw.headers["x-flywheel-interaction-id"])
    assert row["response_tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "lookup_order", "arguments": ARGS["lookup_order"]}},
        {"id": "call_2", "type": "function", "function": {"name": "escalate", "arguments": ARGS["escalate"]}}]
    assert row["request"]["params"]["parallel_tool_calls"] is True and row["completion_tokens"] == 9


def test_a_conversation_with_tool_results_is_forwarded_and_recorded(client, service, provider):
    answer, id = chat(client, messages=CALLED, tools=TOOLS)
    assert provider[1][-1]["messages"] == CALLED  # (null content and tool_call_id as sent)
    assert answer.choices[0].message.content == "It ships Friday." and not answer.choices[0].message.tool_calls
    row = recorded(service, id)
    assert row["request"]["messages"] == CALLED and row["response"] == "It ships Friday."


def test_response_format_json_schema_is_forwarded_and_recorded(client, service, provider):
    answer, id = chat(client, response_format=SCHEMA_FORMAT)
    assert provider[1][-1]["response_format"] == SCHEMA_FORMAT
    assert json.loads(answer.choices[0].message.content) == {"queue": "billing"}
    assert recorded(service, id)["request"]["params"]["response_format"] == SCHEMA_FORMAT


def test_recorded_tool_calls_become_call_targets_in_curation(client, service):
    """The loop end to end: calls answered through the gateway are curated into SFT examples whose
    target is the call (in `flywheel.tools`' text), with the tools offered beside them."""
    for i in range(6):
        client.chat.completions.create(model="up", tools=TOOLS, tool_choice="required", extra_headers={"x-flywheel-task": "agent-loop"},
                                       messages=[{"role": "user", "content": f"Where is order A-{i}7? Ticket {i * 7919}."}])  # fmt: skip
    _, _, home = service
    deadline = time.monotonic() + 10
    while len(recorded_ids := _task_ids(service, "agent-loop")) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    version = curate(load_settings(home), project="acme", task="agent-loop", config=CurationConfig(min_examples=2))
    examples = sft_rows(version)
    assert examples and {row["interaction_id"] for row in examples} <= set(recorded_ids)
    for row in examples:
        content, calls = tools.parse(row["messages"][-1]["content"])
        assert row["messages"][-1]["role"] == "assistant" and content is None
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [("lookup_order", {"order_id": "A-17"})]
        assert json.loads(row["tools"]) == TOOLS


def _task_ids(service, task: str) -> list[str]:
    url, key, _ = service
    return [r["id"] for r in httpx.get(f"{url}/v1/interactions", params={"task": task}, headers=auth(key)).json()["data"]]


def _tool(name="t", **function) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": OBJECT, **function}}


BAD = [  # (the fields of the request, what the 400 starts with)
    ({"tools": "lookup_order"}, "tools: Expected `array | null`"),
    ({"tools": ["lookup_order"]}, "tools[0]: expected"),
    ({"tools": [{"function": {"name": "t", "parameters": OBJECT}}]}, 'tools[0].type: required, "function"'),
    ({"tools": [{"type": "function"}]}, "tools[0].function: required"),
    ({"tools": [TOOLS[0], {"type": "function", "function": {"parameters": OBJECT}}]}, "tools[1].function.name: required"),
    ({"tools": [_tool(name="")]}, "tools[0].function.name: required"),
    ({"tools": [_tool(parameters=None)]}, "tools[0].function.parameters: required, a JSON schema"),
    ({"tools": [_tool(parameters={"type": "objekt"})]}, "tools[0].function.parameters.type: not a valid JSON schema"),
    ({"tools": [_tool(parameters={"type": "object", "required": "order_id"})]},
     "tools[0].function.parameters.required: not a valid JSON schema"),
    ({"tools": [_tool(), _tool()]}, "tools[1].function.name: duplicate tool name 't'"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice: expected one of none, auto, required"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "refund"}}},
     "tool_choice.function.name: 'refund' is not one of the tools given"),
    ({"tools": TOOLS, "tool_choice": {"type": "function"}}, "tool_choice: expected one of"),
    ({"tool_choice": "required"}, 'tool_choice: "required" needs `tools`'),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls: Expected `bool | null`"),
    ({"response_format": {"type": "xml"}}, "response_format.type: required, one of text, json_object, json_schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema: required"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}}, "response_format.json_schema.schema: required"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": 3}}}},
     "response_format.json_schema.schema.type: not a valid JSON schema"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_tool_fields_are_a_400_naming_the_field(client, provider, fields, message):
    before = len(provider[1])
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="up", messages=ASK, extra_body=fields)
    assert err.value.status_code == 400
    assert err.value.body["message"].startswith(message), err.value.body
    assert err.value.body["param"] == message.split(":")[0].split("[")[0].split(".")[0]
    assert len(provider[1]) == before  # refused at the door: the provider never saw it


# --- ingestion: the same shapes in POST /v1/interactions ---

CALL = {"id": "call_9", "type": "function", "function": {"name": "lookup_order", "arguments": '{"order_id": "ann@example.com"}'}}


def item(**kw) -> dict:
    return {"task": "agent", "model": "big", "messages": ASK, "tools": TOOLS, "params": {"tool_choice": "auto"},
            "response": None, "response_tool_calls": [CALL], **kw}  # fmt: skip


def test_ingested_tool_calls_and_results_come_back(service):
    url, key, _ = service
    items = [item(id="tool-call"), item(id="tool-result", messages=CALLED, response="It ships Friday.", response_tool_calls=None)]
    r = httpx.post(f"{url}/v1/interactions", json={"interactions": items}, headers=auth(key))
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
    page = httpx.get(f"{url}/v1/interactions", params={"task": "agent"}, headers=auth(key)).json()["data"]
    rows = {row["id"]: row for row in page}
    call = rows["tool-call"]
    assert call["response"] == "" and call["request"]["tools"] == TOOLS and call["request"]["params"] == {"tool_choice": "auto"}
    # PII in the arguments is redacted inside, and they stay JSON
    assert call["response_tool_calls"][0]["id"] == "call_9" and call["pii_redacted"] == 1
    assert json.loads(call["response_tool_calls"][0]["function"]["arguments"]) == {"order_id": "<EMAIL>"}
    result = rows["tool-result"]
    assert result["request"]["messages"] == CALLED and result["response_tool_calls"] is None


ITEM_ERRORS = [
    ({"tools": [{"type": "function", "function": {"name": "x"}}]}, "tools[0].function.parameters: required"),
    ({"tools": [TOOLS[0], {"type": "function", "function": {"parameters": OBJECT}}]}, "tools[1].function.name: required"),
    ({"params": {"tool_choice": {"type": "function", "function": {"name": "refund"}}}},
     "params.tool_choice.function.name: 'refund' is not one of the tools given"),
    ({"params": {"response_format": {"type": "yaml"}}}, "params.response_format.type: required"),
    ({"response_tool_calls": [{"type": "function", "function": {"name": "x", "arguments": {"a": 1}}}]},
     "response_tool_calls[0].function.arguments: required, the arguments as a JSON string"),
    ({"response_tool_calls": ["lookup_order"]}, "response_tool_calls[0]: expected"),
    ({"response_tool_calls": []}, "response: required field missing"),
    ({"response_tool_calls": None}, "response: required field missing"),
    ({"messages": [*ASK, {"role": "assistant", "content": None, "tool_calls": [{"function": {"arguments": "{}"}}]}]},
     "messages[1].tool_calls[0].function.name: required"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "message"), ITEM_ERRORS, ids=[m.split(":")[0] for _, m in ITEM_ERRORS])
def test_bad_tool_items_are_item_errors_naming_the_field(fields, message):
    with pytest.raises(ItemError) as err:
        interaction_row(msgspec.json.encode(item(**fields)), project="p", redact=True, limits=Limits(1000, 10))
    assert str(err.value).startswith(message), err.value


def test_one_bad_tool_item_does_not_sink_the_batch(service):
    url, key, _ = service
    items = [item(id="good-call", task="agent-batch"), item(id="bad-call", task="agent-batch", tools=[{"type": "function"}])]
    results = httpx.post(f"{url}/v1/interactions", json={"interactions": items}, headers=auth(key)).json()["results"]
    assert [r["status"] for r in results] == ["accepted", "error"]
    assert results[1]["error"].startswith("tools[0].function: required")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(
        ["type", "function", "name", "parameters", "arguments", "id", "json_schema", "schema", "x"]), inner, max_size=4),
    max_leaves=16,
)  # fmt: skip
TOOL_FIELDS = {"tools": "tools", "response_tool_calls": "response_tool_calls",
               "tool_choice": "params.tool_choice", "response_format": "params.response_format"}  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(TOOL_FIELDS)), json_values)
def test_any_json_in_a_tool_field_is_a_row_or_an_error_naming_it(field, value):
    fields = {"params": {field: value}} if TOOL_FIELDS[field].startswith("params.") else {field: value}
    try:
        interaction_row(msgspec.json.encode(item(**fields)), project="p", redact=True, limits=Limits(1000, 10))
    except ItemError as exc:
        no_answer = field == "response_tool_calls" and value in (None, [])  # (no calls and no text)
        named = "response" if no_answer else TOOL_FIELDS[field]
        assert str(exc).startswith(named), exc
