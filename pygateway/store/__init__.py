"""Config stores: SQLite (the embedded default), standalone YAML (read-only) and etcd (APISIX's layout).
All implement `Store` from `base`; see each module's docstring for its behaviour."""

from .base import (
    RESOURCES,
    Change,
    Item,
    OnChange,
    ReadOnlyStore,
    Store,
    StoreError,
    StoreUnavailable,
)
from .etcd import EtcdStore
from .sqlite import SqliteStore
from .yaml_store import YamlStore

__all__ = [
    "RESOURCES", "Change", "EtcdStore", "Item", "OnChange", "ReadOnlyStore", "SqliteStore", "Store",
    "StoreError", "StoreUnavailable", "YamlStore",
]  # fmt: skip
