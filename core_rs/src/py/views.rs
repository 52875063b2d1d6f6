//! The objects plugins see: `Request`, `Headers`, `ResponseView`. Lazy views over Rust-owned data;
//! nothing is converted to Python until a plugin asks for it.
use crate::proxy::phases::ShortResponse;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn name(n: &str) -> PyResult<HeaderName> {
    HeaderName::from_bytes(n.as_bytes())
        .map_err(|_| PyValueError::new_err(format!("invalid header name {n:?}")))
}

fn value(v: &str) -> PyResult<HeaderValue> {
    HeaderValue::from_str(v)
        .map_err(|_| PyValueError::new_err(format!("invalid header value {v:?}")))
}

/// Case-insensitive, multi-valued header map. `h[k]` is the first value; `h[k] = v` replaces all.
#[pyclass(module = "pygateway._core", name = "Headers", frozen)]
pub struct PyHeaders {
    map: Mutex<HeaderMap>,
}

impl PyHeaders {
    pub fn new(map: HeaderMap) -> PyHeaders {
        PyHeaders {
            map: Mutex::new(map),
        }
    }
    pub fn take(&self) -> HeaderMap {
        std::mem::take(&mut *lock(&self.map))
    }
    pub fn snapshot(&self) -> HeaderMap {
        lock(&self.map).clone()
    }
}

#[pymethods]
impl PyHeaders {
    fn __getitem__(&self, key: &str) -> PyResult<String> {
        self.get(key, None)
            .ok_or_else(|| PyKeyError::new_err(key.to_string()))
    }
    #[pyo3(signature = (key, default=None))]
    fn get(&self, key: &str, default: Option<String>) -> Option<String> {
        lock(&self.map)
            .get(key)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .or(default)
    }
    /// Every value of a header, in order.
    fn getall(&self, key: &str) -> Vec<String> {
        lock(&self.map)
            .get_all(key)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
    fn __setitem__(&self, key: &str, val: &str) -> PyResult<()> {
        let (k, v) = (name(key)?, value(val)?);
        lock(&self.map).insert(k, v);
        Ok(())
    }
    /// Append a value, keeping existing ones.
    fn add(&self, key: &str, val: &str) -> PyResult<()> {
        let (k, v) = (name(key)?, value(val)?);
        lock(&self.map).append(k, v);
        Ok(())
    }
    fn __delitem__(&self, key: &str) -> PyResult<()> {
        match lock(&self.map).remove(key) {
            Some(_) => Ok(()),
            None => Err(PyKeyError::new_err(key.to_string())),
        }
    }
    /// Remove a header if present (no error when absent).
    fn remove(&self, key: &str) {
        lock(&self.map).remove(key);
    }
    fn __contains__(&self, key: &str) -> bool {
        lock(&self.map).contains_key(key)
    }
    fn __len__(&self) -> usize {
        lock(&self.map).len()
    }
    fn keys(&self) -> Vec<String> {
        lock(&self.map)
            .keys()
            .map(|k| k.as_str().to_string())
            .collect()
    }
    fn items(&self) -> Vec<(String, String)> {
        lock(&self.map)
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect()
    }
    fn __repr__(&self) -> String {
        format!("Headers({:?})", self.items())
    }
}

/// The mutable part of a request, shared between the I/O thread and plugin hooks.
pub struct ReqState {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub consumer: Option<String>,
    pub upstream: Option<(String, u16)>,
    /// The whole request body, when a plugin of the route set `needs_body`.
    pub body: Option<bytes::Bytes>,
}

/// What a plugin sees of a request. Reads are lazy; writes are applied before proxying.
#[pyclass(module = "pygateway._core", name = "Request", frozen)]
pub struct PyRequest {
    pub state: Mutex<ReqState>,
    pub headers: Py<PyHeaders>,
    pub client_ip: IpAddr,
    pub client_port: u16,
    pub host: String,
    pub scheme: &'static str,
    pub route_id: Arc<str>,
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                crate::router::reqvars::form_decode(k),
                crate::router::reqvars::form_decode(v),
            )
        })
        .collect()
}

