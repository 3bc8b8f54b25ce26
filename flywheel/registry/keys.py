"""API keys: one project each, stored only as a SHA-256 hash, shown once when created, listed by
prefix and revoked by prefix (a running service stops accepting a revoked key within
`key_refresh_s`)."""

from __future__ import annotations

import hashlib
import re
import secrets

from flywheel.store import Connection

PREFIX = "fwk_"
PROJECT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(con: Connection, project: str) -> str:
    """Store a new key for `project` and return it; it cannot be recovered later."""
    if not PROJECT_PATTERN.match(project):
        raise ValueError(
            "project: expected 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    key = PREFIX + secrets.token_urlsafe(32)
    con.execute(
        "INSERT INTO api_keys (key_hash, project, prefix) VALUES (?, ?, ?)", [hash_key(key), project, key[:10]]
    )
    return key


def active_keys(con: Connection) -> dict[str, str]:
    """key hash -> project, for every key not revoked."""
    return dict(con.execute("SELECT key_hash, project FROM api_keys WHERE revoked_at IS NULL").fetchall())


def list_keys(con: Connection) -> list[tuple]:
    """(prefix, project, created_at, revoked_at) of every key, newest first."""
    return con.execute("SELECT prefix, project, created_at, revoked_at FROM api_keys ORDER BY created_at DESC, prefix").fetchall()


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
