"""API keys: one project each, stored only as a SHA-256 hash, shown once when created."""

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
