//! Calling a route's Python plugin chain from the I/O thread.
//!
//! The chain is a `pygateway.worker.host.Chain`: one Python call per phase runs every plugin of that phase
//! (and catches their exceptions), so a request crosses the FFI boundary once per phase, not per plugin.
//! Async phases are handed to the worker's asyncio loop thread and awaited through a oneshot channel;
//! the I/O thread keeps serving other requests meanwhile.
use crate::http1::BoxError;
use crate::proxy::phases::{Flow, Phase, PhaseSet, PluginChain, ReqEdits, ReqInfo, ShortResponse};
use crate::py::views::{
    lock_state, lock_status, response_parts, PyHeaders, PyRequest, PyResponseView, ReqState,
};
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::HeaderMap;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// The worker's `submit(coro, waker)` (runs async hooks on its asyncio loop), set once the loop runs;
/// every chain of the worker holds the same slot.
pub type SubmitSlot = Arc<ArcSwapOption<PyObj<PyAny>>>;

/// A Python object that may be dropped while detached from the interpreter (we build with
/// `pyo3_disable_reference_pool`, so a bare `Py<T>` must only be dropped while attached).
pub struct PyObj<T>(Option<Py<T>>);

impl<T> PyObj<T> {
    pub fn new(o: Py<T>) -> Self {
        PyObj(Some(o))
    }
    pub fn get(&self) -> &Py<T> {
        self.0.as_ref().expect("present until drop")
    }
}

impl<T> Drop for PyObj<T> {
    fn drop(&mut self) {
        if let Some(o) = self.0.take() {
            Python::attach(move |_| drop(o));
        }
    }
}

pub struct PyChain {
    obj: PyObj<PyAny>,
    phases: PhaseSet,
    async_phases: PhaseSet,
    needs_body: bool,
    submit: SubmitSlot,
}

/// A Python object owned by a `PyReq`: released together with its siblings, in one attach.
pub struct Held<T>(Option<Py<T>>);

impl<T> Held<T> {
    fn new(o: Py<T>) -> Self {
        Held(Some(o))
    }
    pub fn get(&self) -> &Py<T> {
        self.0.as_ref().expect("present until the PyReq is dropped")
    }
}

/// A request's Python side: the view object and the per-request `ctx` dict.
pub struct PyReq {
    req: Held<PyRequest>,
    ctx: Held<PyDict>,
    resp: Option<Held<PyResponseView>>,
}

type PyReqObjs = (
    Option<Py<PyRequest>>,
    Option<Py<PyDict>>,
    Option<Py<PyResponseView>>,
);

impl PyReq {
    /// The Python objects still held, if any.
    fn take_objs(&mut self) -> Option<PyReqObjs> {
        let objs = (
            self.req.0.take(),
            self.ctx.0.take(),
            self.resp.as_mut().and_then(|r| r.0.take()),
        );
        (objs.0.is_some() || objs.1.is_some() || objs.2.is_some()).then_some(objs)
    }

    /// Drop the Python objects now, while attached, when no later phase will use them: dropping
    /// the `PyReq` then needs no trip into Python of its own.
    fn release_in(&mut self, _py: Python<'_>) {
        drop(self.take_objs());
    }
}

impl Drop for PyReq {
    fn drop(&mut self) {
        if let Some(objs) = self.take_objs() {
            // One attach for all of them (we build with `pyo3_disable_reference_pool`).
            Python::attach(move |_| drop(objs));
        }
    }
}

fn internal_error(what: &str) -> ShortResponse {
    ShortResponse::internal_error(what)
}

fn log_py_error(py: Python<'_>, err: PyErr, what: &str) {
    eprintln!("pygateway: error in {what}:");
    err.print(py);
}

impl PyChain {
    pub fn new(py: Python<'_>, obj: Py<PyAny>, submit: SubmitSlot) -> PyResult<PyChain> {
        let b = obj.bind(py);
        let phases: u8 = b.getattr("phases")?.extract()?;
        let async_phases: u8 = b.getattr("async_phases")?.extract()?;
        let needs_body: bool = b.getattr("needs_body")?.extract()?;
        Ok(PyChain {
            obj: PyObj::new(obj),
            phases: PhaseSet(phases),
            async_phases: PhaseSet(async_phases),
            needs_body,
            submit,
        })
    }

    fn begin_in(py: Python<'_>, info: ReqInfo) -> PyReq {
        let headers = Py::new(py, PyHeaders::new(info.headers)).expect("alloc Headers");
        let req = PyRequest {
            state: Mutex::new(ReqState {
                method: info.method,
                path: info.path,
                query: info.query,
                consumer: None,
                upstream: None,
                body: info.body,
            }),
            headers,
            client_ip: info.client_ip,
            client_port: info.client_port,
            host: info.host,
            scheme: info.scheme,
            route_id: info.route_id,
        };
        PyReq {
            req: Held::new(Py::new(py, req).expect("alloc Request")),
            ctx: Held::new(PyDict::new(py).unbind()),
            resp: None,
        }
    }

