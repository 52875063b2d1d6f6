//! `CidrSet`: the Python face of `crate::cidr::Ranges` for plugins (e.g. `ip-restriction`).

use crate::cidr::Ranges;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// `CidrSet(["10.0.0.0/8", "::1", ...])`: `contains(addr)` in O(log n).
#[pyclass(module = "pygateway._core", name = "CidrSet", frozen)]
pub struct CidrSet {
    inner: Ranges,
}

#[pymethods]
impl CidrSet {
    /// Raises ValueError naming the first entry that is neither a CIDR nor an IP address.
    #[new]
    fn new(cidrs: Vec<String>) -> PyResult<CidrSet> {
        Ranges::parse(cidrs.iter().map(String::as_str))
            .map(|inner| CidrSet { inner })
            .map_err(PyValueError::new_err)
    }

    /// True when `addr` is in one of the networks; False when it is not an IP address.
    fn contains(&self, addr: &str) -> bool {
        self.inner.contains(addr)
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }
}
