"""Quality metrics: how one output scores against one example, and how scores aggregate.

Most metrics score each example in [0, 1] and aggregate by the mean. Macro-F1 is a corpus metric:
each example keeps its (predicted, gold) labels and the aggregate computes F1 over the set, which
is also what the paired bootstrap recomputes on every resample (`evals.stats`).
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
        return sum(values) / len(values) if values else 0.0


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

def tool_calls_of(text: str, tool_calls: ToolCalls) -> list[tuple[str, Any]]:
    """[(name, parsed arguments)] from OpenAI `tool_calls`, else from JSON text a local model wrote
    (`{"name", "arguments"}`, a list of them, or `{"tool_calls": [...]}`)."""
    calls = tool_calls
    if calls is None:
        ok, value = parse_json(text)
        if not ok:
            return []
        value = value.get("tool_calls", value) if isinstance(value, dict) else value
        calls = value if isinstance(value, list) else [value]
    out = []
    for call in calls:
        if not isinstance(call, dict):
            continue
        fn = call.get("function", call)
        args = fn.get("arguments", {})
        if isinstance(args, str):
            ok, parsed = parse_json(args)
            args = parsed if ok else args
        out.append((str(fn.get("name")), args))
    return out


def _tool_names(out: str, ex: Example, tc: ToolCalls) -> float:
    want = sorted(n for n, _ in tool_calls_of("", ex.expected_tool_calls or []))
    got = sorted(n for n, _ in tool_calls_of(out, tc))
    return float(bool(want) and want == got)


def _tool_args(out: str, ex: Example, tc: ToolCalls) -> float:
    want = tool_calls_of("", ex.expected_tool_calls or [])
    got = tool_calls_of(out, tc)
    if not want or not got:
        return 0.0
    unmatched, hits = list(got), 0
    for call in want:  # each output call may match one expected call (name and arguments equal)
        if call in unmatched:
            unmatched.remove(call)
            hits += 1
    return hits / max(len(want), len(got))


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
    "tool_call_args": lambda p, w: _tool_args,
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
