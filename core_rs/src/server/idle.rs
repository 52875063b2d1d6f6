//! Keep-alive idle timeout: a connection with no request in flight that moved no byte for the
//! timeout is closed (nginx's `keepalive_timeout`).
//!
//! hyper's own header-read timer did this before, at the cost of a new boxed timer, a clock read
//! and a timer-wheel insert and removal for every request (~1k instructions, 3% of a proxied
//! request). Here one timer per connection wakes every quarter of the timeout and compares a
//! counter that reads, writes and requests bump; a connection closes after four quiet checks, so
//! between 1x and 1.25x the timeout after its last activity.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

const CHECKS: u32 = 4;

/// What a connection did, shared by its IO wrapper, its service and its idle timer.
#[derive(Default)]
pub struct Activity {
    moved: Cell<u64>,
    in_flight: Cell<u32>,
    requests: Cell<u64>,
}

impl Activity {
    /// Bytes were read or written.
    #[inline]
    pub fn moved(&self) {
        self.moved.set(self.moved.get().wrapping_add(1));
    }

    /// A request is being handled until the guard is dropped.
    pub fn request(self: &Rc<Self>) -> InFlight {
        self.in_flight.set(self.in_flight.get() + 1);
        self.requests.set(self.requests.get() + 1);
        self.moved();
        InFlight(self.clone())
    }

    /// Requests the connection has carried so far (for the keep-alive request cap).
    pub fn requests(&self) -> u64 {
        self.requests.get()
    }
}

pub struct InFlight(Rc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.in_flight.set(a.in_flight.get() - 1);
        a.moved();
    }
}

pub struct IdleTimer {
    act: Rc<Activity>,
    every: Duration,
    sleep: Pin<Box<Sleep>>,
    /// The timer holds this task's waker (polled since it was last armed).
    armed: bool,
    seen: u64,
    quiet: u32,
}

impl IdleTimer {
    pub fn new(act: Rc<Activity>, timeout: Duration) -> IdleTimer {
        let every = (timeout / CHECKS).max(Duration::from_millis(1));
        IdleTimer {
            seen: act.moved.get(),
            act,
            every,
            sleep: Box::pin(tokio::time::sleep(every)),
            armed: false,
            quiet: 0,
        }
    }

    /// Ready once the connection has been idle for the timeout. Cheap on the hot path: between
    /// checks it only reads the timer's state.
    pub fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.armed && !self.sleep.is_elapsed() {
            return Poll::Pending;
        }
        while self.sleep.as_mut().poll(cx).is_ready() {
            let moved = self.act.moved.get();
            if moved == self.seen && self.act.in_flight.get() == 0 {
                self.quiet += 1;
                if self.quiet >= CHECKS {
                    return Poll::Ready(());
                }
            } else {
                self.quiet = 0;
                self.seen = moved;
            }
            let next = (self.sleep.deadline() + self.every).max(Instant::now());
            self.sleep.as_mut().reset(next);
        }
        self.armed = true;
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    async fn idle_after(act: Rc<Activity>, timeout: Duration) -> Duration {
        let start = std::time::Instant::now();
        let mut t = IdleTimer::new(act, timeout);
        poll_fn(|cx| t.poll_idle(cx)).await;
        start.elapsed()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn quiet_connection_closes_after_the_timeout() {
        let took = idle_after(Rc::default(), Duration::from_millis(200)).await;
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_millis(200 * 5 / 4 + 150), "{took:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn activity_and_requests_in_flight_keep_it_open() {
        let act: Rc<Activity> = Rc::default();
        let a2 = act.clone();
        // Bytes move every 50 ms for 400 ms, then one request stays in flight for 400 ms.
        let busy = async move {
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                a2.moved();
            }
            let guard = a2.request();
            tokio::time::sleep(Duration::from_millis(400)).await;
            drop(guard);
        };
        let (took, ()) = tokio::join!(idle_after(act, Duration::from_millis(200)), busy);
        let quiet_from = Duration::from_millis(800);
        assert!(took >= quiet_from + Duration::from_millis(200), "{took:?}");
        assert!(
            took < quiet_from + Duration::from_millis(250 + 150),
            "{took:?}"
        );
    }
}
