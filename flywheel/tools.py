"""Tool calls as text: the one place that writes tools and calls into a prompt and reads them back.

Training and serving must show the model the same text, or a student learns a format the engine
never asks for. So both go through `render` (a chat with tools → the prompt text), and the
engine reads what the model wrote with `parse` (text → content and OpenAI `tool_calls`).

Two formats, chosen by the model's chat template:
- *native*: a template with a tools section (it mentions `tools`, as Qwen's and Llama 3.1's do)
  gets the tools through `apply_chat_template(..., tools=...)` and the assistant's calls as
  structured `tool_calls` (arguments as objects, which is what such templates expect);
- *ours* (any other template, SmolLM2's included: it has no tools section and passes any role
  through as a header): the tools are described in the system message as JSON function specs
  (`TOOLS_PREAMBLE`); each call the assistant makes is written `<tool_call>{"name": …,
  "arguments": {…}}</tool_call>` (`assistant_text`), one per call; tool results become one user
  turn of `<tool_response>…</tool_response>` blocks, since the template has no tool role.

Messages are OpenAI chat messages: an assistant message may carry `tool_calls` (arguments as a
JSON string, or an object), a `tool` message answers one call. An assistant message whose content
already holds `<tool_call>` blocks (curated datasets store calls that way) is read as those calls.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

TOOLS_PREAMBLE = (
    "You can call these tools. To call one, answer with "
    '<tool_call>{"name": <tool name>, "arguments": <arguments object>}</tool_call> '
    "(one block per call) and nothing else.\nTools:\n"
)
_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)


def uses_template_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template has a tools section of its own."""
    template = tokenizer.chat_template
    if isinstance(template, dict):  # several named templates: the default one, else any
        template = template.get("default") or next(iter(template.values()), "")
    return "tools" in (template or "")


def render(tokenizer, messages: list[dict], tools: list[dict] | str | None = None, *, add_generation_prompt: bool) -> str:
    """The prompt text of `messages` offered `tools` (OpenAI function specs, or their JSON text),
    as the model sees it; `add_generation_prompt` opens the assistant's turn (serving, and the
    prompt part of a training example)."""
    if isinstance(tools, str):
        tools = json.loads(tools) if tools.strip() else None
    tools = tools or None
    if uses_template_tools(tokenizer):
        chat = [_native(m) for m in messages]
        return tokenizer.apply_chat_template(chat, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer.apply_chat_template(_ours(messages, tools), tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_text(message: dict) -> str:
    """The text an assistant message is in our format: its content, then one `<tool_call>` block
    per call (what the model is trained to write and what `parse` reads back)."""
    content, calls = _content(message.get("content")), message.get("tool_calls") or []
    blocks = [f"<tool_call>{json.dumps({'name': name, 'arguments': args}, ensure_ascii=False)}</tool_call>"
              for name, args in (_name_args(c) for c in calls)]  # fmt: skip
    return "\n".join([content, *blocks] if content else blocks)


def parse(text: str) -> tuple[str | None, list[dict]]:
    """(content, tool_calls) of a model's output: each `<tool_call>` block holding a JSON object
    with a string `name` and object `arguments` becomes an OpenAI tool call (`id`, `type`,
    `function.name`, `function.arguments` as a JSON string); anything else, a block that does not
    parse included, stays in the content (None when nothing is left)."""
    calls: list[dict] = []
    kept: list[str] = []
    last = 0
    for match in _CALL.finditer(text):
        call = _to_call(_json(match.group(1)))
        if call is None:
            continue
        kept.append(text[last : match.start()])
        last = match.end()
        calls.append(call)
    kept.append(text[last:])
    content = "".join(kept).strip()
    return (content or None), calls


def as_message(stored: str) -> dict:
    """An assistant message from a stored response or correction: JSON of tool calls (a list of
    OpenAI calls or `{"name", "arguments"}` objects, one such object, or a message with
    `tool_calls`), text with `<tool_call>` blocks, or plain text."""
    value = _json(stored) if stored.lstrip()[:1] in ("[", "{") else None
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list) and value["tool_calls"]:
        return {"role": "assistant", "content": _content(value.get("content")) or None, "tool_calls": value["tool_calls"]}
    calls = value if isinstance(value, list) else [value] if isinstance(value, dict) else []
    if calls and all(isinstance(c, dict) and _to_call(c.get("function", c)) for c in calls):
        return {"role": "assistant", "content": None, "tool_calls": calls}
    content, tool_calls = parse(stored)
    if tool_calls:
        return {"role": "assistant", "content": content, "tool_calls": tool_calls}
    return {"role": "assistant", "content": stored}


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _to_call(value: Any) -> dict | None:
    """An OpenAI tool call from a decoded `{"name", "arguments"}` object, or None when it is not one."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):  # (arguments written as a JSON string, as OpenAI sends them)
        args = _json(args)
    if not isinstance(args, dict):
        return None
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": value["name"], "arguments": json.dumps(args, ensure_ascii=False)}}  # fmt: skip


def _name_args(call: dict) -> tuple[str, Any]:
    fn = call.get("function") or call  # (OpenAI nests name and arguments under `function`)
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except ValueError:
            pass  # kept as the string it is: the text shows what was called, even if broken
    return fn.get("name"), args


def _content(content: Any) -> str:
    if isinstance(content, list):  # text parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def _native(message: dict) -> dict:
    """A message for a template with a tools section: calls as structured `tool_calls` with
    object arguments (text `<tool_call>` blocks read back into calls)."""
    if message.get("role") != "assistant":
        return {**message, "content": _content(message.get("content"))}
    calls = message.get("tool_calls")
    content = _content(message.get("content"))
    if not calls:
        content, calls = parse(content) if "<tool_call>" in content else (content, [])
    if not calls:
        return {"role": "assistant", "content": content or ""}
    structured = [{"type": "function", "function": {"name": name, "arguments": args}, **({"id": c["id"]} if c.get("id") else {})}
                  for c, (name, args) in ((c, _name_args(c)) for c in calls)]  # fmt: skip
    return {"role": "assistant", "content": content or "", "tool_calls": structured}


def _ours(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """`messages` as plain {role, content} turns in our format (see the module docstring)."""
    out: list[dict] = []
    for m in messages:
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role in ("tool", "function"):
            block = f"<tool_response>\n{_content(m.get('content'))}\n</tool_response>"
            if out and out[-1].get("_results"):  # consecutive results: one user turn
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_results": True})
        elif role == "assistant":
            out.append({"role": "assistant", "content": assistant_text(m)})
        else:
            out.append({"role": role, "content": _content(m.get("content"))})
    if tools:
        spec = TOOLS_PREAMBLE + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{spec}" if out[0]["content"] else spec
        else:
            out.insert(0, {"role": "system", "content": spec})
    return [{"role": m["role"], "content": m["content"]} for m in out]
