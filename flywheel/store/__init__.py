"""The store: the DuckDB file every stage reads and writes, its migrations and its row schemas.

`from flywheel import store; with store.connect(path) as con: …` is the one way in
(`database`), to the DuckDB file or, for `[store] kind = "lake"`, to a DuckLake lake (`lake`);
`migrations` holds the numbered schema changes applied on every read-write open;
`rows` declares the interaction and feedback rows once (import it as `flywheel.store.rows`: it
needs pyarrow, which commands that only open the store should not load).
"""

from flywheel.store.database import (
    Connection,
    StoreBusy,
    StoreMisconfigured,
    connect,
    is_lake,
    migrate,
    naive_utc,
    open_connection,
    pid_alive,
    rollback,
    waiting,
)

__all__ = ["Connection", "StoreBusy", "StoreMisconfigured", "connect", "is_lake", "migrate", "naive_utc", "open_connection", "pid_alive",
           "rollback", "waiting"]
