"""The proxy through real sockets: routing, headers, balancing, retries, timeouts, streaming, h2c."""

from __future__ import annotations

import collections
import socket
import subprocess
import threading
import time

import httpx
import orjson
from helpers import free_port, read_lines, route


def echo(resp: httpx.Response) -> dict:
    assert resp.status_code == 200, resp.text
    return orjson.loads(resp.content)


def test_proxies_and_sets_forwarded_headers(upstream, gateway):
    up = upstream("a")
    gw = gateway({"routes": [route("r1", "/echo/*", up)]})
    r = httpx.get(gw.url + "/echo/x?a=1&b=two", headers={"Connection": "keep-alive, x-drop", "X-Drop": "1",
                                                        "X-Keep": "yes"})  # fmt: skip
    body = echo(r)
    hdrs = dict(body["headers"])
    assert body["path"] == "/echo/x" and body["query"] == "a=1&b=two"
    assert hdrs["x-forwarded-for"] == "127.0.0.1"
    assert hdrs["x-forwarded-proto"] == "http"
    assert hdrs["x-forwarded-host"] == f"127.0.0.1:{gw.port}"
    assert hdrs["host"] == f"127.0.0.1:{gw.port}"  # pass_host: pass (default)
    assert hdrs["x-keep"] == "yes"
    assert "x-drop" not in hdrs, "a header named in Connection is hop-by-hop"
    assert r.headers["x-upstream"] == "a"


