"""Serving options: the ways one task's production model can be served, which `flywheel optimize` searches.

An option is data (`ServingOption`): the weights' dtype, dynamic int8 quantization, the LoRA merged
into a copy of the base or served as an adapter on the shared base, speculative decoding, the most
rows of the model decoded together, the threads a decoding step uses, and the decoder layers kept
(the merged model cut to its first layers and fine-tuned on the answers it was trained on,
flywheel.optimize.draft_model: other weights, whose quality the search must show is not worse).
`space` lists the valid options the `[optimize]` settings describe.

An option other than the default is served as a *variant*: a folder holding `serving.json` (the
option and the folder it applies to), which the serving tier loads like a whole model
(serving.variants), and which is registered, promoted, rolled back and restored after a restart
like any candidate (flywheel.optimize.variants).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

VARIANT_FILE = "serving.json"
DTYPES = ("float32", "bfloat16")
QUANTIZE = ("none", "int8")
SPECULATIVE = ("off", "ngram", "table", "model")


@dataclass(frozen=True)
class ServingOption:
    """One way to serve a model. The default (`ServingOption()`) is how a promoted adapter is served
    without the optimizer: float32, an adapter on the route's shared base, no speculation."""

    dtype: str = "float32"  # the weights' dtype: float32 | bfloat16
    quantize: str = "none"  # none | int8 (dynamic: int8 weights, activations quantized per batch)
    merge: bool = False  # the LoRA merged into a copy of the base (else an adapter on a copy)
    # off | ngram (prompt lookup, serving.speculate) | table (and the task's trained n-gram table,
    # flywheel.optimize.draft) | model (the task's trained draft model, flywheel.optimize.draft_model)
    speculative: str = "off"
    max_batch: int | None = None  # rows of this model decoded together (None: the route's max_batch)
    threads: int | None = None  # threads of a decoding step (None: torch's default)
    # the merged model cut to its first `layers` decoder layers, fine-tuned on its training answers (None: all)
    layers: int | None = None

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            raise ValueError(problem)

    def problem(self) -> str | None:
        """Why this combination cannot be served, or None."""
        for name, allowed in (("dtype", DTYPES), ("quantize", QUANTIZE), ("speculative", SPECULATIVE)):
            if getattr(self, name) not in allowed:
                return f"{name}: expected one of {', '.join(allowed)}, got {getattr(self, name)!r}"
        if not isinstance(self.merge, bool):
            return f"merge: expected true or false, got {self.merge!r}"
        for name in ("max_batch", "threads", "layers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                return f"{name}: expected a whole number >= 1, got {value!r}"
        if self.quantize == "int8" and (self.dtype != "float32" or not self.merge):
            # torch's dynamic quantization takes float32 nn.Linear layers; PEFT's LoRA layers wrap them
            return "quantize: int8 needs dtype float32 and merge true"
        if self.layers is not None and not self.merge:
            return "layers: a cut model is a whole model: it needs merge true"
        if self.layers is not None and self.speculative == "model":
            # (the draft model is itself the model's first layers: a cut model is drafted for by the table)
            return "layers: a cut model takes speculative off, ngram or table, not model"
        return None

    @property
    def name(self) -> str:
        """A short, unique label: `fp32-adapter-off`, `int8-merged-ngram-b32-t1`, `fp32-merged-off-l8`."""
        weights = "int8" if self.quantize == "int8" else {"float32": "fp32", "bfloat16": "bf16"}[self.dtype]
        parts = [weights, "merged" if self.merge else "adapter", self.speculative]
        parts += [f"b{self.max_batch}"] if self.max_batch else []
        parts += [f"t{self.threads}"] if self.threads else []
        parts += [f"l{self.layers}"] if self.layers else []
        return "-".join(parts)

    @property
    def is_default(self) -> bool:
        return self == ServingOption()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "option") -> ServingOption:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{where}.{unknown[0]}: unknown serving option (known: {', '.join(sorted(names))})")
        try:
            return cls(**data)
        except ValueError as exc:
            raise ValueError(f"{where}.{exc}") from None


def space(*, dtypes: list[str], quantize: list[str], merge: list[bool], speculative: list[str],
          max_batch: list[int], threads: list[int], layers: list[int]) -> list[ServingOption]:  # fmt: skip
    """Every valid combination of the given values, the default first. Empty `max_batch` / `threads`: the
    route's and torch's own only. All layers are always tried, and each of `layers` besides."""
    options = [ServingOption()]
    for combo in itertools.product(dtypes, quantize, merge, speculative, max_batch or [None], threads or [None],
                                   [None, *layers]):  # fmt: skip
        try:
            option = ServingOption(*combo)
        except ValueError:  # a combination that cannot be served (int8 on an adapter, a cut adapter)
            continue
        if option not in options:
            options.append(option)
    return options


def variant_id(model: str, option: ServingOption) -> str:
    """The model id a variant of `model` is served and registered under."""
    return f"{model}@{option.name}"


def write_variant(folder: Path, option: ServingOption, source: str | Path, parent: str) -> Path:
    """Write the variant folder: `source` (the parent's adapter or whole-model folder) served as `option`."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"parent": parent, "source": str(Path(source).resolve()), "option": option.to_dict()}
    (folder / VARIANT_FILE).write_text(json.dumps(spec, indent=2))
    return folder


def is_variant(folder: str | Path) -> bool:
    return (Path(folder) / VARIANT_FILE).is_file()


def read_variant(folder: str | Path) -> tuple[ServingOption, Path, str]:
    """(option, source folder, parent model) of a variant folder; ValueError naming the field."""
    path = Path(folder) / VARIANT_FILE
    try:
        spec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the variant: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("source"), str) or not isinstance(spec.get("option"), dict):
        raise ValueError(f"{path}: expected {{\"parent\", \"source\", \"option\"}}")
    return ServingOption.from_dict(spec["option"], f"{path}: option"), Path(spec["source"]), str(spec.get("parent") or "")
