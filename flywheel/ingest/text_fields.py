"""The text of an item, checked against the limits and PII-redacted: what `records` stores.

Every string a client sends may hold PII, so the walk here redacts messages (names, parts,
tool-call arguments and results included), JSON documents inside strings (decoded, redacted,
re-encoded valid), keys and values of `params`, `tags` and `metadata`, and the tools offered;
strings that are protocol (`PROTOCOL_KEYS`) stay as sent, so a tool result still answers its call.
User and session ids that hold PII become keyed hashes (`pii.pseudonym`), so the loop can still
group by them. What repeats from call to call (system prompts, the model's name, the tools) is
redacted once and remembered. Every problem is an `ItemError` naming the field and the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from flywheel.ingest import pii
from flywheel.ingest.tool_fields import ToolFieldError, check_tool_calls

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


class ItemError(ValueError):
    """One item is invalid; the message names the field and the rule."""


@dataclass(frozen=True)
class Limits:
    max_text_chars: int
    max_messages: int


_encoder = msgspec.json.Encoder()  # (unlike orjson, it encodes any integer a client may send)


# System prompts repeat on nearly every call of a task, so their redaction is remembered:
# a bounded dict (cleared when full; short enough texts only) keyed by the text itself.
_REDACTED_PROMPTS: dict[str, tuple[str, int]] = {}
_PROMPT_CACHE_ITEMS, _PROMPT_CACHE_CHARS = 256, 16_384
_REPEATING_ROLES = frozenset({"system", "developer"})


def text_field(value: str, field: str, limits: Limits, redact: bool, repeats: bool = False) -> tuple[str, int]:
    """`value` within the text limit, redacted when `redact`, and how many values were replaced.
    `repeats`: a text that recurs from call to call (a system prompt), whose redaction is remembered."""
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
PROTOCOL_KEYS = frozenset({"role", "type", "id", "tool_call_id"})
_RESULT_ROLES = ("tool", "function")  # (a tuple: `in` on it takes any role, a dict one too)


def redact_json(value: Any, field: str, limits: Limits, keep: frozenset[str] = frozenset()) -> tuple[Any, int]:
    """`value` (any JSON) with every string redacted, keys included; `keep`: keys whose string value stays.
    A tool call's `arguments`, a JSON document in a string, is redacted inside and stays valid JSON."""
    if isinstance(value, str):
        return text_field(value, field, limits, True)
    if isinstance(value, list):
        out, found = [], 0
        for j, v in enumerate(value):
            v, n = redact_json(v, f"{field}[{j}]", limits, keep)
            out.append(v)
            found += n
        return out, found
    if not isinstance(value, dict):
        return value, 0  # numbers, booleans, null
    out, found = {}, 0
    for k, v in value.items():
        name, n = text_field(k, f"{field} (a key)", limits, True)
        if k == "arguments" and isinstance(v, str):
            v, m = _json_text(v, f"{field}.{k}", limits)
            n += m
        elif not (k in keep and isinstance(v, str)):
            v, m = redact_json(v, f"{field}.{k}", limits, keep)
            n += m
        out[name] = v  # (two keys redacted to the same placeholder keep the last value)
        found += n
    return out, found


# An app offers the same tools on every call: their redaction is remembered whole, keyed by their
# JSON (bounded like the prompts'; a hit costs an encoding instead of a walk over every string).
_REDACTED_TOOLS: dict[bytes, tuple[Any, int]] = {}


def redact_tools(tools: list[Any], limits: Limits) -> tuple[Any, int]:
    key = _encoder.encode(tools)
    done = _REDACTED_TOOLS.get(key)
    if done is None:
        if len(_REDACTED_TOOLS) >= _PROMPT_CACHE_ITEMS:
            _REDACTED_TOOLS.clear()
        done = _REDACTED_TOOLS[key] = redact_json(tools, "tools", limits, PROTOCOL_KEYS)
    return done


def _json_text(text: str, field: str, limits: Limits) -> tuple[str, int]:
    """A string that may hold a JSON document (tool-call arguments, a tool's result): its strings
    are redacted inside (escapes like \\u0040 decoded first, no key kept), and it stays valid JSON."""
    if len(text) > limits.max_text_chars or text[:1] not in ("{", "["):
        return text_field(text, field, limits, True)
    try:
        document = msgspec.json.decode(text)
    except msgspec.DecodeError:  # not JSON after all: redacted as text
        return text_field(text, field, limits, True)
    document, found = redact_json(document, field, limits)
    return (_encoder.encode(document).decode() if found else text), found


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def messages_field(messages: list[dict[str, Any]], limits: Limits, redact: bool, checked: bool) -> tuple[list[dict], int]:
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
                tool_check(check_tool_calls, message["tool_calls"], f"messages[{i}].tool_calls")
        field = f"messages[{i}]"
        if isinstance(content, str) and redact and role in _RESULT_ROLES:  # often JSON
            content, n = _json_text(content, f"{field}.content", limits)
        elif isinstance(content, str):  # (the common case, and the one a cache serves for system prompts)
            repeats = isinstance(role, str) and role in _REPEATING_ROLES
            content, n = text_field(content, f"{field}.content", limits, redact, repeats)
        elif redact:
            content, n = redact_json(content, f"{field}.content", limits, PROTOCOL_KEYS)
        else:  # not redacted: only the limit on text parts
            n = 0
            for j, part in enumerate(content if isinstance(content, list) else ()):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    text_field(part["text"], f"{field}.content[{j}].text", limits, False)
        found += n
        rest = {k: v for k, v in message.items() if k != "content"}
        if redact and (len(rest) > 1 or not isinstance(role, str)):  # name, tool calls, anything else
            rest, n = redact_json(rest, field, limits, PROTOCOL_KEYS)
            found += n
        out.append({**rest, "content": content})
    return out, found


def tool_check(check, *args, **kwargs) -> None:
    """Run a `flywheel.ingest.tool_fields` check; what it refuses is the item's error."""
    try:
        check(*args, **kwargs)
    except ToolFieldError as exc:
        raise ItemError(str(exc)) from None


def json_field(value: Any, field: str, limits: Limits, redact: bool) -> tuple[Any, int]:
    """A free-form field (`params`, `tags`, `metadata`): every string in it redacted when `redact`."""
    return redact_json(value, field, limits) if redact and value is not None else (value, 0)


def identifier(value: str | None, redact: bool, secret: bytes | None) -> str | None:
    """A user or session id: kept, or a keyed hash when it holds PII (redacted like text without a secret)."""
    if value is None or not redact:
        return value
    return pii.pseudonym(value, secret) if secret else pii.redact(value)[0]
