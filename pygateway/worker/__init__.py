"""A worker process: the Rust data plane on its main thread, plus the Python it needs — the compiled config
it reads from the master and the plugin chains it makes from it (`compiled`), the plugin host (the chains
the Rust core calls), the http-logger sender and the OpenTelemetry exporter."""
