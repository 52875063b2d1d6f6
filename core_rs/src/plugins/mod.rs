//! Native (Rust) plugins and per-route features compiled from plugin configs, one file each holding
//! config, compile and apply.
//!
//! They sit below the proxy: the proxy calls them, they never import it (docs/architecture.md, "The
//! Rust core"). What they need of a request comes as plain values from lower layers (the router's
//! `ReqVars`, a generic response body), what they decide goes back as a value (a limiter's
//! `Rejected`), and the proxy turns it into a response; their compile errors are `config`'s.
pub mod gzip;
pub mod limit;
pub mod loggers;
pub mod otel;
pub mod prometheus;
pub mod realip;
