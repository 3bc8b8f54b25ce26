"""The tool-calling fields of a chat call, checked in one place for the gateway and for ingestion.

`tools`, `tool_choice`, `response_format` and a message's (or a response's) `tool_calls` have
OpenAI's shapes. The gateway refuses a bad one with a 400 and ingestion with the item's error,
both naming the field and the rule: `tools[1].function.name: required, a non-empty string`.
A tool's `parameters` (and a `json_schema` response format's `schema`) must be a valid JSON
schema (draft 2020-12), because the engine constrains decoding to it and the benchmarks check
every call against it. Checking a schema costs about a millisecond and apps send the same tools
on every call, so each distinct schema is checked once per process.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec

TOOL_CHOICES = ("none", "auto", "required")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
_SHAPE = '{"type": "function", "function": {"name": …, "parameters": {…}}}'


class ToolFieldError(ValueError):
    """A tool-calling field is malformed; the message is `field: rule`."""

    def __init__(self, field: str, rule: str):
        super().__init__(f"{field}: {rule}")
        self.field = field


@functools.lru_cache(maxsize=1024)
def _schema_problem(schema_json: bytes) -> tuple[str, str] | None:
    """(path under the schema, message) of what makes it an invalid JSON schema, or None."""
    from jsonschema import Draft202012Validator, SchemaError

    try:
        Draft202012Validator.check_schema(msgspec.json.decode(schema_json))
    except SchemaError as exc:
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.path), exc.message
    return None


def check_schema(schema: Any, field: str) -> None:
    if not isinstance(schema, dict):
        raise ToolFieldError(field, "required, a JSON schema (an object)")
    problem = _schema_problem(msgspec.json.encode(schema, order="sorted"))
    if problem:
        raise ToolFieldError(f"{field}{problem[0]}", f"not a valid JSON schema: {problem[1]}")


def _name(fn: dict, field: str) -> str:
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise ToolFieldError(f"{field}.name", "required, a non-empty string")
    return name


def check_tools(tools: Any, field: str = "tools") -> list[str]:
    """The names of the tools offered, once each is checked: a list of `_SHAPE` with distinct names."""
    if not isinstance(tools, list):
        raise ToolFieldError(field, f"expected a list of tools, each {_SHAPE}")
    names: list[str] = []
    for i, tool in enumerate(tools):
        at = f"{field}[{i}]"
        if not isinstance(tool, dict):
            raise ToolFieldError(at, f"expected {_SHAPE}")
        if tool.get("type") != "function":
            raise ToolFieldError(f"{at}.type", 'required, "function"')
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise ToolFieldError(f"{at}.function", 'required, an object with "name" and "parameters"')
        name = _name(fn, f"{at}.function")
        if name in names:
            raise ToolFieldError(f"{at}.function.name", f"duplicate tool name {name!r}")
        names.append(name)
        check_schema(fn.get("parameters"), f"{at}.function.parameters")
    return names


def check_tool_choice(choice: Any, names: list[str] | None, field: str = "tool_choice") -> None:
    """`choice`: "none", "auto", "required" or `{"type": "function", "function": {"name": N}}`, N one of
    the tools offered (`names`; None: no tools were given)."""
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise ToolFieldError(field, f"expected one of {', '.join(TOOL_CHOICES)} or a named function, got {choice!r}")
        if choice == "required" and not names:
            raise ToolFieldError(field, '"required" needs `tools`')
        return
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(choice.get("function"), dict):
        raise ToolFieldError(field, f'expected one of {", ".join(TOOL_CHOICES)} or {{"type": "function", "function": {{"name": …}}}}')
    name = _name(choice["function"], f"{field}.function")
    if name not in (names or []):
        raise ToolFieldError(f"{field}.function.name", f"{name!r} is not one of the tools given")


def check_response_format(fmt: Any, field: str = "response_format") -> None:
    """`{"type": "text" | "json_object"}` or `{"type": "json_schema", "json_schema": {"name": …, "schema": {…}}}`."""
    if not isinstance(fmt, dict) or fmt.get("type") not in RESPONSE_FORMATS:
        raise ToolFieldError(f"{field}.type", f"required, one of {', '.join(RESPONSE_FORMATS)}")
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise ToolFieldError(f"{field}.json_schema", 'required with type "json_schema", an object with "name" and "schema"')
        _name(spec, f"{field}.json_schema")
        check_schema(spec.get("schema"), f"{field}.json_schema.schema")


def check_tool_calls(calls: Any, field: str) -> None:
    """An assistant's calls: a list of `{"id"?: str, "type": "function", "function": {"name": str,
    "arguments": str}}` (the arguments as the model wrote them: JSON text, valid or not)."""
    if not isinstance(calls, list):
        raise ToolFieldError(field, "expected a list of tool calls")
    for i, call in enumerate(calls):
        at = f"{field}[{i}]"
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise ToolFieldError(at, 'expected {"id": …, "type": "function", "function": {"name": …, "arguments": "…"}}')
        if call.get("type", "function") != "function":
            raise ToolFieldError(f"{at}.type", '"function"')
        if not isinstance(call.get("id", ""), str):
            raise ToolFieldError(f"{at}.id", "expected a string")
        _name(call["function"], f"{at}.function")
        if not isinstance(call["function"].get("arguments"), str):
            raise ToolFieldError(f"{at}.function.arguments", "required, the arguments as a JSON string")


def check_request(tools: Any, tool_choice: Any, response_format: Any, *, tools_at: str = "tools",
                  params_at: str = "") -> None:
    """The tool fields of one call (None: not given). `tools_at` and `params_at` say where they sit
    (at ingestion `tool_choice` and `response_format` are in `params`: "params.")."""
    names = check_tools(tools, tools_at) if tools is not None else None
    if tool_choice is not None:
        check_tool_choice(tool_choice, names, f"{params_at}tool_choice")
    if response_format is not None:
        check_response_format(response_format, f"{params_at}response_format")
