"""Benchmark specs are data (YAML): where the examples come from, the metrics, the sampling.

    name: support-triage-v1
    source:
      dataset: .flywheel/datasets/support-triage/ds-…   # a curated version: its `eval` split
      golden: golden.jsonl                                # and/or a user's JSONL
      limit: 500
    sampling: {max_tokens: 16, temperature: 0}
    metrics:
      - {type: accuracy, labels: [billing, shipping, account, technical]}
      - {type: judge_pairwise, prompt: "…{question}…{answer_a}…{answer_b}…"}
    tools: [{type: function, function: {name: lookup_order, parameters: {…JSON schema…}}}]

A golden JSONL line is `{"messages": [..., assistant target]}` or `{"prompt": …, "expected": …}`,
optionally with `id`, `expected_tool_calls` (or the target's `tool_calls`) and `tools`: the tools
offered with that prompt, in the OpenAI format, each sent with its own example. An example
without `tools` is offered the spec's `tools` (if any); `tools: []` offers none. Expected calls
may give allowed values per argument (`evals.metrics`). A dataset row may hold `tools` and
arguments as JSON text. The benchmark *version* is a hash of the spec and
every example's content, so changing either makes a new version and runs never mix.
The shape is checked by pydantic models (unknown keys and wrong types refused); every mistake is a
`SpecError` naming the field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveInt, StringConstraints, ValidationError

from evals.metrics import Metric, build_metric
from evals.types import Example, Messages, SpecError

JUDGE_TYPES = {"judge_pairwise": ("{answer_a}", "{answer_b}"), "judge_rubric": ("{answer}",)}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no unknown keys, no "5" for 5 or true for 1


class _Source(_Strict):
    dataset: str | None = None
    golden: str | None = None
    split: str = "eval"
    limit: PositiveInt | None = None


class _Sampling(_Strict):
    max_tokens: PositiveInt = 64
    temperature: NonNegativeFloat = 0.0


class _Spec(_Strict):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
    task: str | None = None
    description: str | None = None
    source: _Source
    sampling: _Sampling | None = None
    metrics: Annotated[list[Any], Field(min_length=1)]  # each entry is checked by `evals.metrics.build_metric`
    primary: str | None = None
    gate: list[str] | None = None
    tools: list[Any] | None = None  # checked by `check_tools`


_SECTIONS = {(): _Spec, ("source",): _Source, ("sampling",): _Sampling}


def _spec_error(exc: ValidationError) -> SpecError:
    """The first pydantic error as a `SpecError` naming its field (`source.limit`, `metrics[0]`)."""
    err = exc.errors(include_url=False)[0]
    loc = err["loc"]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "<root>"
    if err["type"] == "extra_forbidden":
        return SpecError(field, f"unknown field; known: {sorted(_SECTIONS[tuple(loc[:-1])].model_fields)}")
    if err["type"] == "missing":
        return SpecError(field, "required")
    if err["type"] == "model_type":
        return SpecError(field, f"must be a mapping, got {type(err['input']).__name__}")
    got = "" if isinstance(err["input"], (dict, list)) else f", got {err['input']!r}"
    return SpecError(field, err["msg"][0].lower() + err["msg"][1:] + got)


@dataclass
class BenchmarkSpec:
    """A validated spec. Paths are resolved against the spec file's folder."""

    name: str
    metrics: list[dict[str, Any]]
    dataset: str | None = None
    split: str = "eval"
    golden: str | None = None
    limit: int | None = None
    max_tokens: int = 64
    temperature: float = 0.0
    task: str | None = None
    primary: str | None = None  # the quality metric on the Pareto charts (default: the first)
    # The quality metrics the promotion gate tests (default: all). The others are compared and reported
    # as `diagnostic`: a metric over a slice of the examples (irrelevance: the ones that need no tool)
    # has too few of them for a non-inferiority test at a 0.01 margin, whatever the model does.
    gate: list[str] | None = None
    tools: list[dict[str, Any]] | None = None  # offered with every example that has no `tools` of its own
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, base_dir: Path | str = ".") -> BenchmarkSpec:
        try:
            spec = _Spec.model_validate(data)
        except ValidationError as exc:
            raise _spec_error(exc) from None
        source, sampling = spec.source, spec.sampling or _Sampling()
        if not (source.dataset or source.golden):
            raise SpecError("source", "required: a mapping with `dataset` and/or `golden`")
        names = set()
        for i, entry in enumerate(spec.metrics):
            where = f"metrics[{i}]"
            if isinstance(entry, dict) and entry.get("type") in JUDGE_TYPES:
                prompt = entry.get("prompt")
                if not isinstance(prompt, str) or not prompt.strip():
                    raise SpecError(f"{where}.prompt", "a judge needs its prompt in the spec")
                missing = [p for p in JUDGE_TYPES[entry["type"]] if p not in prompt]
                if missing:
                    raise SpecError(f"{where}.prompt", f"must contain the placeholder(s) {missing}")
                metric_name = entry.get("name") or entry["type"]
            else:
                metric_name = build_metric(entry, where).name  # validates the entry
            if metric_name in names:
                raise SpecError(f"{where}.name", f"duplicate metric name {metric_name!r}")
            names.add(metric_name)
        tools = check_tools(spec.tools, "tools") if spec.tools is not None else None
        if spec.primary is not None and spec.primary not in names:
            raise SpecError("primary", f"{spec.primary!r} is not one of the metric names {sorted(names)}")
        if spec.gate is not None and (not spec.gate or set(spec.gate) - names):
            raise SpecError("gate", f"must name one or more of the metric names {sorted(names)}, got {spec.gate}")
        base = Path(base_dir)

        def resolve(p: str | None) -> str | None:
            return p if p is None or Path(p).is_absolute() else str((base / p).resolve())

        return cls(name=spec.name, metrics=spec.metrics, dataset=resolve(source.dataset), split=source.split,
                   golden=resolve(source.golden), limit=source.limit, max_tokens=sampling.max_tokens,
                   temperature=sampling.temperature, task=spec.task, primary=spec.primary, gate=spec.gate, tools=tools,
                   raw=data)  # fmt: skip

    @classmethod
    def from_file(cls, path: Path | str) -> BenchmarkSpec:
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise SpecError("<root>", f"{path} is not valid YAML: {exc}") from exc
        except OSError as exc:  # missing, a folder, unreadable
            raise SpecError("<root>", f"cannot read {path}: {exc.strerror or exc}") from None
        return cls.from_dict(data, base_dir=path.parent)

    def quality_metrics(self) -> list[Metric]:
        """The metrics scored from an output alone (the judges are run by `evals.judge`)."""
        return [build_metric(m, f"metrics[{i}]") for i, m in enumerate(self.metrics) if m.get("type") not in JUDGE_TYPES]

    def judges(self) -> list[dict[str, Any]]:
        return [{**m, "name": m.get("name") or m["type"]} for m in self.metrics if m.get("type") in JUDGE_TYPES]

    def metric_names(self) -> list[str]:
        return [m.get("name") or m["type"] for m in self.metrics]


