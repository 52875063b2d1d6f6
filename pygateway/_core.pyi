"""Type stubs of the Rust extension (checked in CI with `python -m mypy.stubtest pygateway._core`)."""

from collections.abc import Callable, Coroutine
from typing import Any, final

__version__: str

class ConfigError(ValueError):
    """A config the data plane cannot compile."""

@final
class Headers:
    """Case-insensitive, multi-valued header map. `h[k]` is the first value; `h[k] = v` replaces all."""

    def __getitem__(self, key: str, /) -> str: ...
    def get(self, key: str, default: str | None = None) -> str | None: ...
    def getall(self, key: str) -> list[str]: ...
    def __setitem__(self, key: str, value: str, /) -> None: ...
    def add(self, key: str, val: str) -> None: ...
    def __delitem__(self, key: str, /) -> None: ...
    def remove(self, key: str) -> None: ...
    def __contains__(self, key: str, /) -> bool: ...
    def __len__(self) -> int: ...
    def keys(self) -> list[str]: ...
    def items(self) -> list[tuple[str, str]]: ...

@final
class Request:
    """What a plugin sees of a request. Reads are lazy; writes are applied before proxying."""

    method: str
    path: str
    query: str
    consumer: str | None
    body: bytes | None
    @property
    def args(self) -> dict[str, str]: ...
    @property
    def headers(self) -> Headers: ...
    @property
    def client_addr(self) -> str: ...
    @property
    def client_port(self) -> int: ...
    @property
    def host(self) -> str: ...
    @property
    def scheme(self) -> str: ...
    @property
    def route_id(self) -> str: ...
    def set_upstream(self, host: str, port: int) -> None: ...

@final
class ResponseView:
    """The response on its way back: status and headers can be changed in `header_filter`."""

    status: int
    @property
    def headers(self) -> Headers: ...

@final
class Waker:
    def __call__(self, fut: Any, /) -> None: ...

@final
class Worker:
    def __new__(
        cls,
        shm_path: str | None = None,
        max_connections: int = 10000,
        header_timeout: float = 10.0,
        keepalive_requests: int = 1000,
        drain_timeout: float = 30.0,
        max_connections_per_ip: int = 1000,
    ) -> Worker: ...
    def bind(self, host: str, port: int, backlog: int = 4096) -> int: ...
    def apply(self, snapshot: bytes, chains: dict[str, Any]) -> int: ...
    @property
    def version(self) -> int: ...
    def set_async_submit(self, submit: Callable[[Coroutine[Any, Any, Any], Waker], None]) -> None: ...
    def run(self) -> None: ...
    def stop(self) -> None: ...

@final
class RouteMatcher:
    def __new__(cls, snapshot: bytes) -> RouteMatcher: ...
    def find(
        self,
        method: str,
        host: str,
        path: str,
        remote_addr: str = "127.0.0.1",
        headers: list[tuple[str, str]] | None = None,
        query: str | None = None,
    ) -> str | None: ...
    def __len__(self) -> int: ...

@final
class Limiter:
    def __new__(cls, path: str | None = None, slots: int = 65536, create: bool = False) -> Limiter: ...
    def gcra(self, key: str, rate: float, burst: float) -> float | None: ...
    def fixed_window(self, key: str, count: int, window: float) -> tuple[bool, int, float]: ...

@final
class CidrSet:
    """IPv4/IPv6 networks and addresses; an IPv4-mapped IPv6 address matches IPv4 networks."""

    def __new__(cls, cidrs: list[str]) -> CidrSet: ...
    def contains(self, addr: str) -> bool: ...
    def __len__(self) -> int: ...

def check_snapshot(snapshot: bytes) -> int: ...
def verify_jws_signature(alg: str, key: bytes, signing_input: bytes, signature: bytes) -> bool: ...
def check_jws_key(alg: str, key: bytes) -> None: ...
def run_bench(
    urls: list[str],
    *,
    rate: float | None = None,
    duration: float = 10.0,
    warmup: float = 1.0,
    connections: int = 50,
    threads: int = 1,
    http2: bool = False,
    method: str = "GET",
    headers: list[tuple[str, str]] = ...,
    body: bytes = ...,
    timeout: float = 10.0,
    progress: Callable[[dict[str, Any]], object] | None = None,
    progress_interval: float = 1.0,
) -> dict[str, Any]:
    """Run `pygateway bench` (one target, or two interleaved) with the GIL released; return the
    result: `mode`, `rate_asked`, `duration` and per target `url`, `requests`, `rate`, `errors`,
    `status_errors`, `socket_errors`, `last_error`, `timeouts`, `not_sent`, `bytes`, `statuses`, `latency_us`,
    `percentiles` and `curve` ([percentile, µs] pairs), `histogram` ([µs, count] pairs). `progress(dict)` is called every
    `progress_interval` s with `elapsed`, `warmup` and per target `requests`, `errors`, `rate`,
    `p50_us`, `p99_us`. Raises ValueError for bad arguments, ConnectionError for an unreachable target."""