#[pymethods]
impl PyRequest {
    #[getter]
    fn method(&self) -> String {
        lock(&self.state).method.as_str().to_string()
    }
    #[setter]
    fn set_method(&self, m: &str) -> PyResult<()> {
        let m = Method::from_bytes(m.as_bytes())
            .map_err(|_| PyValueError::new_err(format!("invalid method {m:?}")))?;
        lock(&self.state).method = m;
        Ok(())
    }
    /// The normalized request path (what routing matched); set it to rewrite the upstream path.
    #[getter]
    fn path(&self) -> String {
        lock(&self.state).path.clone()
    }
    #[setter]
    fn set_path(&self, p: &str) -> PyResult<()> {
        if !p.starts_with('/') || p.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(PyValueError::new_err(format!(
                "path must start with '/' and have no spaces: {p:?}"
            )));
        }
        lock(&self.state).path = p.to_string();
        Ok(())
    }
    /// The raw query string without '?', or "" when absent; set it to rewrite the query.
    #[getter]
    fn query(&self) -> String {
        lock(&self.state).query.clone().unwrap_or_default()
    }
    #[setter]
    fn set_query(&self, q: &str) -> PyResult<()> {
        if q.bytes()
            .any(|b| b.is_ascii_control() || b == b' ' || b == b'#')
        {
            return Err(PyValueError::new_err(format!("invalid query string {q:?}")));
        }
        lock(&self.state).query = if q.is_empty() {
            None
        } else {
            Some(q.trim_start_matches('?').to_string())
        };
        Ok(())
    }
    /// Query arguments, decoded; the first value wins for repeated keys.
    #[getter]
    fn args<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let q = lock(&self.state).query.clone().unwrap_or_default();
        for (k, v) in parse_query(&q) {
            if !d.contains(&k)? {
                d.set_item(k, v)?;
            }
        }
        Ok(d)
    }
    #[getter]
    fn headers(&self, py: Python<'_>) -> Py<PyHeaders> {
        self.headers.clone_ref(py)
    }
    #[getter]
    fn client_addr(&self) -> String {
        self.client_ip.to_string()
    }
    #[getter]
    fn client_port(&self) -> u16 {
        self.client_port
    }
    #[getter]
    fn host(&self) -> &str {
        &self.host
    }
    #[getter]
    fn scheme(&self) -> &str {
        self.scheme
    }
    #[getter]
    fn route_id(&self) -> &str {
        &self.route_id
    }
    /// The authenticated consumer's username (set by auth plugins), or None.
    #[getter]
    fn consumer(&self) -> Option<String> {
        lock(&self.state).consumer.clone()
    }
    #[setter]
    fn set_consumer(&self, c: Option<String>) {
        lock(&self.state).consumer = c;
    }
    /// The request body (bytes) when a plugin of this route sets `needs_body = True`, else None.
    /// Assign bytes to replace what the upstream receives.
    #[getter]
    fn body<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        lock(&self.state).body.as_ref().map(|b| PyBytes::new(py, b))
    }
    #[setter]
    fn set_body(&self, body: &[u8]) -> PyResult<()> {
        let mut s = lock(&self.state);
        if s.body.is_none() {
            return Err(PyValueError::new_err(
                "req.body can only be replaced on routes whose plugins set needs_body = True",
            ));
        }
        s.body = Some(bytes::Bytes::copy_from_slice(body));
        Ok(())
    }
    /// Send this request to `host:port` instead of a node picked by the upstream's balancer.
    fn set_upstream(&self, host: &str, port: u16) -> PyResult<()> {
        if host.is_empty() {
            return Err(PyValueError::new_err("host must not be empty"));
        }
        lock(&self.state).upstream = Some((host.to_string(), port));
        Ok(())
    }
    fn __repr__(&self) -> String {
        let s = lock(&self.state);
        format!("Request({} {} route={})", s.method, s.path, self.route_id)
    }
}

/// The response on its way back: status and headers can be changed in `header_filter`.
#[pyclass(module = "pygateway._core", name = "ResponseView", frozen)]
pub struct PyResponseView {
    pub status: Mutex<u16>,
    pub headers: Py<PyHeaders>,
}

#[pymethods]
impl PyResponseView {
    #[getter]
    fn status(&self) -> u16 {
        *lock(&self.status)
    }
    #[setter]
    fn set_status(&self, s: u16) -> PyResult<()> {
        if !(100..=599).contains(&s) {
            return Err(PyValueError::new_err(format!(
                "status must be 100..599, got {s}"
            )));
        }
        *lock(&self.status) = s;
        Ok(())
    }
    #[getter]
    fn headers(&self, py: Python<'_>) -> Py<PyHeaders> {
        self.headers.clone_ref(py)
    }
    fn __repr__(&self) -> String {
        format!("ResponseView({})", *lock(&self.status))
    }
}

/// Turns a plugin's short-circuit tuple `(status, [(name, value)], body)` into a response.
pub fn response_parts(obj: &Bound<'_, PyAny>) -> PyResult<ShortResponse> {
    let (status, headers, body): (u16, Bound<'_, PyList>, Bound<'_, PyBytes>) = obj.extract()?;
    let mut hs = Vec::with_capacity(headers.len());
    for item in headers.iter() {
        hs.push(item.extract::<(String, String)>()?);
    }
    Ok(ShortResponse {
        status,
        headers: hs,
        body: body.as_bytes().to_vec(),
    })
}

pub fn lock_state(r: &PyRequest) -> MutexGuard<'_, ReqState> {
    lock(&r.state)
}

pub fn lock_status(r: &PyResponseView) -> MutexGuard<'_, u16> {
    lock(&r.status)
}
