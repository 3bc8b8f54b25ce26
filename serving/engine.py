"""The local inference engine: one Hugging Face causal LM, many LoRA adapters, dynamic batching.

Requests that arrive together (up to `max_batch`, waiting at most `max_wait_ms` for company) are
decoded together, one step at a time, so each request streams its tokens as they come. Rows for
different adapters share the base model in one batch (PEFT's per-row `adapter_names`). A row
that finishes or whose client goes away leaves the batch at once (its KV cache rows are dropped).
Adapter loads and unloads run in the engine thread between two batches, so they never race a
forward pass and an in-flight request never fails because of them.

A request may carry a grammar (serving.constrain: tool calls it must make, a JSON schema its answer
must follow): its row's logits are masked at every step to the tokens that keep the output valid.

A request's failure is its own: whatever fails in one row's work (its seed, sampling, stop strings,
detokenizing, its caller's `emit`) ends that row with an error answer, and a failed forward pass
of the whole batch is retried row by row, so one request never fails its neighbours.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from flywheel.tools import render
from serving.constrain import Constraint, Grammars
from serving.model_check import (
    ModelLoadError,
    check_adapter_base,
    check_folder,
    check_shapes,
    check_whole_model,
    is_adapter,
    read_adapter,
)

log = logging.getLogger("flywheel.engine")
BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
# A temperature below this decodes greedily, as in vLLM: it is the limit of sampling as the
# temperature goes to 0, and dividing the logits by, say, 1e-300 would overflow them.
GREEDY_BELOW = 1e-5


@dataclass
class Generation:
    """One request to the engine. `emit(delta, done)` is called from the engine thread with each
    new piece of text, and once with `done` = {"finish_reason", "prompt_tokens", "completion_tokens"}
    (finish_reason "error": this request failed, and `done["error"]` says why; the others went on).
    `grammar` (Lark text from serving.constrain, checked with `Engine.grammars.check`) constrains
    what it may write."""

    prompt_ids: list[int]
    max_tokens: int
    emit: Callable[[str, dict | None], None]
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    adapter: str | None = None
    grammar: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Row:
    gen: Generation
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    generator: object = None
    constraint: Constraint | None = None
    finished: bool = False  # its last event, `done`, was emitted (or its client went away)


class Engine:
    def __init__(self, path: str, *, adapters: dict[str, str] | None = None, max_batch: int = 16,
                 max_wait_ms: float = 5.0, route: str = "local", home: Path | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path, self.route, self.home = path, route, home
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if Path(path).exists():  # (else a cached model id, as from_pretrained takes it)
            check_whole_model(path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        except Exception as exc:  # noqa: BLE001 - whatever transformers raises, the message names the folder
            raise ModelLoadError(f"{path}: cannot load the base model: {type(exc).__name__}: {exc}") from None
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or self.tokenizer.model_max_length)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else self.tokenizer.eos_token_id])
        self.grammars = Grammars(self.tokenizer, self.model.config.vocab_size, self.eos_ids)
        self.adapters: dict[str, str] = {}  # every loaded name -> its folder
        self.full_models: dict[str, object] = {}  # names among them that are whole models
        self.failed: dict[str, str] = {}  # configured adapters that could not be loaded -> why
        for name, adapter_path in (adapters or {}).items():
            try:
                self._load(name, adapter_path)
            except (OSError, ValueError) as exc:  # the route serves on; the service reports this one
                self.failed[name] = str(exc)
        self._requests: queue.Queue[Generation] = queue.Queue()
        self._admin: queue.Queue[tuple[Callable[[], object], Future]] = queue.Queue()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="flywheel-engine", daemon=True)
        self._thread.start()

    # --- the public side, called from any thread ---------------------------------------------

    def encode_chat(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """The prompt of a chat offered `tools`, rendered as training renders it (flywheel.tools)."""
        text = render(self.tokenizer, messages, tools, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_prompt(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    def submit(self, gen: Generation) -> None:
        self._requests.put(gen)

    def load_adapter(self, name: str, path: str) -> Future:
        return self._call(lambda: self._load(name, path))

    def unload_adapter(self, name: str) -> Future:
        return self._call(lambda: self._unload(name))

    def close(self) -> None:
        self._running = False
        self._requests.put(None)  # wake the loop
        self._thread.join(timeout=30)

    def _call(self, fn: Callable[[], object]) -> Future:
        future: Future = Future()
        self._admin.put((fn, future))
        self._requests.put(None)  # wake the loop so the command runs now, not after a timeout
        return future

    # --- the engine thread -------------------------------------------------------------------

    def _load(self, name: str, path: str) -> None:
        """A folder with `adapter_config.json` is a LoRA adapter on our base; any other folder is a
        whole small model (e.g. a fully fine-tuned student), served side by side. Either is checked
        first (serving.model_check), so a wrong folder is refused before the model changes."""
        if name in self.adapters:
            raise ValueError(f"lora_name: adapter {name!r} is already loaded")
        if is_adapter(check_folder(path)):
            config, shapes = read_adapter(path)
            check_adapter_base(path, config, self.route, self.path, self.home)
            if shapes is not None:
                base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
                check_shapes(path, config, shapes, base, self.route, self.path, self.home)
            self._guarded(name, path, lambda: self._load_adapter(name, path))
        else:
            check_whole_model(path)
            self._guarded(name, path, lambda: self._load_whole(name, path))
        self.adapters[name] = path

    def _guarded(self, name: str, path: str, load: Callable[[], None]) -> None:
        """Run `load`; whatever the libraries raise becomes a `ModelLoadError` naming the folder."""
        try:
            load()
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - a corrupt file raises anything; the caller gets a 4xx
            if name in getattr(self.model, "peft_config", {}):  # a half-loaded adapter goes again
                try:
                    self.model.delete_adapter(name)
                except Exception:  # noqa: BLE001 - best effort; the load already failed
                    log.warning("could not remove the half-loaded adapter %r", name)
            raise ModelLoadError(f"{path}: cannot load: {type(exc).__name__}: {exc}") from None

    def _load_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(path, adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()

    def _load_whole(self, name: str, path: str) -> None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=self.model.dtype).to(self.device).eval()
        if model.config.vocab_size != self.model.config.vocab_size:
            raise ModelLoadError(f"{path} has another vocabulary ({model.config.vocab_size} tokens) than route "
                                 f"{self.route!r}'s base model {self.path!r} ({self.model.config.vocab_size})")  # fmt: skip
        self.full_models[name] = model

    def _unload(self, name: str) -> None:
        if name not in self.adapters:
            raise KeyError(f"lora_name: no adapter {name!r} is loaded")
        if self.full_models.pop(name, None) is None:
            remaining = [n for n in self.model.peft_config if n != name]
            if not remaining:  # the last one: back to the plain base (PEFT would keep pointing at it)
                self.model = self.model.unload().eval()
            else:
                if name in self.model.active_adapters:  # a loaded adapter must stay active for the next load
                    self.model.set_adapter(remaining[0])
                self.model.delete_adapter(name)
        del self.adapters[name]

    def _run_admin(self) -> None:
        while not self._admin.empty():
            fn, future = self._admin.get()
            try:
                future.set_result(fn())
            except Exception as exc:  # the caller gets it; the engine goes on
                future.set_exception(exc)

    def _collect(self) -> list[Generation]:
        batch: list[Generation] = []
        first = self._requests.get()
        if first is not None:
            batch.append(first)
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            timeout = deadline - time.monotonic()
            try:
                gen = self._requests.get(timeout=timeout) if timeout > 0 else self._requests.get_nowait()
            except queue.Empty:
                break
            if gen is None:  # a wake-up (close, or an adapter command): go now with what has come
                break
            batch.append(gen)
        return batch

    def _run(self) -> None:
        while self._running:
            self._run_admin()
            batch = [g for g in self._collect() if not g.cancelled.is_set()]
            self._run_admin()
            if not batch:
                continue
            groups: dict[str | None, list[_Row]] = {}  # a whole model batches only with itself
            for gen in batch:
                if gen.adapter is not None and gen.adapter not in self.adapters:
                    self._fail(_Row(gen), f"model {gen.adapter!r} was unloaded")
                    continue
                groups.setdefault(gen.adapter if gen.adapter in self.full_models else None, []).append(_Row(gen))
            for name, rows in groups.items():
                try:
                    self._generate(rows, self.full_models[name] if name else self.model)
                except Exception as exc:  # a fault of the engine itself: end what is left, keep serving
                    log.exception("generation failed")
                    for row in rows:
                        self._fail(row, _why(exc))

    def _generate(self, rows: list[_Row], model) -> None:
        """Decode `rows` together until each finishes. A failure of one row's own work (its seed,
        sampling, stop strings, detokenizing, its caller's `emit`) ends that row alone. A failure of
        the batched forward pass is retried row by row, each going on from its tokens so far, so it
        ends only the row that causes it."""
        import torch
        from peft import PeftModel

        rows = [row for row in rows if self._isolated(row, self._start, row)]
        if not rows:
            return
        try:
            inputs = [row.gen.prompt_ids + row.tokens for row in rows]  # (+ tokens: a retried row goes on)
            width = max(len(i) for i in inputs)
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row_ids in enumerate(inputs):  # left padding: every row's next token is at the end
                ids[i, width - len(row_ids):] = torch.tensor(row_ids)
                mask[i, width - len(row_ids):] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            extra = {}
            if isinstance(model, PeftModel):
                extra["adapter_names"] = [row.gen.adapter or BASE for row in rows]
            past, last_only = None, _last_logits_only(model)
            with torch.inference_mode():
                while rows:
                    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                                use_cache=True, **last_only, **extra)  # fmt: skip
                    past = out.past_key_values
                    logits = out.logits[:, -1, :].float()
                    keep, next_tokens = [], []
                    for i, row in enumerate(rows):
                        token = self._isolated(row, self._step, row, logits[i])
                        if token is not None:
                            keep.append(i)
                            next_tokens.append(token)
                    if len(keep) < len(rows):  # finished, failed or abandoned rows leave the batch now
                        index = torch.tensor(keep, dtype=torch.long, device=self.device)
                        rows = [rows[i] for i in keep]
                        if not rows:
                            break
                        past.batch_select_indices(index)
                        mask, positions = mask[index], positions[index]
                        if "adapter_names" in extra:
                            extra["adapter_names"] = [extra["adapter_names"][i] for i in keep]
                    ids = torch.tensor(next_tokens, dtype=torch.long, device=self.device).unsqueeze(-1)
                    mask = torch.cat([mask, torch.ones_like(ids)], dim=-1)
                    positions = positions[:, -1:] + 1
        except Exception as exc:
            if len(rows) == 1:
                log.exception("generation failed")
                self._fail(rows[0], _why(exc))
                return
            log.warning("a batch of %d failed (%s); decoding its rows one by one", len(rows), _why(exc))
            for row in rows:  # (each still going holds its tokens so far: `rows` drops a row as it ends)
                self._generate([row], model)

    def _isolated(self, row: _Row, work: Callable[..., object], *args) -> object:
        """`work(*args)`, or None when it raises: then the row ends with an error and the others go on."""
        try:
            return work(*args)
        except Exception as exc:
            log.exception("a request failed while decoding; its batch goes on")
            self._fail(row, _why(exc))
            return None

    def _start(self, row: _Row) -> _Row:
        """Check the row and make its random generator (once: a retried row keeps its own)."""
        import torch

        if not row.gen.prompt_ids:
            raise ValueError("the prompt has no tokens")
        if row.generator is None and row.gen.seed is not None:
            row.generator = torch.Generator(device=self.device).manual_seed(row.gen.seed)
        if row.constraint is None and row.gen.grammar is not None:
            row.constraint = self.grammars.constraint(row.gen.grammar)
        return row

    def _step(self, row: _Row, logits) -> int | None:
        """Sample the row's next token; None when the row is finished (or its client went away)."""
        if row.constraint is not None:
            row.constraint.mask(logits)
        token = self._sample(logits, row)
        if row.constraint is not None and token not in self.eos_ids:
            row.constraint.consume(token)
        return token if self._advance(row, token) is None else None

    def _sample(self, logits, row: _Row) -> int:
        import torch

        if row.gen.temperature < GREEDY_BELOW:
            return int(logits.argmax())
        probs = torch.softmax(logits / row.gen.temperature, dim=-1)
        if row.gen.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            cut = sorted_probs.cumsum(-1) - sorted_probs > row.gen.top_p
            sorted_probs[cut] = 0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=row.generator))

    def _advance(self, row: _Row, token: int) -> str | None:
        """Append `token` to the row, emit the new text; return a finish reason when done."""
        gen = row.gen
        if gen.cancelled.is_set():
            row.finished = True  # nobody is waiting for its answer
            return "cancelled"
        finish = None
        if token in self.eos_ids:
            finish = "stop"
        else:
            row.tokens.append(token)
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
            if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                text = row.text
            delta, row.text = text[len(row.text):], text
            for stop in gen.stop:
                at = row.text.find(stop)
                if at >= 0:  # hold back the stop string and anything after it
                    delta = delta[: max(0, len(delta) - (len(row.text) - at))]
                    row.text = row.text[:at]
                    finish = "stop"
                    break
            if delta:
                gen.emit(delta, None)
            if finish is None and (len(row.tokens) >= gen.max_tokens
                                   or len(gen.prompt_ids) + len(row.tokens) >= self.context_length):
                finish = "length"
        if finish:
            self._end(row, finish)
        return finish

    def _end(self, row: _Row, finish: str, error: str | None = None) -> None:
        """Emit the row's last event, `done` (once)."""
        row.finished = True
        done = {"finish_reason": finish, "prompt_tokens": len(row.gen.prompt_ids), "completion_tokens": len(row.tokens)}
        row.gen.emit("", done if error is None else {**done, "error": error})

    def _fail(self, row: _Row, reason: str) -> None:
        """End the row with an error answer, unless it has ended already."""
        if row.finished:
            return
        try:
            self._end(row, "error", reason)
        except Exception:  # its own emit is what fails: there is nobody left to tell
            log.exception("could not send a failed request its error")


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _last_logits_only(model) -> dict:
    """Only the last position's logits are sampled: where the model can skip the others, the
    prefill computes (and holds) no vocabulary's worth of logits per prompt token (≈20% of a
    SmolLM2 prefill, 49k-token vocabulary)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}
