"""`pygateway run | validate | version | plugins list | bench`."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Any, NoReturn

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


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return int(value)


def _float_seconds(value: str, least: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    low_ok = seconds >= 0 if least == ">= 0" else seconds > 0
    if not (low_ok and seconds < 1e9):
        raise argparse.ArgumentTypeError(f"expected seconds {least}, got {value!r}")
    return seconds


def _seconds(value: str) -> float:
    return _float_seconds(value, "> 0")


def _seconds_or_zero(value: str) -> float:
    return _float_seconds(value, ">= 0")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pygateway", description="API gateway: Rust data plane, Python plugins.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="start the gateway")
    # Defaults live in RUN_DEFAULTS so a node config file (--node-config) can sit between them and the flags.
    run.add_argument("--node-config", help="YAML file of `run` settings by long flag name (flags win)")
    run.add_argument("-c", "--config", help="standalone APISIX-style YAML (watched for changes)")
    run.add_argument("--listen", type=_listen, help="HOST:PORT (default 0.0.0.0:9080)")
    run.add_argument("--workers", type=_positive, help="worker processes (default: cores)")
    run.add_argument("--plugin-dir", action="append", help="extra directory of plugin .py files")
    run.add_argument("--drain-timeout", type=_seconds_or_zero, help="seconds SIGTERM waits for requests (default 30)")
    run.add_argument("--header-timeout", type=_seconds, help="seconds to receive a request head, 408 (default 10)")
    run.add_argument(
        "--keepalive-timeout", type=_seconds, help="seconds an idle keep-alive connection stays open (default 60)"
    )
    run.add_argument("--keepalive-requests", type=_positive, help="requests per connection (default 1000)")
    run.add_argument("--max-connections", type=_positive, help="open connections per worker (default 10000)")
    run.add_argument("--max-connections-per-ip", type=_positive, help="per client address, per worker (default 1000)")
    run.add_argument("--store", choices=["sqlite", "yaml", "etcd"], help="config store (default: sqlite; yaml with -c)")
    run.add_argument("--data-dir", help="SQLite store, admin keys, config cache (default ./pygateway-data)")
    run.add_argument("--etcd-endpoints", help="comma-separated etcd URLs (default http://127.0.0.1:2379)")
    run.add_argument("--etcd-prefix", help="key prefix in etcd, APISIX's layout (default /apisix)")
    run.add_argument("--admin-listen", type=_listen, help="admin API HOST:PORT (default 127.0.0.1:9180)")
    run.add_argument("--no-admin", action="store_true", default=None, help="do not serve the admin API")
    run.add_argument("--admin-key", help="admin X-API-KEY (or PYGATEWAY_ADMIN_KEY)")
    run.add_argument("--viewer-key", help="read-only X-API-KEY (or PYGATEWAY_VIEWER_KEY)")
    run.add_argument("--allow-admin", action="append", help="CIDR allowed to use the admin API (repeatable)")
    run.add_argument("--metrics-listen", type=_listen,
                     help="Prometheus metrics and /status HOST:PORT (default 127.0.0.1:9091)")  # fmt: skip
    run.add_argument("--no-metrics", action="store_true", default=None, help="no metrics/status port")
    run.add_argument("--access-log", help="access log: a file path, or stdout (default: none)")
    run.add_argument("--access-log-format",
                     help="json (default), combined, a JSON object of field: $variable, or a $variable template")
    run.add_argument("--otlp-endpoint", help="OTLP/HTTP collector for opentelemetry spans (default http://127.0.0.1:4318)")
    run.add_argument("--otlp-service-name", help="service.name of exported spans (default pygateway)")
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


RUN_DEFAULTS: dict[str, Any] = {
    "config": None,
    "listen": ("0.0.0.0", 9080),
    "workers": os.cpu_count() or 1,
    "plugin_dir": [],
    "drain_timeout": 30.0,
    "header_timeout": 10.0,
    "keepalive_timeout": 60.0,
    "keepalive_requests": 1000,
    "max_connections": 10_000,
    "max_connections_per_ip": 1000,
    "store": None,
    "data_dir": "pygateway-data",
    "etcd_endpoints": "http://127.0.0.1:2379",
    "etcd_prefix": "/apisix",
    "admin_listen": ("127.0.0.1", 9180),
    "no_admin": False,
    "admin_key": None,
    "viewer_key": None,
    "allow_admin": None,
    "metrics_listen": ("127.0.0.1", 9091),
    "no_metrics": False,
    "access_log": None,
    "access_log_format": "json",
    "otlp_endpoint": "http://127.0.0.1:4318",
    "otlp_service_name": "pygateway",
}
_ENV = {"admin_key": "PYGATEWAY_ADMIN_KEY", "viewer_key": "PYGATEWAY_VIEWER_KEY"}


def _settle_run_args(args: argparse.Namespace) -> None:
    """Fill each unset flag from the node config file, then the environment, then the default."""
    node: dict[str, Any] = {}
    if args.node_config:
        node = _load_node_config(args.node_config)
    for name, default in RUN_DEFAULTS.items():
        if getattr(args, name) is not None:
            continue
        value = node.get(name)
        if value is None and name in _ENV:
            value = os.environ.get(_ENV[name])
        setattr(args, name, default if value is None else value)


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
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in RUN_DEFAULTS:
            raise SystemExit(f"pygateway: node config {path}: unknown setting {key!r}")
        flag = "--" + name.replace("_", "-")
        if name in ("no_admin", "no_metrics"):
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
    from pygateway.master.supervisor import Master, Settings, StartError
    from pygateway.plugin.registry import PluginLoadError
    from pygateway.store.base import StoreError

    _settle_run_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s master %(levelname)s %(message)s")
    host, port = args.listen
    store = args.store or ("yaml" if args.config else "sqlite")
    if (store == "yaml") != bool(args.config):
        print("pygateway: --store yaml needs -c CONFIG, and -c CONFIG means --store yaml", file=sys.stderr)
        return 2
    settings = Settings(
        host, port, args.workers, args.config, list(args.plugin_dir), drain_timeout=args.drain_timeout,
        header_timeout=args.header_timeout, keepalive_timeout=args.keepalive_timeout,
        keepalive_requests=args.keepalive_requests,
        max_connections=args.max_connections, max_connections_per_ip=args.max_connections_per_ip, store=store,
        data_dir=args.data_dir, etcd_endpoints=[e.strip() for e in args.etcd_endpoints.split(",") if e.strip()],
        etcd_prefix=args.etcd_prefix, admin_listen=None if args.no_admin else args.admin_listen,
        admin_key=args.admin_key, viewer_key=args.viewer_key,
        metrics_listen=None if args.no_metrics else args.metrics_listen,
        access_log=None if args.access_log in (None, "off") else args.access_log,
        access_log_format=args.access_log_format,
        otlp_endpoint=None if args.otlp_endpoint in ("", "off") else args.otlp_endpoint,
        otlp_service_name=args.otlp_service_name,
    )  # fmt: skip
    if args.allow_admin:
        settings.allow_admin = list(args.allow_admin)
    try:
        master = Master(settings)
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
    src = args.config or master.source.description
    print(f"pygateway {_core.__version__} listening on http://{host}:{port} with {args.workers} workers ({src})",
          flush=True)  # fmt: skip
    if master.admin_info:
        print(master.admin_info, flush=True)
    if settings.metrics_listen is not None:
        mh, mp = settings.metrics_listen
        print(f"metrics on http://{mh}:{mp}/apisix/prometheus/metrics; probes /status, /status/ready", flush=True)
    if not master.raw.get("routes"):
        print(NO_CONFIG_HINT if master.admin is None else ADMIN_HINT.format(
            url=f"http://{settings.admin_listen[0]}:{settings.admin_listen[1]}"), flush=True)  # type: ignore[index]
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
