"""The config store interface: a small key-value API with revisions, shaped like etcd's, so the SQLite,
YAML and etcd stores are interchangeable and the admin API and the master speak to any of them.

Keys are relative to the store's prefix and name APISIX objects as APISIX's etcd layout does:
`routes/1`, `upstreams/u1`, `consumers/jack`, `consumers/jack/credentials/c1`, `plugin_metadata/<name>`.
Values are JSON objects (dicts). Every write bumps the store-wide revision (an int, like etcd's).
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Object kinds the admin API serves (APISIX's), in the order a config is assembled.
RESOURCES: tuple[str, ...] = (
    "routes", "services", "upstreams", "consumers", "consumer_groups", "ssls", "global_rules",
    "plugin_configs", "plugin_metadata",
)  # fmt: skip


class StoreError(Exception):
    """A store operation failed."""


class StoreUnavailable(StoreError):
    """The backing service cannot be reached (e.g. etcd is down): the admin API answers 503."""


class ReadOnlyStore(StoreError):
    """Writes are refused (standalone YAML): the admin API answers 405 with this message."""


@dataclass(frozen=True)
class Item:
    key: str
    value: dict[str, Any]
    created_index: int  # revision of the write that created the key
    modified_index: int  # revision of the last write to the key


@dataclass(frozen=True)
class Change:
    revision: int
    key: str
    value: dict[str, Any] | None  # None: deleted


# Called with (revision, changes) after writes, or (revision, None) when the watcher lost track
# (compaction, reconnect, file replaced) and the caller must reload everything with load_all().
OnChange = Callable[[int, "list[Change] | None"], None]


class Store(abc.ABC):
    read_only: bool = False
    name: str = "store"

    @abc.abstractmethod
    def get(self, key: str) -> Item | None: ...

    @abc.abstractmethod
    def list(self, prefix: str) -> list[Item]:
        """Every item whose key starts with `prefix` (e.g. "routes/"), ordered by key."""

    def page(self, prefix: str, offset: int, limit: int) -> tuple[builtins.list[Item], int]:
        """One page of the direct children of `prefix` (keys with no further '/') and their count.
        Stores that can page natively override this."""
        children = [i for i in self.list(prefix) if "/" not in i.key[len(prefix) :]]
        return children[offset : offset + limit], len(children)

    @abc.abstractmethod
    def put(self, key: str, value: dict[str, Any]) -> Item:
        """Create or replace; returns the stored item. Acknowledged = durable."""

    @abc.abstractmethod
    def delete(self, key: str) -> Item | None:
        """Delete; returns the deleted item, or None when the key did not exist."""

    @abc.abstractmethod
    def load_all(self) -> tuple[int, builtins.list[Item]]:
        """The whole content and the revision it is consistent with."""

    @abc.abstractmethod
    def watch(self, since: int, on_change: OnChange) -> None:
        """Deliver changes after revision `since` to `on_change`, from a background thread, until
        close(). Reconnects by itself (with back-off) where there is something to reconnect to."""

    def close(self) -> None:
        """Stop watching and release resources."""
