"""A small upstream for the tests: echoes what it received as JSON (ASGI under uvicorn).

GET /delay/<ms> sleeps first; /status/<code> answers that status; /big/<n> streams n bytes;
every response carries `x-upstream: <name>` so tests can tell nodes apart.
Run: python tests/echo_upstream.py PORT NAME
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson

NAME = "upstream"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    path: str = scope["path"]
    raw_path = scope.get("raw_path") or path.encode()
    status = 200
    parts = path.strip("/").split("/")
    if parts[0] == "delay" and len(parts) > 1:
        await asyncio.sleep(int(parts[1]) / 1000)
    if parts[0] == "status" and len(parts) > 1:
        status = int(parts[1])
    headers = [(b"content-type", b"application/json"), (b"x-upstream", NAME.encode())]
    if parts[0] == "big" and len(parts) > 1:
        n = int(parts[1])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-upstream", NAME.encode())]})
        chunk = b"x" * 65536
        while n > 0:
            piece = chunk[: min(n, len(chunk))]
            n -= len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": n > 0})
        return
    out = {
        "upstream": NAME,
        "method": scope["method"],
        "path": path,
        "raw_path": raw_path.decode("latin-1"),
        "query": scope["query_string"].decode("latin-1"),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "body": body.decode("latin-1"),
    }
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": orjson.dumps(out)})


if __name__ == "__main__":
    import uvicorn

    port = int(sys.argv[1])
    NAME = sys.argv[2] if len(sys.argv) > 2 else f"up{port}"
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", http="h11", lifespan="on")
