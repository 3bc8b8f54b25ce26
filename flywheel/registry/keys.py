"""API keys: one project and one role each, stored only as a SHA-256 hash, shown once when
created, listed by prefix and revoked by prefix (a running service stops accepting a revoked key
within `key_refresh_s`).

Roles say what a key may do in its project:
- `app` (the default): ingest, send feedback, call the gateway, read the project's interactions;
- `admin`: also load and unload adapters (promotion, rollback) and read /metrics. The operator's
  first key (`flywheel init`) and the loop's own service keys are admin keys.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import NamedTuple

from flywheel.store import Connection

PREFIX = "fwk_"
PROJECT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ROLES = ("app", "admin")  # each role may do what the ones before it may


class KeyOwner(NamedTuple):
    """Whose a key is: its project, and its role there."""

    project: str
    role: str

    def may(self, role: str) -> bool:
        """True when this key's role includes `role`."""
        return ROLES.index(self.role) >= ROLES.index(role)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(con: Connection, project: str, role: str = "app") -> str:
    """Store a new key for `project` with `role` and return it; it cannot be recovered later."""
    if not PROJECT_PATTERN.match(project):
        raise ValueError(
            "project: expected 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if role not in ROLES:
        raise ValueError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")
    key = PREFIX + secrets.token_urlsafe(32)
    con.execute(
        "INSERT INTO api_keys (key_hash, project, prefix, role) VALUES (?, ?, ?, ?)",
        [hash_key(key), project, key[:10], role],
    )
    return key


def active_keys(con: Connection) -> dict[str, KeyOwner]:
    """key hash -> (project, role), for every key not revoked."""
    rows = con.execute("SELECT key_hash, project, role FROM api_keys WHERE revoked_at IS NULL").fetchall()
    return {key_hash: KeyOwner(project, role) for key_hash, project, role in rows}


def list_keys(con: Connection) -> list[tuple]:
    """(prefix, project, role, created_at, revoked_at) of every key, newest first."""
    return con.execute("SELECT prefix, project, role, created_at, revoked_at FROM api_keys"
                       " ORDER BY created_at DESC, prefix").fetchall()  # fmt: skip


def revoke_key(con: Connection, key: str) -> str:
    """Revoke one active key, given whole or by its prefix exactly as `list_keys` shows it;
    return the prefix. Raises ValueError when no active key matches, or a prefix matches more
    than one (then the whole key is needed).
    """
    matches = con.execute(
        "SELECT key_hash, prefix FROM api_keys WHERE revoked_at IS NULL AND (key_hash = ? OR prefix = ?)",
        [hash_key(key), key],
    ).fetchall()
    if not matches:
        shown = key if len(key) <= 10 else key[:10] + "…"  # never echo a whole key
        raise ValueError(f"key: no active key matches {shown!r} (see `flywheel keys list`)")
    if len(matches) > 1:
        raise ValueError(f"key: {len(matches)} active keys have the prefix {key!r}; give the whole key")
    con.execute("UPDATE api_keys SET revoked_at = current_timestamp WHERE key_hash = ?", [matches[0][0]])
    return matches[0][1]
