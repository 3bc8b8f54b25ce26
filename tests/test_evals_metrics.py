"""Every metric on hand-made cases (including ones that must score 0), the judge's position swap,
and spec validation that names the bad field."""

from __future__ import annotations

import json

import pytest

from evals.judge import judge_pairwise, judge_rubric, parse_preference
from evals.metrics import build_metric, rouge_l
from evals.samplers import FunctionSampler
from evals.spec import BenchmarkSpec, benchmark_version, load_examples
from evals.types import Example, SpecError


def ex(expected: str = "", tools=None) -> Example:
    return Example(id="e", messages=[{"role": "user", "content": "q"}], expected=expected, expected_tool_calls=tools)


def score(entry: dict, output: str, example: Example, tool_calls=None):
    return build_metric(entry).score(output, example, tool_calls)


@pytest.mark.parametrize("entry,output,expected,want", [
    ({"type": "exact_match"}, "Paris", "Paris", 1.0),
    ({"type": "exact_match"}, " Paris\n", "Paris", 1.0),
    ({"type": "exact_match"}, "paris", "Paris", 0.0),
    ({"type": "normalized_exact_match"}, "The  Paris!", "paris", 1.0),
    ({"type": "normalized_exact_match"}, "Lyon", "paris", 0.0),
    ({"type": "json_valid"}, '{"a": 1}', "", 1.0),
    ({"type": "json_valid"}, '```json\n[1, 2]\n```', "", 1.0),
    ({"type": "json_valid"}, "{a: 1}", "", 0.0),
    ({"type": "json_schema", "schema": {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["x", "y"]}}}}, '{"label": "x"}', "", 1.0),
    ({"type": "json_schema", "schema": {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["x", "y"]}}}}, '{"label": "z"}', "", 0.0),
    ({"type": "json_schema", "schema": {"type": "object"}}, "not json", "", 0.0),
    ({"type": "json_fields"}, '{"a": 1, "b": 2, "c": 9}', '{"a": 1, "b": 3}', 0.5),
    ({"type": "json_fields", "fields": ["a"]}, '{"a": 1}', '{"a": 1, "b": 3}', 1.0),
    ({"type": "json_fields"}, "oops", '{"a": 1}', 0.0),
    ({"type": "accuracy", "labels": ["billing", "shipping"]}, "It is Billing.", "billing", 1.0),
    ({"type": "accuracy", "labels": ["billing", "shipping"]}, "shipping", "billing", 0.0),
    ({"type": "accuracy", "labels": ["billing", "shipping"]}, "no idea", "billing", 0.0),
    ({"type": "accuracy", "pattern": r"label:\s*(\w+)"}, "label: Refund", "label: refund", 1.0),
    ({"type": "rouge_l"}, "the cat sat on the mat", "the cat sat on the mat", 1.0),
    ({"type": "rouge_l"}, "dogs bark", "the cat sat", 0.0),
    ({"type": "regex", "pattern": r"^\d{3}-\d{4}$"}, "555-1234", "", 1.0),
    ({"type": "regex", "pattern": r"^\d{3}-\d{4}$"}, "call 555", "", 0.0),
])  # fmt: skip
def test_metric_cases(entry, output, expected, want):
    assert score(entry, output, ex(expected)) == pytest.approx(want)


def test_rouge_l_partial():
    # LCS "the cat on mat" (4) of 6 candidate and 5 reference tokens: P=4/6, R=4/5.
    p, r = 4 / 6, 4 / 5
    assert rouge_l("the cat sat on the mat", "the cat lay on mat") == pytest.approx(2 * p * r / (p + r))
    assert rouge_l("", "x") == 0.0


def test_macro_f1_corpus():
    m = build_metric({"type": "macro_f1", "labels": ["a", "b", "c"]})
    values = [m.score(o, ex(g)) for o, g in [("a", "a"), ("a", "b"), ("b", "b"), ("c", "c")]]
    # a: P=1/2 R=1 → 2/3; b: P=1 R=1/2 → 2/3; c: 1 → mean 7/9
    assert m.aggregate(values) == pytest.approx(7 / 9)
    wrong = [m.score(o, ex(g)) for o, g in [("b", "a"), ("a", "b"), ("nothing", "c")]]
    assert m.aggregate(wrong) == 0.0


TOOLS = [{"type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Oslo", "unit": "c"})}}]


def test_tool_call_metrics():
    names, args = build_metric({"type": "tool_call_name"}), build_metric({"type": "tool_call_args"})
    right = [{"id": "1", "type": "function", "function": {"name": "get_weather", "arguments": '{"unit": "c", "city": "Oslo"}'}}]
    wrong_args = [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]
    wrong_name = [{"type": "function", "function": {"name": "get_time", "arguments": '{"city": "Oslo", "unit": "c"}'}}]
    e = ex(tools=TOOLS)
    assert names.score("", e, right) == 1.0 and args.score("", e, right) == 1.0
    assert names.score("", e, wrong_args) == 1.0 and args.score("", e, wrong_args) == 0.0
    assert names.score("", e, wrong_name) == 0.0 and args.score("", e, wrong_name) == 0.0
    assert names.score("no tools here", e, None) == 0.0
    # A local model that writes the call as JSON text is read too.
    assert args.score('{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}', e, None) == 1.0


