"""The admin API's keys. There is no default key: one is generated at first start, stored with mode
0600 in the data directory, and printed once."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import orjson


def admin_keys(data_dir: Path, admin_key: str | None, viewer_key: str | None) -> tuple[str, str, bool]:
    """The admin and viewer keys: given ones win; else the stored ones; else new random ones, saved
    with mode 0600. Returns (admin, viewer, created)."""
    path = data_dir / "admin_keys.json"
    stored: dict[str, str] = {}
    if path.exists():
        stored = orjson.loads(path.read_bytes())
    created = False
    if not stored.get("admin") or not stored.get("viewer"):
        stored = {"admin": secrets.token_urlsafe(24), "viewer": secrets.token_urlsafe(24)}
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(stored))
        created = True
    return admin_key or stored["admin"], viewer_key or stored["viewer"], created
