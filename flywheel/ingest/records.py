"""The records clients send us, validated item by item, and turned into rows for the store.

One bad item must not sink a batch, so each item is decoded on its own and every problem is
reported as `field: what was expected (the limit)`: whatever JSON a field holds, an item is a
row or an `ItemError`, never another exception. Text is PII-redacted here, before anything is
stored: messages (names, parts, tool-call arguments and results included), the prompt, the
response and its tool calls, `model`, the tools offered, and every string in `params`, `tags` and
`metadata`; user and session ids that
hold PII become keyed hashes (`pii.pseudonym`) so that the loop can still group by them.
msgspec does the decoding: it is the hot path of ingestion. The rows made here are declared in
`flywheel.store.rows`; `field_error` is how every msgspec error in Flywheel becomes `field: message`.

Tool calling (OpenAI's shapes, checked by `flywheel.ingest.tool_fields`): an item may carry the
`tools` offered (stored in the request beside the messages), `tool_choice`, `parallel_tool_calls`
and `response_format` in `params`, and messages with assistant `tool_calls` and `tool` results
(`tool_call_id`). An answer that is a tool call goes in `response_tool_calls` (a list of OpenAI
`{"id", "type": "function", "function": {"name", "arguments": "<JSON>"}}`), with `response` its
text: "" or null (stored as "") when the model only called. The gateway records its calls the same way.
"""

from __future__ import annotations

import functools
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from flywheel import store
from flywheel.ingest import pii
from flywheel.ingest.tool_fields import ToolFieldError, check_request, check_tool_calls
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
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


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


# Keys of a chat message (and of its parts and tool calls) whose string value is protocol, not
# text: kept as sent, so a tool result still answers its call. Every other string is redacted.
_PROTOCOL_KEYS = frozenset({"role", "type", "id", "tool_call_id"})
_RESULT_ROLES = ("tool", "function")  # (a tuple: `in` on it takes any role, a dict one too)


def _walk(value: Any, field: str, limits: Limits, keep: frozenset[str] = frozenset()) -> tuple[Any, int]:
    """`value` (any JSON) with every string redacted, keys included; `keep`: keys whose string value stays.
    A tool call's `arguments`, a JSON document in a string, is redacted inside and stays valid JSON."""
    if isinstance(value, str):
        return _text(value, field, limits, True)
    if isinstance(value, list):
        out, found = [], 0
        for j, v in enumerate(value):
            v, n = _walk(v, f"{field}[{j}]", limits, keep)
            out.append(v)
            found += n
        return out, found
    if not isinstance(value, dict):
        return value, 0  # numbers, booleans, null
    out, found = {}, 0
    for k, v in value.items():
        name, n = _text(k, f"{field} (a key)", limits, True)
        if k == "arguments" and isinstance(v, str):
            v, m = _json_text(v, f"{field}.{k}", limits)
            n += m
        elif not (k in keep and isinstance(v, str)):
            v, m = _walk(v, f"{field}.{k}", limits, keep)
            n += m
        out[name] = v  # (two keys redacted to the same placeholder keep the last value)
        found += n
    return out, found


# An app offers the same tools on every call: their redaction is remembered whole, keyed by their
# JSON (bounded like the prompts'; a hit costs an encoding instead of a walk over every string).
_REDACTED_TOOLS: dict[bytes, tuple[Any, int]] = {}


def _tools(tools: list[Any], limits: Limits) -> tuple[Any, int]:
    key = _encoder.encode(tools)
    done = _REDACTED_TOOLS.get(key)
    if done is None:
        if len(_REDACTED_TOOLS) >= _PROMPT_CACHE_ITEMS:
            _REDACTED_TOOLS.clear()
        done = _REDACTED_TOOLS[key] = _walk(tools, "tools", limits, _PROTOCOL_KEYS)
    return done


