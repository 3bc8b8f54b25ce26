"""When a Prefect task is retried: on failures that trying again can fix, never on bad input."""

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
