"""pygateway: an API gateway with a Rust data plane and plugins in plain Python."""

from pygateway._core import Headers, Request, ResponseView, __version__
from pygateway.plugin import Plugin, Response

__all__ = ["Headers", "Plugin", "Request", "Response", "ResponseView", "__version__"]
