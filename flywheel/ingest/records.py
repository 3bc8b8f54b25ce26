"""The records clients send us, validated item by item, and turned into rows for the store.

One bad item must not sink a batch, so each item is decoded on its own and every problem is
reported as `field: what was expected (the limit)`. Text is PII-redacted here, before anything
is stored. msgspec does the decoding: it is the hot path of ingestion. The rows made here are
declared in `flywheel.store.rows`; `field_error` is how every msgspec error in Flywheel becomes
`field: message`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from flywheel import store
from flywheel.ingest import pii
from flywheel.store.rows import (
    FEEDBACK_COLUMNS,
    INTERACTION_COLUMNS,
    FeedbackRow,
    InteractionRow,
    Json,
)

__all__ = ["FEEDBACK_COLUMNS", "INTERACTION_COLUMNS", "FeedbackIn", "InteractionIn", "ItemError", "Limits",
           "feedback_row", "field_error", "interaction_row"]

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
TaskName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]  # (stored as INTEGER)
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class InteractionIn(msgspec.Struct, forbid_unknown_fields=True):
    task: TaskName
    model: Name
    response: str
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    id: Name | None = None
    ts: datetime | None = None
    params: dict[str, Any] | None = None
    latency_ms: NonNegative | None = None
    prompt_tokens: Count | None = None
    completion_tokens: Count | None = None
    cost_usd: NonNegative | None = None
    status: Literal["ok", "error"] = "ok"
    user_id: Name | None = None
    session_id: Name | None = None
    tags: list[Annotated[str, msgspec.Meta(max_length=128)]] | None = None
    metadata: dict[str, Any] | None = None


class FeedbackIn(msgspec.Struct, forbid_unknown_fields=True):
    interaction_id: Name
    kind: Literal["thumbs", "rating", "label", "correction"]
    value: Any
    id: Name | None = None
    comment: str | None = None
    user_id: Name | None = None
    ts: datetime | None = None


class ItemError(ValueError):
    """One item is invalid; the message names the field and the rule."""


@dataclass(frozen=True)
class Limits:
    max_text_chars: int
    max_messages: int


_interaction_decoder = msgspec.json.Decoder(InteractionIn)
_encoder = msgspec.json.Encoder()  # unlike orjson, it encodes any integer a client may send


def _encode(value: Any) -> Json:
    return Json(_encoder.encode(value).decode())


_feedback_decoder = msgspec.json.Decoder(FeedbackIn)


def field_error(exc: msgspec.MsgspecError, *, name_top_level: bool = True) -> tuple[str | None, str]:
    """(field, message) of a msgspec error, for answers that lead with the field: `field: message`.

    msgspec says where at the end: "Expected `str` of length <= 256 - at `$.task`" is ("task",
    "Expected `str` of length <= 256"); the field is the whole path ("messages[0].role"). An error
    in the top-level object has no path, but msgspec names the field in the message:
    "Object missing required field `response`" is ("response", "required field missing") and
    "Object contains unknown field `x`" is ("x", "unknown field"); with `name_top_level=False`
    (a caller that names the object itself) and anything else it is (None, the message).
    """
    text = str(exc)
    message, at, path = text.rpartition(" - at `$.")
    if at:
        return path.rstrip("`"), message
    if name_top_level:
        if text.startswith("Object missing required field"):
            return text.split("`")[1], "required field missing"
        if text.startswith("Object contains unknown field"):
            return text.split("`")[1], "unknown field"
    return None, text


def _item_error(exc: msgspec.MsgspecError) -> ItemError:
    field, message = field_error(exc)
    return ItemError(f"{field}: {message}" if field else message)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _utc(ts: datetime | None, now: datetime) -> datetime:
    if ts is None:
        return now
    try:
        return store.naive_utc(ts)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00
        raise ItemError("ts: out of range once converted to UTC") from None


# System prompts repeat on nearly every call of a task, so their redaction is remembered:
# a bounded dict (cleared when full; short enough texts only) keyed by the text itself.
_REDACTED_PROMPTS: dict[str, tuple[str, int]] = {}
_PROMPT_CACHE_ITEMS, _PROMPT_CACHE_CHARS = 256, 16_384
_REPEATING_ROLES = frozenset({"system", "developer"})


def _text(value: str, field: str, limits: Limits, redact: bool, repeats: bool = False) -> tuple[str, int]:
    if len(value) > limits.max_text_chars:
        raise ItemError(f"{field}: text of {len(value)} characters is over the limit of {limits.max_text_chars}")
    if not redact:
        return value, 0
    if not repeats or len(value) > _PROMPT_CACHE_CHARS:
        return pii.redact(value)
    done = _REDACTED_PROMPTS.get(value)
    if done is None:
        if len(_REDACTED_PROMPTS) >= _PROMPT_CACHE_ITEMS:
            _REDACTED_PROMPTS.clear()
        done = _REDACTED_PROMPTS[value] = pii.redact(value)
    return done


def _messages(messages: list[dict[str, Any]], limits: Limits, redact: bool) -> tuple[list[dict], int]:
    if not messages:
        raise ItemError("messages: expected a non-empty array of chat messages")
    if len(messages) > limits.max_messages:
        raise ItemError(f"messages: {len(messages)} messages is over the limit of {limits.max_messages}")
    found = 0
    out = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLES:
            raise ItemError(f"messages[{i}].role: expected one of {', '.join(sorted(ROLES))}, got {role!r}")
        content = message.get("content")
        if isinstance(content, str):
            content, n = _text(content, f"messages[{i}].content", limits, redact, role in _REPEATING_ROLES)
            found += n
        elif isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    text, n = _text(part["text"], f"messages[{i}].content[{j}].text", limits, redact)
                    part = {**part, "text": text}
                    found += n
                parts.append(part)
            content = parts
        elif content is not None:
            raise ItemError(f"messages[{i}].content: expected a string, an array of parts or null")
        out.append({**message, "content": content})
    return out, found


def interaction_row(raw: bytes, *, project: str, redact: bool, limits: Limits, source: str = "ingest",
                    now: datetime | None = None) -> InteractionRow:
    """Decode and validate one interaction (JSON bytes) into a row for the store."""
    try:
        item = _interaction_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _item_error(exc) from None
    if (item.messages is None) == (item.prompt is None):
        raise ItemError("messages: exactly one of `messages` or `prompt` is required")
    if item.messages is not None:
        messages, found = _messages(item.messages, limits, redact)
        request: dict[str, Any] = {"messages": messages}
    else:
        prompt, found = _text(item.prompt, "prompt", limits, redact)
        request = {"prompt": prompt}
    if item.params:
        request["params"] = item.params
    response, n = _text(item.response, "response", limits, redact)
    now = now or _now()
    return InteractionRow(
        project=project, id=item.id or uuid.uuid4().hex, task=item.task, ts=_utc(item.ts, now), model=item.model,
        request=_encode(request), response=response, latency_ms=item.latency_ms, prompt_tokens=item.prompt_tokens,
        completion_tokens=item.completion_tokens, cost_usd=item.cost_usd, status=item.status, user_id=item.user_id,
        session_id=item.session_id, tags=item.tags,
        metadata=_encode(item.metadata) if item.metadata is not None else None,
        source=source, pii_redacted=found + n, received_at=now,
    )  # fmt: skip


def _feedback_value(kind: str, value: Any, limits: Limits, redact: bool) -> tuple[Any, int]:
    if kind == "thumbs":
        if isinstance(value, bool):
            return value, 0
        if value in ("up", "down"):
            return value == "up", 0
        raise ItemError("value: thumbs expects true/false or \"up\"/\"down\"")
    if kind == "rating":
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise ItemError("value: rating expects a number")
        return value, 0
    if not isinstance(value, str) or not value:
        raise ItemError(f"value: {kind} expects a non-empty string")
    if kind == "label":
        if len(value) > 256:
            raise ItemError("value: label is over the limit of 256 characters")
        return value, 0
    return _text(value, "value", limits, redact)


def feedback_row(raw: bytes, *, project: str, redact: bool, limits: Limits, now: datetime | None = None) -> FeedbackRow:
    """Decode and validate one feedback item into a row for the store."""
    try:
        item = _feedback_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _item_error(exc) from None
    value, found = _feedback_value(item.kind, item.value, limits, redact)
    comment = item.comment
    if comment is not None:
        comment, n = _text(comment, "comment", limits, redact)
        found += n
    now = now or _now()
    return FeedbackRow(
        project=project, id=item.id or uuid.uuid4().hex, interaction_id=item.interaction_id, kind=item.kind,
        value=_encode(value), comment=comment, user_id=item.user_id, ts=_utc(item.ts, now), pii_redacted=found,
        received_at=now,
    )  # fmt: skip
