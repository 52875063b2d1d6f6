"""Where the master's config comes from.

- `FileSource`: a standalone `apisix.yaml`, polled for changes (the admin API is read-only then).
- `StoreSource`: a writable store (SQLite by default, or etcd) watched for changes; every good config
  is cached on disk so a restart while etcd is down serves the last one instead of an empty table.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from pygateway.config.validate import load_yaml
from pygateway.store.base import Change, Store, StoreUnavailable

log = logging.getLogger("pygateway.control")

# Collections the data plane consumes (plus consumers' credentials); the rest (ssls, plugin_metadata)
# are stored and served by the admin API but not used by the proxy yet.
DATA_PLANE_COLLECTIONS = (
    "routes", "services", "upstreams", "consumers", "global_rules", "plugin_configs", "consumer_groups",
)  # fmt: skip


def _file_stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class FileSource:
    """A standalone YAML file; `changed()` is true when the file was saved since the last `read()`."""

    description = "file"

    def __init__(self, path: str) -> None:
        self.path = path
        self.stamp: tuple[int, int, int] | None = None
        self.description = path

    def read(self) -> dict[str, Any]:
        self.stamp = _file_stamp(self.path)
        return load_yaml(self.path)

    def changed(self) -> bool:
        stamp = _file_stamp(self.path)
        return stamp is not None and stamp != self.stamp

    def good(self, raw: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def raw_from_items(items: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Store items (`routes/1` → value) as a standalone-config dict the validator understands."""
    raw: dict[str, list[dict[str, Any]]] = {}
    for key in sorted(items):
        collection, _, rest = key.partition("/")
        username, _, cred_id = rest.partition("/credentials/")
        if collection == "consumers" and cred_id and "/" not in cred_id:
            plugins = items[key].get("plugins") or {}
            raw.setdefault("credentials", []).append({"username": username, "id": cred_id, "plugins": plugins})
            continue
        if collection not in DATA_PLANE_COLLECTIONS or not rest or "/" in rest:
            continue
        value = dict(items[key])
        for stamp in ("create_time", "update_time"):
            value.pop(stamp, None)
        if collection == "consumers":
            value.setdefault("username", rest)
        else:
            value.setdefault("id", rest)
        raw.setdefault(collection, []).append(value)
    return raw


class StoreSource:
    """A watched store. Changes arrive on the store's thread; `wake()` tells the master at once."""

    def __init__(self, store: Store, cache_path: Path, wake: Callable[[], None]) -> None:
        self.store = store
        self.cache_path = cache_path
        self.wake = wake
        self.description = f"{store.name} store"
        self.items: dict[str, dict[str, Any]] = {}
        self.revision = 0
        self._lock = threading.Lock()
        self._pending: list[Change] = []
        self._resync = False
        self._watching = False

    def read(self) -> dict[str, Any]:
        with self._lock:
            resync, pending = self._resync, self._pending
            self._resync, self._pending = False, []
        if not self._watching or resync:
            self._load()
        for ch in pending:
            if ch.revision <= self.revision:
                continue  # already in the loaded content
            if ch.value is None:
                self.items.pop(ch.key, None)
            else:
                self.items[ch.key] = ch.value
            self.revision = ch.revision
        if not self._watching:
            self._watching = True
            self.store.watch(self.revision, self._on_change)
        return raw_from_items(self.items)

    def _load(self) -> None:
        try:
            rev, items = self.store.load_all()
        except StoreUnavailable as exc:
            cached = self._cached()
            if cached is None:
                raise
            log.warning("%s; serving the cached config from %s", exc, self.cache_path)
            self.items = cached
            self.revision = 0
            return
        self.items = {it.key: it.value for it in items}
        self.revision = rev

    def _on_change(self, revision: int, changes: list[Change] | None) -> None:
        with self._lock:
            if changes is None:
                self._resync = True
            else:
                self._pending.extend(changes)
        self.wake()

    def changed(self) -> bool:
        with self._lock:
            return self._resync or bool(self._pending)

    def good(self, raw: dict[str, Any]) -> None:
        """Cache the last config the workers accepted (written atomically)."""
        tmp = self.cache_path.with_suffix(".tmp")
        try:
            tmp.write_bytes(orjson.dumps({"revision": self.revision, "items": self.items}))
            os.replace(tmp, self.cache_path)
        except OSError as exc:
            log.warning("cannot write the config cache %s: %s", self.cache_path, exc)

    def _cached(self) -> dict[str, dict[str, Any]] | None:
        try:
            data = orjson.loads(self.cache_path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None
        items = data.get("items")
        return items if isinstance(items, dict) else None

    def close(self) -> None:
        self.store.close()
