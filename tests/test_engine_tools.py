"""Our engine serves tool calls (issue 15, item 2).

A tiny random model never writes a call of its own accord, so the reading side is tested on
planted text: the streaming splitter gives the same calls as `flywheel.tools.parse` however the
text is cut, and an answer that holds a broken block comes back as text and is counted. The
writing side needs no luck: with `tool_choice` naming a function, or a `response_format` schema,
the engine's grammar mask makes even a random model write a valid call or JSON value, which is
checked against the schema, through `flywheel serve` and the official openai client, streamed
and not. Bad tool fields are a 400 naming the field, never a 500.
"""

from __future__ import annotations

import json
import time

import httpx
import jsonschema
import openai
import pytest
from prometheus_client import REGISTRY

from conftest import make_keys
from flywheel.settings import load_settings
from flywheel.tools import parse
from serving.app import create_app, in_thread
from serving.tool_calls import CallStream, read

LOOKUP = {"type": "object", "additionalProperties": False, "required": ["order_id", "urgent"],
          "properties": {"order_id": {"type": "string", "maxLength": 6}, "urgent": {"type": "boolean"}}}  # fmt: skip
TOOLS = [
    {"type": "function", "function": {"name": "lookup_order", "description": "Find an order", "parameters": LOOKUP}},
    {"type": "function", "function": {"name": "escalate", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["reason"],
        "properties": {"reason": {"enum": ["angry", "legal", "other"]}}}}},
]  # fmt: skip
PLANTED = ('Let me check. <tool_call>{"name": "lookup_order", "arguments": {"order_id": "A17", "urgent": true}}'
           '</tool_call>\n<tool_call>{"name": "escalate", "arguments": {"reason": "legal"}}</tool_call>')  # fmt: skip
BROKEN = 'Sure <tool_call>{"name": "lookup_order", "arguments": {"order_id": </tool_call> done'


def streamed(text: str, cut: int) -> list[str | dict]:
    stream, items = CallStream(), []
    for at in range(0, len(text), cut):
        items += stream.feed(text[at : at + cut])
    return items + stream.close()


def unparsed(route: str, reason: str) -> float:
    return REGISTRY.get_sample_value("flywheel_tool_calls_unparsed_total", {"route": route, "reason": reason}) or 0.0


@pytest.mark.parametrize("cut", [1, 2, 5, 11, 1000])
def test_a_stream_cut_anywhere_gives_the_calls_parse_gives(cut):
    content, calls = parse(PLANTED)
    items = streamed(PLANTED, cut)
    texts, got = [i for i in items if isinstance(i, str)], [i for i in items if isinstance(i, dict)]
    assert "".join(texts).strip() == content == "Let me check."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got] == \
        [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == \
        [("lookup_order", {"order_id": "A17", "urgent": True}), ("escalate", {"reason": "legal"})]  # fmt: skip
    assert items == texts + got  # the text before the calls went out first, as it came


@pytest.mark.parametrize("cut", [1, 3, 1000])
def test_a_broken_block_streams_as_text_and_plain_text_passes_through(cut):
    stream, items = CallStream(), []
    for at in range(0, len(BROKEN), cut):
        items += stream.feed(BROKEN[at : at + cut])
    items += stream.close()
    assert "".join(items) == BROKEN and not stream.calls and stream.unparsed.startswith("<tool_call>")
    assert "".join(streamed("a < b and <tool_ but no call", cut)) == "a < b and <tool_ but no call"


def test_an_unterminated_call_at_the_end_is_read_as_parse_reads_it():
    text = 'x <tool_call>{"name": "escalate", "arguments": {"reason": "other"}}'
    items = streamed(text, 4)
    assert items[0] == "x " and items[1]["function"]["name"] == "escalate" == parse(text)[1][0]["function"]["name"]


def test_the_answer_message_holds_the_calls_and_a_broken_one_is_counted_text():
    offer = read({"tools": TOOLS})
    message, finish = offer.message(PLANTED, "stop", "unit")
    assert finish == "tool_calls" and message["content"] == "Let me check."
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["lookup_order", "escalate"]
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in message["tool_calls"])
    assert offer.message(PLANTED, "length", "unit")[1] == "length"  # a cut answer says so

    before = unparsed("unit", "malformed")
    message, finish = offer.message(BROKEN, "stop", "unit")
    assert message == {"role": "assistant", "content": BROKEN} and finish == "stop"
    assert unparsed("unit", "malformed") == before + 1

    none = read({"tools": TOOLS, "tool_choice": "none"})
    before = unparsed("unit", "not_allowed")
    assert none.tools is None and none.grammar is None  # nothing rendered, nothing parsed
    assert none.message(PLANTED, "stop", "unit") == ({"role": "assistant", "content": PLANTED}, "stop")
    assert unparsed("unit", "not_allowed") == before + 1
    assert read({}).message("<tool_call>", "stop", "unit")[0]["content"] == "<tool_call>"  # no tools: plain text


# --- through a real service ------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from flywheel.demo.tiny import build_tiny_model, ticket_texts

    root = tmp_path_factory.mktemp("tools")
    base = build_tiny_model(root / "base", ticket_texts(60), hidden=32, layers=1, heads=2, max_length=2048)
    home = root / "home"
    home.mkdir()
    (home / "flywheel.toml").write_text(f'[gateway]\nmax_tokens = 96\n[routes.tiny]\nkind = "local"\npath = "{base}"\n')
    key = make_keys(home, "acme")["acme"]
    with in_thread(create_app(load_settings(home))) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


