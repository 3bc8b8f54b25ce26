"""Tool-calling benchmarks: every tool-call metric on planted outputs (exact vs type-aware
arguments, optional parameters, allowed values, irrelevance, schema-invalid calls), specs with
tools per example, and those tools reaching a real HTTP endpoint's request body in a full eval."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, Request

from evals import EndpointSampler, FunctionSampler, evaluate
from evals.metrics import build_metric
from evals.spec import BenchmarkSpec, benchmark_version, load_examples
from evals.types import Example, SamplerResponse, SpecError
from flywheel.settings import load_settings
from serving.app import in_thread


def tool(name: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": name.replace("_", " "),
            "parameters": {"type": "object", "properties": properties, "required": required}}}  # fmt: skip


REFUND = tool("refund", {"order_id": {"type": "string"}, "amount": {"type": "number"},
                         "currency": {"type": "string", "default": "EUR"},
                         "notify": {"type": "boolean", "default": True}}, ["order_id", "amount"])  # fmt: skip
LOOKUP = tool("lookup_order", {"order_id": {"type": "string"}}, ["order_id"])
ADDRESS = tool("update_address", {"order_id": {"type": "string"},
                                  "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"},
                                              "lines": {"type": "array", "items": {"type": "string"}}}}},
               ["order_id", "address"])  # fmt: skip
TOOLS = [REFUND, LOOKUP, ADDRESS]


def call(name: str, args: dict | str) -> dict:
    """A tool call as an OpenAI response carries it (arguments as JSON text)."""
    return {"id": f"call-{name}", "type": "function",
            "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}  # fmt: skip


def ex(*expected: dict, tools=TOOLS) -> Example:
    return Example(id="e", messages=[{"role": "user", "content": "q"}], expected_tool_calls=list(expected) or None, tools=tools)


def scores(example: Example, output_calls: list[dict] | None, text: str = "") -> dict:
    kinds = ["tool_call_name", "tool_call_args", "tool_call_args_typed", "tool_call_irrelevance", "tool_call_schema_valid"]
    return {k: build_metric({"type": k}).score(text, example, output_calls) for k in kinds}


REFUND_10 = call("refund", {"order_id": "A-17", "amount": 10})


@pytest.mark.parametrize("expected,output,exact,typed", [
    # Object key order never matters.
    (REFUND_10, call("refund", '{"amount": 10, "order_id": "A-17"}'), 1.0, 1.0),
    # Numbers: 10 vs 10.0 is a type difference exactly, equal by value typed.
    (REFUND_10, call("refund", {"order_id": "A-17", "amount": 10.0}), 0.0, 1.0),
    # A number given as a string, or a boolean for a number, is wrong either way.
    (REFUND_10, call("refund", {"order_id": "A-17", "amount": "10"}), 0.0, 0.0),
    (call("refund", {"order_id": "A-17", "amount": 1}), call("refund", {"order_id": "A-17", "amount": True}), 0.0, 0.0),
    # Strings: BFCL's normalisation (case, spaces, `,./-_*^`) only when typed.
    (REFUND_10, call("refund", {"order_id": "a17", "amount": 10}), 0.0, 1.0),
    (REFUND_10, call("refund", {"order_id": "A-18", "amount": 10}), 0.0, 0.0),
    # Optional parameters: left out where the expected value is the schema default (typed), or
    # given with the default where the expected call leaves them out (typed); never otherwise.
    (call("refund", {"order_id": "A-17", "amount": 10, "currency": "EUR"}), REFUND_10, 0.0, 1.0),
    (REFUND_10, call("refund", {"order_id": "A-17", "amount": 10, "notify": True}), 0.0, 1.0),
    (REFUND_10, call("refund", {"order_id": "A-17", "amount": 10, "notify": False}), 0.0, 0.0),
    (call("refund", {"order_id": "A-17", "amount": 10, "currency": "USD"}), REFUND_10, 0.0, 0.0),
    (REFUND_10, call("refund", {"order_id": "A-17"}), 0.0, 0.0),  # a required one left out
    (REFUND_10, call("refund", {"order_id": "A-17", "amount": 10, "reason": "late"}), 0.0, 0.0),  # not in the schema
    # Allowed values, and the `optional` flag, in both modes.
    (call("refund", {"order_id": {"any_of": ["A-17", "A17"]}, "amount": {"any_of": [10, 10.5]}}),
     call("refund", {"order_id": "A17", "amount": 10.5}), 1.0, 1.0),
    (call("refund", {"order_id": {"any_of": ["A-17", "A17"]}, "amount": 10}), call("refund", {"order_id": "B-2", "amount": 10}), 0.0, 0.0),
    (call("refund", {"order_id": "A-17", "amount": 10, "currency": {"any_of": ["USD"], "optional": True}}), REFUND_10, 1.0, 1.0),
    (call("refund", {"order_id": "A-17", "amount": 10, "currency": {"any_of": ["USD"], "optional": True}}),
     call("refund", {"order_id": "A-17", "amount": 10, "currency": "GBP"}), 0.0, 0.0),
    # Nested objects in any key order; lists in order; allowed values inside them.
    (call("update_address", {"order_id": "A-1", "address": {"city": "Oslo", "zip": "0150", "lines": ["Gate 1", "3rd floor"]}}),
     call("update_address", {"address": {"lines": ["Gate 1", "3rd floor"], "zip": "0150", "city": "Oslo"}, "order_id": "A-1"}), 1.0, 1.0),
    (call("update_address", {"order_id": "A-1", "address": {"city": "Oslo", "zip": "0150", "lines": ["Gate 1", "3rd floor"]}}),
     call("update_address", {"order_id": "A-1", "address": {"city": "Oslo", "zip": "0150", "lines": ["3rd floor", "Gate 1"]}}), 0.0, 0.0),
    (call("update_address", {"order_id": "A-1", "address": {"city": {"any_of": ["Oslo", "Kristiania"]}, "zip": "0150"}}),
     call("update_address", {"order_id": "A-1", "address": {"city": "Kristiania", "zip": "0150"}}), 1.0, 1.0),
    # The right arguments to the wrong function.
    (call("lookup_order", {"order_id": "A-17"}), call("refund", {"order_id": "A-17"}), 0.0, 0.0),
])  # fmt: skip
def test_argument_match_exact_vs_typed(expected, output, exact, typed):
    s = scores(ex(expected), [output])
    assert (s["tool_call_args"], s["tool_call_args_typed"]) == (exact, typed)
    assert s["tool_call_name"] == float(expected["function"]["name"] == output["function"]["name"])
    assert s["tool_call_irrelevance"] is None  # a call was expected: not an irrelevance example


def test_parallel_calls_match_in_any_order_and_partially():
    lookup, refund = call("lookup_order", {"order_id": "A-17"}), REFUND_10
    both = ex(lookup, refund)
    assert scores(both, [refund, lookup]) == {"tool_call_name": 1.0, "tool_call_args": 1.0, "tool_call_args_typed": 1.0,
                                                   "tool_call_irrelevance": None, "tool_call_schema_valid": 1.0}  # fmt: skip
    half = scores(both, [lookup])  # one of two calls made: half the calls, the wrong set of names
    assert half["tool_call_args"] == 0.5 and half["tool_call_name"] == 0.0
    extra = scores(ex(lookup), [lookup, lookup])  # a duplicate call: one match over two calls
    assert extra["tool_call_args"] == 0.5 and extra["tool_call_name"] == 0.0


def test_irrelevance_and_no_call_examples():
    none_expected = ex()
    right = scores(none_expected, None, text="Your order ships tomorrow.")
    assert right == {"tool_call_name": 1.0, "tool_call_args": 1.0, "tool_call_args_typed": 1.0,
                     "tool_call_irrelevance": 1.0, "tool_call_schema_valid": None}  # fmt: skip
    wrong = scores(none_expected, [call("lookup_order", {"order_id": "A-17"})])
    assert wrong["tool_call_irrelevance"] == 0.0 and wrong["tool_call_args_typed"] == 0.0 and wrong["tool_call_name"] == 0.0
    # An expected call that the model answers in prose: every call metric 0, validity not scored.
    missed = scores(ex(REFUND_10), None, text="I have refunded you.")
    assert missed["tool_call_args_typed"] == 0.0 and missed["tool_call_name"] == 0.0
    assert missed["tool_call_schema_valid"] is None and missed["tool_call_irrelevance"] is None
    # A JSON answer to a non-tool question is not a call; a call written as text by a local model is.
    assert scores(none_expected, None, text='{"status": "shipped"}')["tool_call_irrelevance"] == 1.0
    tagged = 'Let me check.\n<tool_call>{"name": "lookup_order", "arguments": {"order_id": "A-17"}}</tool_call>'
    assert scores(none_expected, None, text=tagged)["tool_call_irrelevance"] == 0.0
    assert scores(ex(call("lookup_order", {"order_id": "A-17"})), None, text=tagged)["tool_call_args"] == 1.0


@pytest.mark.parametrize("output,valid", [
    ([REFUND_10], 1.0),
    ([call("refund", {"order_id": "A-17", "amount": 10, "currency": "USD", "notify": False})], 1.0),
    ([call("refund", {"order_id": "A-17", "amount": "ten"})], 0.0),  # wrong type
    ([call("refund", {"order_id": "A-17"})], 0.0),  # a required argument missing
    ([call("refund", '{"order_id": "A-17", "amount": 10')], 0.0),  # arguments that are not JSON
    ([call("cancel_order", {"order_id": "A-17"})], 0.0),  # not one of the example's tools
    ([REFUND_10, call("lookup_order", {"order_id": 17})], 0.0),  # one bad call of two
])  # fmt: skip
def test_schema_validity_of_every_call(output, valid):
    assert scores(ex(REFUND_10), output)["tool_call_schema_valid"] == valid
    assert scores(ex(REFUND_10, tools=None), output)["tool_call_schema_valid"] == 0.0  # no tools offered: no call is valid


def write_golden(path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


GOLDEN = [
    # Its own tools; the expected call in the target message.
    {"id": "refund", "tools": [REFUND], "messages": [{"role": "user", "content": "Refund 10 on A-17"},
                                                     {"role": "assistant", "content": None, "tool_calls": [REFUND_10]}]},
    # The spec's tools; allowed values for the argument.
    {"id": "lookup", "prompt": "Where is order A-17?",
     "expected_tool_calls": [{"name": "lookup_order", "arguments": {"order_id": {"any_of": ["A-17", "A17"]}}}]},
    # No tools offered, no call expected.
    {"id": "chat", "tools": [], "prompt": "Thanks!", "expected": "You're welcome."},
    # The spec's tools, no call expected: an irrelevance example.
    {"id": "hours", "prompt": "When do you open?", "expected": "At 9."},
]


def test_spec_with_tools_per_example(tmp_path):
    write_golden(tmp_path / "g.jsonl", GOLDEN)
    spec_yaml = {"name": "agent", "source": {"golden": "g.jsonl"}, "tools": [LOOKUP, ADDRESS],
                 "metrics": [{"type": "tool_call_args_typed"}, {"type": "tool_call_irrelevance"}]}  # fmt: skip
    (tmp_path / "spec.yaml").write_text(json.dumps(spec_yaml))  # JSON is YAML
    spec = BenchmarkSpec.from_file(tmp_path / "spec.yaml")
    exs = {e.id: e for e in load_examples(spec)}
    assert exs["refund"].tools == [REFUND] and exs["refund"].expected_tool_calls == [REFUND_10]
    assert exs["lookup"].tools == [LOOKUP, ADDRESS] and exs["hours"].tools == [LOOKUP, ADDRESS]
    assert exs["chat"].tools == [] and exs["chat"].expected_tool_calls is None
    v1 = benchmark_version(spec, list(exs.values()))
    exs["refund"].tools = [REFUND, LOOKUP]  # offering another tool changes the prompt: a new version
    assert benchmark_version(spec, list(exs.values())) != v1


BAD_PARAMS = tool("refund", {"amount": {"type": "money"}}, ["amount"])


@pytest.mark.parametrize("spec_tools,row,field", [
    ([{"type": "function", "function": {"name": "x"}}], None, "tools[0].function.parameters"),
    ([{"type": "retrieval"}], None, "tools[0]"),
    ([LOOKUP, LOOKUP], None, "tools[1].function.name"),
    ([BAD_PARAMS], None, "tools[0].function.parameters.properties.amount.type"),
    (None, {"prompt": "q", "tools": "not json", "expected": "a"}, "source.golden line 1.tools"),
    (None, {"prompt": "q", "tools": [{"type": "function", "function": {"parameters": {}}}], "expected": "a"},
     "source.golden line 1.tools[0].function.name"),
    ([LOOKUP], {"prompt": "q", "expected_tool_calls": [{"name": "refund", "arguments": {}}]},
     "source.golden line 1.expected_tool_calls[0].name"),
    ([LOOKUP], {"prompt": "q", "expected_tool_calls": [call("lookup_order", "[1, 2]")]},
     "source.golden line 1.expected_tool_calls[0].function.arguments"),
    ([LOOKUP], {"prompt": "q", "expected_tool_calls": [{"name": "lookup_order", "arguments": {"order_id": {"any_of": []}}}]},
     "source.golden line 1.expected_tool_calls[0].arguments.order_id.any_of"),
    ([LOOKUP], {"prompt": "q", "expected_tool_calls": [{"name": "lookup_order", "arguments": {"order_id": {"any_of": ["a"], "default": "a"}}}]},
     "source.golden line 1.expected_tool_calls[0].arguments.order_id"),
    ([LOOKUP], {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [call("nope", {})]}]},
     "source.golden line 1.messages[1].tool_calls[0].function.name"),
])  # fmt: skip
def test_malformed_tools_name_the_field(tmp_path, spec_tools, row, field):
    write_golden(tmp_path / "g.jsonl", [row or {"prompt": "q", "expected": "a"}])
    data = {"name": "b", "source": {"golden": str(tmp_path / "g.jsonl")}, "metrics": [{"type": "tool_call_args"}]}
    with pytest.raises(SpecError) as err:
        load_examples(BenchmarkSpec.from_dict(data | ({"tools": spec_tools} if spec_tools is not None else {})))
    assert err.value.field == field, str(err.value)


def provider(bodies: list[dict]) -> FastAPI:
    """An OpenAI-compatible endpoint that records each request body and answers a user message
    `CALL <json call>` with that tool call, anything else with text."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        bodies.append(body)
        text = body["messages"][-1]["content"]
        msg = ({"role": "assistant", "content": None, "tool_calls": [json.loads(text[5:])]} if text.startswith("CALL ")
               else {"role": "assistant", "content": "We open at 9."})  # fmt: skip
        return {"id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": msg, "finish_reason": "tool_calls" if msg["content"] is None else "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}  # fmt: skip

    return app


def test_example_tools_reach_the_endpoint_and_scores_are_stored(tmp_path):
    """A spec with tools per example, evaluated through EndpointSampler on a real HTTP server: each
    request carries its example's tools (none when none are offered), the calls are scored and
    stored, and irrelevance aggregates only the examples that expect no call."""
    right, typed_only = call("refund", {"order_id": "A-17", "amount": 10}), call("refund", {"order_id": "a17", "amount": 10.0})
    rows = [
        {"id": "r1", "tools": [REFUND], "prompt": "CALL " + json.dumps(right), "expected_tool_calls": [right]},
        {"id": "r2", "tools": [REFUND], "prompt": "CALL " + json.dumps(typed_only), "expected_tool_calls": [right]},
        {"id": "r3", "prompt": "CALL " + json.dumps(call("lookup_order", {"order_id": 17})),
         "expected_tool_calls": [call("lookup_order", {"order_id": "17"})]},
        {"id": "h1", "prompt": "When do you open?", "expected": "At 9."},
        {"id": "h2", "prompt": "CALL " + json.dumps(call("lookup_order", {"order_id": "A-1"})), "expected": "No call needed."},
        {"id": "c1", "tools": [], "prompt": "Thanks!", "expected": "You're welcome."},
    ]  # fmt: skip
    write_golden(tmp_path / "g.jsonl", rows)
    kinds = ["tool_call_name", "tool_call_args", "tool_call_args_typed", "tool_call_irrelevance", "tool_call_schema_valid"]
    spec = BenchmarkSpec.from_dict({"name": "agent", "source": {"golden": str(tmp_path / "g.jsonl")}, "tools": [LOOKUP],
                                    "metrics": [{"type": k} for k in kinds]})  # fmt: skip
    settings, bodies = load_settings(tmp_path / "home"), []

    def never_calls(messages) -> SamplerResponse:  # the incumbent: always answers in prose
        return SamplerResponse(text="Let me look into that.", latency_ms=5.0)

    with in_thread(provider(bodies)) as url:
        sampler = EndpointSampler(f"{url}/v1", "agent-llm", concurrency=2, max_retries=0)
        rep = evaluate(settings, project="acme", task="agent", benchmark=spec, sampler=sampler,
                       baseline_sampler=FunctionSampler(never_calls, model="prose"), n_boot=200)  # fmt: skip
    by_prompt = {b["messages"][-1]["content"]: b for b in bodies}
    assert len(bodies) == 6 and len(by_prompt) == 6
    assert by_prompt[rows[0]["prompt"]]["tools"] == [REFUND] and by_prompt[rows[2]["prompt"]]["tools"] == [LOOKUP]
    assert by_prompt["When do you open?"]["tools"] == [LOOKUP] and "tools" not in by_prompt["Thanks!"]
    per = {r.example_id: r.scores for r in rep.candidate.results}
    assert [per[i]["tool_call_args"] for i in ("r1", "r2", "r3")] == [1.0, 0.0, 0.0]
    assert [per[i]["tool_call_args_typed"] for i in ("r1", "r2", "r3")] == [1.0, 1.0, 0.0]  # "17" ≠ 17 even typed
    assert per["r3"]["tool_call_schema_valid"] == 0.0 and per["h1"]["tool_call_schema_valid"] is None
    assert [per[i]["tool_call_irrelevance"] for i in ("r1", "h1", "h2", "c1")] == [None, 1.0, 0.0, 1.0]
    stored = {r.example_id: r.tool_calls for r in rep.candidate.results}
    assert stored["r2"] == [typed_only] and stored["h1"] is None
    m = rep.candidate.metrics
    assert m["tool_call_irrelevance"] == pytest.approx(2 / 3)  # over h1, h2, c1 only
    assert m["tool_call_schema_valid"] == pytest.approx(3 / 4)  # over the 4 outputs that made calls (r3 invalid)
    assert m["tool_call_args"] == pytest.approx(3 / 6) and m["tool_call_args_typed"] == pytest.approx(4 / 6)
    assert m["tool_call_name"] == pytest.approx(5 / 6)  # h2 called when none was needed
    # The incumbent never calls: validity applies to none of its examples, and the paired
    # comparison of irrelevance uses the 3 examples that expect no call.
    assert "tool_call_schema_valid" not in rep.incumbent.metrics and rep.incumbent.metrics["tool_call_irrelevance"] == 1.0
    irr = next(c for c in rep.verdicts.comparisons if c.metric == "tool_call_irrelevance")
    assert irr.diff == pytest.approx(2 / 3 - 1.0) and "tool_call_schema_valid" not in {c.metric for c in rep.verdicts.comparisons}