    fn begin_and_run_in(
        &self,
        info: ReqInfo,
        phases: &[Phase],
    ) -> (PyReq, Result<ReqEdits, ShortResponse>) {
        let last = *phases.last().expect("at least one phase");
        // No phase after `phases` (nor a response phase) will read the request view or ctx.
        let done = !self.phases.any_after(last);
        Python::attach(|py| {
            let mut preq = Self::begin_in(py, info);
            for &phase in phases {
                if self.has(phase) {
                    if let Flow::Respond(r) = self.run_in(py, &preq, phase) {
                        if done {
                            preq.release_in(py);
                        }
                        return (preq, Err(r));
                    }
                }
            }
            let outcome = self.outcome_in(py, &preq, last);
            if done {
                preq.release_in(py);
            }
            (preq, Ok(outcome))
        })
    }

    fn run_in(&self, py: Python<'_>, preq: &PyReq, phase: Phase) -> Flow {
        let r = self.obj.get().bind(py).call_method1(
            intern!(py, "run"),
            (
                phase as u8,
                preq.req.get().clone_ref(py),
                preq.ctx.get().clone_ref(py),
            ),
        );
        Self::flow(py, r)
    }

    /// Run one request phase (`rewrite`, `access`, `before_proxy`).
    async fn request_phase_in(&self, preq: &PyReq, phase: Phase) -> Flow {
        if !self.async_phases.contains(phase) {
            return Python::attach(|py| self.run_in(py, preq, phase));
        }
        let Some(submit) = self.submit.load_full() else {
            // Only before the worker's asyncio loop runs, i.e. never while it serves.
            return Flow::Respond(internal_error("plugin error"));
        };
        let (tx, rx) = oneshot::channel::<PyObj<PyAny>>();
        let submitted = Python::attach(|py| -> PyResult<()> {
            let coro = self.obj.get().bind(py).call_method1(
                "run_async",
                (
                    phase as u8,
                    preq.req.get().clone_ref(py),
                    preq.ctx.get().clone_ref(py),
                ),
            )?;
            let waker = Py::new(
                py,
                Waker {
                    tx: Mutex::new(Some(tx)),
                },
            )?;
            submit.get().bind(py).call1((coro, waker))?;
            Ok(())
        });
        if let Err(e) = submitted {
            Python::attach(|py| log_py_error(py, e, "submitting an async plugin phase"));
            return Flow::Respond(internal_error("plugin error"));
        }
        match rx.await {
            Ok(fut) => Python::attach(|py| {
                let r = fut.get().bind(py).call_method0("result");
                Self::flow(py, r)
            }),
            Err(_) => Flow::Respond(internal_error("plugin error")),
        }
    }

    fn flow(py: Python<'_>, r: PyResult<Bound<'_, PyAny>>) -> Flow {
        match r {
            Ok(v) if v.is_none() => Flow::Continue,
            Ok(v) => match response_parts(&v) {
                Ok(resp) => Flow::Respond(resp),
                Err(e) => {
                    log_py_error(py, e, "a plugin's response");
                    Flow::Respond(internal_error("plugin error"))
                }
            },
            Err(e) => {
                log_py_error(py, e, "a plugin chain");
                Flow::Respond(internal_error("plugin error"))
            }
        }
    }

    /// Read back what plugins changed (headers, path, query, method, consumer, chosen node) after
    /// `phase`. When a later phase may still read the request, the view keeps a copy; otherwise
    /// the data is moved out (no copy on the common path).
    fn outcome_in(&self, py: Python<'_>, preq: &PyReq, phase: Phase) -> ReqEdits {
        let keep = self.phases.any_after(phase);
        {
            let r = preq.req.get().get();
            let headers = if keep {
                r.headers.bind(py).get().snapshot()
            } else {
                r.headers.bind(py).get().take()
            };
            let mut s = lock_state(r);
            if keep {
                ReqEdits {
                    method: s.method.clone(),
                    path: s.path.clone(),
                    query: s.query.clone(),
                    consumer: s.consumer.clone(),
                    upstream: s.upstream.clone(),
                    body: s.body.clone(),
                    headers,
                }
            } else {
                ReqEdits {
                    method: s.method.clone(),
                    path: std::mem::take(&mut s.path),
                    query: s.query.take(),
                    consumer: s.consumer.take(),
                    upstream: s.upstream.take(),
                    body: s.body.take(),
                    headers,
                }
            }
        }
    }