def test_xff_appends_to_existing_chain(upstream, gateway):
    up = upstream()
    gw = gateway({"routes": [route("r1", "/*", up)]})
    hdrs = dict(echo(httpx.get(gw.url + "/", headers={"X-Forwarded-For": "10.1.1.1"}))["headers"])
    assert hdrs["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"


def test_not_found_is_json(upstream, gateway):
    gw = gateway({"routes": [route("r1", "/only", upstream())]})
    r = httpx.get(gw.url + "/other")
    assert r.status_code == 404
    assert r.json() == {"error_msg": "404 Route Not Found"}
    assert r.headers["content-type"] == "application/json"


def test_routing_precedence_and_predicates(upstream, gateway):
    a, b, c, d, e = (upstream(n) for n in "abcde")
    gw = gateway({"routes": [
        route("prefix", "/api/*", a),
        route("exact", "/api/users", b),
        route("longer", "/api/v2/*", c),
        route("hosted", "/h/*", d, hosts=["*.example.com"]),
        route("fallback-host", "/h/*", e),
        route("post-only", "/m", a, methods=["POST"], priority=10),
        route("any-method", "/m", b),
        route("vars", "/v", c, vars=[["arg_env", "==", "beta"], ["http_x_tier", "~~", "^gold"]], priority=5),
        route("vars-else", "/v", d),
        route("param", "/user/:id/profile", e),
    ]})  # fmt: skip

    def who(method: str, path: str, **kw) -> str:
        r = httpx.request(method, gw.url + path, **kw)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.headers["x-upstream"]

    assert who("GET", "/api/users") == "b"
    assert who("GET", "/api/users/1") == "a"
    assert who("GET", "/api/v2/x") == "c"
    assert who("GET", "/h/1", headers={"Host": "a.example.com"}) == "d"
    assert who("GET", "/h/1", headers={"Host": "example.com"}) == "e"
    assert who("POST", "/m") == "a"
    assert who("GET", "/m") == "b"
    assert who("GET", "/v?env=beta", headers={"X-Tier": "gold-1"}) == "c"
    assert who("GET", "/v?env=beta", headers={"X-Tier": "silver"}) == "d"
    assert who("GET", "/user/42/profile") == "e"
    assert httpx.get(gw.url + "/user/42").status_code == 404


def test_remote_addrs(upstream, gateway):
    up = upstream()
    gw = gateway({"routes": [route("r1", "/in", up, remote_addrs=["127.0.0.0/8"]),
                             route("r2", "/out", up, remote_addrs=["10.0.0.0/8", "::1"])]})  # fmt: skip
    assert httpx.get(gw.url + "/in").status_code == 200
    assert httpx.get(gw.url + "/out").status_code == 404


def test_path_normalized_before_routing_and_forwarded(upstream, gateway):
    pub, priv = upstream("pub"), upstream("priv")
    gw = gateway({"routes": [route("pub", "/public/*", pub), route("priv", "/private/*", priv)]})
    for raw in ("/public/../private/x", "/public/%2e%2e/private/x", "//private//x"):
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            s.sendall(f"GET {raw} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert b" 200 " in head.split(b"\r\n")[0], (raw, head)
        assert b"x-upstream: priv" in head, raw
        assert b'"raw_path":"/private/x"' in body, (raw, body)


def test_pass_host_modes(upstream, gateway):
    up = upstream()
    node = {up.addr: 1}
    gw = gateway({"routes": [
        {"id": "node", "uri": "/node", "upstream": {"nodes": node, "pass_host": "node"}},
        {"id": "rewrite", "uri": "/rw", "upstream": {"nodes": node, "pass_host": "rewrite",
                                                     "upstream_host": "internal.svc"}},
    ]})  # fmt: skip
    assert dict(echo(httpx.get(gw.url + "/node"))["headers"])["host"] == up.addr
    assert dict(echo(httpx.get(gw.url + "/rw"))["headers"])["host"] == "internal.svc"


def test_weighted_roundrobin_and_drained_node(upstream, gateway):
    a, b, c = upstream("a"), upstream("b"), upstream("c")
    gw = gateway({"routes": [{"id": "r", "uri": "/*", "upstream": {
        "type": "roundrobin", "nodes": {a.addr: 3, b.addr: 1, c.addr: 0}}}]})  # fmt: skip
    with httpx.Client() as cl:
        seen = collections.Counter(cl.get(gw.url + "/").headers["x-upstream"] for _ in range(40))
    assert seen == {"a": 30, "b": 10}, seen


def test_chash_on_header_is_sticky(upstream, gateway):
    ups = [upstream(n) for n in "abc"]
    gw = gateway({"routes": [{"id": "r", "uri": "/*", "upstream": {
        "type": "chash", "hash_on": "header", "key": "x-user", "nodes": {u.addr: 1 for u in ups}}}]})  # fmt: skip
    with httpx.Client() as cl:
        picks = {}
        for user in range(30):
            got = {cl.get(gw.url + "/", headers={"x-user": f"u{user}"}).headers["x-upstream"] for _ in range(3)}
            assert len(got) == 1, "the same key must always reach the same node"
            picks[user] = got.pop()
    assert len(set(picks.values())) >= 2, "keys spread over nodes"


def test_least_conn_and_ewma_serve(upstream, gateway):
    a, b = upstream("a"), upstream("b")
    gw = gateway({"routes": [
        {"id": "lc", "uri": "/lc", "upstream": {"type": "least_conn", "nodes": {a.addr: 1, b.addr: 1}}},
        {"id": "ew", "uri": "/ew", "upstream": {"type": "ewma", "nodes": {a.addr: 1, b.addr: 1}}},
    ]})  # fmt: skip
    for path in ("/lc", "/ew"):
        with httpx.Client() as cl:
            seen = {cl.get(gw.url + path).headers["x-upstream"] for _ in range(20)}
        assert seen <= {"a", "b"} and seen, path


def test_connection_refused_retries_next_node_then_502(upstream, gateway):
    up = upstream("alive")
    dead = f"127.0.0.1:{free_port()}"
    gw = gateway({"routes": [
        {"id": "mixed", "uri": "/m", "upstream": {"nodes": {dead: 100, up.addr: 1}}},
        {"id": "dead", "uri": "/d", "upstream": {"nodes": {dead: 1}}},
        {"id": "noretry", "uri": "/n", "upstream": {"nodes": {dead: 100, up.addr: 1}, "retries": 0}},
    ]})  # fmt: skip
    for _ in range(5):
        assert httpx.get(gw.url + "/m").headers["x-upstream"] == "alive"
    r = httpx.get(gw.url + "/d")
    assert r.status_code == 502 and "error_msg" in r.json()
    # Non-idempotent requests are not retried.
    assert httpx.post(gw.url + "/m", content=b"x").status_code == 502
    assert httpx.get(gw.url + "/n").status_code == 502


def test_read_timeout_gives_504_and_route_overrides_upstream(upstream, gateway):
    up = upstream()
    node = {up.addr: 1}
    gw = gateway({"routes": [
        {"id": "up-timeout", "uri": "/delay/*", "upstream": {"nodes": node, "timeout": {"connect": 1, "send": 1,
                                                                                           "read": 0.3}}},
        {"id": "route-timeout", "uri": "/slow/*", "timeout": {"connect": 1, "send": 1, "read": 3},
         "plugins": {"proxy-rewrite": {"regex_uri": ["^/slow/(.*)", "/delay/$1"]}},
         "upstream": {"nodes": node, "timeout": {"connect": 1, "send": 1, "read": 0.3}}},
    ]})  # fmt: skip
    r = httpx.get(gw.url + "/delay/1000", timeout=10)
    assert r.status_code == 504 and r.json() == {"error_msg": "upstream timed out"}
    assert httpx.get(gw.url + "/delay/50").status_code == 200
    assert httpx.get(gw.url + "/slow/600", timeout=10).status_code == 200


def test_bodies_stream_both_ways(upstream, gateway):
    up = upstream()
    gw = gateway({"routes": [route("r", "/*", up)]})
    size = 8 * 1024 * 1024 + 7
    with httpx.stream("GET", f"{gw.url}/big/{size}") as r:
        assert r.status_code == 200
        assert sum(len(c) for c in r.iter_bytes()) == size

    def gen():
        for _ in range(64):
            yield b"y" * 16384

    r = httpx.post(gw.url + "/upload", content=gen())  # chunked upload
    assert len(echo(r)["body"]) == 64 * 16384


def test_h2c_prior_knowledge(upstream, gateway):
    up = upstream()
    gw = gateway({"routes": [route("r", "/*", up)]})
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                          gw.url + "/h2"], capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
    assert out.stdout == "2 200", out


def test_keepalive_reuses_connections_concurrently(upstream, gateway):
    up = upstream()
    gw = gateway({"routes": [route("r", "/*", up)]})
    errors: list[str] = []

    def client():
        with httpx.Client() as cl:
            for i in range(50):
                r = cl.get(f"{gw.url}/k{i}")
                if r.status_code != 200 or orjson.loads(r.content)["path"] != f"/k{i}":
                    errors.append(r.text)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_https_upstream_verifies_certificates(gateway):
    """A TLS upstream with a certificate no public CA signed is refused (verification is on)."""
    import ssl
    import tempfile

    d = tempfile.mkdtemp()
    key, crt = f"{d}/k.pem", f"{d}/c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
                    "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)  # fmt: skip
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    handshakes: list[str] = []

    def serve():
        for _ in range(1):
            conn, _ = srv.accept()
            try:
                ctx.wrap_socket(conn, server_side=True)
                handshakes.append("ok")
            except (ssl.SSLError, OSError) as e:
                handshakes.append(type(e).__name__)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    gw = gateway({"routes": [{"id": "tls", "uri": "/*", "upstream": {
        "scheme": "https", "pass_host": "node", "nodes": {f"localhost:{port}": 1}, "retries": 0}}]})  # fmt: skip
    r = httpx.get(gw.url + "/", timeout=10)
    assert r.status_code == 502
    t.join(5)
    assert handshakes and handshakes[0] != "ok", "the gateway must abort the handshake on an untrusted cert"
    srv.close()


def test_https_upstream_with_verify_off(gateway, tmp_path):
    """`upstream.tls.verify: false` opts out of verification (e.g. a self-signed internal service)."""
    import http.server
    import ssl

    key, crt = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(crt), "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)  # fmt: skip

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = f"tls ok {self.path}".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    try:
        gw = gateway({"routes": [{"id": "tls", "uri": "/*", "upstream": {
            "scheme": "https", "tls": {"verify": False}, "nodes": {f"localhost:{port}": 1}}}]})  # fmt: skip
        r = httpx.get(gw.url + "/secure", timeout=10)
        assert r.status_code == 200 and r.text == "tls ok /secure"
    finally:
        srv.shutdown()


def test_per_ip_connection_cap(upstream, gateway):
    up = upstream()
    gw = gateway({"routes": [route("r", "/*", up)]}, args=["--max-connections-per-ip", "3"])

    def open_conn() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        return s

    def answered(s: socket.socket) -> bool:
        try:
            return s.recv(65536).startswith(b"HTTP/1.1 200")
        except (ConnectionResetError, TimeoutError):
            return False

    held = [open_conn() for _ in range(3)]
    assert all(answered(s) for s in held)  # three keep-alive connections stay open
    extra = open_conn()
    assert not answered(extra), "a 4th connection from the same address is closed at once"
    extra.close()
    held.pop().close()
    deadline = time.monotonic() + 5
    while True:  # the worker notices the close, then admits a new connection
        s = open_conn()
        ok = answered(s)
        s.close()
        if ok:
            break
        assert time.monotonic() < deadline
    for s in held:
        s.close()


RESPONSE_HEADER_PLUGINS = """
from pygateway.plugin import Plugin


class AccessOnly(Plugin):
    name = "access-only"

    def access(self, req, ctx):
        return None


class StampResponse(Plugin):
    name = "stamp-response"

    def header_filter(self, req, resp, ctx):
        resp.headers["x-stamp"] = "1"
"""


def test_response_headers_pass_through_on_every_kind_of_route(gateway, tmp_path):
    """Upstream response headers reach the client the same way whether the route passes them on as
    received (plain route, a plugin that never sees the response, limit-count adding its headers,
    metrics and a log taking the status and sizes) or through a header map (a plugin that does, a
    response whose Connection header names another header): repeated headers kept, hop-by-hop
    headers and the ones Connection names dropped, one Date, the right length; limit-count's
    X-RateLimit-* replace the upstream's; the log's bytes_sent counts the header lines passed on."""
    heads = {
        "/plain": b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n",
        "/named": b"Connection: keep-alive, X-Hop\r\nX-Hop: 1\r\n",
    }

    def serve(conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                path = head.split(b" ")[1].decode()
                extra = heads["/named" if path.endswith("/named") else "/plain"]
                conn.sendall(b"HTTP/1.1 200 OK\r\nServer: raw\r\nDate: Thu, 26 Nov 2026 10:00:00 GMT\r\n"
                             b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n" + extra +
                             b"X-Custom: v\r\nX-RateLimit-Limit: 999\r\nContent-Length: 2\r\n\r\nok")  # fmt: skip

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def accept_loop() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "response_header_plugins.py").write_text(RESPONSE_HEADER_PLUGINS)
    log = tmp_path / "observed.log"
    node = {"nodes": {f"127.0.0.1:{port}": 1}}
    gw = gateway({"routes": [
        {"id": "plain", "uri": "/plain/*", "upstream": node},
        {"id": "access", "uri": "/access/*", "upstream": node, "plugins": {"access-only": {}}},
        {"id": "stamp", "uri": "/stamp/*", "upstream": node, "plugins": {"stamp-response": {}}},
        {"id": "counted", "uri": "/counted/*", "upstream": node,
         "plugins": {"limit-count": {"count": 100, "time_window": 60}}},
        {"id": "observed", "uri": "/observed/*", "upstream": node,
         "plugins": {"prometheus": {}, "file-logger": {"path": str(log), "log_format": {"bytes": "$bytes_sent"}}}},
    ]}, args=["--plugin-dir", str(plugins)])  # fmt: skip
    try:
        with httpx.Client() as client:
            for prefix in ("/plain", "/access", "/stamp", "/counted", "/observed"):
                for path in ("/x", "/named"):
                    r = client.get(gw.url + prefix + path)
                    where = prefix + path
                    assert r.status_code == 200 and r.text == "ok", where
                    assert r.headers.get_list("set-cookie") == ["a=1", "b=2"], where
                    assert r.headers["x-custom"] == "v" and r.headers["server"] == "raw", where
                    assert r.headers.get_list("date") == ["Thu, 26 Nov 2026 10:00:00 GMT"], where
                    assert r.headers["content-length"] == "2", where
                    assert "keep-alive" not in r.headers and "x-hop" not in r.headers, where
                    assert r.headers.get("connection", "keep-alive") == "keep-alive", where
                    assert ("x-stamp" in r.headers) == (prefix == "/stamp"), where
                    counted = prefix == "/counted"
                    assert r.headers.get_list("x-ratelimit-limit") == ["100" if counted else "999"], where
                    assert ("x-ratelimit-remaining" in r.headers) == counted, where
        # Status line + the upstream's Server, Date, Set-Cookie x2, X-Custom, X-RateLimit-Limit + body.
        kept = 17 + 13 + 37 + 17 + 17 + 13 + 24 + 2
        assert [orjson.loads(x)["bytes"] >= kept for x in read_lines(log, 2)] == [True, True]
    finally:
        srv.close()
