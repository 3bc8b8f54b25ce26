"""Quality metrics: how one output scores against one example, and how scores aggregate.

Most metrics score each example in [0, 1] and aggregate by the mean; a metric that does not apply
to an example (irrelevance on one that expects a call) scores None, left out of the mean and of
the paired comparison. Macro-F1 is a corpus metric: each example keeps its (predicted, gold)
labels and the aggregate computes F1 over the set, which is also what the paired bootstrap
recomputes on every resample (`evals.stats`). The tool-call metrics and how they compare
arguments are described at their section below.
The LLM judge lives in `evals.judge` (it needs a sampler and, pairwise, the incumbent's output).

A spec lists metrics as `{"type": "<one of METRICS>", "name": optional alias, **params}`.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from typing import Any

from evals.types import Example, SpecError

ToolCalls = list[dict[str, Any]] | None


class Metric:
    """A named per-example scorer with an aggregate (the mean unless a subclass says otherwise)."""

    kind = "metric"

    def __init__(self, name: str, fn: Callable[[str, Example, ToolCalls], Any]):
        self.name, self.fn = name, fn

    def score(self, output: str, example: Example, tool_calls: ToolCalls = None) -> Any:
        return self.fn(output or "", example, tool_calls)

    def aggregate(self, values: list[Any]) -> float:
        scored = [v for v in values if v is not None]  # None: the metric does not apply to that example
        return sum(scored) / len(scored) if scored else 0.0


# --- text ----------------------------------------------------------------------------------

def normalize(text: str) -> str:
    """SQuAD-style: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over lowercase word tokens: the longest common subsequence, precision and recall."""
    c, r = re.findall(r"\w+", candidate.lower()), re.findall(r"\w+", reference.lower())
    if not c or not r:
        return 0.0
    prev = [0] * (len(r) + 1)
    for tok in c:  # LCS by dynamic programming, one row at a time
        row = [0]
        for j, ref_tok in enumerate(r):
            row.append(prev[j] + 1 if tok == ref_tok else max(prev[j + 1], row[j]))
        prev = row
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


# --- JSON ----------------------------------------------------------------------------------

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def parse_json(text: str) -> tuple[bool, Any]:
    """(ok, value): the text as JSON, tolerating a Markdown code fence around it."""
    text = text.strip()
    m = _FENCE.match(text)
    try:
        return True, json.loads(m.group(1) if m else text)
    except (ValueError, TypeError):
        return False, None


def _json_fields(fields: list[str] | None):
    def fn(out: str, ex: Example, _tc) -> float:
        ok_o, got = parse_json(out)
        ok_e, want = parse_json(ex.expected)
        if not (ok_o and ok_e and isinstance(got, dict) and isinstance(want, dict)):
            return 0.0
        keys = fields or list(want)
        return sum(1 for k in keys if k in got and got[k] == want.get(k)) / len(keys) if keys else 0.0
    return fn


def _json_schema(schema: dict):
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)

    def fn(out: str, _ex, _tc) -> float:
        ok, value = parse_json(out)
        return float(ok and validator.is_valid(value))
    return fn


# --- labels --------------------------------------------------------------------------------

def label_extractor(pattern: str | None, labels: list[str] | None) -> Callable[[str], str | None]:
    """The rule that turns free text into a label: the regex's first group (or match), else the
    first of `labels` that occurs as a whole word; lowercased; None when nothing matches."""
    rx = re.compile(pattern, re.I) if pattern else None
    words = [(label.lower(), re.compile(rf"\b{re.escape(label)}\b", re.I)) for label in labels or []]

    def extract(text: str) -> str | None:
        if rx is not None:
            m = rx.search(text)
            if not m:
                return None
            text = m.group(1) if m.groups() else m.group(0)
            if not words:
                return text.strip().lower()
        hits = [(m.start(), label) for label, w in words if (m := w.search(text))]
        return min(hits)[1] if hits else None
    return extract


def macro_f1(values: list[Any]) -> float:
    """Mean F1 over every label seen as gold or predicted; `values` are [predicted, gold] pairs."""
    pairs = [tuple(v) for v in values]
    labels = {g for _, g in pairs if g is not None} | {p for p, _ in pairs if p is not None}
    if not labels:
        return 0.0
    f1s = []
    for label in labels:
        tp = sum(1 for p, g in pairs if p == label and g == label)
        fp = sum(1 for p, g in pairs if p == label and g != label)
        fn = sum(1 for p, g in pairs if p != label and g == label)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s)


class MacroF1(Metric):
    """Per example: [predicted, gold]; aggregate: macro-F1 over the set."""

    def aggregate(self, values: list[Any]) -> float:
        return macro_f1(values)


# --- tool calls (OpenAI format) -------------------------------------------------------------
#
# An expected call is an OpenAI tool call (or `{"name", "arguments"}`). Where more than one value
# is right, an argument's expected value is an *allowed-values* object instead of a literal, at
# any depth:
#     {"any_of": [v1, v2, …]}                   any of these values
#     {"any_of": [v1, …], "optional": true}     one of them, or the argument left out
# BFCL's possible-answer list `[v1, v2, ""]` is `{"any_of": [v1, v2], "optional": true}`. An object
# with an `any_of` key is always read this way (`evals.spec` refuses a malformed one).
#
# Two ways to compare arguments:
# - exact: JSON values equal in type and value (1 ≠ 1.0, "Oslo" ≠ "oslo", true ≠ 1); object key
#   order never matters; list order does.
# - typed, the way BFCL's AST checker compares: numbers by value (1 == 1.0), strings ignoring case,
#   spaces and `,./-_*^` (BFCL's normalisation), and an argument that the tool's schema does not
#   require may be left out when the expected value is its schema `default` (or be given with
#   exactly that default when the expected call leaves it out).
# Scores cover every example: no call expected and none made counts as right. Irrelevance scores
# only the examples that expect no call, schema validity only the outputs that made a call; the
# others get None (not scored), which aggregates and paired comparisons skip.

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_BFCL_STRIP = re.compile(r"[ ,./\-_*^]")


def _text_calls(text: str) -> list[dict[str, Any]]:
    """Calls a local model wrote as text: `<tool_call>{…}</tool_call>` blocks, else the whole text
    as JSON (`{"name", "arguments"}`, a list of them, or `{"tool_calls": [...]}`). Only objects
    with a function name count, so a JSON answer to a non-tool task is not read as a call."""
    blocks = _TAGGED.findall(text)
    calls: list[Any] = []
    for ok, value in (parse_json(b) for b in blocks) if blocks else [parse_json(text)]:
        if ok:
            value = value.get("tool_calls", value) if isinstance(value, dict) else value
            calls += value if isinstance(value, list) else [value]
    return [c for c in calls if isinstance(c, dict) and isinstance(c.get("function", c), dict)
            and isinstance(c.get("function", c).get("name"), str)]  # fmt: skip


def tool_calls_of(text: str, tool_calls: ToolCalls) -> list[tuple[str, Any]]:
    """[(name, parsed arguments)] from OpenAI `tool_calls`, else from the calls written as text
    (`_text_calls`). Arguments that are not JSON stay a string (which no expected object matches)."""
    out = []
    for call in _text_calls(text) if tool_calls is None else tool_calls:
        fn = call.get("function") or call if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        args = fn.get("arguments", {})
        if isinstance(args, str):
            ok, parsed = parse_json(args)
            args = parsed if ok else args
        out.append((str(fn.get("name")), args))
    return out


def tool_parameters(tools: list[dict[str, Any]] | None, name: str) -> dict[str, Any] | None:
    """The JSON schema of function `name`'s arguments among `tools` (OpenAI format), or None."""
    for tool in tools or []:
        fn = tool.get("function", tool)
        if fn.get("name") == name:
            return fn.get("parameters") or {}
    return None


