//! pygateway's data plane. Everything but `py/` is free of PyO3, so `cargo test` runs without Python.
pub mod config;
pub mod limit;
pub mod proxy;
pub mod py;
pub mod router;
pub mod server;

use pyo3::prelude::*;

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    py::register(m)
}