MESSAGES = [{"role": "user", "content": "where is order A17?"}]
NAMED = {"type": "function", "function": {"name": "lookup_order"}}


def ask(client, **params):
    return client.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS,
                                          **{"temperature": 1.0, "seed": 7, **params})  # fmt: skip


def assemble(stream) -> tuple[str, list[dict], str]:
    """(content, calls, finish_reason) of a streamed answer, as a client assembles it."""
    content, calls, finish = "", {}, None
    for chunk in stream:
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for d in choice.delta.tool_calls or []:
            calls[d.index] = {"name": d.function.name, "arguments": d.function.arguments}
        finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


@pytest.mark.slow
def test_a_named_function_is_called_with_valid_arguments_streamed_or_not(client):
    for seed in (1, 2, 3):
        answer = ask(client, tool_choice=NAMED, parallel_tool_calls=False, seed=seed).choices[0]
        assert answer.finish_reason == "tool_calls" and len(answer.message.tool_calls) == 1
        call = answer.message.tool_calls[0]
        assert call.function.name == "lookup_order"
        jsonschema.validate(json.loads(call.function.arguments), LOOKUP)
        content, calls, finish = assemble(ask(client, tool_choice=NAMED, parallel_tool_calls=False, seed=seed,
                                              stream=True))  # fmt: skip
        assert finish == "tool_calls" and not content.strip()
        assert calls == [{"name": "lookup_order", "arguments": call.function.arguments}]  # the same seed, the same call


@pytest.mark.slow
def test_required_calls_some_tool_and_a_json_schema_answer_follows_it(client):
    answer = ask(client, tool_choice="required", parallel_tool_calls=False).choices[0]
    (call,) = answer.message.tool_calls
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), schema)

    wanted = {"type": "object", "additionalProperties": False, "required": ["label"],
              "properties": {"label": {"enum": ["billing", "shipping", "other"]}}}  # fmt: skip
    for stream in (False, True):
        kwargs = {"messages": MESSAGES, "temperature": 1.0, "seed": 5, "stream": stream,
                  "response_format": {"type": "json_schema", "json_schema": {"name": "triage", "schema": wanted}}}
        got = client.chat.completions.create(model="tiny", **kwargs)
        content = assemble(got)[0] if stream else got.choices[0].message.content
        jsonschema.validate(json.loads(content), wanted)


@pytest.mark.slow
def test_auto_and_none_answer_well_formed_with_tool_results_in_the_conversation(client):
    history = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "lookup_order", "arguments": '{"order_id": "A17", "urgent": false}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'},
    ]  # fmt: skip
    for choice in ("auto", "none"):
        answer = client.chat.completions.create(model="tiny", messages=history, tools=TOOLS, tool_choice=choice,
                                                temperature=0, max_tokens=12).choices[0]  # fmt: skip
        assert answer.finish_reason in ("stop", "length") and isinstance(answer.message.content, str)
        assert answer.message.tool_calls is None  # a random model writes no call; "none" never parses one
        content, calls, finish = assemble(client.chat.completions.create(
            model="tiny", messages=history, tools=TOOLS, tool_choice=choice, temperature=0, max_tokens=12, stream=True))
        assert (content, calls, finish) == (answer.message.content, [], answer.finish_reason)


@pytest.mark.slow
def test_bad_tools_are_a_400_through_the_service(client):
    """The door refuses malformed fields; a valid schema the grammar engine cannot compile (a
    look-behind pattern) is refused by the local route, naming the field, before decoding."""
    lookbehind = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=a)b"}}}
    for params, param, says in [
        ({"tools": [{"type": "function", "function": {}}]}, "tools", "tools[0]"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": lookbehind}}},
         "response_format", "cannot constrain"),
    ]:  # fmt: skip
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model="tiny", messages=MESSAGES, **params)
        assert info.value.body["param"] == param and says in info.value.message


def recorded(client, interaction_id: str) -> dict:
    """The interaction the gateway recorded (written off the answer's path: wait for it, boundedly)."""
    for _ in range(100):
        got = httpx.get(f"{client.base_url}interactions/{interaction_id}",
                        headers={"Authorization": f"Bearer {client.api_key}"})
        if got.status_code == 200:
            return got.json()
        time.sleep(0.1)
    raise AssertionError(f"interaction {interaction_id} was never recorded: {got.status_code} {got.text}")


@pytest.mark.slow
def test_the_recorded_interaction_holds_the_call_streamed_or_not(client):
    for stream in (False, True):
        raw = client.chat.completions.with_raw_response.create(
            model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice=NAMED, parallel_tool_calls=False, stream=stream)
        answer = raw.parse()
        if stream:
            _, calls, _ = assemble(answer)
        else:
            calls = [{"name": c.function.name, "arguments": c.function.arguments}
                     for c in answer.choices[0].message.tool_calls]
        row = recorded(client, raw.headers["x-flywheel-interaction-id"])
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in row["response_tool_calls"]] == \
            [(c["name"], c["arguments"]) for c in calls] and calls[0]["name"] == "lookup_order"  # fmt: skip
        assert "<tool_call>" not in (row["response"] or "")  # the call is recorded as a call, not as text
