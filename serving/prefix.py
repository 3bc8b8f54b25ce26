"""Prefix caching: the keys and values of a prompt prefix that many requests share (a task's system
prompt, the tools offered to an agent), computed once per model and reused by every request that
starts with it.

On CPU a small model's serving time is mostly prefill. The demo's triage prompts are ≈66 SmolLM2
tokens whose first 36 are the same system prompt and chat scaffolding; the agent's ≈390, whose
first 363 are its instructions and tools. A newcomer whose context starts with a cached prefix is
prefilled from the prefix's end (serving.batch.prefill): the prefix's keys and values are those its
own prefill would compute (up to float rounding: the matrices have other shapes), so it writes the
same answer, greedy or sampled (bench/serve.py counts identical outputs; tests/test_prefix_cache.py).

Where a prefix ends needs no configuration. Each model's recent prompts are remembered; a prompt
that no entry fits and that shares at least MIN_TOKENS with one of them (or with a fellow
newcomer) caches the longest prefix they share, rounded down to a whole BLOCK of tokens, so that
prompts which differ a token or two past the shared part still find the same entry. Creating an
entry costs about nothing: its tokens are the ones the request would have computed anyway.

Entries belong to a model key, the row's adapter or model name (None: the base): an adapter changes
the keys and values of the layers it adapts, so the base's entry is not an adapter's. Unloading a
model drops its entries (`forget`). Memory is bounded: beyond `max_tokens` tokens in all, the least
recently used entries go. Rows prefilled from an entry are counted as hits, the others as misses.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from serving import metrics
from serving.batch import context

BLOCK = 16  # a prefix ends on a multiple of this many tokens
# Shorter shared prefixes are left alone: they are chat scaffolding or chance (two tickets' first
# words), not a task's prompt, and every entry in use splits the newcomers' prefill into one more pass.
MIN_TOKENS = 32
RECENT = 32  # prompts remembered per model key, to find the prefix a newcomer shares with them


@dataclass
class Prefix:
    """A cached prefix: its tokens, and per layer its (keys, values) [1, heads, len(ids), head_dim]."""

    ids: tuple[int, ...]
    layers: list


class PrefixCache:
    """The prefixes of one engine's models, least recently used first. `max_tokens` 0 (or less): off."""

    def __init__(self, max_tokens: int, route: str = "local"):
        self.max_tokens, self.route = max_tokens, route
        self.entries: OrderedDict[tuple[str | None, tuple[int, ...]], Prefix] = OrderedDict()
        self.tokens = 0  # held by the entries, in all
        self.hits = self.misses = 0  # rows prefilled from an entry, and whole
        self._recent: dict[str | None, deque[list[int]]] = {}
        self.unseeded: set[str | None] = set()  # model keys whose cache a prefix cannot seed: not tried again

    def plan(self, rows: list, compute: Callable[[object, int], list | None]) -> list[tuple[Prefix | None, list]]:
        """Group the newcomers of one batch by the prefix their prefill starts from (None: from the
        start). A missing entry is made with `compute(row, length)`: the layers of the first `length`
        tokens of that row's context, on its model (None when the model's cache cannot be seeded)."""
        if self.max_tokens <= 0:
            return [(None, rows)]
        inputs = [context(row) for row in rows]
        groups: dict[int, tuple[Prefix | None, list]] = {}
        missed = []  # (model key, context) of the rows no entry fits
        for i, (row, ids) in enumerate(zip(rows, inputs)):
            key = row.gen.adapter
            prefix = self._longest(key, ids)
            if prefix is None and key not in self.unseeded:
                fellows = [other for j, other in enumerate(inputs) if j != i and rows[j].gen.adapter == key]
                length = self._shared(ids, fellows + list(self._recent.get(key, ())))
                layers = compute(row, length) if length else None
                if layers is not None:
                    prefix = self._store(key, ids[:length], layers)
                elif length:
                    self.unseeded.add(key)
            groups.setdefault(id(prefix), (prefix, []))[1].append(row)
            if prefix is None:
                missed.append((key, ids))
        for key, ids in missed:  # (after the loop: a newcomer is not its own fellow)
            self._recent.setdefault(key, deque(maxlen=RECENT)).append(ids)
        self._count(len(rows) - len(missed), len(missed))
        return list(groups.values())

    def forget(self, key: str | None) -> None:
        """Drop model `key`'s entries and prompts (it was unloaded: a model of that name may come back)."""
        for entry_key in [k for k in self.entries if k[0] == key]:
            self.tokens -= len(self.entries.pop(entry_key).ids)
        self._recent.pop(key, None)
        self.unseeded.discard(key)

    def _longest(self, key: str | None, ids: list[int]) -> Prefix | None:
        """The longest entry of `key` that `ids` starts with and goes on after."""
        for length in range((len(ids) - 1) // BLOCK * BLOCK, MIN_TOKENS - 1, -BLOCK):
            prefix = self.entries.get((key, tuple(ids[:length])))
            if prefix is not None:
                self.entries.move_to_end((key, prefix.ids))
                return prefix
        return None

    def _shared(self, ids: list[int], others: list[list[int]]) -> int:
        """The longest prefix `ids` shares with one of `others`, in whole blocks, short of `ids`'
        last token (its prefill must run at least one) and within the budget (else every newcomer
        would compute it again); 0 when under MIN_TOKENS."""
        best = 0
        for other in others:
            n, limit = 0, min(len(ids) - 1, len(other), self.max_tokens)
            while n + BLOCK <= limit and ids[n:n + BLOCK] == other[n:n + BLOCK]:
                n += BLOCK
            best = max(best, n)
        return best if best >= MIN_TOKENS else 0

    def _store(self, key: str | None, ids: list[int], layers: list) -> Prefix:
        """Keep a new entry (no longer than `max_tokens`), then drop the least recently used ones beyond it."""
        prefix = Prefix(tuple(ids), layers)
        self.entries[(key, prefix.ids)] = prefix
        self.tokens += len(ids)
        while self.tokens > self.max_tokens:
            self.tokens -= len(self.entries.popitem(last=False)[1].ids)
        return prefix

    def _count(self, hits: int, misses: int) -> None:
        self.hits, self.misses = self.hits + hits, self.misses + misses
        for result, n in (("hit", hits), ("miss", misses)):
            if n:
                metrics.PREFIX_CACHE.labels(self.route, result).inc(n)
