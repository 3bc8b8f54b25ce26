"""The demo's support agent (flywheel.demo.agent) and its simulated incumbent (serving.simulated):
the requests carry their right calls, the incumbent errs at its declared rates, the golden set is a
valid benchmark with tools per example, and the provider answers tool calls the official client
reads and the gateway records."""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import httpx
import openai
import pytest
from conftest import auth, make_keys

from evals.metrics import build_metric
from evals.spec import split_example
from flywheel.demo import agent
from flywheel.settings import load_settings
from serving import simulated
from serving.app import create_app, in_thread

N = 4000


def mistakes(incumbent: agent.AgentIncumbent, n: int = N, seed: int = 3) -> Counter:
    """What the incumbent does on n requests, by kind of answer."""
    rng, seen = random.Random(seed), Counter()
    for _ in range(n):
        text, want, _ = agent.request(rng)
        calls, reply = agent.incumbent_answer(text, incumbent)
        if not want:
            seen["no tool needed"] += 1
            seen["needless call"] += bool(calls)
            assert calls or reply  # it answers in words when it makes no call
            continue
        seen["tool needed"] += 1
        (got,) = calls
        if got["name"] != want[0]["name"]:
            seen["wrong tool"] += 1
        elif not agent.right(calls, want):
            seen["wrong argument"] += 1
    return seen


def test_each_request_carries_its_right_call_and_the_text_gives_it_back():
    rng = random.Random(1)
    kinds = Counter()
    for _ in range(500):
        text, want, reply = agent.request(rng)
        assert agent.truth(text) == (want, reply)
        kinds[want[0]["name"] if want else None] += 1
        if want:
            assert reply is None and want[0]["name"] in agent.TOOL_NAMES
            for name, value in want[0]["arguments"].items():  # order numbers, amounts, addresses are in the text
                assert name == "reason" or str(value) in text
        else:  # one of the replies, its slots filled from the request
            assert any(reply == answer.format(**slots) for template, answer in agent.REPLIES.items()
                       if (slots := agent.slots_of(template, text)) is not None)  # fmt: skip
    assert set(kinds) == {*agent.TOOL_NAMES, None}  # every tool, and requests that need none
    assert 0.12 < kinds[None] / 500 < 0.28
    assert agent.truth("Customer 5: please sing me a song") == ([], None)


def test_requests_that_need_no_tool_or_a_human_are_not_near_duplicates_of_one_another():
    # Curation drops near-duplicates (user turn and target, MinHash at Jaccard 0.8). With one fixed
    # wording each, these requests came down to a few examples (10 needing no tool of 97): the
    # student never saw enough of them to learn when not to call. Now most of them are kept.
    import numpy as np
    import pyarrow as pa

    from flywheel.curate.dedup import near_duplicate_groups, sketch

    rng, texts = random.Random(4), []
    for _ in range(600):
        text, want, reply = agent.request(rng)
        if not want or want[0]["name"] == "escalate":
            texts.append(f"{text}\n{reply or json.dumps(want[0])}".lower())
    sk = sketch([(np.arange(len(texts)), pa.array(texts))], len(texts), threshold=0.8)
    groups = near_duplicate_groups(sk, np.ones(len(texts), bool), 0.8)
    assert len(texts) > 120 and len(set(groups.tolist())) > 0.85 * len(texts)


@pytest.mark.parametrize("rates", [agent.AgentIncumbent(), agent.AgentIncumbent(wrong_tool=0.2, wrong_argument=0.0, needless_call=0.6)])
def test_the_incumbent_errs_at_its_declared_rates(rates):
    seen = mistakes(rates)
    for kind, rate, base in (("wrong tool", rates.wrong_tool, "tool needed"), ("wrong argument", rates.wrong_argument, "tool needed"),
                             ("needless call", rates.needless_call, "no tool needed")):  # fmt: skip
        share = seen[kind] / seen[base]
        assert abs(share - rate) < 0.035, (kind, share, rate)
    right = N - seen["wrong tool"] - seen["wrong argument"] - seen["needless call"]
    assert abs(right / N - rates.expected_accuracy()) < 0.03


