"""Exports the spans a worker's data plane queued (`opentelemetry` plugin) to an OTLP/HTTP collector
as protobuf, in batches, from a background thread of the worker — never on the request path."""

from __future__ import annotations

import logging
import threading
from typing import Any

import httpx

log = logging.getLogger("pygateway.otel")

BATCH = 512
IDLE_WAIT = 5.0  # seconds; how often an idle exporter looks at its stop flag


def encode(spans: list[tuple[Any, ...]], service_name: str) -> bytes:
    """An `ExportTraceServiceRequest` for spans as `_core.Worker.drain_spans` returns them."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

    out = []
    for trace_id, span_id, parent, kind, name, start, end, error, attrs in spans:
        out.append(Span(
            trace_id=bytes.fromhex(trace_id), span_id=bytes.fromhex(span_id),
            parent_span_id=bytes.fromhex(parent) if parent else b"", name=name, kind=kind,
            start_time_unix_nano=start, end_time_unix_nano=end,
            attributes=[KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attrs],
            status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET),
        ))  # fmt: skip
    resource = Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service_name))])
    scope = ScopeSpans(scope=InstrumentationScope(name="pygateway"), spans=out)
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[scope])]
    ).SerializeToString()


class Exporter(threading.Thread):
    """Drains the worker's span queue every `interval` seconds and POSTs to `{endpoint}/v1/traces`;
    sleeps without a timer (`worker.wait_spans`) while no span is queued."""

    def __init__(self, worker: Any, endpoint: str, service_name: str, interval: float = 1.0) -> None:
        super().__init__(name="pygateway-otlp", daemon=True)
        self.worker, self.url, self.service_name, self.interval = worker, endpoint.rstrip("/") + "/v1/traces", \
            service_name, interval  # fmt: skip
        self.stop_event = threading.Event()
        self.failing = False

    def run(self) -> None:
        with httpx.Client(timeout=3.0) as client:
            while not self.stop_event.is_set():
                if not self.worker.wait_spans(IDLE_WAIT):
                    continue
                if self.stop_event.wait(self.interval):  # a batch's worth: spans come in bursts
                    break
                while spans := self.worker.drain_spans(BATCH):
                    self._send(client, spans)
                    if len(spans) < BATCH:
                        break

    def _send(self, client: httpx.Client, spans: list[tuple[Any, ...]]) -> None:
        body = encode(spans, self.service_name)
        for attempt in range(2):  # one retry; then the batch is dropped (the collector is down)
            try:
                r = client.post(self.url, content=body, headers={"Content-Type": "application/x-protobuf"})
                if r.status_code < 300:
                    if self.failing:
                        log.info("OTLP export to %s works again", self.url)
                    self.failing = False
                    return
                err = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                err = str(exc) or type(exc).__name__
            if attempt == 1 and not self.failing:  # log once per incident, not per batch
                log.warning("OTLP export to %s failed (%s); dropping %d spans", self.url, err, len(spans))
                self.failing = True
