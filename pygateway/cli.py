"""`pygateway run | validate | version | plugins list`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

NO_CONFIG_HINT = (
    "no config given: every path answers 404. Put routes in an APISIX-style apisix.yaml, e.g.\n"
    "  routes:\n"
    "    - id: hello\n"
    "      uri: /hello\n"
    "      upstream: {nodes: {\"127.0.0.1:8000\": 1}}\n"
    "and run: pygateway run -c apisix.yaml"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line, no usage dump
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


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pygateway", description="API gateway: Rust data plane, Python plugins.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="start the gateway")
    run.add_argument("-c", "--config", help="standalone APISIX-style YAML (watched for changes)")
    run.add_argument("--listen", type=_listen, default=("0.0.0.0", 9080), help="HOST:PORT (default 0.0.0.0:9080)")
    run.add_argument("--workers", type=_positive, default=os.cpu_count() or 1, help="worker processes (default: cores)")
    run.add_argument("--plugin-dir", action="append", default=[], help="extra directory of plugin .py files")
    run.add_argument("--drain-timeout", type=float, default=30.0, help="seconds SIGTERM waits for requests")
    run.add_argument("--header-timeout", type=float, default=10.0, help="seconds to receive a request head (408)")
    run.add_argument("--keepalive-requests", type=_positive, default=1000, help="requests per connection")
    run.add_argument("--max-connections", type=_positive, default=10_000, help="open connections per worker")
    val = sub.add_parser("validate", help="check a config file; exit 1 listing every error")
    val.add_argument("config")
    val.add_argument("--plugin-dir", action="append", default=[])
    sub.add_parser("version", help="print the version")
    plugins = sub.add_parser("plugins", help="plugin information")
    plugins.add_argument("action", choices=["list"])
    plugins.add_argument("--plugin-dir", action="append", default=[])
    return p


def _validate(path: str, plugin_dirs: list[str]) -> int:
    from pygateway import _core
    from pygateway.config import ConfigError, load_yaml
    from pygateway.master import check_config
    from pygateway.registry import PluginLoadError, Registry

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
    from pygateway.registry import Registry

    reg = Registry(plugin_dirs)
    rows = sorted(reg.plugins.values(), key=lambda f: (-f.cls.priority, f.cls.name))
    print(f"{'name':<22} {'priority':>8}  {'phases':<40} origin")
    for f in rows:
        phases = "native (Rust)" if f.cls.native else ",".join(f.cls.phases())
        print(f"{f.cls.name:<22} {f.cls.priority:>8}  {phases:<40} {f.origin}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from pygateway import _core
    from pygateway.config import ConfigError
    from pygateway.master import Master, Settings, StartError
    from pygateway.registry import PluginLoadError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s master %(levelname)s %(message)s")
    host, port = args.listen
    settings = Settings(
        host, port, args.workers, args.config, list(args.plugin_dir), args.drain_timeout,
        args.header_timeout, args.keepalive_requests, args.max_connections,
    )  # fmt: skip
    try:
        master = Master(settings)
    except PluginLoadError as exc:
        print(f"pygateway: {exc}", file=sys.stderr)
        return 1
    try:
        master.load_initial()
        master.install_signals()
        master.start()
    except ConfigError as exc:
        if len(exc.errors) == 1:
            print(f"pygateway: {exc.errors[0]}", file=sys.stderr)
        else:
            print("pygateway: invalid config:\n" + "\n".join(f"  {e}" for e in exc.errors), file=sys.stderr)
        master.cleanup()
        return 1
    except (StartError, _core.ConfigError, PluginLoadError, TypeError, ValueError) as exc:
        print(f"pygateway: {exc}", file=sys.stderr)
        master.cleanup()
        return 1
    src = args.config or "empty config"
    print(f"pygateway {_core.__version__} listening on http://{host}:{port} with {args.workers} workers ({src})",
          flush=True)  # fmt: skip
    if not args.config:
        print(NO_CONFIG_HINT, flush=True)
    return master.serve_forever()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "version":
        from pygateway import __version__

        print(f"pygateway {__version__}")
        return 0
    if args.cmd == "validate":
        return _validate(args.config, args.plugin_dir)
    if args.cmd == "plugins":
        return _plugins_list(args.plugin_dir)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
