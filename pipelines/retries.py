"""What the flows' tasks share: when to retry (failures that trying again can fix, never bad
input) and how a flow publishes its report as a Prefect artifact."""

from __future__ import annotations

from collections.abc import Callable

from prefect.artifacts import create_markdown_artifact


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


def publish_markdown(prefix: str, task: str, markdown: str, description: str) -> None:
    """A markdown artifact keyed `<prefix>-<task>`, so each task's latest report is one key."""
    # Prefect artifact keys allow lowercase letters, digits and dashes only.
    key = f"{prefix}-" + "".join(c if c.isalnum() else "-" for c in task.lower())
    create_markdown_artifact(markdown=markdown, key=key, description=description)
