"""A store in etcd v3, spoken to through etcd's HTTP/JSON gateway (`/v3/kv/*`, `/v3/watch`) with httpx:
no gRPC stubs needed.

Keys live at `<prefix>/<key>` (`/apisix/routes/1`: APISIX's own layout, so an existing APISIX etcd
can be read as is); values are JSON objects. Keys and values travel base64-encoded and 64-bit
integers as strings, as the gateway encodes them. `created_index`/`modified_index` are etcd's
create_revision/mod_revision and the store's revision is the response header's revision.

Requests go to the endpoint that last answered and fail over to the others; when none answers,
StoreUnavailable is raised (after at most `timeout` seconds per endpoint). watch() runs a thread
holding a streaming `/v3/watch`; it reconnects with exponential back-off (0.1 s to 5 s) resuming
after the last revision it delivered, and answers a compaction of that revision with
`on_change(current revision, None)` (reload everything) before watching on from there.
"""

from __future__ import annotations

import base64
import builtins
import json
import logging
import random
import socket
import threading
from typing import Any

import httpx

from .base import Change, Item, OnChange, Store, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

# gRPC status codes that mean "the cluster cannot serve now" rather than "the request is wrong".
_UNAVAILABLE_CODES = {4, 14}  # DEADLINE_EXCEEDED, UNAVAILABLE
_PAGE = 1000  # keys per range request in load_all()/list()


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode("ascii")


def _unb64(s: str | None) -> bytes:
    return base64.b64decode(s) if s else b""


def _range_end(key: bytes) -> bytes:
    """etcd's prefix range end: the key with its last byte < 0xff incremented."""
    k = bytearray(key)
    while k:
        if k[-1] < 0xFF:
            k[-1] += 1
            return bytes(k)
        k.pop()
    return b"\0"  # every key


class _Compacted(Exception):
    pass