def test_judge_always_first_is_a_tie():
    first = FunctionSampler(lambda m: "[[A]]", model="biased-judge")
    exs = [ex("4"), ex("5")]
    assert judge_pairwise(first, "Q {question} A {answer_a} B {answer_b}", exs, ["x", "y"], ["u", "v"]) == [0.5, 0.5]


def test_judge_consistent_preference_counts():
    # Prefers whichever answer equals the reference, in either position.
    def fn(messages):
        text = messages[-1]["content"]
        ref, a = text.split("REF=")[1].split()[0], text.split("A=")[1].split()[0]
        return "[[A]]" if a == ref else "[[B]]"
    judge = FunctionSampler(fn)
    prompt = "REF={reference} A={answer_a} B={answer_b}"
    exs = [ex("4"), ex("5")]
    assert judge_pairwise(judge, prompt, exs, ["4", "1"], ["1", "5"]) == [1.0, 0.0]
    assert parse_preference("tie, both fine") == "tie" and parse_preference("hmm") is None


def test_judge_rubric():
    judge = FunctionSampler(lambda m: "Score: 8/10" if "good" in m[-1]["content"] else "I give it 0")
    assert judge_rubric(judge, "Grade {answer}", [ex(), ex()], ["good answer", "bad"]) == [0.8, 0.0]


GOOD = {"name": "b", "source": {"golden": "g.jsonl"}, "metrics": [{"type": "exact_match"}]}


@pytest.mark.parametrize("patch,field", [
    ({"name": ""}, "name"),
    ({"source": {}}, "source"),
    ({"source": {"golden": "g.jsonl", "limt": 3}}, "source.limt"),
    ({"source": {"golden": "g.jsonl", "limit": -1}}, "source.limit"),
    ({"metrics": []}, "metrics"),
    ({"metrics": [{"type": "exact_match"}, {"type": "bleu"}]}, "metrics[1].type"),
    ({"metrics": [{"type": "regex"}]}, "metrics[0].pattern"),
    ({"metrics": [{"type": "json_schema", "schema": "x"}]}, "metrics[0].schema"),
    ({"metrics": [{"type": "accuracy"}]}, "metrics[0].labels"),
    ({"metrics": [{"type": "judge_pairwise", "prompt": "{answer_a} only"}]}, "metrics[0].prompt"),
    ({"sampling": {"max_tokens": "many"}}, "sampling.max_tokens"),
    ({"sampling": {"temperature": -1}}, "sampling.temperature"),
    ({"primary": "rouge_l"}, "primary"),
    ({"gate": ["rouge_l"]}, "gate"),
    ({"gate": []}, "gate"),
    ({"metricz": []}, "metricz"),
])  # fmt: skip
def test_malformed_spec_names_the_field(patch, field):
    with pytest.raises(SpecError) as err:
        BenchmarkSpec.from_dict({**GOOD, **patch})
    assert err.value.field == field and repr(field) in str(err.value)


def test_golden_jsonl_and_version(tmp_path):
    lines = [{"id": "a", "prompt": "2+2?", "expected": "4"},
             {"messages": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]}]  # fmt: skip
    (tmp_path / "g.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    (tmp_path / "spec.yaml").write_text("name: b\nsource: {golden: g.jsonl}\nmetrics: [{type: exact_match}]\n")
    spec = BenchmarkSpec.from_file(tmp_path / "spec.yaml")
    exs = load_examples(spec)
    assert [e.expected for e in exs] == ["4", "6"] and exs[0].id == "a" and exs[1].id.startswith("ex-")
    v1 = benchmark_version(spec, exs)
    exs[0].expected = "5"
    assert benchmark_version(spec, exs) != v1
    (tmp_path / "g.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(SpecError, match="source.golden line 1.expected"):
        load_examples(spec)
    for missing in (tmp_path / "no-such.yaml", tmp_path):  # a missing file, a folder: an EvalError, not a traceback
        with pytest.raises(SpecError, match="'<root>': cannot read"):
            BenchmarkSpec.from_file(missing)


def test_build_sampler_by_kind(tmp_path):
    from evals.samplers import SAMPLERS, EndpointSampler, build_sampler

    (tmp_path / "flywheel.toml").write_text('[evals.prices."big-llm"]\nprompt = 2.5\ncompletion = 10.0\n')
    s = build_sampler({"kind": "endpoint", "base_url": "http://127.0.0.1:9/v1", "model": "big-llm"}, tmp_path)
    assert isinstance(s, EndpointSampler) and s.describe()["price"] == {"prompt": 2.5, "completion": 10.0}
    assert isinstance(build_sampler({"base_url": "http://127.0.0.1:9/v1", "model": "m"}), EndpointSampler)
    f = build_sampler({"kind": "function", "fn": lambda m: "billing", "model": "rule"})
    assert f([{"role": "user", "content": "q"}]).text == "billing" and f.describe()["kind"] == "function"
    assert all(cls.kind == kind for kind, cls in SAMPLERS.items())
    with pytest.raises(ValueError, match="sampler kind 'oracle'"):
        build_sampler({"kind": "oracle"})