def prompt_hash(messages: Messages) -> str:
    """Content hash of a prompt (roles and whitespace-normalised text), the contamination key."""
    canon = [[m.get("role", ""), " ".join(str(m.get("content") or "").split())] for m in messages]
    return hashlib.sha256(json.dumps(canon, ensure_ascii=False).encode()).hexdigest()


def _json_text(value: Any, where: str) -> Any:
    """A value a dataset may store as JSON text (Arrow has no type for arbitrary JSON), parsed."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as exc:
        raise SpecError(where, f"not JSON: {exc}") from None


def check_tools(tools: Any, where: str) -> list[dict[str, Any]]:
    """The tools offered with a prompt, checked: a list of `{"type": "function", "function":
    {"name", "parameters"}}` with distinct names, each `parameters` a valid JSON schema."""
    from jsonschema import Draft202012Validator, SchemaError

    tools = _json_text(tools, where)
    if not isinstance(tools, list):
        raise SpecError(where, f"must be a list of tools, got {type(tools).__name__}")
    names = set()
    for i, tool in enumerate(tools):
        w = f"{where}[{i}]"
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type", "function") != "function":
            raise SpecError(w, 'must be {"type": "function", "function": {"name": …, "parameters": {…}}}')
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise SpecError(f"{w}.function.name", "required: a non-empty string")
        if fn["name"] in names:
            raise SpecError(f"{w}.function.name", f"duplicate tool name {fn['name']!r}")
        names.add(fn["name"])
        if not isinstance(fn.get("parameters"), dict):
            raise SpecError(f"{w}.function.parameters", "required: a JSON schema (an object)")
        try:
            Draft202012Validator.check_schema(fn["parameters"])
        except SchemaError as exc:
            at = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.path)
            raise SpecError(f"{w}.function.parameters{at}", f"not a valid JSON schema: {exc.message}") from None
    return tools


def _check_allowed(value: Any, where: str) -> None:
    """Every allowed-values object in an expected argument is `{"any_of": [non-empty list], "optional"?: bool}`."""
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_allowed(v, f"{where}[{i}]")
    elif isinstance(value, dict):
        if "any_of" in value:
            if set(value) - {"any_of", "optional"}:
                raise SpecError(where, f"an allowed-values object has only `any_of` and `optional`, got {sorted(value)}")
            if not isinstance(value["any_of"], list) or not value["any_of"]:
                raise SpecError(f"{where}.any_of", "must be a non-empty list of allowed values")
            if not isinstance(value.get("optional", False), bool):
                raise SpecError(f"{where}.optional", "must be true or false")
        for k, v in value.items():
            _check_allowed(v, f"{where}.{k}")


def check_expected_calls(calls: Any, tools: list[dict[str, Any]] | None, where: str) -> list[dict[str, Any]]:
    """Expected tool calls, checked: each names a function (one of `tools` when the example offers
    some) and its arguments are a JSON object (or JSON text of one) with well-formed allowed values."""
    calls = _json_text(calls, where)
    if not isinstance(calls, list):
        raise SpecError(where, f"must be a list of tool calls, got {type(calls).__name__}")
    offered = [t["function"]["name"] for t in tools or []]
    for i, call in enumerate(calls):
        w = f"{where}[{i}]"
        fn, w_fn = (call.get("function"), f"{w}.function") if isinstance(call, dict) and "function" in call else (call, w)
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise SpecError(w, 'must be a tool call: {"function": {"name": …, "arguments": {…}}} or {"name", "arguments"}')
        if tools is not None and fn["name"] not in offered:
            raise SpecError(f"{w_fn}.name", f"{fn['name']!r} is not one of the example's tools {offered}")
        args = _json_text(fn.get("arguments", {}), f"{w_fn}.arguments")
        if not isinstance(args, dict):
            raise SpecError(f"{w_fn}.arguments", f"must be a JSON object, got {type(args).__name__}")
        _check_allowed(args, f"{w_fn}.arguments")
    return calls


def split_example(row: dict[str, Any], where: str, default_id: str | None = None,
                  default_tools: list[dict[str, Any]] | None = None) -> Example:  # fmt: skip
    """An `Example` from a `messages` row (assistant target last) or a `prompt`/`expected` row;
    `default_tools`: offered when the row has no `tools` of its own."""
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or len(msgs) < 2 or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "assistant":
            raise SpecError(f"{where}.messages", "must be a chat list whose last message is the assistant target")
        prompt, target = [dict(m) for m in msgs[:-1]], msgs[-1]
        expected, calls = target.get("content") or "", target.get("tool_calls") or row.get("expected_tool_calls")
        calls_at = f"{where}.messages[{len(msgs) - 1}].tool_calls" if target.get("tool_calls") else f"{where}.expected_tool_calls"
    elif isinstance(row.get("prompt"), str):
        prompt = ([{"role": "system", "content": row["system"]}] if row.get("system") else []) + [{"role": "user", "content": row["prompt"]}]
        expected, calls, calls_at = row.get("expected"), row.get("expected_tool_calls"), f"{where}.expected_tool_calls"
        if expected is not None and not isinstance(expected, str):
            expected = json.dumps(expected)  # a JSON reference written as an object
        if expected is None and not calls:
            raise SpecError(f"{where}.expected", "required with `prompt` (or `expected_tool_calls`)")
    else:
        raise SpecError(where, "needs `messages` or `prompt`")
    offered = check_tools(row["tools"], f"{where}.tools") if row.get("tools") is not None else default_tools
    calls = check_expected_calls(calls, offered, calls_at) if calls else None
    ex_id = row.get("id") or row.get("interaction_id") or default_id or "ex-" + prompt_hash(prompt)[:12]
    return Example(id=str(ex_id), messages=prompt, expected=expected or "", expected_tool_calls=calls, tools=offered)


def _dataset_rows(path: str, split: str) -> list[dict[str, Any]]:
    from datasets import load_from_disk

    root = Path(path)
    # A curated version folder holds its HF copy in `sft/`; accept that folder or the copy itself.
    for cand in (root, root / "sft"):
        if (cand / "dataset_dict.json").exists():
            ds = load_from_disk(str(cand))
            if split not in ds:
                raise SpecError("source.split", f"dataset {cand} has splits {list(ds)}, not {split!r}")
            return ds[split].to_list()
    raise SpecError("source.dataset", f"no Hugging Face DatasetDict at {path} (or its sft/ folder)")


def load_examples(spec: BenchmarkSpec) -> list[Example]:
    """The benchmark's examples: the dataset split, then the golden lines; first of an id wins."""
    examples: list[Example] = []
    if spec.dataset:
        examples += [split_example(r, f"source.dataset[{i}]", default_tools=spec.tools) for i, r in enumerate(_dataset_rows(spec.dataset, spec.split))]
    if spec.golden:
        gpath = Path(spec.golden)
        if not gpath.exists():
            raise SpecError("source.golden", f"no such file {gpath}")
        for n, line in enumerate(gpath.read_text().splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise SpecError(f"source.golden line {n}", f"not JSON: {exc}") from exc
                if not isinstance(row, dict):
                    raise SpecError(f"source.golden line {n}", "must be a JSON object")
                examples.append(split_example(row, f"source.golden line {n}", default_tools=spec.tools))
    seen, unique = set(), []
    for ex in examples:
        if ex.id not in seen:
            seen.add(ex.id)
            unique.append(ex)
    if spec.limit:
        unique = unique[: spec.limit]
    if not unique:
        raise SpecError("source", "the benchmark has no examples")
    return unique


def benchmark_version(spec: BenchmarkSpec, examples: list[Example]) -> str:
    """`bv-` + 16 hex of sha256(spec minus paths, every example's id, prompt and reference)."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in spec.raw.items() if k != "source"}, sort_keys=True, default=str).encode())
    for ex in examples:  # the tools offered are part of the prompt (hashed only when there are some: older versions stay)
        content = [ex.id, prompt_hash(ex.messages), ex.expected, ex.expected_tool_calls] + ([ex.tools] if ex.tools else [])
        digest.update(json.dumps(content, sort_keys=True).encode())
    return "bv-" + digest.hexdigest()[:16]