def _bfcl_string(s: str) -> str:
    return _BFCL_STRIP.sub("", s).lower().replace("'", '"')


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def values_match(got: Any, want: Any, *, typed: bool, schema: Any = None) -> bool:
    """Whether an output value satisfies an expected one (literal or allowed-values object).
    `schema`: the JSON schema of this value in the tool's parameters, for typed defaults."""
    schema = schema if isinstance(schema, dict) else {}
    if isinstance(want, dict) and "any_of" in want:
        return any(values_match(got, w, typed=typed, schema=schema) for w in want["any_of"])
    if isinstance(want, dict):
        return isinstance(got, dict) and args_match(got, want, typed=typed, schema=schema)
    if isinstance(want, list):
        return (isinstance(got, list) and len(got) == len(want)
                and all(values_match(g, w, typed=typed, schema=schema.get("items")) for g, w in zip(got, want)))  # fmt: skip
    if typed and _number(got) and _number(want):
        return got == want
    if typed and isinstance(got, str) and isinstance(want, str):
        return _bfcl_string(got) == _bfcl_string(want)
    return type(got) is type(want) and got == want


def args_match(got: dict, want: dict, *, typed: bool, schema: dict[str, Any] | None = None) -> bool:
    """Objects compared key by key, in any order: every expected key given and matching (or allowed
    to be left out), and no key given that the expected object does not have (typed: unless it is
    an optional argument given its schema default)."""
    props = (schema or {}).get("properties") or {}
    required = set((schema or {}).get("required") or [])

    def default(key: str) -> tuple[bool, Any]:  # (may be left out for its default, the default)
        p = props.get(key)
        return typed and key not in required and isinstance(p, dict) and "default" in p, (p or {}).get("default")

    for key, w in want.items():
        if key in got:
            if not values_match(got[key], w, typed=typed, schema=props.get(key)):
                return False
        elif not (isinstance(w, dict) and "any_of" in w and w.get("optional") is True):
            has, value = default(key)
            if not (has and values_match(value, w, typed=typed, schema=props.get(key))):
                return False
    for key in got.keys() - want.keys():
        has, value = default(key)
        if not (has and values_match(got[key], value, typed=typed, schema=props.get(key))):
            return False
    return True


