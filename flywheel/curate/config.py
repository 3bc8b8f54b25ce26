"""The curation config, its error and its result: what `flywheel.curate.pipeline.curate` takes and returns.

Kept apart from the pipeline so the CLI, the Prefect flow and the training side can read a
config or a version without importing the curation machinery.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from flywheel.settings import read_config_file


def file_table(path: Path | str | None) -> dict[str, Any]:
    """The curation keys of a config file (its `[curation]` table when it has one); none for no file."""
    if path is None:
        return {}
    data = read_config_file(path)
    return data.get("curation", data)


class CurationError(ValueError):
    """Curation cannot produce a dataset from this input (unknown task, nothing selected, too few
    examples, bad config). Nothing is registered."""


@dataclass
class CurationConfig:
    """How traffic becomes training data. Load from TOML/YAML with `CurationConfig.from_file`.

    Grouped by what the fields control:
    - targets: `keep_unlabelled`, `good_rating`, `bad_rating`.
    - filters: `max_tokens`, `chars_per_token`, `pii_check`, `pii_kinds`, and the regex rules
      `prompt_include`, `prompt_exclude`, `response_include`, `response_exclude` (RE2 syntax).
    - dedup: `near_dup_threshold`, `near_dup_drop`, `shingle_size`, `num_perm`.
    - split: `eval_fraction`, `stratify_by_label`, `seed`.
    - output: `min_examples`, `preference_pairs`.
    """

    keep_unlabelled: bool = field(default=True, metadata={"help": "Use responses without feedback as SFT targets (else only corrections and good feedback)."})
    good_rating: float = field(default=4.0, metadata={"help": "A rating at or above this counts as good feedback."})
    bad_rating: float = field(default=2.0, metadata={"help": "A rating at or below this counts as bad feedback (in between: neutral)."})

    max_tokens: int = field(default=4096, metadata={"help": "Drop examples longer than this (prompt + target, estimated tokens)."})
    chars_per_token: float = field(default=4.0, metadata={"help": "Token estimate = characters / this; the student's tokenizer is not known yet."})
    pii_check: bool = field(default=True, metadata={"help": "Drop records that still contain PII after ingestion redaction."})
    pii_kinds: list[str] | None = field(default=None, metadata={"help": "PII kinds to check (flywheel.ingest.pii.KINDS); None: all."})
    prompt_include: list[str] = field(default_factory=list, metadata={"help": "Keep only examples whose prompt matches one of these regexes (empty: all)."})
    prompt_exclude: list[str] = field(default_factory=list, metadata={"help": "Drop examples whose prompt matches any of these regexes."})
    response_include: list[str] = field(default_factory=list, metadata={"help": "Keep only examples whose target matches one of these regexes (empty: all)."})
    response_exclude: list[str] = field(default_factory=list, metadata={"help": "Drop examples whose target matches any of these regexes."})

    near_dup_threshold: float = field(default=0.8, metadata={"help": "Jaccard similarity (word shingles) from which two examples are near-duplicates."})
    near_dup_drop: bool = field(default=True, metadata={"help": "Keep only the best-labelled member of a near-duplicate group (else keep all, on one split side)."})
    shingle_size: int = field(default=3, metadata={"help": "Words per shingle for near-duplicate detection."})
    num_perm: int = field(default=128, metadata={"help": "MinHash signature length (a power of two)."})

    eval_fraction: float = field(default=0.1, metadata={"help": "Share of split units (sessions, or dedup groups) held out for evaluation."})
    stratify_by_label: bool = field(default=True, metadata={"help": "Hold out the same share of each feedback label, when the task has labels."})
    seed: int = field(default=0, metadata={"help": "Seed of the split hash and the MinHash: same seed, same version."})

    min_examples: int = field(default=10, metadata={"help": "Refuse to register a version with fewer SFT examples than this."})
    preference_pairs: bool = field(default=True, metadata={"help": "Also build prompt/chosen/rejected pairs for DPO when the feedback allows."})

    def __post_init__(self):
        if not 0.0 <= self.eval_fraction < 1.0:
            raise CurationError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not 0.0 < self.near_dup_threshold <= 1.0:
            raise CurationError(f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")
        if self.num_perm < 8 or self.num_perm & (self.num_perm - 1):
            raise CurationError(f"num_perm must be a power of two >= 8, got {self.num_perm}")
        if self.shingle_size < 1 or self.max_tokens < 1 or self.chars_per_token <= 0 or self.min_examples < 1:
            raise CurationError("shingle_size, max_tokens, min_examples must be >= 1 and chars_per_token > 0")
        rules = self.prompt_include + self.prompt_exclude + self.response_include + self.response_exclude
        for pattern in rules:  # fail now, naming the pattern, not halfway through a run
            try:
                duckdb.sql("SELECT regexp_matches('', $p)", params={"p": pattern}).fetchall()
            except duckdb.Error as exc:
                raise CurationError(f"invalid regex rule {pattern!r}: {exc}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> CurationConfig:
        """From plain data (a TOML/YAML table); unknown keys are an error, not a silent default."""
        data = dict(data or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise CurationError(f"unknown curation setting(s) {unknown}; known: {sorted(names)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise CurationError(str(exc)) from None

    @classmethod
    def from_file(cls, path: Path | str) -> CurationConfig:
        """From a .toml, .yaml/.yml or .json file; a `[curation]` table is used when present."""
        return cls.from_dict(file_table(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DatasetVersion:
    """A registered curated dataset: `path` holds `sft/` and `preference/` (save_to_disk),
    `parquet/` and `report.md`. `created` is False when this exact version already existed."""

    id: str
    project: str
    task: str
    path: Path
    counts: dict[str, int]
    created: bool
    parent_id: str | None = None

    @property
    def report(self) -> str:
        from flywheel.curate.output import report_markdown

        return report_markdown(self.id, self.project, self.task, self.counts, self.parent_id)
