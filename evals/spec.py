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

A golden JSONL line is `{"messages": [..., assistant target]}` or `{"prompt": …, "expected": …}`,
optionally with `id` and `expected_tool_calls`. The benchmark *version* is a hash of the spec and
every example's content, so changing either makes a new version and runs never mix.
Every mistake is a `SpecError` naming the field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.metrics import Metric, build_metric
from evals.types import Example, Messages, SpecError

JUDGE_TYPES = {"judge_pairwise": ("{answer_a}", "{answer_b}"), "judge_rubric": ("{answer}",)}
_TOP = {"name", "task", "description", "source", "sampling", "metrics", "primary"}


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
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, base_dir: Path | str = ".") -> BenchmarkSpec:
        if not isinstance(data, dict):
            raise SpecError("<root>", f"must be a mapping, got {type(data).__name__}")
        for key in data:
            if key not in _TOP:
                raise SpecError(str(key), f"unknown field; known: {sorted(_TOP)}")
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise SpecError("name", "required, a non-empty string")
        source = data.get("source")
        if not isinstance(source, dict) or not (source.get("dataset") or source.get("golden")):
            raise SpecError("source", "required: a mapping with `dataset` and/or `golden`")
        for key in source:
            if key not in {"dataset", "golden", "split", "limit"}:
                raise SpecError(f"source.{key}", "unknown field; known: dataset, golden, split, limit")
        limit = source.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0):
            raise SpecError("source.limit", f"must be a positive integer, got {limit!r}")
        sampling = data.get("sampling") or {}
        if not isinstance(sampling, dict):
            raise SpecError("sampling", "must be a mapping")
        max_tokens = sampling.get("max_tokens", 64)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
            raise SpecError("sampling.max_tokens", f"must be a positive integer, got {max_tokens!r}")
        temperature = sampling.get("temperature", 0.0)
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature < 0:
            raise SpecError("sampling.temperature", f"must be a number >= 0, got {temperature!r}")
        metrics = data.get("metrics")
        if not isinstance(metrics, list) or not metrics:
            raise SpecError("metrics", "required: a non-empty list")
        names = set()
        for i, entry in enumerate(metrics):
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
        primary = data.get("primary")
        if primary is not None and primary not in names:
            raise SpecError("primary", f"{primary!r} is not one of the metric names {sorted(names)}")
        base = Path(base_dir)

        def resolve(p: Any, where: str) -> str | None:
            if p is None:
                return None
            if not isinstance(p, str):
                raise SpecError(where, "must be a path string")
            return str((base / p).resolve()) if not Path(p).is_absolute() else p

        return cls(name=name.strip(), metrics=metrics, dataset=resolve(source.get("dataset"), "source.dataset"),
                   split=str(source.get("split", "eval")), golden=resolve(source.get("golden"), "source.golden"),
                   limit=limit, max_tokens=max_tokens, temperature=float(temperature), task=data.get("task"),
                   primary=primary, raw=data)  # fmt: skip

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


def split_example(row: dict[str, Any], where: str, default_id: str | None = None) -> Example:
    """An `Example` from a `messages` row (assistant target last) or a `prompt`/`expected` row."""
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or len(msgs) < 2 or not isinstance(msgs[-1], dict) or msgs[-1].get("role") != "assistant":
            raise SpecError(f"{where}.messages", "must be a chat list whose last message is the assistant target")
        prompt, target = [dict(m) for m in msgs[:-1]], msgs[-1]
        expected, tools = target.get("content") or "", target.get("tool_calls") or row.get("expected_tool_calls")
    elif isinstance(row.get("prompt"), str):
        prompt = ([{"role": "system", "content": row["system"]}] if row.get("system") else []) + [{"role": "user", "content": row["prompt"]}]
        expected, tools = row.get("expected"), row.get("expected_tool_calls")
        if expected is not None and not isinstance(expected, str):
            expected = json.dumps(expected)  # a JSON reference written as an object
        if expected is None and not tools:
            raise SpecError(f"{where}.expected", "required with `prompt` (or `expected_tool_calls`)")
    else:
        raise SpecError(where, "needs `messages` or `prompt`")
    ex_id = row.get("id") or row.get("interaction_id") or default_id or "ex-" + prompt_hash(prompt)[:12]
    return Example(id=str(ex_id), messages=prompt, expected=expected or "", expected_tool_calls=tools or None)


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
        examples += [split_example(r, f"source.dataset[{i}]") for i, r in enumerate(_dataset_rows(spec.dataset, spec.split))]
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
                examples.append(split_example(row, f"source.golden line {n}"))
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
    for ex in examples:
        digest.update(json.dumps([ex.id, prompt_hash(ex.messages), ex.expected, ex.expected_tool_calls], sort_keys=True).encode())
    return "bv-" + digest.hexdigest()[:16]
