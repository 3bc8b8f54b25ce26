"""Curation of tool-calling traffic: calls and results in the conversation, a call as the target
(logged or a corrected one), tool names in the dedup and split keys, PII in arguments and results
— on a real DuckDB file, read back from the written dataset."""

from __future__ import annotations

import json
import random

import pytest
from curation_data import background, fb, fill, interaction, sentence, sft_rows

from flywheel import tools
from flywheel.curate.pipeline import CurationConfig, curate
from flywheel.settings import load_settings

CFG = CurationConfig(min_examples=2, eval_fraction=0.2)


def spec(name: str, **params: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": f"{name} tool",
            "parameters": {"type": "object", "properties": {p: {"type": t} for p, t in params.items()}}}}  # fmt: skip


TOOLS = [spec("lookup_order", order_id="string"), spec("refund", order_id="string", amount="number")]


def call(name: str, **args) -> dict:
    return {"id": f"call-{name}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def agent(i: str, messages: list[dict], response, tool_specs=TOOLS, **kw) -> dict:
    request = {"messages": [{"role": "system", "content": "You are Acme's support agent."}, *messages], "tools": tool_specs}
    return interaction(i, "", response if isinstance(response, str) else json.dumps(response), request=request, **kw)


ASK = {"role": "user", "content": "Where is my order 1234? It was due last week."}
CALLED = {"role": "assistant", "content": None, "tool_calls": [call("lookup_order", order_id="A-77")]}
RESULT = {"role": "tool", "tool_call_id": "call-lookup_order", "content": '{"status": "shipped", "eta": "Friday"}'}


@pytest.fixture
def settings(tmp_path):
    return load_settings(tmp_path / "data")


def test_calls_and_results_become_examples_with_assistant_targets(settings):
    rows = [
        agent("first-call", [ASK], [call("lookup_order", order_id="A-77")], session_id="s1"),
        agent("after-result", [ASK, CALLED, RESULT], "Your order shipped and arrives on Friday.", session_id="s1"),
        agent("corrected", [{"role": "user", "content": "Refund order B-5, it arrived broken."}], "Sorry, let me check.", session_id="s2"),
        *background(random.Random(3), 6),
    ]
    wanted = [{"name": "refund", "arguments": {"order_id": "B-5", "amount": 30}}]
    fill(settings, rows, [fb("corrected", "correction", wanted)])
    version = curate(settings, task="support", config=CFG)
    by_id = {r["interaction_id"]: r for r in sft_rows(version)}

    first = by_id["first-call"]["messages"][-1]
    assert first["role"] == "assistant"
    content, calls = tools.parse(first["content"])
    assert content is None
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [("lookup_order", {"order_id": "A-77"})]
    assert json.loads(by_id["first-call"]["tools"]) == TOOLS

    after = by_id["after-result"]["messages"]
    assert [m["role"] for m in after] == ["system", "user", "assistant", "tool", "assistant"]
    assert after[-1]["content"] == "Your order shipped and arrives on Friday."  # the target: the assistant's answer
    assert after[3]["content"] == RESULT["content"]  # the tool result: context, never last
    assert tools.parse(after[2]["content"])[1][0]["function"]["name"] == "lookup_order"  # the earlier call, as text

    corrected = by_id["corrected"]
    assert corrected["target_source"] == "correction"
    _, calls = tools.parse(corrected["messages"][-1]["content"])
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [("refund", {"order_id": "B-5", "amount": 30})]
    assert by_id[str(1000)]["tools"] is None  # a chat without tools stays one
    assert version.counts["corrections"] == 1


def test_a_conversation_ending_on_the_assistant_is_not_an_example(settings):
    rows = [agent("ends-on-call", [ASK, CALLED], "x"), *background(random.Random(4), 4)]
    fill(settings, rows)
    version = curate(settings, task="support", config=CFG)
    assert version.counts["malformed"] == 1
    assert "ends-on-call" not in {r["interaction_id"] for r in sft_rows(version)}


def test_exact_dedup_key_takes_tool_names_into_account(settings):
    # The same question and answer twice with the same tools is a duplicate; offered other tools, it
    # is another example (near dedup, which would link them on their shared words, is off here).
    rows = [agent(f"twin-{i}", [ASK], "Let me look that up for you.", session_id=f"t{i}") for i in range(2)]
    rows.append(agent("other-tools", [ASK], "Let me look that up for you.", tool_specs=[spec("track_parcel", q="string")]))
    fill(settings, [*rows, *background(random.Random(5), 4)])
    version = curate(settings, task="support", config=CurationConfig(min_examples=2, near_dup_drop=False))
    assert version.counts["exact_duplicate"] == 1
    kept = {r["interaction_id"] for r in sft_rows(version)}
    assert "other-tools" in kept and len(kept & {"twin-0", "twin-1"}) == 1


def test_split_key_takes_tool_names_into_account(settings):
    # One question, each time offered another tool and answered with another call: with a key of the
    # question's text alone, all twelve would be one split unit, on one side.
    rng = random.Random(6)
    rows = [agent(f"tools-{i}", [ASK], [call(f"tool_{i}", query=sentence(rng, 20))], tool_specs=[spec(f"tool_{i}", query="string")],
                  session_id=f"s{i}") for i in range(12)]  # fmt: skip
    fill(settings, rows)
    version = curate(settings, task="support", config=CurationConfig(min_examples=2, eval_fraction=0.5))
    c = version.counts
    assert c["kept"] == 12 and c["split_units"] == 12
    assert c["train"] == c["eval"] == 6


def test_pii_recheck_covers_tool_arguments_and_results(settings):
    leaked_result = {**RESULT, "content": '{"status": "shipped", "contact": "jane.doe@example.com"}'}
    rows = [
        agent("pii-result", [ASK, CALLED, leaked_result], "It shipped on Monday."),
        agent("pii-arguments", [ASK], [call("lookup_order", order_id="A-1", phone="+1 415 555 0134")]),
        agent("clean", [ASK], [call("lookup_order", order_id="A-2")]),
        *background(random.Random(6), 4),
    ]
    fill(settings, rows)
    version = curate(settings, task="support", config=CFG)
    assert version.counts["pii"] == 2
    kept = {r["interaction_id"] for r in sft_rows(version)}
    assert "clean" in kept and not kept & {"pii-result", "pii-arguments"}
