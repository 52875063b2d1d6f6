//! pygateway's data plane. Everything but `py/` is free of PyO3 (the extension module `_core` is
//! declared there), so `cargo test` runs without Python.
pub mod cidr;
pub mod config;
pub mod http1;
pub mod limit;
pub mod loadgen;
pub mod observe;
pub mod plugins;
pub mod proxy;
pub mod py;
pub mod router;
pub mod server;
pub mod sys;
pub mod upstream;

// mimalloc for the Rust side: the request path allocates small, short-lived buffers and glibc's
// malloc/free showed up at ~8% of a worker's CPU in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
