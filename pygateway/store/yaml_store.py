"""A read-only store over a standalone `apisix.yaml` (APISIX's "standalone" / YAML config mode).

The file has top-level lists (`routes`, `services`, `upstreams`, `consumers`, ...) of objects keyed by
`id` (consumers by `username`); an object without one gets `arr_<n>` (its 1-based position), as
APISIX does. Each list maps to keys `<kind>/<id>`. The store's revision counts the distinct file
contents seen (1 after the first load); an object's indexes are the revision at which it appeared and
the one at which it last changed. watch() polls the file and asks for a full reload,
`on_change(rev, None)`, whenever its content changes. A file that fails to parse is logged and
ignored: the last good content stays in force.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import yaml

from .base import Item, OnChange, ReadOnlyStore, Store, StoreError

log = logging.getLogger(__name__)

# Top-level lists read from the file, and the field naming an object in each.
KINDS: dict[str, str] = {
    "routes": "id", "services": "id", "upstreams": "id", "consumers": "username",
    "consumer_groups": "id", "ssls": "id", "global_rules": "id", "plugin_configs": "id",
    "plugin_metadata": "id", "stream_routes": "id", "protos": "id",
}  # fmt: skip


def parse_config(text: str, source: str = "<yaml>") -> dict[str, dict[str, Any]]:
    """Parse an apisix.yaml text into {key: object}; raises StoreError when it is not valid."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise StoreError(f"{source}: invalid YAML: {e}") from e
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise StoreError(f"{source}: the top level must be a mapping, not {type(doc).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for kind, id_field in KINDS.items():
        objs = doc.get(kind)
        if objs is None:
            continue
        if not isinstance(objs, list):
            raise StoreError(f"{source}: `{kind}` must be a list, not {type(objs).__name__}")
        for i, obj in enumerate(objs, 1):
            if not isinstance(obj, dict):
                raise StoreError(f"{source}: `{kind}` item {i} must be a mapping, not {type(obj).__name__}")
            ident = obj.get(id_field)
            if ident is None and id_field != "id":
                ident = obj.get("id")
            ident = f"arr_{i}" if ident is None or ident == "" else str(ident)
            key = f"{kind}/{ident}"
            if key in out:
                raise StoreError(f"{source}: duplicate {id_field} {ident!r} in `{kind}`")
            # as JSON would hold it (what the other stores return): dates become strings, keys strings
            out[key] = json.loads(json.dumps(obj, default=str))
    return out


class YamlStore(Store):
    name = "yaml"
    read_only = True

    def __init__(self, path: str | Path, *, poll_interval: float = 0.5) -> None:
        self.path = Path(path)
        self.poll_interval = poll_interval
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: builtins.list[threading.Thread] = []
        self._revision = 0
        self._items: dict[str, Item] = {}
        self._digest = b""  # of the content in force
        self._bad_digest = b""  # of the last content that failed to parse (logged once)
        self._stat: tuple[int, int, int, int] | None = None
        self._reload(initial=True)

    # -- loading ------------------------------------------------------------------------------------

    def _stat_key(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)

    def _reload(self, initial: bool = False) -> None:
        """Re-read the file when its stat changed; raises StoreError only on the initial load."""
        with self._lock:
            st = self._stat_key()
            if not initial and st == self._stat:
                return
            try:
                data = self.path.read_bytes()
            except OSError as e:
                if initial:
                    raise StoreError(f"cannot read the standalone config {self.path}: {e}") from e
                if st != self._stat:
                    log.error("cannot read %s (keeping the last good config): %s", self.path, e)
                self._stat = st
                return
            if not initial and self._stat_key() != st:
                return  # being written right now: look again at the next poll
            self._stat = st
            digest = hashlib.sha256(data).digest()
            if digest == self._digest or digest == self._bad_digest:
                return
            try:
                objs = parse_config(data.decode("utf-8", errors="replace"), str(self.path))
            except StoreError as e:
                if initial:
                    raise
                log.error("%s (keeping the last good config)", e)
                self._bad_digest = digest  # don't log the same broken content again
                return
            rev = self._revision + 1
            items: dict[str, Item] = {}
            for key, obj in objs.items():
                old = self._items.get(key)
                if old is not None and old.value == obj:
                    items[key] = old
                else:
                    items[key] = Item(key, obj, old.created_index if old else rev, rev)
            self._items = dict(sorted(items.items()))
            self._digest, self._bad_digest = digest, b""
            self._revision = rev
            if not initial:
                log.info("%s changed: config revision %d", self.path, rev)

    # -- Store API ---------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        self._reload()
        return self._revision

    def _readonly(self) -> ReadOnlyStore:
        return ReadOnlyStore(
            f"the config comes from {self.path} (standalone YAML mode): edit the file instead"
        )

    def get(self, key: str) -> Item | None:
        self._reload()
        return self._items.get(key)

    def list(self, prefix: str) -> builtins.list[Item]:
        self._reload()
        with self._lock:
            return [it for k, it in self._items.items() if k.startswith(prefix)]

    def put(self, key: str, value: dict[str, Any]) -> Item:
        raise self._readonly()

    def delete(self, key: str) -> Item | None:
        raise self._readonly()

    def load_all(self) -> tuple[int, builtins.list[Item]]:
        self._reload()
        with self._lock:
            return self._revision, list(self._items.values())

    def watch(self, since: int, on_change: OnChange) -> None:
        if self._stop.is_set():
            raise StoreError(f"the YAML store {self.path} is closed")
        t = threading.Thread(
            target=self._watch_loop, args=(since, on_change), name=f"yaml-watch:{self.path.name}", daemon=True
        )
        self._threads.append(t)
        t.start()

    def _watch_loop(self, since: int, on_change: OnChange) -> None:
        last = since
        while not self._stop.is_set():
            try:
                self._reload()
            except Exception:  # never let the poller die
                log.exception("reloading %s failed", self.path)
            rev = self._revision
            if rev != last and not self._stop.is_set():
                last = rev
                try:
                    on_change(rev, None)
                except Exception:
                    log.exception("YAML store %s: watch callback failed", self.path)
            self._stop.wait(self.poll_interval)

    def close(self) -> None:
        self._stop.set()
        me = threading.current_thread()
        for t in self._threads:
            if t is not me:
                t.join(timeout=2.0)

    def __repr__(self) -> str:
        return f"YamlStore({str(self.path)!r})"