def _json_text(text: str, field: str, limits: Limits) -> tuple[str, int]:
    """A string that may hold a JSON document (tool-call arguments, a tool's result): its strings
    are redacted inside (escapes like \\u0040 decoded first, no key kept), and it stays valid JSON."""
    if len(text) > limits.max_text_chars or text[:1] not in ("{", "["):
        return _text(text, field, limits, True)
    try:
        document = msgspec.json.decode(text)
    except msgspec.DecodeError:  # not JSON after all: redacted as text
        return _text(text, field, limits, True)
    document, found = _walk(document, field, limits)
    return (_encoder.encode(document).decode() if found else text), found


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _messages(messages: list[dict[str, Any]], limits: Limits, redact: bool, checked: bool) -> tuple[list[dict], int]:
    """The messages with their text redacted. `checked`: roles and content types must be OpenAI's;
    unchecked (the gateway's, which a route has already answered), any message is kept as sent."""
    if not messages:
        raise ItemError("messages: expected a non-empty array of chat messages")
    if len(messages) > limits.max_messages:
        raise ItemError(f"messages: {len(messages)} messages is over the limit of {limits.max_messages}")
    found = 0
    out = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if checked:
            if not isinstance(role, str) or role not in ROLES:
                raise ItemError(f"messages[{i}].role: expected one of {', '.join(sorted(ROLES))}, got {_shown(role)}")
            if content is not None and not isinstance(content, str | list):
                raise ItemError(f"messages[{i}].content: expected a string, an array of parts or null")
            if message.get("tool_calls") is not None:
                _checked(check_tool_calls, message["tool_calls"], f"messages[{i}].tool_calls")
        field = f"messages[{i}]"
        if isinstance(content, str) and redact and role in _RESULT_ROLES:  # often JSON
            content, n = _json_text(content, f"{field}.content", limits)
        elif isinstance(content, str):  # (the common case, and the one a cache serves for system prompts)
            repeats = isinstance(role, str) and role in _REPEATING_ROLES
            content, n = _text(content, f"{field}.content", limits, redact, repeats)
        elif redact:
            content, n = _walk(content, f"{field}.content", limits, _PROTOCOL_KEYS)
        else:  # not redacted: only the limit on text parts
            n = 0
            for j, part in enumerate(content if isinstance(content, list) else ()):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    _text(part["text"], f"{field}.content[{j}].text", limits, False)
        found += n
        rest = {k: v for k, v in message.items() if k != "content"}
        if redact and (len(rest) > 1 or not isinstance(role, str)):  # name, tool calls, anything else
            rest, n = _walk(rest, field, limits, _PROTOCOL_KEYS)
            found += n
        out.append({**rest, "content": content})
    return out, found


def _checked(check, *args, **kwargs) -> None:
    try:
        check(*args, **kwargs)
    except ToolFieldError as exc:
        raise ItemError(str(exc)) from None


def _json_field(value: Any, field: str, limits: Limits, redact: bool) -> tuple[Any, int]:
    return _walk(value, field, limits) if redact and value is not None else (value, 0)


def _identifier(value: str | None, redact: bool, secret: bytes | None) -> str | None:
    """A user or session id: kept, or a keyed hash when it holds PII (redacted like text without a secret)."""
    if value is None or not redact:
        return value
    return pii.pseudonym(value, secret) if secret else pii.redact(value)[0]


_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*+"|[{}\[\],]')  # strings and structure, scanned without recursion
_COLON = re.compile(rb"\s*:")


def _deepest_field(raw: bytes) -> str:
    """The top-level field of an item that nests deepest (scanned, since decoding it exhausts the stack)."""
    depth, key, deepest, field = 0, None, 0, "item"
    for m in _JSON_TOKEN.finditer(raw):
        token = m.group()
        if token[0] == 34:  # a string: at depth 1, followed by ':', it names a field
            if depth == 1 and _COLON.match(raw, m.end()):
                key = token
        elif token != b",":
            depth += 1 if token in (b"{", b"[") else -1
            if depth > deepest and key is not None:
                deepest, field = depth, key
    try:
        return msgspec.json.decode(field) if field != "item" else field
    except msgspec.DecodeError:
        return "item"