def test_the_incumbent_answers_a_request_the_same_way_every_time():
    text = agent.request(random.Random(11))[0]
    assert len({json.dumps(agent.incumbent_answer(text)) for _ in range(5)}) == 1
    perfect = agent.AgentIncumbent(wrong_tool=0, wrong_argument=0, needless_call=0)
    rng = random.Random(12)
    for _ in range(200):
        text, want, reply = agent.request(rng)
        assert agent.incumbent_answer(text, perfect) == (want, reply)


def test_the_golden_set_is_a_benchmark_with_tools_per_example_and_scores_the_incumbent():
    rows = agent.golden(150)
    examples = [split_example(r, f"golden[{i}]") for i, r in enumerate(rows)]
    assert all(ex.tools == agent.TOOLS for ex in examples)
    assert sum(not ex.expected_tool_calls for ex in examples) > 15  # irrelevance examples
    accuracy = build_metric({"type": "tool_call_args_typed"})
    irrelevance = build_metric({"type": "tool_call_irrelevance"})
    scores, irrelevant = [], []
    for ex in examples:
        calls, reply = agent.incumbent_answer(ex.messages[-1]["content"])
        scores.append(accuracy.score(reply or "", ex, calls))
        if (s := irrelevance.score(reply or "", ex, calls)) is not None:
            irrelevant.append(s)
        assert accuracy.score(ex.expected, ex, ex.expected_tool_calls or []) == 1.0  # the truth scores 1
    assert abs(sum(scores) / len(scores) - agent.AgentIncumbent().expected_accuracy()) < 0.08
    assert abs(1 - sum(irrelevant) / len(irrelevant) - agent.AgentIncumbent().needless_call) < 0.15
    assert len({r["messages"][1]["content"] for r in rows}) == 150  # unique requests, as real ones are


def test_reviewers_correct_wrong_calls_with_the_right_one():
    rng, corrections, thumbs = random.Random(5), [], []
    for i in range(400):
        text, want, reply = agent.request(rng)
        calls, _ = agent.incumbent_answer(text)
        item = agent.user_feedback(rng, f"i{i}", want, reply, calls)
        if item and item["kind"] == "correction":
            assert not agent.right(calls, want) and item["value"] == (want or reply)
            corrections.append(item)
        elif item:
            thumbs.append(item["value"] == agent.right(calls, want))
    assert corrections and thumbs and all(thumbs)


def test_the_simulated_provider_calls_tools_through_the_gateway_and_the_call_is_recorded(tmp_path):
    with in_thread(simulated.create_app(latency_scale=0)) as provider:
        (tmp_path / "flywheel.toml").write_text(f'[routes.sim]\nkind = "upstream"\nbase_url = "{provider}/v1"\n')
        key = make_keys(tmp_path, "shop")["shop"]
        with in_thread(create_app(load_settings(tmp_path))) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=key)
            rng, answers = random.Random(2), []
            while len(answers) < 12:
                text = agent.request(rng)[0]
                raw = client.chat.completions.with_raw_response.create(
                    model="sim", tools=agent.TOOLS,
                    messages=[{"role": "system", "content": agent.SYSTEM}, {"role": "user", "content": text}])  # fmt: skip
                answers.append((raw.headers["x-flywheel-interaction-id"], text, raw.parse().choices[0]))
            for iid, text, choice in answers:
                calls, reply = agent.incumbent_answer(text)  # the provider's answer is the simulator's
                got = [{"name": c.function.name, "arguments": json.loads(c.function.arguments)} for c in choice.message.tool_calls or []]
                assert got == calls and choice.message.content == reply
                assert choice.finish_reason == ("tool_calls" if calls else "stop")
            ticket = client.chat.completions.create(model="sim", messages=[{"role": "user", "content": "my parcel #123 has not arrived yet"}])
            assert ticket.choices[0].message.content in ("billing", "shipping", "account", "technical", "refund")  # no tools: the router
            iid, _, choice = next(a for a in answers if a[2].message.tool_calls)
            with httpx.Client(base_url=url) as http:
                deadline = time.monotonic() + 10
                while (r := http.get(f"/v1/interactions/{iid}", headers=auth(key))).status_code != 200 and time.monotonic() < deadline:
                    time.sleep(0.05)
            row = r.json()
            assert row["request"]["tools"] == agent.TOOLS
            assert [c["function"]["name"] for c in row["response_tool_calls"]] == [c.function.name for c in choice.message.tool_calls]
