//! Native (Rust) plugins and per-route features compiled from plugin configs.
pub mod gzip;
pub mod limit;
pub mod loggers;
pub mod otel;
pub mod prometheus;
pub mod realip;