def split_items(body: bytes, key: str) -> list[bytes] | None:
    """The raw items of the array under `key` in a JSON object, found by scanning (not decoding), for
    a body that nests too deeply to decode whole: each item is then decoded, and refused, on its own.
    None when the body has no such array or is not well nested."""
    name = msgspec.json.encode(key)
    depth, current, start, items = 0, None, None, None
    for m in _JSON_TOKEN.finditer(body):
        token = m.group()
        if token[0] == 34:
            if depth == 1 and _COLON.match(body, m.end()):
                current = token
        elif token in (b"{", b"["):
            depth += 1
            if depth == 2 and token == b"[" and current == name and items is None:
                items, start = [], m.end()
        elif token in (b"}", b"]"):
            if depth == 2 and start is not None:
                item = body[start : m.start()].strip()
                items += [item] if item or items else []
                start = None
            depth -= 1
            if depth < 0:
                return None
        elif depth == 2 and start is not None:  # a comma between items
            items.append(body[start : m.start()].strip())
            start = m.end()
    return items if depth == 0 else None


def _total(make):
    """Any JSON an item holds is a row or an ItemError: nesting deep enough to exhaust the stack too."""

    @functools.wraps(make)
    def made(raw: bytes, **kwargs):
        try:
            return make(raw, **kwargs)
        except RecursionError:
            raise ItemError(f"{_deepest_field(raw)}: JSON nested too deeply") from None

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
        _checked(check_request, item.tools, params.get("tool_choice"), params.get("response_format"), params_at="params.")
        if item.response_tool_calls is not None:
            _checked(check_tool_calls, item.response_tool_calls, "response_tool_calls")
    if item.messages is not None:
        messages, found = _messages(item.messages, limits, redact, checked)
        request: dict[str, Any] = {"messages": messages}
    else:
        prompt, found = _text(item.prompt, "prompt", limits, redact)
        request = {"prompt": prompt}
    if item.tools is not None:
        request["tools"], n = _tools(item.tools, limits) if redact else (item.tools, 0)
        found += n
    if item.params:
        request["params"], n = _json_field(item.params, "params", limits, redact)
        found += n
    calls, c = (_walk(item.response_tool_calls, "response_tool_calls", limits, _PROTOCOL_KEYS) if redact
                else (item.response_tool_calls, 0))  # fmt: skip
    found += c
    response, n = _text(item.response or "", "response", limits, redact)
    model, m = _text(item.model, "model", limits, redact, repeats=True)  # (the same on most items: cached)
    tags, t = _json_field(item.tags, "tags", limits, redact)
    metadata, d = _json_field(item.metadata, "metadata", limits, redact)
    now = now or _now()
    return InteractionRow(
        project=project, id=item.id or uuid.uuid4().hex, task=item.task, ts=_utc(item.ts, now), model=model,
        request=_encode(request), response=response, latency_ms=item.latency_ms, prompt_tokens=item.prompt_tokens,
        completion_tokens=item.completion_tokens, cost_usd=item.cost_usd, status=item.status,
        user_id=_identifier(item.user_id, redact, secret), session_id=_identifier(item.session_id, redact, secret),
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
    return _text(value, "value", limits, redact)


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
        comment, n = _text(comment, "comment", limits, redact)
        found += n
    now = now or _now()
    return FeedbackRow(
        project=project, id=item.id or uuid.uuid4().hex, interaction_id=item.interaction_id, kind=item.kind,
        value=_encode(value), comment=comment, user_id=_identifier(item.user_id, redact, secret), ts=_utc(item.ts, now),
        pii_redacted=found, received_at=now,
    )  # fmt: skip
