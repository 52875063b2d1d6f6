"""`pygateway run | validate | version | plugins list | bench`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, NoReturn

from pygateway import settings

NO_CONFIG_HINT = (
    "no config given: every path answers 404. Put routes in an APISIX-style apisix.yaml, e.g.\n"
    "  routes:\n"
    "    - id: hello\n"
    "      uri: /hello\n"
    "      upstream: {nodes: {\"127.0.0.1:8000\": 1}}\n"
    "and run: pygateway run -c apisix.yaml"
)


ADMIN_HINT = (
    "no routes yet: every path answers 404. Add one through the admin API, e.g.\n"
    "  curl {url}/apisix/admin/routes/1 -H 'X-API-KEY: <admin key>' -X PUT \\\n"
    "    -d '{{\"uri\": \"/hello\", \"upstream\": {{\"nodes\": {{\"127.0.0.1:8000\": 1}}}}}}'\n"
    "or start with a standalone file: pygateway run -c apisix.yaml"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one clear line, no usage dump
        sys.stderr.write(f"pygateway: {message} (see 'pygateway --help')\n")
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pygateway", description="API gateway: Rust data plane, Python plugins.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="start the gateway")
    # No argparse defaults: a node config file (--node-config) sits between the declared defaults and
    # the flags (see _settle_run_args).
    run.add_argument("--node-config", help="YAML file of `run` settings by long flag name (flags win)")
    for f in settings.declared():
        m = f.metadata
        if not m["flag"]:
            continue
        names = [m["short"]] if m["short"] else []
        names.append("--" + f.name.replace("_", "-"))
        help = m["help"].format(default=settings.show(settings.default_of(f)))
        if m["switch"]:
            run.add_argument(*names, action="store_true", default=None, help=help)
        else:
            run.add_argument(*names, type=m["parse"], choices=m["choices"], help=help,
                             action="append" if m["repeat"] else "store")  # fmt: skip
    val = sub.add_parser("validate", help="check a config file; exit 1 listing every error")
    val.add_argument("config")
    val.add_argument("--plugin-dir", action="append", default=[])
    sub.add_parser("version", help="print the version")
    plugins = sub.add_parser("plugins", help="plugin information")
    plugins.add_argument("action", choices=["list"])
    plugins.add_argument("--plugin-dir", action="append", default=[])
    from pygateway import bench

    bench.add_parser(sub)
    return p


def _settle_run_args(args: argparse.Namespace) -> settings.Settings:
    """Each setting from its flag, else the node config file, else the environment, else its default."""
    node: dict[str, Any] = {}
    if args.node_config:
        node = _load_node_config(args.node_config)
    values: dict[str, Any] = {}
    for f in settings.declared():
        if not f.metadata["flag"]:
            continue
        value = getattr(args, f.name)
        if value is None:
            value = node.get(f.name)
        if value is None and f.metadata["env"]:
            value = os.environ.get(f.metadata["env"])
        if value is not None:
            values[f.name] = value
    return settings.Settings(**values)


def _load_node_config(path: str) -> dict[str, Any]:
    """A YAML mapping of `run` settings by long flag name (`admin-listen` or `admin_listen`)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"pygateway: node config {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise SystemExit(f"pygateway: node config {path}: expected a mapping of run settings")
    # Check each value as the command line would, so errors name the setting.
    parser, out = _parser(), {}
    known = {f.name: f for f in settings.declared() if f.metadata["flag"]}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise SystemExit(f"pygateway: node config {path}: unknown setting {key!r}")
        flag = "--" + name.replace("_", "-")
        if known[name].metadata["switch"]:
            out[name] = bool(value)
            continue
        values = value if isinstance(value, list) else [value]
        argv = ["run"] + [a for v in values for a in (flag, str(v))]
        try:
            parsed = parser.parse_args(argv)
        except SystemExit:
            raise SystemExit(f"pygateway: node config {path}: invalid value for {key!r}: {value!r}") from None
        out[name] = getattr(parsed, name)
    return out


def _validate(path: str, plugin_dirs: list[str]) -> int:
    from pygateway import _core
    from pygateway.config.validate import ConfigError, load_yaml
    from pygateway.master.supervisor import check_config
    from pygateway.plugin.registry import PluginLoadError, Registry

    try:
        raw = load_yaml(path)
        dirs = plugin_dirs + [os.path.join(os.path.dirname(path), d) for d in raw.pop("plugin_dirs", [])]
        check_config(raw, Registry(dirs), 1)
    except ConfigError as exc:
        for e in exc.errors:
            print(e, file=sys.stderr)
        return 1
    except (_core.ConfigError, PluginLoadError, TypeError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    n = len(raw.get("routes") or [])
    print(f"{path}: ok ({n} routes)")
    return 0


def _plugins_list(plugin_dirs: list[str]) -> int:
    from pygateway.plugin.registry import Registry

    reg = Registry(plugin_dirs)
    rows = sorted(reg.plugins.values(), key=lambda f: (-f.cls.priority, f.cls.name))
    print(f"{'name':<22} {'priority':>8}  {'phases':<40} origin")
    for f in rows:
        phases = "native (Rust)" if f.cls.native else ",".join(f.cls.phases())
        print(f"{f.cls.name:<22} {f.cls.priority:>8}  {phases:<40} {f.origin}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from pygateway import _core
    from pygateway.config.validate import ConfigError
    from pygateway.master.supervisor import Master, StartError
    from pygateway.plugin.registry import PluginLoadError
    from pygateway.store.base import StoreError

    s = _settle_run_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s master %(levelname)s %(message)s")
    if (s.store_kind == "yaml") != bool(s.config):
        print("pygateway: --store yaml needs -c CONFIG, and -c CONFIG means --store yaml", file=sys.stderr)
        return 2
    try:
        master = Master(s)
    except (PluginLoadError, StoreError, OSError) as exc:
        print(f"pygateway: {exc}", file=sys.stderr)
        return 1
    try:
        master.load_initial()
        master.install_signals()
        master.start()
        master.start_admin()
        master.start_status()
    except ConfigError as exc:
        if len(exc.errors) == 1:
            print(f"pygateway: {exc.errors[0]}", file=sys.stderr)
        else:
            print("pygateway: invalid config:\n" + "\n".join(f"  {e}" for e in exc.errors), file=sys.stderr)
        master.cleanup()
        return 1
    except (StartError, _core.ConfigError, PluginLoadError, StoreError, OSError, TypeError, ValueError) as exc:
        print(f"pygateway: {exc}", file=sys.stderr)
        master.cleanup()
        return 1
    src = s.config or master.source.description
    print(f"pygateway {_core.__version__} listening on http://{s.host}:{s.port} with {s.workers} workers ({src})",
          flush=True)  # fmt: skip
    if master.admin_info:
        print(master.admin_info, flush=True)
    if s.metrics_addr is not None:
        mh, mp = s.metrics_addr
        print(f"metrics on http://{mh}:{mp}/apisix/prometheus/metrics; probes /status, /status/ready", flush=True)
    if not master.raw.get("routes"):
        print(NO_CONFIG_HINT if master.admin is None else ADMIN_HINT.format(
            url=f"http://{s.admin_listen[0]}:{s.admin_listen[1]}"), flush=True)
    return master.serve_forever()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "version":
        from pygateway import __version__

        print(f"pygateway {__version__}")
        return 0
    if args.cmd == "validate":
        return _validate(args.config, args.plugin_dir or [])
    if args.cmd == "plugins":
        return _plugins_list(args.plugin_dir or [])
    if args.cmd == "bench":
        from pygateway import bench

        return bench.main(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