    /// `header_filter`: plugins may change status and headers. Returns a 500 response if they raise.
    fn header_filter_in(
        &self,
        preq: &mut PyReq,
        status: &mut u16,
        headers: &mut HeaderMap,
    ) -> Option<ShortResponse> {
        if !self.sees_response() {
            return None;
        }
        Python::attach(|py| {
            let hs = Py::new(py, PyHeaders::new(std::mem::take(headers))).expect("alloc Headers");
            let view = Py::new(
                py,
                PyResponseView {
                    status: Mutex::new(*status),
                    headers: hs,
                },
            )
            .expect("alloc ResponseView");
            let mut failed = None;
            if self.has(Phase::HeaderFilter) {
                let r = self.obj.get().bind(py).call_method1(
                    "header_filter",
                    (
                        preq.req.get().clone_ref(py),
                        view.clone_ref(py),
                        preq.ctx.get().clone_ref(py),
                    ),
                );
                if let Flow::Respond(resp) = Self::flow(py, r) {
                    failed = Some(resp);
                }
            }
            let v = view.get();
            *status = *lock_status(v);
            *headers = if self.has(Phase::Log) {
                v.headers.get().snapshot()
            } else {
                v.headers.get().take()
            };
            preq.resp = Some(Held::new(view));
            failed
        })
    }

    fn log_in(&self, preq: &PyReq) {
        Python::attach(|py| {
            let resp = match &preq.resp {
                Some(r) => r.get().clone_ref(py).into_any(),
                None => py.None(),
            };
            let r = self.obj.get().bind(py).call_method1(
                "log",
                (
                    preq.req.get().clone_ref(py),
                    resp,
                    preq.ctx.get().clone_ref(py),
                ),
            );
            if let Err(e) = r {
                log_py_error(py, e, "a log phase");
            }
        })
    }
}

/// `body_filter` over a streamed body: one Python call per chunk.
impl PyChain {
    fn body_filter_in(&self, preq: &PyReq, chunk: Bytes, eof: bool) -> Result<Bytes, BoxError> {
        Python::attach(|py| {
            let resp = match &preq.resp {
                Some(r) => r.get().clone_ref(py).into_any(),
                None => py.None(),
            };
            let r = self.obj.get().bind(py).call_method1(
                "body_filter",
                (
                    preq.req.get().clone_ref(py),
                    resp,
                    PyBytes::new(py, &chunk),
                    eof,
                    preq.ctx.get().clone_ref(py),
                ),
            );
            match r {
                Ok(v) if v.is_none() => Ok(chunk),
                Ok(v) => match v.cast::<PyBytes>() {
                    Ok(b) => Ok(Bytes::copy_from_slice(b.as_bytes())),
                    Err(_) => Err("body_filter must return bytes or None".into()),
                },
                Err(e) => {
                    log_py_error(py, e, "a body_filter");
                    Err("body_filter raised".into())
                }
            }
        })
    }
}

impl PluginChain for PyChain {
    type Req = PyReq;

    fn phases(&self) -> PhaseSet {
        self.phases
    }

    fn needs_body(&self) -> bool {
        self.needs_body
    }

    fn all_sync(&self, phases: &[Phase]) -> bool {
        PhaseSet(self.async_phases.0 & PhaseSet::of(phases).0) == PhaseSet::default()
    }

    fn begin(&self, info: ReqInfo) -> PyReq {
        Python::attach(|py| Self::begin_in(py, info))
    }

    fn begin_and_run(
        &self,
        info: ReqInfo,
        phases: &[Phase],
    ) -> (PyReq, Result<ReqEdits, ShortResponse>) {
        self.begin_and_run_in(info, phases)
    }

    fn request_phase<'a>(
        &'a self,
        req: &'a PyReq,
        phase: Phase,
    ) -> impl Future<Output = Flow> + 'a {
        self.request_phase_in(req, phase)
    }

    fn edits(&self, req: &PyReq, phase: Phase) -> ReqEdits {
        Python::attach(|py| self.outcome_in(py, req, phase))
    }

    fn header_filter(
        &self,
        req: &mut PyReq,
        status: &mut u16,
        headers: &mut HeaderMap,
    ) -> Option<ShortResponse> {
        self.header_filter_in(req, status, headers)
    }

    fn body_filter(&self, req: &PyReq, chunk: Bytes, eof: bool) -> Result<Bytes, BoxError> {
        self.body_filter_in(req, chunk, eof)
    }

    fn log(&self, req: &PyReq) {
        self.log_in(req)
    }
}

/// Completes an async phase: the asyncio side calls it with the finished future.
#[pyclass(module = "pygateway._core", name = "Waker", frozen)]
pub struct Waker {
    tx: Mutex<Option<oneshot::Sender<PyObj<PyAny>>>>,
}

#[pymethods]
impl Waker {
    fn __call__(&self, fut: Py<PyAny>) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // If the request went away meanwhile, the future is dropped here, still attached.
            let _ = tx.send(PyObj::new(fut));
        }
    }
}
