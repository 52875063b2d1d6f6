//! A queue the I/O thread fills and a Python background thread (http-logger sender, OTLP exporter)
//! drains. The consumer sleeps in `wait` while it is empty, so an idle worker has no thread waking
//! up on a timer; a push pays for a wake-up only while the consumer sleeps.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub struct WaitQueue<T> {
    q: Mutex<VecDeque<T>>,
    ready: Condvar,
    /// Set (under `q`'s lock) while the consumer waits.
    waiting: AtomicBool,
}

impl<T> Default for WaitQueue<T> {
    fn default() -> Self {
        WaitQueue {
            q: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            waiting: AtomicBool::new(false),
        }
    }
}

impl<T> WaitQueue<T> {
    fn lock(&self) -> MutexGuard<'_, VecDeque<T>> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add to the queue under its lock (`add` may push several items or none), then wake the
    /// consumer if it sleeps and there is something to take.
    pub fn push_with<R>(&self, add: impl FnOnce(&mut VecDeque<T>) -> R) -> R {
        let mut q = self.lock();
        let r = add(&mut q);
        if !q.is_empty() && self.waiting.load(Ordering::Relaxed) {
            self.ready.notify_one();
        }
        r
    }

    /// Up to `max` items, oldest first.
    pub fn drain(&self, max: usize) -> Vec<T> {
        let mut q = self.lock();
        let n = q.len().min(max);
        q.drain(..n).collect()
    }

    /// Block until something is queued or `timeout` passes; true = items are waiting.
    pub fn wait(&self, timeout: Duration) -> bool {
        let q = self.lock();
        if !q.is_empty() {
            return true;
        }
        self.waiting.store(true, Ordering::Relaxed);
        let (q, _) = self
            .ready
            .wait_timeout_while(q, timeout, |q| q.is_empty())
            .unwrap_or_else(|p| p.into_inner());
        self.waiting.store(false, Ordering::Relaxed);
        !q.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn wait_returns_when_an_item_is_queued_not_at_the_timeout() {
        let q: Arc<WaitQueue<u32>> = Arc::default();
        let t0 = Instant::now();
        assert!(!q.wait(Duration::from_millis(50)), "empty queue: times out");
        assert!(t0.elapsed() >= Duration::from_millis(50));
        let pusher = {
            let q = q.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                q.push_with(|q| q.push_back(7));
            })
        };
        let t0 = Instant::now();
        assert!(q.wait(Duration::from_secs(30)));
        assert!(t0.elapsed() < Duration::from_secs(10), "woken by the push");
        pusher.join().unwrap();
        assert!(q.wait(Duration::from_secs(30)), "already queued: at once");
        assert_eq!(q.drain(10), vec![7]);
        assert!(!q.wait(Duration::ZERO));
    }
}
