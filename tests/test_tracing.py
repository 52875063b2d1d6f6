"""W3C trace context and OTLP span export (`opentelemetry` plugin), checked with a real OTLP/HTTP
receiver on loopback that decodes what it gets with the `opentelemetry-proto` package."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from helpers import Receiver as PostReceiver
from helpers import free_port, route
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

INCOMING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Receiver(PostReceiver):
    """An OTLP/HTTP receiver: the log receiver's POSTs, decoded as `ExportTraceServiceRequest`s."""

    @property
    def spans(self) -> list[Any]:
        with self.lock:
            posts, paths = list(self.posts), list(self.paths)
        assert set(paths) <= {"/v1/traces"}
        assert all(h["Content-Type"] == "application/x-protobuf" for _, h, _ in posts)
        reqs = [ExportTraceServiceRequest.FromString(body) for _, _, body in posts]
        return [s for r in reqs for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans]

    @property
    def services(self) -> set[str]:
        with self.lock:
            reqs = [ExportTraceServiceRequest.FromString(body) for _, _, body in self.posts]
        return {a.value.string_value for r in reqs for rs in r.resource_spans for a in rs.resource.attributes}

    def wait(self, n: int, timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(spans := self.spans) >= n:
                return spans
            time.sleep(0.05)
        raise AssertionError(f"{len(self.spans)} spans received, wanted {n}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


def seen(url: str, **kw: Any) -> dict[str, str]:
    """The request headers the upstream received."""
    return dict(httpx.get(url, timeout=5, **kw).json()["headers"])


def attrs(span: Any) -> dict[str, str]:
    return {a.key: a.value.string_value for a in span.attributes}


def otel(name: str, **options: Any) -> dict[str, Any]:
    return {"opentelemetry": {"sampler": {"name": name, **({"options": options} if options else {})}}}


def test_a_sampled_request_exports_server_and_upstream_spans_and_passes_the_context(gateway, upstream, receiver):
    up = upstream()
    gw = gateway({"routes": [route("r1", "/t/*", up, name="traced", plugins=otel("always_on"))]},
                 args=["--otlp-endpoint", f"http://127.0.0.1:{receiver.port}", "--otlp-service-name", "edge"])  # fmt: skip
    ver, trace, parent, flags = seen(f"{gw.url}/t/a?x=1")["traceparent"].split("-")
    assert ver == "00" and len(trace) == 32 and flags == "01"
    server, client = sorted(receiver.wait(2), key=lambda s: s.kind)
    assert server.kind == 2 and client.kind == 3  # SERVER, CLIENT
    assert server.trace_id.hex() == client.trace_id.hex() == trace
    assert client.parent_span_id == server.span_id and client.span_id.hex() == parent
    assert server.parent_span_id == b""  # a new trace
    a = attrs(server)
    assert a["apisix.route_id"] == "r1" and a["apisix.route_name"] == "traced"
    assert a["http.status_code"] == "200" and a["http.method"] == "GET" and a["http.target"] == "/t/a?x=1"
    assert server.start_time_unix_nano <= client.start_time_unix_nano < client.end_time_unix_nano
    assert client.end_time_unix_nano <= server.end_time_unix_nano + 1_000_000
    assert attrs(client)["net.peer.port"] == str(up.port)
    assert receiver.services == {"edge"}


def test_parent_based_sampling_continues_the_callers_trace(gateway, upstream, receiver):
    up = upstream()
    gw = gateway({"routes": [route("r1", "/*", up, plugins=otel("parent_base"))]},
                 args=["--otlp-endpoint", f"http://127.0.0.1:{receiver.port}"])  # fmt: skip
    got = seen(f"{gw.url}/a", headers={"traceparent": INCOMING, "tracestate": "k=v"})
    assert got["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert got["tracestate"] == "k=v"
    spans = receiver.wait(2)
    server = next(s for s in spans if s.kind == 2)
    assert server.parent_span_id.hex() == "00f067aa0ba902b7"
    # The caller did not sample: we propagate the decision and export nothing.
    unsampled = INCOMING[:-2] + "00"
    got = seen(f"{gw.url}/b", headers={"traceparent": unsampled})
    assert got["traceparent"].endswith("-00") and "4bf92f3577b34da6a3ce929d0e0e4736" in got["traceparent"]
    # No parent and no root sampler: a fresh, unsampled trace id is still passed on.
    fresh = seen(f"{gw.url}/c")["traceparent"]
    assert fresh.endswith("-00") and "4bf92f3577b34da6a3ce929d0e0e4736" not in fresh
    time.sleep(1.5)
    assert len(receiver.spans) == 2


def test_ratio_sampling_from_a_global_rule(gateway, upstream, receiver):
    up = upstream()
    cfg = {"routes": [route("r1", "/*", up)], "global_rules": [{"id": "g", "plugins": otel("trace_id_ratio", fraction=0.5)}]}
    gw = gateway(cfg, args=["--otlp-endpoint", f"http://127.0.0.1:{receiver.port}"])
    with httpx.Client(timeout=5) as c:
        sampled = sum(dict(c.get(f"{gw.url}/x").json()["headers"])["traceparent"].endswith("-01") for _ in range(200))
    assert 60 < sampled < 140
    spans = receiver.wait(2 * sampled)
    time.sleep(1.2)
    assert len(receiver.spans) == len(spans) == 2 * sampled


def test_a_collector_that_is_down_never_affects_requests(gateway, upstream):
    up = upstream()
    gw = gateway({"routes": [route("r1", "/*", up, plugins=otel("always_on"))]},
                 args=["--otlp-endpoint", f"http://127.0.0.1:{free_port()}"])  # fmt: skip
    with httpx.Client(timeout=5) as c:
        assert all(c.get(f"{gw.url}/x").status_code == 200 for _ in range(50))
    gw.wait_log("OTLP export to")
    assert gw.log().count("OTLP export to") == 1  # logged once per incident


def test_bad_sampler_is_a_config_error_naming_the_field(gateway, upstream):
    up = upstream()
    gw = gateway({"routes": [route("r1", "/*", up)]})
    gw.update({"routes": [route("r1", "/*", up, plugins=otel("sometimes"))]}, expect_ok=False)
    assert "opentelemetry" in gw.log() and "sampler.name" in gw.log()
