"""What the flows share: when to retry (failures that trying again can fix, never bad input), and
how a flow publishes its report as a Prefect artifact (how they are deployed: `pipelines.deployments`)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flywheel import store
from flywheel.curate.config import CurationError

# Not transient, although they are OSErrors: a missing or unreadable path stays missing.
_PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def transient(exc: BaseException | None) -> bool:
    """True when the failure (or what caused it) is I/O that may well succeed on a second try: the
    store held by another process, the service briefly unreachable, a full disk."""
    while exc is not None:
        if isinstance(exc, store.StoreBusy | httpx.TransportError):
            return True
        if isinstance(exc, OSError) and not isinstance(exc, _PERMANENT_OS_ERRORS):
            return True
        if isinstance(exc, CurationError):
            return False
        exc = exc.__cause__
    return False


def retry_when(transient: Callable[[BaseException], bool]) -> Callable:
    """A `retry_condition_fn` that retries the failures `transient` says another try may fix."""

    def condition(task, task_run, state) -> bool:
        try:
            state.result()
        except Exception as exc:  # noqa: BLE001 - only classified here
            return transient(exc)
        return False

    return condition


def retry_unless(*permanent: type[BaseException]) -> Callable:
    """A `retry_condition_fn` that retries any failure except the `permanent` kinds."""
    return retry_when(lambda exc: not isinstance(exc, permanent))


retry_io = retry_when(transient)


def artifact_key(prefix: str, task: str) -> str:
    """`<prefix>-<task>`, so each task's latest report is one key (Prefect artifact keys allow
    lowercase letters, digits and dashes only)."""
    return f"{prefix}-" + "".join(c if c.isalnum() else "-" for c in task.lower())


def publish_markdown(prefix: str, task: str, markdown: str, description: str) -> None:
    create_markdown_artifact(markdown=markdown, key=artifact_key(prefix, task), description=description)


def publish_table(prefix: str, task: str, table: list[dict], description: str) -> None:
    create_table_artifact(table=table, key=artifact_key(prefix, task + "-table"), description=description)

