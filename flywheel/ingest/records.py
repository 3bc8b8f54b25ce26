"""The records clients send us, validated item by item, and turned into rows for the store.

One bad item must not sink a batch, so each item is decoded on its own and every problem is
reported as `field: what was expected (the limit)`: whatever JSON a field holds, an item is a
row or an `ItemError`, never another exception (JSON nested too deeply to decode is scanned by
`flywheel.ingest.nesting`). Text is PII-redacted before anything is stored
(`flywheel.ingest.text_fields`): messages (names, parts, tool-call arguments and results
included), the prompt, the response and its tool calls, `model`, the tools offered, and every
string in `params`, `tags` and `metadata`; user and session ids that hold PII become keyed
hashes (`pii.pseudonym`) so that the loop can still group by them. msgspec does the decoding: it
is the hot path of ingestion. The rows made here are declared in `flywheel.store.rows`;
`field_error` is how every msgspec error in Flywheel becomes `field: message`.

Tool calling (OpenAI's shapes, checked by `flywheel.ingest.tool_fields`): an item may carry the
`tools` offered (stored in the request beside the messages), `tool_choice`, `parallel_tool_calls`
and `response_format` in `params`, and messages with assistant `tool_calls` and `tool` results
(`tool_call_id`). An answer that is a tool call goes in `response_tool_calls` (a list of OpenAI
`{"id", "type": "function", "function": {"name", "arguments": "<JSON>"}}`), with `response` its
text: "" or null (stored as "") when the model only called. The gateway records its calls the same way.
"""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from flywheel import store
from flywheel.ingest.nesting import deepest_field, split_items
from flywheel.ingest.text_fields import (
    PROTOCOL_KEYS,
    ItemError,
    Limits,
    identifier,
    json_field,
    messages_field,
    redact_json,
    redact_tools,
    text_field,
    tool_check,
)
from flywheel.ingest.tool_fields import check_request, check_tool_calls
from flywheel.store.rows import (
    FEEDBACK_COLUMNS,
    INTERACTION_COLUMNS,
    FeedbackRow,
    InteractionRow,
    Json,
)

__all__ = ["FEEDBACK_COLUMNS", "INTERACTION_COLUMNS", "FeedbackIn", "InteractionIn", "ItemError", "Limits",
           "feedback_row", "field_error", "interaction_row", "split_items"]

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
TaskName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]  # (stored as INTEGER)
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class InteractionIn(msgspec.Struct, forbid_unknown_fields=True):
    task: TaskName
    model: Name
    response: str | None = None  # (required unless `response_tool_calls` is given)
    response_tool_calls: list[Any] | None = None
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    id: Name | None = None
    ts: datetime | None = None
    params: dict[str, Any] | None = None
    tools: list[Any] | None = None
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


def _total(make):
    """Any JSON an item holds is a row or an ItemError: nesting deep enough to exhaust the stack too."""

    @functools.wraps(make)
    def made(raw: bytes, **kwargs):
        try:
            return make(raw, **kwargs)
        except RecursionError:
            raise ItemError(f"{deepest_field(raw)}: JSON nested too deeply") from None

    return made


@_total
def interaction_row(raw: bytes, *, project: str, redact: bool, limits: Limits, source: str = "ingest",
                    now: datetime | None = None, secret: bytes | None = None) -> InteractionRow:
    """Decode and validate one interaction (JSON bytes) into a row for the store. `secret`: the
    installation's key for identifiers that hold PII (`pii.installation_secret`)."""
    try:
        item = _interaction_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _item_error(exc) from None
    if (item.messages is None) == (item.prompt is None):
        raise ItemError("messages: exactly one of `messages` or `prompt` is required")
    if item.response is None and not item.response_tool_calls:
        raise ItemError("response: required field missing")
    # The gateway's call was answered by a route already (and its tools checked at the door):
    # recorded as sent, never refused.
    checked = source != "gateway"
    if checked:
        params = item.params or {}
        tool_check(check_request, item.tools, params.get("tool_choice"), params.get("response_format"), params_at="params.")
        if item.response_tool_calls is not None:
            tool_check(check_tool_calls, item.response_tool_calls, "response_tool_calls")
    if item.messages is not None:
        messages, found = messages_field(item.messages, limits, redact, checked)
        request: dict[str, Any] = {"messages": messages}
    else:
        prompt, found = text_field(item.prompt, "prompt", limits, redact)
        request = {"prompt": prompt}
    if item.tools is not None:
        request["tools"], n = redact_tools(item.tools, limits) if redact else (item.tools, 0)
        found += n
    if item.params:
        request["params"], n = json_field(item.params, "params", limits, redact)
        found += n
    calls, c = (redact_json(item.response_tool_calls, "response_tool_calls", limits, PROTOCOL_KEYS) if redact
                else (item.response_tool_calls, 0))  # fmt: skip
    found += c
    response, n = text_field(item.response or "", "response", limits, redact)
    model, m = text_field(item.model, "model", limits, redact, repeats=True)  # (the same on most items: cached)
    tags, t = json_field(item.tags, "tags", limits, redact)
    metadata, d = json_field(item.metadata, "metadata", limits, redact)
    now = now or _now()
    return InteractionRow(
        project=project, id=item.id or uuid.uuid4().hex, task=item.task, ts=_utc(item.ts, now), model=model,
        request=_encode(request), response=response, latency_ms=item.latency_ms, prompt_tokens=item.prompt_tokens,
        completion_tokens=item.completion_tokens, cost_usd=item.cost_usd, status=item.status,
        user_id=identifier(item.user_id, redact, secret), session_id=identifier(item.session_id, redact, secret),
        tags=tags, metadata=_encode(metadata) if metadata is not None else None,
        source=source, pii_redacted=found + n + m + t + d, received_at=now,
        response_tool_calls=_encode(calls) if calls else None,
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
    if kind == "label" and len(value) > 256:
        raise ItemError("value: label is over the limit of 256 characters")
    return text_field(value, "value", limits, redact)


@_total
def feedback_row(raw: bytes, *, project: str, redact: bool, limits: Limits, now: datetime | None = None,
                 secret: bytes | None = None) -> FeedbackRow:
    """Decode and validate one feedback item into a row for the store (`secret`: as `interaction_row`'s)."""
    try:
        item = _feedback_decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _item_error(exc) from None
    value, found = _feedback_value(item.kind, item.value, limits, redact)
    comment = item.comment
    if comment is not None:
        comment, n = text_field(comment, "comment", limits, redact)
        found += n
    now = now or _now()
    return FeedbackRow(
        project=project, id=item.id or uuid.uuid4().hex, interaction_id=item.interaction_id, kind=item.kind,
        value=_encode(value), comment=comment, user_id=identifier(item.user_id, redact, secret), ts=_utc(item.ts, now),
        pii_redacted=found, received_at=now,
    )  # fmt: skip
