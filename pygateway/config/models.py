"""The APISIX-shaped config objects as msgspec models: what `validate` decodes each object into.

Field constraints mirror APISIX's `schema_def.lua`; unknown fields are rejected (`forbid_unknown_fields`, as
APISIX does with `additionalProperties = false`). `plugins` and `upstream` are validated separately from the
rest of an object (see `pygateway.config.validate`) and filled in afterwards.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Id = str | int
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Desc = Annotated[str, msgspec.Meta(max_length=256)]
Labels = dict[str, Annotated[str, msgspec.Meta(pattern=r"^\S+$", min_length=1, max_length=64)]]
Host = Annotated[str, msgspec.Meta(pattern=r"^\*?[0-9a-zA-Z-._]+$")]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
Method = Literal["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE"]
# Bounds the Rust side can hold (u32 / i32).
Weight = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
NodePriority = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]


class Strict(msgspec.Struct, forbid_unknown_fields=True):
    pass


class Timeout(Strict):
    connect: Seconds = 5.0
    send: Seconds = 15.0
    read: Seconds = 15.0


class Node(Strict):
    host: Host
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    weight: Weight = 1
    priority: NodePriority = 0
    metadata: dict[str, Any] | None = None  # accepted, unused


class UpstreamTLS(Strict):
    # APISIX's `upstream.tls`. Unlike APISIX we verify by default (docs/architecture.md, "Safe defaults");
    # `verify: false` opts out.
    verify: bool = True


class Upstream(Strict):
    # The dict form {"host:port": weight} is normalized to a list of Node by `_upstream_problems`.
    nodes: list[Node] | dict[str, Weight]
    id: Id | None = None
    type: Literal["roundrobin", "chash", "least_conn", "ewma"] = "roundrobin"
    scheme: Literal["http", "https"] = "http"
    pass_host: Literal["pass", "node", "rewrite"] = "pass"
    upstream_host: Host | None = None
    timeout: Timeout | None = None
    retries: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)] | None = None
    hash_on: Literal["vars", "header", "cookie", "consumer", "vars_combinations"] = "vars"
    key: str | None = None
    tls: UpstreamTLS | None = None
    name: Name | None = None
    desc: Desc | None = None
    labels: Labels | None = None
    # APISIX fields the data plane does not implement: declared so that `unsupported_fields` can
    # refuse them by name ("not supported") instead of "unknown field".
    checks: dict[str, Any] | None = None
    keepalive_pool: dict[str, Any] | None = None
    retry_timeout: Annotated[float, msgspec.Meta(ge=0)] | None = None
    create_time: int | None = None
    update_time: int | None = None


class PluginConf(msgspec.Struct):
    """One validated plugin entry: its class, its validated `Config` and `_meta.disable`."""

    cls: Any  # type[Plugin]
    conf: Any
    disabled: bool = False


# `plugins` and `upstream` are validated separately from the rest of an object (so that one object can
# report several errors) and filled in afterwards; they are never decoded through these structs.
class Route(Strict):
    id: Id | None = None
    uri: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None = None
    uris: Annotated[list[str], msgspec.Meta(min_length=1)] | None = None
    host: Host | None = None
    hosts: Annotated[list[Host], msgspec.Meta(min_length=1)] | None = None
    methods: list[Method] | None = None
    remote_addr: str | None = None
    remote_addrs: Annotated[list[str], msgspec.Meta(min_length=1)] | None = None
    vars: list[Any] | None = None
    priority: int = 0
    upstream_id: Id | None = None
    service_id: Id | None = None
    plugin_config_id: Id | None = None
    timeout: Timeout | None = None
    status: Literal[0, 1] = 1
    enable_websocket: bool | None = None  # only false: `unsupported_fields` refuses true
    name: Name | None = None
    desc: Desc | None = None
    labels: Labels | None = None
    create_time: int | None = None
    update_time: int | None = None
    upstream: Upstream | None = None
    plugins: dict[str, PluginConf] = {}


class Service(Strict):
    id: Id | None = None
    hosts: Annotated[list[Host], msgspec.Meta(min_length=1)] | None = None
    upstream_id: Id | None = None
    enable_websocket: bool | None = None
    name: Name | None = None
    desc: Desc | None = None
    labels: Labels | None = None
    create_time: int | None = None
    update_time: int | None = None
    upstream: Upstream | None = None
    plugins: dict[str, PluginConf] = {}


class Consumer(Strict):
    username: str = ""  # required; checked (and set) by the collection loader
    group_id: Id | None = None
    desc: Desc | None = None
    labels: Labels | None = None
    create_time: int | None = None
    update_time: int | None = None
    plugins: dict[str, PluginConf] = {}


class GlobalRule(Strict):
    id: Id | None = None
    create_time: int | None = None
    update_time: int | None = None
    plugins: dict[str, PluginConf] = {}


class _PluginBundle(Strict):
    """The shape shared by objects that are a described, labelled bundle of plugins."""

    id: Id | None = None
    name: Name | None = None
    desc: Desc | None = None
    labels: Labels | None = None
    create_time: int | None = None
    update_time: int | None = None
    plugins: dict[str, PluginConf] = {}


class PluginConfig(_PluginBundle):
    pass


class ConsumerGroup(_PluginBundle):
    """APISIX's consumer group: plugins shared by the consumers whose `group_id` names it."""


class Config(msgspec.Struct):
    """The validated config: every object by its (string) id; consumers by username."""

    routes: dict[str, Route] = {}
    services: dict[str, Service] = {}
    upstreams: dict[str, Upstream] = {}
    consumers: dict[str, Consumer] = {}
    global_rules: dict[str, GlobalRule] = {}
    plugin_configs: dict[str, PluginConfig] = {}
    consumer_groups: dict[str, ConsumerGroup] = {}


# The model of each collection of the standalone config.
MODELS: dict[str, type[Strict]] = {
    "routes": Route,
    "services": Service,
    "upstreams": Upstream,
    "consumers": Consumer,
    "global_rules": GlobalRule,
    "plugin_configs": PluginConfig,
    "consumer_groups": ConsumerGroup,
}


# Objects the admin API stores and serves that the standalone config has no collection for (SSLs,
# credentials); the data plane uses credentials only.
class Credential(_PluginBundle):
    """`/consumers/{username}/credentials/{id}`: auth plugin confs (validated as consumer confs)."""


Pem = Annotated[str, msgspec.Meta(min_length=128, max_length=64 * 1024)]  # APISIX's certificate bounds


class SSLClient(Strict):
    ca: Pem
    depth: Annotated[int, msgspec.Meta(ge=0)] = 1
    skip_mtls_uri_regex: Annotated[list[str], msgspec.Meta(min_length=1)] | None = None


class SSL(Strict):
    id: Id | None = None
    cert: Pem | None = None
    key: Pem | None = None
    certs: list[Pem] | None = None
    keys: list[Pem] | None = None
    sni: Host | None = None
    snis: Annotated[list[Host], msgspec.Meta(min_length=1)] | None = None
    client: SSLClient | None = None
    type: Literal["server", "client"] = "server"
    ssl_protocols: list[Literal["TLSv1.1", "TLSv1.2", "TLSv1.3"]] | None = None
    status: Literal[0, 1] = 1
    desc: Desc | None = None
    labels: Labels | None = None
    validity_start: int | None = None
    validity_end: int | None = None
    create_time: int | None = None
    update_time: int | None = None


# Every object kind `validate_object` knows (plugin_metadata aside: its shape is the plugin's).
OBJECT_MODELS: dict[str, type[msgspec.Struct]] = {
    **MODELS,
    "ssls": SSL,
    "credentials": Credential,
}
