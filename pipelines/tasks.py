"""What the flows' tasks share: when to retry (failures that trying again can fix, never bad
input) and how a task name becomes an artifact key."""

from __future__ import annotations

from collections.abc import Callable


def retry_unless(*permanent: type[BaseException]) -> Callable:
    """A `retry_condition_fn` that retries any failure except the `permanent` kinds."""

    def condition(task, task_run, state) -> bool:
        try:
            state.result()
        except permanent:
            return False
        except Exception:  # noqa: BLE001 - store and file-system failures: worth another try
            return True
        return False

    return condition


def artifact_key(prefix: str, task: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return f"{prefix}-" + "".join(c if c.isalnum() else "-" for c in task.lower())