def _calls_match(typed: bool):
    """Per example: expected calls matched by output calls (same name, arguments matching), each
    output call used once, over the larger of the two counts; 1.0 when none expected and none made."""
    def fn(out: str, ex: Example, tc: ToolCalls) -> float:
        want, got = tool_calls_of("", ex.expected_tool_calls or []), tool_calls_of(out, tc)
        if not want and not got:
            return 1.0
        unmatched, hits = list(got), 0
        for name, args in want:
            schema = tool_parameters(ex.tools, name)
            fits = (i for i, (n, a) in enumerate(unmatched)
                    if n == name and isinstance(a, dict) and args_match(a, args, typed=typed, schema=schema))  # fmt: skip
            i = next(fits, None)
            if i is not None:
                del unmatched[i]
                hits += 1
        return hits / max(len(want), len(got))
    return fn


def _tool_names(out: str, ex: Example, tc: ToolCalls) -> float:
    """1 when the output calls exactly the expected functions (as a multiset; none for none)."""
    want = sorted(n for n, _ in tool_calls_of("", ex.expected_tool_calls or []))
    return float(want == sorted(n for n, _ in tool_calls_of(out, tc)))


def _irrelevance(out: str, ex: Example, tc: ToolCalls) -> float | None:
    """On an example that expects no call: 1 when the output made none. Others: not scored."""
    return None if ex.expected_tool_calls else float(not tool_calls_of(out, tc))


def _schema_valid(out: str, ex: Example, tc: ToolCalls) -> float | None:
    """1 when every call names one of the example's tools and its arguments validate against that
    tool's `parameters`; not scored when the output made no call."""
    import jsonschema

    calls = tool_calls_of(out, tc)
    if not calls:
        return None
    for name, args in calls:
        schema = tool_parameters(ex.tools, name)
        if schema is None or not isinstance(args, dict) or not jsonschema.Draft202012Validator(schema).is_valid(args):
            return 0.0
    return 1.0


# --- the registry --------------------------------------------------------------------------

def _need(params: dict, key: str, where: str, kind: type | tuple = object) -> Any:
    if key not in params:
        raise SpecError(f"{where}.{key}", "required by this metric type")
    if not isinstance(params[key], kind):
        raise SpecError(f"{where}.{key}", f"must be {getattr(kind, '__name__', kind)}, got {type(params[key]).__name__}")
    return params[key]


def _labels(p: dict, where: str):
    if not p.get("pattern") and not p.get("labels"):
        raise SpecError(f"{where}.labels", "a label metric needs `labels` and/or `pattern`")
    return label_extractor(p.get("pattern"), p.get("labels"))


def _accuracy(p: dict, where: str):
    ext = _labels(p, where)
    return lambda out, ex, _tc: float((pred := ext(out)) is not None and pred == ext(ex.expected))


def _regex(p: dict, where: str):
    rx = re.compile(_need(p, "pattern", where, str))
    return lambda out, _ex, _tc: float(bool(rx.search(out)))


METRICS: dict[str, Callable[[dict, str], Callable]] = {
    "exact_match": lambda p, w: lambda out, ex, _tc: float(out.strip() == ex.expected.strip()),
    "normalized_exact_match": lambda p, w: lambda out, ex, _tc: float(normalize(out) == normalize(ex.expected)),
    "json_valid": lambda p, w: lambda out, _ex, _tc: float(parse_json(out)[0]),
    "json_schema": lambda p, w: _json_schema(_need(p, "schema", w, dict)),
    "json_fields": lambda p, w: _json_fields(p.get("fields")),
    "accuracy": _accuracy,
    "macro_f1": lambda p, w: (lambda ext: lambda out, ex, _tc: [ext(out), ext(ex.expected)])(_labels(p, w)),
    "rouge_l": lambda p, w: lambda out, ex, _tc: rouge_l(out, ex.expected),
    "regex": _regex,
    "tool_call_name": lambda p, w: _tool_names,
    "tool_call_args": lambda p, w: _calls_match(typed=False),
    "tool_call_args_typed": lambda p, w: _calls_match(typed=True),
    "tool_call_irrelevance": lambda p, w: _irrelevance,
    "tool_call_schema_valid": lambda p, w: _schema_valid,
}


def build_metric(entry: dict[str, Any], where: str = "metrics") -> Metric:
    """A `Metric` from a spec entry; a `SpecError` naming the field when the entry is wrong."""
    if not isinstance(entry, dict):
        raise SpecError(where, f"must be a mapping with a `type`, got {type(entry).__name__}")
    kind = entry.get("type")
    if kind not in METRICS:
        raise SpecError(f"{where}.type", f"unknown metric {kind!r}; one of {sorted(METRICS)} or judge_pairwise/judge_rubric")
    fn = METRICS[kind](entry, where)
    cls = MacroF1 if kind == "macro_f1" else Metric
    metric = cls(str(entry.get("name") or kind), fn)
    metric.kind = kind
    return metric
