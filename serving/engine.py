"""The local inference engine: one Hugging Face causal LM, many LoRA adapters, continuous batching.

Requests are decoded together, one step at a time, so each request streams its tokens as they come.
A request joins the running batch at the next step (up to `max_batch` rows in all; an idle engine
waits at most `max_wait_ms` for company first): the newcomers are prefilled together and their KV
cache merged into the running one (serving.batch). A row that finishes or whose client goes away
leaves the batch at once. Rows for different adapters share the base model in one batch (PEFT's
per-row `adapter_names`); a whole model batches only with itself, and so does a variant (serving.variants:
a model served with its own dtype, quantization, speculation, batch limit and threads). Adapter
loads and unloads run in the engine thread between two steps, so they never race a forward pass,
and an unload waits for the running rows that use its adapter, so an in-flight request never fails
because of it.

Newcomers whose prompts start with a prefix that others had (a task's system prompt, its tools) are
prefilled from that prefix's cached keys and values (serving.prefix): only their own tokens are run.

A greedy request decoding alone may speculate (`speculative = "ngram"`, serving.speculate): several
tokens per forward pass, the same output.

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
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from flywheel.tools import render
from serving.batch import Batch, last_logits_only, merge, prefill, prefix_layers
from serving.constrain import Constraint, Grammars
from serving.loading import Loading
from serving.model_check import ModelLoadError, check_whole_model
from serving.prefix import PrefixCache
from serving.speculate import MODES, accept
from serving.variants import Variants

log = logging.getLogger("flywheel.engine")
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


class Engine(Loading):  # (serving.loading: its adapter and model loads and unloads)
    def __init__(self, path: str, *, adapters: dict[str, str] | None = None, max_batch: int = 16,
                 max_wait_ms: float = 5.0, route: str = "local", home: Path | None = None,
                 speculative: str = "off", join_running: bool = True, prefix_cache_tokens: int = 4096):
        """`join_running` False keeps newcomers waiting until the running batch has finished (static
        batching, as before continuous batching), for the benchmark's comparison. `prefix_cache_tokens`:
        the most prompt-prefix tokens whose keys and values are kept for reuse (serving.prefix; 0: none)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if speculative not in MODES:
            raise ValueError(f"speculative: expected one of {', '.join(MODES)}, got {speculative!r}")
        self.path, self.route, self.home = path, route, home
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.speculative, self.join_running = speculative, join_running
        self.drafted = self.accepted = 0  # draft tokens proposed, and accepted by the model (speculation)
        self.prefixes = PrefixCache(prefix_cache_tokens, route)
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
        self.full_models: dict[str, object] = {}  # names among them that are whole models (or variants)
        self.variants = Variants()  # names among those that are variants: their options
        self.failed: dict[str, str] = {}  # configured adapters that could not be loaded -> why
        for name, adapter_path in (adapters or {}).items():
            try:
                self._load(name, adapter_path)
            except (OSError, ValueError) as exc:  # the route serves on; the service reports this one
                self.failed[name] = str(exc)
        self._requests: queue.Queue[Generation] = queue.Queue()
        # adapter commands: (what to run, its caller's future, the adapter it unloads or None)
        self._admin: queue.Queue[tuple[Callable[[], object], Future, str | None]] = queue.Queue()
        self._commands: deque = deque()  # taken from `_admin`, not run yet (an unload waiting for its rows)
        self._unloading: set[str] = set()  # adapters whose unload waits: their newcomers wait too
        self._waiting: deque[Generation] = deque()  # submitted, not yet in a batch
        self._batches: dict[str | None, Batch] = {}  # running: the base's (None), and each whole model's
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
        return self._call(lambda: self._unload(name), unloads=name)

    def close(self) -> None:
        self._running = False
        self._requests.put(None)  # wake the loop
        self._thread.join(timeout=30)

    def _call(self, fn: Callable[[], object], unloads: str | None = None) -> Future:
        future: Future = Future()
        self._admin.put((fn, future, unloads))
        self._requests.put(None)  # wake the loop so the command runs now, not after a timeout
        return future

    # --- the engine thread -------------------------------------------------------------------

    def _run_admin(self) -> None:
        """Run the adapter commands, in order. An unload waits while a running row still uses its
        adapter (so an in-flight request never fails because of it), and the commands after it wait too."""
        while not self._admin.empty():
            self._commands.append(self._admin.get())
        self._unloading = set()
        while self._commands:
            fn, future, unloads = self._commands[0]
            if unloads is not None and any(row.gen.adapter == unloads for b in self._batches.values() for row in b.rows):
                self._unloading.add(unloads)  # its newcomers wait too, so that the running ones can drain
                return
            self._commands.popleft()
            try:
                future.set_result(fn())
            except Exception as exc:  # the caller gets it; the engine goes on
                future.set_exception(exc)

    def _run(self) -> None:
        while self._running:
            self._run_admin()
            self._take(wait=not self._batches and not self._waiting)
            self._run_admin()  # (a command that woke the loop goes before the newcomers)
            self._admit()
            for key in list(self._batches):
                rows = self._batches[key].rows
                try:
                    self._decode(key)
                except Exception as exc:  # a fault of the engine itself: end that batch, keep serving
                    log.exception("generation failed")
                    self._batches.pop(key, None)
                    for row in rows:
                        self._fail(row, _why(exc))
        for row in [row for batch in self._batches.values() for row in batch.rows] + [_Row(g) for g in self._waiting]:
            self._fail(row, "the engine was closed")  # (its caller would wait for ever)
        self.variants.use_threads(None)  # (torch's setting is the process's: leave it as found)

    def _take(self, wait: bool) -> None:
        """Move the submitted requests to `_waiting`. When the engine is idle, wait for one, then up to
        `max_wait_ms` for company, so that a burst is prefilled together."""
        if wait:
            first = self._requests.get()
            if first is None:  # a wake-up (close, or an adapter command)
                return
            self._waiting.append(first)
            deadline = time.monotonic() + self.max_wait_s
            while len(self._waiting) < self.max_batch:
                timeout = deadline - time.monotonic()
                try:
                    gen = self._requests.get(timeout=timeout) if timeout > 0 else self._requests.get_nowait()
                except queue.Empty:
                    return
                if gen is None:  # go now with what has come
                    return
                self._waiting.append(gen)
        while True:
            try:
                gen = self._requests.get_nowait()
            except queue.Empty:
                return
            if gen is not None:
                self._waiting.append(gen)

    def _admit(self) -> None:
        """Waiting requests join the running batches, up to `max_batch` rows in all, except a variant
        with its own `max_batch`, whose rows are capped by that instead (it is the option the optimizer
        measured): each model's newcomers are prefilled together, then merged into that model's running
        batch. Rows for adapters share the base model's batch; a whole model batches only with itself."""
        if self._batches and not self.join_running:
            return
        room = self.max_batch - sum(len(b.rows) for k, b in self._batches.items() if self.variants.max_batch(k) is None)
        newcomers: dict[str | None, list[_Row]] = {}
        waiting, self._waiting = self._waiting, deque()
        for gen in waiting:
            if gen.cancelled.is_set():
                continue
            own = self.variants.max_batch(gen.adapter)
            full = self._variant_full(gen.adapter, own, newcomers) if own is not None else room == 0
            if full or gen.adapter in self._unloading:
                self._waiting.append(gen)
            elif gen.adapter is not None and gen.adapter not in self.adapters:
                self._fail(_Row(gen), f"model {gen.adapter!r} was unloaded")
            else:
                newcomers.setdefault(gen.adapter if gen.adapter in self.full_models else None, []).append(_Row(gen))
                room -= own is None
        for key, rows in newcomers.items():
            try:
                joining = self._prefill(key, rows)
            except Exception as exc:  # a fault of the engine itself: end the newcomers, keep serving
                log.exception("generation failed")
                for row in rows:
                    self._fail(row, _why(exc))
                continue
            if joining is not None:
                self._batches[key] = merge(self._batches.get(key), joining)

    def _variant_full(self, name: str, limit: int, newcomers: dict[str | None, list[_Row]]) -> bool:
        """Whether variant `name` decodes (or is joined by) `limit` rows already."""
        running = self._batches.get(name)
        return (len(running.rows) if running else 0) + len(newcomers.get(name, [])) >= limit

    def _model(self, key: str | None):
        """The model a batch runs on, looked up at each step: loading the first adapter wraps the base."""
        return self.full_models[key] if key is not None else self.model

    def _prefill(self, key: str | None, rows: list[_Row]) -> Batch | None:
        """Prefill `rows` together and choose each one's first token; None when none goes on. A failed
        forward pass is retried row by row, so it ends only the row that causes it."""
        import torch

        rows = [row for row in rows if self._isolated(row, self._start, row)]
        if not rows:
            return None
        model = self._model(key)
        self.variants.use_threads(key)
        keep = last_logits_only(model)
        try:
            with torch.inference_mode():  # (every forward pass first: a failure then emits no token twice)
                groups = self.prefixes.plan(rows, lambda row, n: prefix_layers(model, row, n, self.device, keep))
                done = [prefill(model, group, self.pad_id, self.device, keep, prefix) for prefix, group in groups]
        except Exception as exc:
            if len(rows) == 1:
                log.exception("generation failed")
                self._fail(rows[0], _why(exc))
                return None
            log.warning("a batch of %d failed (%s); prefilling its rows one by one", len(rows), _why(exc))
            joined = None
            for row in rows:
                joined = merge(joined, self._prefill(key, [row]))
            return joined
        joined = None
        for batch, logits in done:
            joined = merge(joined, self._choose(batch, logits))
        return joined

    def _decode(self, key: str | None) -> None:
        """One step of a running batch: every row gets its next token (a speculating row, maybe several).
        A failed forward pass is retried row by row, each going on from its tokens so far."""
        import torch

        batch = self._batches.pop(key)  # (back in below, while it has rows)
        row = batch.rows[0]
        self.variants.use_threads(key)
        try:
            with torch.inference_mode():
                if len(batch.rows) == 1 and self._speculates(row):
                    batch = self._speculate(key, batch, row)
                else:
                    model = self._model(key)
                    batch = self._choose(batch, batch.forward(model, batch.next_ids, last_logits_only(model))[:, -1])
        except Exception as exc:
            if len(batch.rows) == 1:
                log.exception("generation failed")
                self._fail(row, _why(exc))
                return
            log.warning("a batch of %d failed (%s); decoding its rows one by one", len(batch.rows), _why(exc))
            batch = self._prefill(key, batch.rows)  # (each row's tokens so far are fed again: it goes on)
        if batch is not None:
            self._batches[key] = batch

    def _choose(self, batch: Batch, logits) -> Batch | None:
        """Each row's next token from its logits [rows, vocab]; finished, failed or abandoned rows leave."""
        import torch

        keep, next_ids = [], []
        for i, row in enumerate(batch.rows):
            token = self._isolated(row, self._step, row, logits[i])
            if token is not None:
                keep.append(i)
                next_ids.append(token)
        if not keep:
            return None
        if len(keep) < len(batch.rows):
            batch.select(keep)
        batch.next_ids = torch.tensor(next_ids, dtype=torch.long, device=self.device).unsqueeze(-1)
        return batch

    def _speculates(self, row: _Row) -> bool:
        """Greedy, unconstrained rows speculate (when decoding alone), if their variant, else the route,
        says so: their output stays the same."""
        mode = self.variants.speculative(row.gen.adapter, self.speculative)
        return mode != "off" and row.gen.temperature < GREEDY_BELOW and row.constraint is None

    def _speculate(self, key: str | None, batch: Batch, row: _Row) -> Batch | None:
        """Feed the row's next token and a draft after it in one pass; keep what the model agrees with."""
        import torch

        context = row.gen.prompt_ids + row.tokens  # (its last token is the one it feeds next)
        room = min(row.gen.max_tokens - len(row.tokens), self.context_length - len(context)) - 1
        draft = self.variants.draft(row.gen.adapter, context)[:max(room, 0)]
        model = self._model(key)
        ids = torch.tensor([[int(batch.next_ids[0, 0]), *draft]], dtype=torch.long, device=self.device)
        keep = {"logits_to_keep": len(draft) + 1} if last_logits_only(model) else {}
        logits = batch.forward(model, ids, keep)[0, -(len(draft) + 1):]
        accepted, token = accept(draft, logits, lambda at: self._isolated(row, self._step, row, at))
        self.drafted, self.accepted = self.drafted + len(draft), self.accepted + accepted
        if token is None:
            return None
        batch.crop(len(draft) - accepted)  # the rejected draft tokens leave the cache
        batch.next_ids = torch.tensor([[token]], dtype=torch.long, device=self.device)
        return batch

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