class EtcdStore(Store):
    name = "etcd"

    # The watch stream is re-opened (from the last revision seen, without a resync) after this long
    # without a message, so a half-open connection cannot stall watching forever.
    watch_idle_timeout: float = 30.0
    backoff_min: float = 0.1
    backoff_max: float = 5.0

    def __init__(
        self, endpoints: builtins.list[str] | str, prefix: str = "/apisix", timeout: float = 2.0
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        eps = [e.rstrip("/") for e in endpoints if e]
        if not eps:
            raise ValueError("EtcdStore needs at least one endpoint")
        self.endpoints = [e if "://" in e else f"http://{e}" for e in eps]
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.timeout = timeout
        self._root = (self.prefix + "/").encode()  # every key of this store starts with it
        self._current = 0  # index of the endpoint that answered last
        self._client = httpx.Client(timeout=timeout, trust_env=False)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: builtins.list[threading.Thread] = []
        self._watch_socks: set[socket.socket] = set()

    # -- transport ---------------------------------------------------------------------------------

    def _unreachable(self, err: object) -> StoreUnavailable:
        return StoreUnavailable(f"etcd at {', '.join(self.endpoints)} is unreachable: {err}")

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a gateway request, failing over across endpoints; returns the decoded JSON."""
        if self._stop.is_set():
            raise StoreError("the etcd store is closed")
        n = len(self.endpoints)
        start = self._current
        last_err: object = None
        for i in range(n):
            idx = (start + i) % n
            url = self.endpoints[idx] + path
            try:
                resp = self._client.post(url, json=body)
            except httpx.TransportError as e:
                last_err = f"{url}: {type(e).__name__}: {e or 'timed out'}"
                continue
            except RuntimeError as e:  # the client was closed under us
                raise StoreError(f"the etcd store is closed: {e}") from e
            try:
                data = resp.json()
            except ValueError:
                data = None
            if resp.status_code == 200 and isinstance(data, dict):
                self._current = idx
                return data
            msg = data.get("message") or data.get("error") if isinstance(data, dict) else None
            code = data.get("code") if isinstance(data, dict) else None
            msg = msg or f"HTTP {resp.status_code}: {resp.text[:200]}"
            if code in _UNAVAILABLE_CODES or resp.status_code in (502, 503, 504):
                last_err = f"{url}: {msg}"
                continue
            if "required revision has been compacted" in msg:
                raise _Compacted(msg)
            raise StoreError(f"etcd {path} failed: {msg}")
        raise self._unreachable(last_err)

    def _full(self, key: str) -> bytes:
        return self._root + key.encode()

    def _item(self, kv: dict[str, Any]) -> Item | None:
        key = _unb64(kv.get("key"))
        if not key.startswith(self._root):
            return None
        try:
            value = json.loads(_unb64(kv.get("value")))
        except ValueError:
            value = None
        if not isinstance(value, dict):
            return None  # e.g. APISIX's "init_dir" markers: not an object of ours
        return Item(
            key[len(self._root) :].decode("utf-8", errors="replace"),
            value,
            int(kv.get("create_revision", 0)),
            int(kv.get("mod_revision", 0)),
        )

    # -- Store API ---------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        data = self._call("/v3/kv/range", {"key": _b64(self._root), "count_only": True})
        return int(data.get("header", {}).get("revision", 0))

    def get(self, key: str) -> Item | None:
        data = self._call("/v3/kv/range", {"key": _b64(self._full(key))})
        kvs = data.get("kvs") or []
        return self._item(kvs[0]) if kvs else None

    def _range(self, prefix: str) -> tuple[int, builtins.list[Item]]:
        """Every item under `prefix`, paged, all read at one revision."""
        start = self._full(prefix)
        end = _range_end(start)
        rev = 0
        items: builtins.list[Item] = []
        for _attempt in range(5):
            items, key, rev = [], start, 0
            try:
                while True:
                    body: dict[str, Any] = {"key": _b64(key), "range_end": _b64(end), "limit": _PAGE}
                    if rev:
                        body["revision"] = rev
                    data = self._call("/v3/kv/range", body)
                    if not rev:
                        rev = int(data.get("header", {}).get("revision", 0))
                    kvs = data.get("kvs") or []
                    for kv in kvs:
                        it = self._item(kv)
                        if it is not None:
                            items.append(it)
                    if not data.get("more") or not kvs:
                        return rev, items
                    key = _unb64(kvs[-1].get("key")) + b"\0"
            except _Compacted:
                continue  # compacted between two pages: read again at a newer revision
        raise StoreError("etcd range kept being compacted while it was read")

    def list(self, prefix: str) -> builtins.list[Item]:
        return self._range(prefix)[1]

    def put(self, key: str, value: dict[str, Any]) -> Item:
        if not isinstance(value, dict):
            raise StoreError(f"a stored value must be a JSON object, not {type(value).__name__}")
        try:
            raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as e:
            raise StoreError(f"value is not JSON-serialisable: {e}") from e
        data = self._call("/v3/kv/put", {"key": _b64(self._full(key)), "value": _b64(raw), "prev_kv": True})
        rev = int(data.get("header", {}).get("revision", 0))
        prev = data.get("prev_kv")
        created = int(prev.get("create_revision", rev)) if prev else rev
        return Item(key, json.loads(raw), created, rev)

    def delete(self, key: str) -> Item | None:
        data = self._call("/v3/kv/deleterange", {"key": _b64(self._full(key)), "prev_kv": True})
        prev = data.get("prev_kvs") or []
        return self._item(prev[0]) if prev else None

    def load_all(self) -> tuple[int, builtins.list[Item]]:
        return self._range("")

    # -- watch -------------------------------------------------------------------------------------

    def watch(self, since: int, on_change: OnChange) -> None:
        if self._stop.is_set():
            raise StoreError("the etcd store is closed")
        t = threading.Thread(target=self._watch_loop, args=(since, on_change), name="etcd-watch", daemon=True)
        self._threads.append(t)
        t.start()

    def _deliver(self, on_change: OnChange, rev: int, changes: builtins.list[Change] | None) -> None:
        if self._stop.is_set():
            return
        try:
            on_change(rev, changes)
        except Exception:
            log.exception("etcd store: watch callback failed")

    def _watch_loop(self, since: int, on_change: OnChange) -> None:
        client = httpx.Client(
            trust_env=False,
            timeout=httpx.Timeout(self.timeout, read=self.watch_idle_timeout),
        )
        next_rev = since + 1  # first revision not delivered yet
        backoff = self.backoff_min
        n = len(self.endpoints)
        attempt = 0
        try:
            while not self._stop.is_set():
                url = self.endpoints[(self._current + attempt) % n] + "/v3/watch"
                request = {
                    "create_request": {
                        "key": _b64(self._root),
                        "range_end": _b64(_range_end(self._root)),
                        "start_revision": str(next_rev),
                        "progress_notify": True,
                    }
                }
                healthy = False
                error: object = None
                try:
                    with client.stream("POST", url, json=request) as resp:
                        if resp.status_code != 200:
                            raise StoreError(f"HTTP {resp.status_code}: {resp.read()[:200]!r}")
                        sock = self._sock_of(resp)
                        try:
                            for line in resp.iter_lines():
                                if self._stop.is_set():
                                    return
                                if not line.strip():
                                    continue
                                result = self._parse(line)
                                if result.get("created"):
                                    healthy = True
                                    backoff = self.backoff_min
                                    continue
                                compact = int(result.get("compact_revision", 0))
                                if compact or result.get("canceled"):
                                    if compact:
                                        cur = self._current_revision()
                                        log.warning(
                                            "etcd watch: revision %d was compacted (up to %d): resync at %d",
                                            next_rev, compact, cur,
                                        )  # fmt: skip
                                        self._deliver(on_change, cur, None)
                                        next_rev = cur + 1
                                        healthy = True
                                    else:
                                        error = f"watch canceled: {result.get('cancel_reason') or '?'}"
                                    break
                                events = result.get("events") or []
                                if not events:  # progress notification: all before it was delivered
                                    hdr = int(result.get("header", {}).get("revision", 0))
                                    next_rev = max(next_rev, hdr + 1)
                                    continue
                                changes = self._changes(events)
                                if changes:
                                    self._deliver(on_change, changes[-1].revision, changes)
                                next_rev = max(
                                    next_rev, max(int(e["kv"].get("mod_revision", 0)) for e in events) + 1
                                )
                            else:
                                error = error or "the watch stream ended"
                        finally:
                            if sock is not None:
                                with self._lock:
                                    self._watch_socks.discard(sock)
                except httpx.ReadTimeout:
                    if self._stop.is_set():
                        return
                    if healthy:  # idle, not broken: re-open at once
                        continue
                    error = "no answer to the watch request"
                except (httpx.HTTPError, StoreError, ValueError, KeyError) as e:
                    error = f"{type(e).__name__}: {e}"
                except RuntimeError as e:  # client closed by close()
                    error = str(e)
                if self._stop.is_set():
                    return
                if healthy and error is None:
                    continue  # compaction handled: watch on from the new revision at once
                log.info("etcd watch on %s interrupted (%s): retrying in %.1fs", url, error, backoff)
                if healthy:
                    backoff = self.backoff_min
                attempt += 1
                self._stop.wait(backoff * (0.8 + 0.4 * random.random()))
                backoff = min(backoff * 2, self.backoff_max)
        finally:
            client.close()

    def _sock_of(self, resp: httpx.Response) -> socket.socket | None:
        stream = resp.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with self._lock:
                if self._stop.is_set():
                    sock.shutdown(socket.SHUT_RDWR)
                self._watch_socks.add(sock)
            return sock
        return None

    @staticmethod
    def _parse(line: str) -> dict[str, Any]:
        msg = json.loads(line)
        if not isinstance(msg, dict):
            raise StoreError(f"unexpected watch message: {line[:200]}")
        if "error" in msg:
            err = msg["error"]
            text = err.get("message") if isinstance(err, dict) else err
            raise StoreError(f"watch error: {text}")
        result = msg.get("result")
        if not isinstance(result, dict):
            raise StoreError(f"unexpected watch message: {line[:200]}")
        return result

    def _changes(self, events: builtins.list[dict[str, Any]]) -> builtins.list[Change]:
        out: builtins.list[Change] = []
        for ev in events:
            kv = ev.get("kv") or {}
            key = _unb64(kv.get("key"))
            if not key.startswith(self._root):
                continue
            rel = key[len(self._root) :].decode("utf-8", errors="replace")
            rev = int(kv.get("mod_revision", 0))
            if ev.get("type") == "DELETE":
                out.append(Change(rev, rel, None))
                continue
            try:
                value = json.loads(_unb64(kv.get("value")))
            except ValueError:
                value = None
            if isinstance(value, dict):
                out.append(Change(rev, rel, value))
        return out

    def _current_revision(self) -> int:
        while not self._stop.is_set():
            try:
                return self.revision
            except StoreError as e:
                log.info("etcd watch: cannot read the current revision (%s): retrying", e)
                self._stop.wait(self.backoff_min * 5)
        return 0

    def close(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
            for sock in self._watch_socks:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading the stream
                except OSError:
                    pass
            self._watch_socks.clear()
        me = threading.current_thread()
        for t in self._threads:
            if t is not me:
                t.join(timeout=self.timeout + 1.0)
        self._client.close()

    def __repr__(self) -> str:
        return f"EtcdStore({self.endpoints!r}, prefix={self.prefix!r})"
