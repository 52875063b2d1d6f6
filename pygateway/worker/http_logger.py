"""The `http-logger` sender: a thread of each worker that drains the entries the data plane formatted
(in Rust, at the end of each request) and POSTs them in batches, as APISIX's batch processor does:
a batch goes when it reaches `batch_max_size`, when no entry came for `inactive_timeout` seconds, or
when its oldest entry is `buffer_duration` seconds old; a failed batch is retried `max_retry_count`
times, `retry_delay` seconds apart, then given up. Never on the request path: the data plane only
queues, and drops (counted) when `max_pending_entries` entries are waiting."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

log = logging.getLogger("pygateway.http_logger")

TICK = 0.1  # seconds between drains: the delay an entry may wait before it is batched
IDLE_WAIT = 5.0  # seconds; nothing buffered: sleep until an entry is queued (or this long, to forget targets)
IDLE_FORGET = 300.0  # a target (an old conf) with nothing to send for this long is dropped


@dataclass
class Batch:
    entries: list[bytes]
    due: float = 0.0  # monotonic time of the next attempt
    retries: int = 0


@dataclass
class Target:
    """One http-logger conf: its buffer, its batches waiting for (re)delivery, its HTTP client."""

    conf: dict[str, Any]
    client: httpx.Client
    buffer: list[bytes] = field(default_factory=list)
    first_t: float = 0.0
    last_t: float = 0.0
    batches: list[Batch] = field(default_factory=list)
    failing: bool = False

    def push(self, entries: list[bytes], now: float) -> None:
        size = self.conf["batch_max_size"]
        for e in entries:
            if not self.buffer:
                self.first_t = now
            self.buffer.append(e)
            if len(self.buffer) >= size:
                self.cut(now)
        self.last_t = now

    def cut(self, now: float) -> None:
        if self.buffer:
            self.batches.append(Batch(self.buffer, due=now))
            self.buffer = []

    def body(self, entries: list[bytes]) -> tuple[bytes, str]:
        if len(entries) == 1 and self.conf["batch_max_size"] == 1:
            return entries[0], "application/json"  # APISIX sends a lone object, not an array
        if self.conf["concat_method"] == "new_line":
            return b"\n".join(entries), "text/plain"
        return b"[" + b",".join(entries) + b"]", "application/json"


class Sender(threading.Thread):
    """Drains `worker.drain_log_entries` every TICK and delivers; reports with `log_entries_done`."""

    def __init__(self, worker: Any) -> None:
        super().__init__(name="pygateway-http-logger", daemon=True)
        self.worker = worker
        self.targets: dict[str, Target] = {}
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            if self._busy():
                self.stop_event.wait(TICK)
            else:
                # Nothing to batch or retry: no timer ticks; the data plane wakes us with an entry.
                self.worker.wait_log_entries(IDLE_WAIT)
            try:
                self.step(time.monotonic())
            except Exception:  # a bug here must not end logging for the worker's lifetime
                log.exception("http-logger sender step failed")

    def _busy(self) -> bool:
        return any(t.buffer or t.batches for t in self.targets.values())

    def step(self, now: float) -> None:
        while groups := self.worker.drain_log_entries(4096):
            for key, entries in groups:
                self._target_of(key).push(entries, now)
        for key, t in list(self.targets.items()):
            c = t.conf
            if t.buffer and (now - t.last_t >= c["inactive_timeout"] or now - t.first_t >= c["buffer_duration"]):
                t.cut(now)
            for b in [b for b in t.batches if b.due <= now]:
                self._send(t, b)
            if not t.buffer and not t.batches and now - t.last_t > IDLE_FORGET:
                t.client.close()
                del self.targets[key]

    def _target_of(self, key: str) -> Target:
        t = self.targets.get(key)
        if t is None:
            conf = orjson.loads(key)
            client = httpx.Client(timeout=float(conf["timeout"]), verify=bool(conf["ssl_verify"]))
            t = self.targets[key] = Target(conf, client)
        return t

    def _send(self, t: Target, b: Batch) -> None:
        body, ctype = t.body(b.entries)
        headers = {"Content-Type": ctype}
        if t.conf.get("auth_header"):
            headers["Authorization"] = t.conf["auth_header"]
        try:
            r = t.client.post(t.conf["uri"], content=body, headers=headers)
            err = None if r.status_code < 400 else f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            err = str(exc) or type(exc).__name__
        if err is None:
            if t.failing:
                log.info("http-logger %r: %s works again", t.conf["name"], t.conf["uri"])
            t.failing = False
            t.batches.remove(b)
            self.worker.log_entries_done(len(b.entries))
            return
        b.retries += 1
        if b.retries <= t.conf["max_retry_count"]:
            b.due = time.monotonic() + t.conf["retry_delay"]
            return
        t.batches.remove(b)
        self.worker.log_entries_done(len(b.entries), len(b.entries))
        if not t.failing:  # once per incident, not per batch
            log.warning("http-logger %r: sending to %s failed (%s); dropped %d entries",
                        t.conf["name"], t.conf["uri"], err, len(b.entries))  # fmt: skip
            t.failing = True
