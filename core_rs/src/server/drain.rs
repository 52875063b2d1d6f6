//! Open connections of one worker and their graceful drain.
//!
//! hyper_util's `GracefulShutdown` wraps each connection in a future that polls a watch channel on
//! every wake-up (~900 instructions per proxied request). Here a connection registers its task's
//! waker once and checks a flag; `start` wakes them all.

use super::h1::Conn;
use super::idle::IdleTimer;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};
use tokio::sync::Notify;

#[derive(Clone, Default)]
pub struct Drain(Rc<Inner>);

#[derive(Default)]
struct Inner {
    started: Cell<bool>,
    open: Cell<usize>,
    next_id: Cell<u64>,
    /// Tasks of open connections not yet told to finish, by connection id.
    wakers: RefCell<HashMap<u64, Waker>>,
    all_closed: Notify,
}

/// An admitted connection: counted as open until dropped (also if its task is dropped mid-way).
pub struct Admitted(Rc<Inner>, u64);

impl Drop for Admitted {
    fn drop(&mut self) {
        let inner = &self.0;
        inner.wakers.borrow_mut().remove(&self.1);
        inner.open.set(inner.open.get() - 1);
        if inner.open.get() == 0 {
            inner.all_closed.notify_waiters();
        }
    }
}

impl Drain {
    /// Connections being served now.
    pub fn open(&self) -> usize {
        self.0.open.get()
    }

    /// Count a new connection as open (at accept, so caps see it before its task runs).
    pub fn admit(&self) -> Admitted {
        let inner = &self.0;
        let id = inner.next_id.get();
        inner.next_id.set(id + 1);
        inner.open.set(inner.open.get() + 1);
        Admitted(inner.clone(), id)
    }

    /// Serve `conn` to its end, or until `idle` says it idled out (then it is dropped: closed);
    /// once `start` is called it finishes the request in flight and closes.
    pub async fn serve(&self, admitted: Admitted, conn: Conn, mut idle: IdleTimer) {
        let (inner, id) = (&self.0, admitted.1);
        let mut conn = std::pin::pin!(conn);
        let (mut registered, mut told) = (false, false);
        poll_fn(|cx| {
            if !told {
                if inner.started.get() {
                    conn.graceful_shutdown();
                    told = true;
                } else if !registered {
                    // A spawned task's waker stays the same for its whole life: register once.
                    inner.wakers.borrow_mut().insert(id, cx.waker().clone());
                    registered = true;
                }
            }
            if idle.poll_idle(cx).is_ready() {
                return Poll::Ready(());
            }
            conn.as_mut().poll(cx)
        })
        .await;
        drop(admitted);
    }

    /// Tell every open connection to finish its request in flight and close.
    pub fn start(&self) {
        self.0.started.set(true);
        let wakers: Vec<Waker> = self.0.wakers.borrow_mut().drain().map(|(_, w)| w).collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Resolves when no connection is open.
    pub async fn closed(&self) {
        loop {
            let notified = self.0.all_closed.notified();
            if self.0.open.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}
