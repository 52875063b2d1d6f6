"""A worker process: the Rust data plane on its main thread, plus the Python it needs — the plugin host
(the chains the Rust core calls), the http-logger sender and the OpenTelemetry exporter."""
