"""The admin API: APISIX's `/apisix/admin` REST API over a config `Store`, as a plain ASGI app.

    app = create_app(store, registry, admin_key="...", viewer_key=None, allow_admin=["127.0.0.0/8"])
    uvicorn.run(app, port=9180)

See `pygateway.admin.app` for the routes and where they differ from APISIX.
"""

from __future__ import annotations

from pygateway.admin.app import AdminApp, create_app

__all__ = ["AdminApp", "create_app"]
