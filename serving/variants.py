"""Variants: a model served with its own serving option, loaded like a whole model (issue 16, item 3).

A variant folder holds only `serving.json` (flywheel.optimize.options): the folder of a LoRA adapter
or of a whole model, and the `ServingOption` to serve it with. The engine builds it as a model of
its own (`Variants.load`): a copy of the route's base in the option's dtype with the adapter applied
(merged into it or not), or the whole model in that dtype, or, when the option keeps fewer layers,
the variant's cut (`cut/`, flywheel.optimize.draft_model) in that dtype; then int8 dynamic
quantization when the option asks. Being a model of its own, it batches only with itself and
unloads like a whole model.

What its option asks of the engine while it serves is answered here too: whether its greedy rows
speculate (and from which trained draft), how many of its rows may decode together, and the threads
of its forward passes.

Every problem of the folder (an unreadable `serving.json`, an unknown option or invalid value, a
missing source, an adapter of another base, int8 on a GPU) is a `ModelLoadError` naming the folder
and the field, so an HTTP load answers 400 and a start reports it, as for any other model folder.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from flywheel.optimize.draft import read_table, table_draft
from flywheel.optimize.draft_model import CUT_DIR, read_draft_model
from flywheel.optimize.options import ServingOption, is_variant, read_variant
from serving.model_check import ModelLoadError, check_folder, is_adapter
from serving.speculate import DRAFT_TOKENS, ModelDraft, ngram_draft


INT8_KEEP_FLOAT = ("up_proj", "down_proj")  # (Llama-family names) layers an int8 variant keeps in float


class Variants:
    """The variants one engine serves (name -> option), and what their options ask of it."""

    def __init__(self) -> None:
        self.options: dict[str, ServingOption] = {}
        # the trained drafts of variants with speculative "table" (after prompt lookup) or "model": context -> draft
        self.drafts: dict[str, Callable[[list[int]], list[int]]] = {}
        self._default_threads: int | None = None  # torch's, in the engine thread before any change
        self._threads: int | None = None  # what the engine thread runs with now

    def load(self, engine, name: str, folder: str):
        """The torch model of the variant at `folder`, built on `engine`'s route (its base, device and
        checks); its option is kept under `name`."""
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        option, source = read(folder)
        try:  # (before the model: a variant without its draft fails fast)
            if option.speculative == "table":
                table = read_table(folder)
            elif option.speculative == "model":
                draft_folder, draft_ids = read_draft_model(folder)
        except ValueError as exc:
            raise ModelLoadError(f"{folder}: option.speculative: {exc}") from None
        if option.quantize == "int8" and engine.device != "cpu":
            raise ModelLoadError(f"{folder}: option.quantize: int8 is dynamic quantization, which runs on CPU only "
                                 f"(route {engine.route!r} runs on {engine.device})")  # fmt: skip
        dtype = getattr(torch, option.dtype)
        if option.layers is not None:
            model = _part(engine, Path(folder) / CUT_DIR, dtype, "option.layers", "cut model")
        elif is_adapter(source):
            engine.check_adapter(str(source))  # on this base, as a plain adapter is checked
            base = AutoModelForCausalLM.from_pretrained(engine.path, dtype=dtype)
            # named as the engine names the variant: a batch passes PEFT each row's adapter by that name
            model = PeftModel.from_pretrained(base, str(source), adapter_name=name)
            if option.merge:
                model = model.merge_and_unload()
        else:
            model = engine.whole_model(str(source), dtype)
        model = model.to(engine.device).eval()
        if option.quantize == "int8":
            with warnings.catch_warnings():  # torch 2.13 deprecates eager quantization for torchao, not installed here
                warnings.simplefilter("ignore")
                # The output head and the MLP's up/down projections stay float, chosen by measurement (int8
                # quantizes each batch's activations with one scale, and outliers spoil it). SmolLM2-135M with the demo's
                # triage adapter merged, its 100 benchmark tickets, answers right: float32 100; int8 all but
                # the head 34 (1.46x float32's speed); also keeping down_proj 90; keeping both 98 (1.20x).
                head = model.get_output_embeddings()
                linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head
                           and not n.endswith(INT8_KEEP_FLOAT)}  # fmt: skip
                model = torch.ao.quantization.quantize_dynamic(model, linears, dtype=torch.qint8)
        if option.speculative == "table":
            self.drafts[name] = lambda context: ngram_draft(context) or table_draft(context, table, DRAFT_TOKENS)
        elif option.speculative == "model":
            self.drafts[name] = ModelDraft(_part(engine, draft_folder, dtype, "option.speculative", "draft model"),
                                           draft_ids, engine.eos_ids)  # fmt: skip
        self.options[name] = option
        return model

    def forget(self, name: str) -> None:
        self.options.pop(name, None)
        self.drafts.pop(name, None)

    def speculative(self, name: str | None, route_mode: str) -> str:
        """The speculative mode of `name`'s rows: its variant's, else the route's."""
        option = self.options.get(name) if name is not None else None
        return option.speculative if option is not None else route_mode

    def draft(self, name: str | None, context: list[int]) -> list[int]:
        """A speculating row's draft: its variant's trained draft, else prompt lookup."""
        trained = self.drafts.get(name) if name is not None else None
        return trained(context) if trained is not None else ngram_draft(context)

    def max_batch(self, name: str | None) -> int | None:
        """The most rows of `name` that may decode together (None: the engine's limit, shared with the others)."""
        option = self.options.get(name) if name is not None else None
        return option.max_batch if option is not None else None

    def use_threads(self, key: str | None) -> None:
        """Before a forward pass of batch `key` (in the engine thread): its variant's threads, else the
        default. torch's setting is process-wide and costs a thread-pool resize, so it changes only
        when the value does."""
        import torch

        if self._default_threads is None:
            self._default_threads = self._threads = torch.get_num_threads()
        option = self.options.get(key) if key is not None else None
        want = (option.threads if option is not None else None) or self._default_threads
        if want != self._threads:
            torch.set_num_threads(want)
            self._threads = want


def _part(engine, folder: Path, dtype, field: str, what: str):
    """A whole model a variant's option names (its draft model, its cut), on the engine's device in the
    variant's dtype, loaded and checked as any whole model the engine serves (our vocabulary)."""
    try:
        return engine.whole_model(str(folder), dtype)
    except Exception as exc:  # noqa: BLE001 - whatever transformers raises, the message names the folder
        raise ModelLoadError(f"{folder}: {field}: cannot load the {what}: {type(exc).__name__}: {exc}") from None


def read(folder: str | Path) -> tuple[ServingOption, Path]:
    """(option, source folder) of a variant folder; `ModelLoadError` naming the folder and the field."""
    try:
        option, source, _ = read_variant(folder)
    except ValueError as exc:  # (it names serving.json and the field)
        raise ModelLoadError(str(exc)) from None
    try:
        check_folder(source, "source")
    except ModelLoadError as exc:
        raise ModelLoadError(f"{folder}: {exc}") from None
    if is_variant(source):
        raise ModelLoadError(f"{folder}: source: {str(source)!r} is a variant itself; name the adapter or model folder")
    return option, source
