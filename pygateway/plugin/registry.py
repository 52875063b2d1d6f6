"""Finds plugins: the native ones, the ones we ship (`plugins/`, installed as
`pygateway.builtin_plugins`), entry points of other packages (group `pygateway.plugins`) and `.py`
files in the `plugin_dirs` a config names. A later source may replace an earlier one's plugin."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import pkgutil
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from pygateway.plugin import Plugin
from pygateway.plugin.native import NATIVE_PLUGINS

log = logging.getLogger("pygateway.registry")
ENTRY_POINT_GROUP = "pygateway.plugins"


class PluginLoadError(Exception):
    pass


@dataclass(frozen=True)
class Found:
    cls: type[Plugin]
    origin: str  # "built-in", "entry point <module>", "dir <path>"


def _check(cls: object, where: str) -> type[Plugin]:
    if not (isinstance(cls, type) and issubclass(cls, Plugin)) or not cls.name:
        raise PluginLoadError(f"{where}: not a Plugin subclass with a name")
    return cls


def _plugins_in(module: object) -> list[type[Plugin]]:
    name = getattr(module, "__name__", "")
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Plugin) and obj is not Plugin and obj.name
        and obj.__module__ == name
    ]


def _shipped() -> list[Found]:
    import pygateway.builtin_plugins as pkg

    found = []
    for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + "."):
        if info.name.rsplit(".", 1)[-1].startswith(("_", "test")):
            continue
        found += [Found(cls, "built-in") for cls in _plugins_in(importlib.import_module(info.name))]
    return found


def _from_dir(directory: Path) -> list[Found]:
    if not directory.is_dir():
        raise PluginLoadError(f"plugin_dirs: {directory} is not a directory")
    found = []
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        mod_name = f"pygateway_dir_plugins.{path.stem}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise PluginLoadError(f"plugin file {path}: {type(exc).__name__}: {exc}") from exc
        found += [Found(cls, f"dir {directory}") for cls in _plugins_in(module)]
    return found


class Registry:
    def __init__(self, plugin_dirs: list[str] | tuple[str, ...] = ()) -> None:
        self.plugins: dict[str, Found] = {}
        for cls in NATIVE_PLUGINS:
            self._add(Found(cls, "built-in (Rust)"))
        for f in _shipped():
            self._add(f)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                cls = _check(ep.load(), f"entry point {ep.name}")
            except PluginLoadError:
                raise
            except Exception as exc:
                raise PluginLoadError(f"entry point {ep.name} ({ep.value}): {type(exc).__name__}: {exc}") from exc
            self._add(Found(cls, f"entry point {ep.value}"))
        for d in plugin_dirs:
            for f in _from_dir(Path(d)):
                self._add(f)

    def _add(self, found: Found) -> None:
        prev = self.plugins.get(found.cls.name)
        if prev is not None and prev.cls is not found.cls:
            log.warning("plugin %r from %s replaces the one from %s", found.cls.name, found.origin, prev.origin)
        self.plugins[found.cls.name] = found

    def get(self, name: str) -> type[Plugin] | None:
        f = self.plugins.get(name)
        return f.cls if f else None
