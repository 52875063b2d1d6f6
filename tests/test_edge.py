"""Edge hardening (docs/architecture.md, "Edge limits"): malformed, oversized, ambiguous and slow requests
sent as raw bytes.

Each case checks the status, whether the gateway closed the connection, and that the upstream
never saw the bad request. The upstream is `Recorder`, a raw-socket echo server that records every
request it receives (so "never saw it" is exact, not inferred from a response).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pytest
from helpers import free_port, route

ROOT = Path(__file__).parent.parent

# --------------------------------------------------------------------------- raw HTTP helpers


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One raw TCP connection with a response parser (Content-Length, chunked or no body)."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway may reject before reading everything: the response tells

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        self.buf += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self) -> Resp:
        status = int(self._line().split()[1])
        headers: dict[str, str] = {}
        while line := self._line():
            k, v = line.decode("latin-1").split(":", 1)
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int(self._line().split(b";")[0], 16):
                body += self._take(size)
                self._take(2)
            while self._line():
                pass
        else:
            body = self._take(int(headers.get("content-length", "0")))
        return Resp(status, headers, body)

    def closed(self, timeout: float = 3.0) -> bool:
        """True if the server closed the connection (EOF or reset) with nothing more to read."""
        if self.buf:
            return False
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: edge.test\r\n{extra}\r\n".encode()


# --------------------------------------------------------------------------- recording upstream


@dataclass
class Recorder:
    """A raw HTTP/1.1 echo upstream that records each request it parsed (method, target, body)."""

    sock: socket.socket
    seen: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def addr(self) -> str:
        host, port = self.sock.getsockname()
        return f"{host}:{port}"

    def paths(self) -> list[str]:
        with self.lock:
            return [r["target"] for r in self.seen]

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        buf = b""

        def fill() -> bool:
            nonlocal buf
            chunk = conn.recv(65536)
            buf += chunk
            return bool(chunk)

        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    if not fill():
                        return
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = [tuple(x.strip() for x in h.split(":", 1)) for h in lines[1:]]
                hmap = {k.lower(): v for k, v in headers}
                body = b""
                if hmap.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        while b"\r\n" not in buf:
                            if not fill():
                                return
                        size_line, buf = buf.split(b"\r\n", 1)
                        size = int(size_line.split(b";")[0], 16)
                        while len(buf) < size + 2:
                            if not fill():
                                return
                        body += buf[:size]
                        buf = buf[size + 2 :]
                        if size == 0:
                            break
                else:
                    n = int(hmap.get("content-length", "0"))
                    while len(buf) < n:
                        if not fill():
                            return
                    body, buf = buf[:n], buf[n:]
                rec = {"method": method, "target": target, "headers": headers, "body": body.decode("latin-1")}
                with self.lock:
                    self.seen.append(rec)
                out = json.dumps(rec).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(out), out))  # fmt: skip
        except OSError:
            return
        finally:
            conn.close()


@dataclass
class Edge:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    rec: Recorder
    header_timeout: float

    def client(self) -> Client:
        return Client(self.port)

    def assert_unseen(self, marker: str) -> None:
        """The upstream never got a request whose target contains `marker`, and still works."""
        with self.client() as c:
            c.send(get(f"/ok/after-{marker}"))
            r = c.response()
            assert r.status == 200, r
            assert r.json()["target"] == f"/ok/after-{marker}"
        seen = self.rec.paths()
        assert not [p for p in seen if marker in p and "after-" not in p], seen


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"gateway not listening on {port}:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """One gateway for the module (every case opens its own connections), routing /* to a Recorder.
    Started directly rather than via conftest's function-scoped `gateway`, using only stable CLI flags
    plus the optional ones `run --help` lists."""
    lsock = socket.create_server(("127.0.0.1", 0))
    rec = Recorder(lsock)
    threading.Thread(target=rec.serve, daemon=True).start()
    tmp: Path = tmp_path_factory.mktemp("edge")
    port = free_port()
    cfg, log = tmp / "apisix.yaml", tmp / "gateway.log"
    routes = [{"id": "all", "uri": "/*", "upstream": {"nodes": {rec.addr: 1}}}]
    cfg.write_text(json.dumps({"routes": routes}))  # JSON is YAML
    cmd = [sys.executable, "-m", "pygateway.cli", "run", "--listen", f"127.0.0.1:{port}", "--workers", "1",
           "-c", str(cfg)]  # fmt: skip
    flags = subprocess.run([sys.executable, "-m", "pygateway.cli", "run", "--help"],
                           check=False, capture_output=True, text=True, cwd=ROOT).stdout  # fmt: skip
    header_timeout = 10.0
    if "--header-timeout" in flags:  # keeps the slowloris case quick
        header_timeout = 1.0
        cmd += ["--header-timeout", "1"]
    if "--admin-listen" in flags:  # never collide with another gateway's admin port
        cmd += ["--admin-listen", f"127.0.0.1:{free_port()}"]
    if "--data-dir" in flags:
        cmd += ["--data-dir", str(tmp / "data")]
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        _wait_port(port, proc, log)
        yield Edge(proc, port, log, rec, header_timeout)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        lsock.close()


def expect_reject(edge: Edge, data: bytes, status: int, marker: str) -> Resp:
    with edge.client() as c:
        c.send(data)
        r = c.response()
        assert r.status == status, r
        assert c.closed(), "connection should be closed after a rejected request"
    edge.assert_unseen(marker)
    return r


# --------------------------------------------------------------------------- sizes


def test_header_line_over_8k_is_431(edge: Edge) -> None:
    data = get("/m-longline", "X-Big: " + "a" * 8300 + "\r\n")
    expect_reject(edge, data, 431, "m-longline")


def test_header_line_just_under_8k_passes(edge: Edge) -> None:
    with edge.client() as c:
        c.send(get("/m-line-ok", "X-Big: " + "a" * 8000 + "\r\n"))
        r = c.response()
        assert r.status == 200
        assert ["X-Big", "a" * 8000] in r.json()["headers"] or ["x-big", "a" * 8000] in r.json()["headers"]


def test_head_over_32k_is_431(edge: Edge) -> None:
    extra = "".join(f"X-H{i}: {'b' * 7000}\r\n" for i in range(5))  # lines fine, total ~35 KiB
    expect_reject(edge, get("/m-bighead", extra), 431, "m-bighead")


def test_uri_over_8k_is_414(edge: Edge) -> None:
    expect_reject(edge, get("/m-longuri/" + "u" * 9000), 414, "m-longuri")


def test_101_headers_is_431(edge: Edge) -> None:
    extra = "".join(f"X-N{i}: v\r\n" for i in range(100))  # + Host = 101
    expect_reject(edge, get("/m-manyheaders", extra), 431, "m-manyheaders")


def test_100_headers_pass(edge: Edge) -> None:
    extra = "".join(f"X-N{i}: v\r\n" for i in range(99))  # + Host = 100
    with edge.client() as c:
        c.send(get("/m-100headers", extra))
        assert c.response().status == 200


# --------------------------------------------------------------------------- slowloris


def test_slow_head_gets_408_and_close(edge: Edge) -> None:
    with edge.client() as c:
        c.sock.settimeout(edge.header_timeout + 5)
        start = time.monotonic()
        c.send(b"GET /m-slowloris HTTP/1.1\r\nHost: edge.test\r\nX-Slow: ")
        time.sleep(0.3)
        c.send(b"a")  # trickling bytes does not extend the deadline
        r = c.response()
        took = time.monotonic() - start
        assert r.status == 408, r
        assert edge.header_timeout - 0.5 <= took <= edge.header_timeout + 3, took
        assert c.closed()
    edge.assert_unseen("m-slowloris")


def test_idle_keepalive_is_not_a_slow_head(edge: Edge) -> None:
    """The 408 timer starts at a head's first byte, not while the connection idles between requests."""
    with edge.client() as c:
        c.send(get("/m-idle-1"))
        assert c.response().status == 200
        time.sleep(edge.header_timeout + 0.5)
        c.send(get("/m-idle-2"))
        assert c.response().status == 200


# --------------------------------------------------------------------------- smuggling / framing


def test_cl_and_te_is_400(edge: Edge) -> None:
    data = (b"POST /m-clte HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\n")  # fmt: skip
    expect_reject(edge, data, 400, "m-clte")


def test_te_then_cl_is_400(edge: Edge) -> None:
    data = (b"POST /m-tecl HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
            b"0\r\n\r\n")  # fmt: skip
    expect_reject(edge, data, 400, "m-tecl")


def test_two_different_content_lengths_is_400(edge: Edge) -> None:
    data = b"POST /m-cl2 HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"
    expect_reject(edge, data, 400, "m-cl2")


def test_duplicate_equal_content_lengths_is_400(edge: Edge) -> None:
    data = b"POST /m-cldup HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
    expect_reject(edge, data, 400, "m-cldup")


@pytest.mark.parametrize("value", ["1x", "-1", "+1", "1 1", "0x1", ""])
def test_malformed_content_length_is_400(edge: Edge, value: str) -> None:
    data = f"POST /m-badcl HTTP/1.1\r\nHost: edge.test\r\nContent-Length: {value}\r\n\r\nx".encode()
    expect_reject(edge, data, 400, "m-badcl")


@pytest.mark.parametrize("value", ["gzip", "gzip, chunked", "chunked, gzip", "xchunked"])
def test_other_transfer_encodings_are_400(edge: Edge, value: str) -> None:
    data = f"POST /m-te HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: {value}\r\n\r\n0\r\n\r\n".encode()
    expect_reject(edge, data, 400, "m-te")


@pytest.mark.parametrize("body", [b"zz\r\nab\r\n0\r\n\r\n", b"-1\r\nab\r\n0\r\n\r\n", b"2\r\nabc\r\n0\r\n\r\n",
                                  b"ffffffffffffffffff\r\nab\r\n0\r\n\r\n", b"2\nab\r\n0\r\n\r\n"])  # fmt: skip
def test_bad_chunk_is_400(edge: Edge, body: bytes) -> None:
    data = b"POST /m-badchunk HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    expect_reject(edge, data, 400, "m-badchunk")


def test_good_chunked_body_is_forwarded(edge: Edge) -> None:
    data = (b"POST /m-chunked HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")  # fmt: skip
    with edge.client() as c:
        c.send(data + get("/m-chunked-next"))
        r = c.response()
        assert r.status == 200 and r.json()["body"] == "hello world"
        assert c.response().json()["target"] == "/m-chunked-next"


def test_obs_fold_is_400(edge: Edge) -> None:
    data = b"GET /m-fold HTTP/1.1\r\nHost: edge.test\r\nX-A: one\r\n two\r\n\r\n"
    expect_reject(edge, data, 400, "m-fold")


@pytest.mark.parametrize("data", [
    b"GET /m-barelf HTTP/1.1\nHost: edge.test\n\n",
    b"GET /m-barelf HTTP/1.1\r\nHost: edge.test\nX-A: b\r\n\r\n",
    b"GET /m-barelf HTTP/1.1\r\nHost: edge.test\r\n\n",
    b"GET /m-barelf HTTP/1.1\r\nHost: edge.test\rX-A: b\r\n\r\n",
])  # fmt: skip
def test_bare_lf_or_cr_is_400(edge: Edge, data: bytes) -> None:
    expect_reject(edge, data, 400, "m-barelf")


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize("path", ["/m-enc/a%2Fb", "/m-enc/a%2fb", "/m-enc/a%5Cb", "/m-enc/a%00b"])
def test_encoded_separators_and_nul_are_400(edge: Edge, path: str) -> None:
    expect_reject(edge, get(path), 400, "m-enc")


def test_dot_segments_are_normalized(edge: Edge) -> None:
    with edge.client() as c:
        c.send(get("/m-norm/a/../b//c/./d"))
        r = c.response()
        assert r.status == 200
        assert r.json()["target"] == "/m-norm/b/c/d"


# --------------------------------------------------------------------------- keep-alive


def test_1000th_response_closes_the_connection(edge: Edge) -> None:
    with edge.client() as c:
        # 999 requests in pipelined batches of 100; none may carry `Connection: close`.
        for batch in range(10):
            n = 100 if batch < 9 else 99
            c.send(b"".join(get(f"/m-ka/{batch * 100 + i}") for i in range(n)))
            for _ in range(n):
                r = c.response()
                assert r.status == 200
                assert r.headers.get("connection", "") != "close"
        c.send(get("/m-ka/last") + get("/m-ka-beyond"))
        r = c.response()
        assert r.status == 200 and r.json()["target"] == "/m-ka/last"
        assert r.headers.get("connection") == "close"
        assert c.closed()
    edge.assert_unseen("m-ka-beyond")


def test_pipelined_pair(edge: Edge) -> None:
    data = (get("/m-pipe/1")
            + b"POST /m-pipe/2 HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 5\r\n\r\nhello")  # fmt: skip
    with edge.client() as c:
        c.send(data)
        r1, r2 = c.response(), c.response()
        assert (r1.status, r1.json()["target"]) == (200, "/m-pipe/1")
        assert (r2.status, r2.json()["target"], r2.json()["body"]) == (200, "/m-pipe/2", "hello")
        c.send(get("/m-pipe/3"))
        assert c.response().json()["target"] == "/m-pipe/3"  # still open


def test_pipelined_good_then_bad(edge: Edge) -> None:
    """The good request is answered; the bad one after it gets 400 and is never forwarded."""
    with edge.client() as c:
        c.send(get("/m-pipebad/good") + b"GET /m-pipebad-evil HTTP/1.1\nHost: edge.test\n\n")
        r = c.response()
        assert (r.status, r.json()["target"]) == (200, "/m-pipebad/good")
        assert c.response().status == 400
        assert c.closed()
    edge.assert_unseen("m-pipebad-evil")


def test_smuggled_request_in_body_is_not_forwarded(edge: Edge) -> None:
    """Classic CL.TE: a second request hidden in the body must not reach the upstream."""
    hidden = b"GET /m-smuggled HTTP/1.1\r\nHost: edge.test\r\n\r\n"
    body = b"0\r\n\r\n" + hidden
    data = (b"POST /m-front HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body  # fmt: skip
    expect_reject(edge, data, 400, "m-smuggled")
    edge.assert_unseen("m-front")


def test_echo_upstream_sees_normalized_path(gateway: Any, upstream: Any) -> None:
    """The same normalization against the shared echo upstream (uvicorn)."""
    up = upstream()
    gw = gateway({"routes": [route("r", "/*", up)]})
    with Client(gw.port) as c:
        c.send(get("/a/../b"))
        r = c.response()
        assert r.status == 200
        assert r.json()["path"] == "/b"


def test_huge_head_still_gets_its_431(edge: Edge) -> None:
    """Far more than the gateway reads: the 431 must not be lost to a reset on close."""
    extra = "".join(f"X-H{i}: {'c' * 4000}\r\n" for i in range(50))  # ~200 KiB
    expect_reject(edge, get("/m-hugehead", extra), 431, "m-hugehead")
