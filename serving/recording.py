"""Every gateway call becomes an interaction, written through the ingestion writer.

Recording is off the response's critical path (the caller does not wait for the commit) and
never fails the user's call: a failure is logged and counted in `flywheel_recording_failures_total`.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from flywheel.records import Limits, interaction_row
from flywheel.settings import RouteSettings, Settings
from serving import metrics
from serving.writer import Writer

log = logging.getLogger("flywheel.recording")


def cost_usd(route: RouteSettings, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
    if prompt_tokens is None or completion_tokens is None:
        return None
    return prompt_tokens / 1000 * route.usd_per_1k_prompt + completion_tokens / 1000 * route.usd_per_1k_completion


def record(settings: Settings, writer: Writer, *, project: str, interaction: dict[str, Any]) -> None:
    """Validate, redact and queue one interaction (the body of an ingestion item)."""
    try:
        limits = Limits(settings.ingest.max_text_chars, settings.ingest.max_messages)
        row = interaction_row(msgspec.json.encode(interaction), project=project, redact=settings.redacts(project),
                              limits=limits, source="gateway")  # fmt: skip
        future = writer.submit("interactions", [row])
        future.add_done_callback(lambda f: f.exception() and _failed(f.exception()))
    except Exception as exc:
        _failed(exc)


def _failed(exc: BaseException) -> None:
    metrics.RECORDING_FAILURES.inc()
    log.warning("could not record a gateway call: %s", exc)
