"""The shapes every part of `evals` shares (after openai/simple-evals' `types.py`).

A *sampler* is anything that answers chat messages: `sampler(messages) -> SamplerResponse`, and
`sampler.batch(list_of_messages)` for many at once (endpoints fan out over threads, local models
generate in batches). Both take the tools offered with each prompt (`tools=`, OpenAI format),
since a tool-calling benchmark offers each example its own. A *benchmark* is examples + metrics
(`evals.spec`). A run's per-example outputs are `ExampleResult`s; a whole run, loaded back from
the store, is an `EvalRun`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

Message = dict[str, Any]  # OpenAI chat format: {"role": ..., "content": ..., optional "tool_calls"}
Messages = list[Message]


class EvalError(Exception):
    """Base of the errors `evals` raises on purpose, each with a message a user can act on."""


class SpecError(EvalError, ValueError):
    """A malformed benchmark spec; `field` names the offending field (dotted path)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"benchmark spec field {field!r}: {problem}")
        self.field = field


class ContaminationError(EvalError):
    """The benchmark's examples overlap the data the model was trained on."""

    def __init__(self, overlap: int, total: int, example_ids: list[str], train_path: str):
        shown = ", ".join(example_ids[:10]) + (" …" if len(example_ids) > 10 else "")
        super().__init__(
            f"refusing to evaluate: {overlap} of {total} benchmark example(s) also appear (same content hash) "
            f"in the training data at {train_path}: {shown}"
        )
        self.overlap, self.example_ids = overlap, example_ids


class RunFailed(EvalError):
    """A run ended `failed` (e.g. an endpoint that kept failing after its retries)."""

    def __init__(self, run_id: str, reason: str):
        super().__init__(f"eval run {run_id} failed: {reason}")
        self.run_id, self.reason = run_id, reason


@dataclass
class SamplerResponse:
    """One answer. `error` is set (and `text` empty) when the sampler gave up on this prompt."""

    text: str = ""
    latency_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    tool_calls: list[dict[str, Any]] | None = None
    error: str | None = None


class SamplerBase:
    """Anything that answers a prompt. Subclasses implement `__call__`; `batch` may do better.
    `kind` is the sampler's name in `evals.samplers.SAMPLERS`, for `build_sampler`."""

    kind: ClassVar[str] = ""
    model: str = "unknown"

    def __call__(self, messages: Messages, tools: list[dict[str, Any]] | None = None) -> SamplerResponse:
        raise NotImplementedError

    def batch(self, batch: list[Messages], tools: list[list[dict[str, Any]] | None] | None = None) -> list[SamplerResponse]:
        """`tools[i]`: the tools offered with `batch[i]` (None: the sampler's own, if any)."""
        return [self(m, tools=t) for m, t in zip(batch, tools or [None] * len(batch))]

    @classmethod
    def from_config(cls, cfg: dict[str, Any], evals_conf: dict[str, Any]) -> SamplerBase:
        """From plain data (keyword arguments); `evals_conf` is the `[evals]` table of flywheel.toml."""
        return cls(**cfg)

    def describe(self) -> dict[str, Any]:
        """What identifies this sampler in `eval_runs.sampler` (never secrets)."""
        return {"kind": self.kind or type(self).__name__}


@dataclass
class Example:
    """One benchmark item: the prompt messages, the tools offered with them (OpenAI format; None:
    none), and the reference answer and/or the expected tool calls (`evals.metrics` describes
    allowed values)."""

    id: str
    messages: Messages
    expected: str = ""
    expected_tool_calls: list[dict[str, Any]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] | None = None


@dataclass
class ExampleResult:
    """One example's output and scores, as stored in `eval_results`."""

    example_id: str
    output: str
    scores: dict[str, Any]
    latency_ms: float = 0.0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    expected: str = ""
    tool_calls: list[dict[str, Any]] | None = None


@dataclass
class EvalRun:
    """A run and its per-example results, as loaded from the store (`evals.runner.load_run`)."""

    id: str
    project: str
    task: str
    benchmark_id: str
    benchmark_version: str
    model: str
    sampler: dict[str, Any]
    status: str  # running | done | failed
    error: str | None
    n_examples: int
    metrics: dict[str, float]
    latency: dict[str, float]
    cost: dict[str, float]
    results: list[ExampleResult] = field(default_factory=list)
    aggregates: dict[str, Any] = field(default_factory=dict)  # metric name → corpus aggregate (macro-F1)

    @property
    def complete(self) -> bool:
        """Done, with one error-free result per benchmark example: the only kind that may pass."""
        ok = sum(1 for r in self.results if r.error is None)
        return self.status == "done" and ok == self.n_examples and self.n_examples > 0
