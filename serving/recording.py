"""Every gateway call becomes an interaction, written through the ingestion writer.

`Call` is what is known about one call, whichever route kind answers it; `Call.record` queues
its interaction. Recording is off the response's critical path (the caller does not wait for the
commit) and never fails the user's call. Whatever the route accepted and answered is recorded,
odd messages included (redacted like any interaction); what cannot be (a text over
`ingest.max_text_chars`, a failed write) is logged with the reason and counted in
`flywheel_recording_failures_total`.

A chat call's `tools` are recorded in its request beside the messages, and its `tool_choice`,
`parallel_tool_calls` and `response_format` among the params; an answer's tool calls go in
`response_tool_calls` (the shape `POST /v1/interactions` takes, `flywheel.ingest.records`).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import msgspec
from fastapi import Request

from flywheel.ingest import pii
from flywheel.ingest.records import Limits, interaction_row
from flywheel.settings import RouteSettings, Settings
from serving import metrics
from serving.errors import ApiError
from serving.routing import Target
from serving.writer import Writer

log = logging.getLogger("flywheel.recording")
ID_HEADER = "x-flywheel-interaction-id"  # every answer carries the id of its recorded interaction
TASK_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# What a call's params record: sampling, and how it may call tools or must shape its answer.
PARAMS = ("temperature", "top_p", "max_tokens", "stop", "seed", "tool_choice", "parallel_tool_calls", "response_format")


class Call:
    """What is known about one gateway call, for its record. `req` is the parsed request body
    (`serving.openai_types`), `raw` the decoded JSON as sent, `chat` tells chat from completion."""

    def __init__(self, request: Request, project: str, req: Any, raw: dict, chat: bool, target: Target):
        self.state, self.project, self.req, self.chat, self.target = request.app.state, project, req, chat, target
        self.id = uuid.uuid4().hex
        self.started = time.perf_counter()
        task = request.headers.get("x-flywheel-task") or target.task or "untagged"
        if not TASK_PATTERN.match(task):
            raise ApiError(400, "x-flywheel-task: expected 1-128 letters, digits, '.', '_' or '-'", param="x-flywheel-task")
        self.task = task
        self.input = ({"messages": req.messages} if chat else
                      {"prompt": req.prompt if isinstance(req.prompt, str) else req.prompt[0]})  # fmt: skip
        if chat and req.tools is not None:
            self.input["tools"] = req.tools
        self.params = {k: raw[k] for k in PARAMS if k in raw}
        self.recorded = False  # a call is recorded once, whichever path (end, error, disconnect) gets there first

    def record(self, target: Target, text: str, usage: dict | None, *, tool_calls: list[dict] | None = None,
               error: str | None = None) -> None:
        """`tool_calls`: the answer's OpenAI tool calls, if it called any."""
        self.recorded = True
        p, c = (usage or {}).get("prompt_tokens"), (usage or {}).get("completion_tokens")
        metadata = {"route": target.route_name, "alias": target.alias, **({"error": error} if error else {})}
        metrics.GATEWAY.labels(target.route_name, "error" if error else "ok").inc()
        record(self.state.settings, self.state.writer, project=self.project, interaction={
            "id": self.id, "task": self.task, "model": target.model_id, **self.input, "params": self.params or None,
            "response": text, "response_tool_calls": tool_calls or None, "latency_ms": round((time.perf_counter() - self.started) * 1000, 3),
            "prompt_tokens": p, "completion_tokens": c, "cost_usd": cost_usd(target.route, p, c),
            "status": "error" if error else "ok", "user_id": self.req.user or None, "metadata": metadata,
        })  # fmt: skip


def cost_usd(route: RouteSettings, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
    if prompt_tokens is None or completion_tokens is None:
        return None
    return prompt_tokens / 1000 * route.usd_per_1k_prompt + completion_tokens / 1000 * route.usd_per_1k_completion


def record(settings: Settings, writer: Writer, *, project: str, interaction: dict[str, Any]) -> None:
    """Validate, redact and queue one interaction (the body of an ingestion item)."""
    id = interaction.get("id")
    try:
        limits = Limits(settings.ingest.max_text_chars, settings.ingest.max_messages)
        redact = settings.redacts(project)
        secret = pii.installation_secret(settings.home) if redact else None
        row = interaction_row(msgspec.json.encode(interaction), project=project, redact=redact, limits=limits,
                              source="gateway", secret=secret)  # fmt: skip
        future = writer.submit("interactions", [row])
        future.add_done_callback(lambda f: f.exception() and _failed(id, f.exception()))
    except Exception as exc:
        _failed(id, exc)


def _failed(id: str | None, exc: BaseException) -> None:
    metrics.RECORDING_FAILURES.inc()
    log.warning("could not record gateway call %s: %s", id, exc)
