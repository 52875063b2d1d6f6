//! The per-thread keep-alive pool of idle upstream connections, keyed by (host, port, tls).
use super::connect::Conn;
use super::{Target, TlsMode};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

static MAX_IDLE: AtomicUsize = AtomicUsize::new(1024);
static IDLE_TIMEOUT_MS: AtomicU64 = AtomicU64::new(60_000);
static NEXT_THREAD_TOKEN: AtomicU64 = AtomicU64::new(1);

/// Pool settings (call once per worker at start; defaults: 1024 idle per target, 60 s idle
/// timeout). Process-wide; takes effect for every thread's pool.
pub fn configure_pool(max_idle_per_target: usize, idle_timeout: Duration) {
    MAX_IDLE.store(max_idle_per_target, Ordering::Relaxed);
    let ms = u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX);
    IDLE_TIMEOUT_MS.store(ms, Ordering::Relaxed);
}

pub(super) fn idle_timeout_ms() -> u64 {
    IDLE_TIMEOUT_MS.load(Ordering::Relaxed)
}

thread_local! {
    static THREAD_TOKEN: Cell<u64> = const { Cell::new(0) };
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// A small id unique to the current thread (never reused, unlike addresses or OS ids).
pub(super) fn thread_token() -> u64 {
    THREAD_TOKEN.with(|t| {
        let v = t.get();
        if v != 0 {
            return v;
        }
        let v = NEXT_THREAD_TOKEN.fetch_add(1, Ordering::Relaxed);
        t.set(v);
        v
    })
}

/// FxHash-style hash of a pool key, with a final avalanche so every bit is usable.
pub(super) fn pool_key(host: &str, port: u16, tls: Option<TlsMode>) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h: u64 = 0;
    let mut add = |w: u64| h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    let mut chunks = host.as_bytes().chunks_exact(8);
    for c in &mut chunks {
        add(u64::from_le_bytes(c.try_into().unwrap()));
    }
    let mut tail = [0u8; 8];
    let rest = chunks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    add(u64::from_le_bytes(tail) ^ ((rest.len() as u64) << 56));
    let t = match tls {
        None => 0u64,
        Some(TlsMode::Verify) => 1,
        Some(TlsMode::NoVerify) => 2,
    };
    add(u64::from(port) | (t << 16) | ((host.len() as u64) << 24));
    // murmur3 fmix64
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The keys are already well-mixed hashes: use them as is.
#[derive(Default)]
pub(super) struct IdHasher(u64);
impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(super) struct Slot {
    host: Box<str>,
    port: u16,
    tls: Option<TlsMode>,
    /// Oldest at the front, most recently used at the back (LIFO reuse).
    idle: VecDeque<Box<Conn>>,
}

#[derive(Default)]
pub(super) struct Pool {
    /// hash → targets with that hash (almost always exactly one).
    map: HashMap<u64, Vec<Slot>, BuildHasherDefault<IdHasher>>,
}

impl Pool {
    fn slot_mut(
        &mut self,
        hash: u64,
        host: &str,
        port: u16,
        tls: Option<TlsMode>,
    ) -> Option<&mut Slot> {
        self.map
            .get_mut(&hash)?
            .iter_mut()
            .find(|s| s.port == port && s.tls == tls && &*s.host == host)
    }
}

/// Take a live idle connection to the target, if there is one.
pub(super) fn checkout(hash: u64, target: &Target<'_>) -> Option<Box<Conn>> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let slot = p.slot_mut(hash, target.host, target.port, target.tls)?;
        if slot.idle.is_empty() {
            return None;
        }
        let now = crate::sys::clock::monotonic_ms();
        let max_age = idle_timeout_ms();
        while let Some(mut c) = slot.idle.pop_back() {
            if now.saturating_sub(c.idle_since_ms) > max_age {
                // The others are older still.
                slot.idle.clear();
                return None;
            }
            if c.is_idle_alive() {
                return Some(c);
            }
        }
        None
    })
}

/// Put a connection whose last exchange completed cleanly back into this thread's pool.
pub(super) fn checkin(mut conn: Box<Conn>) {
    if conn.owner != thread_token() || !conn.rbuf.is_empty() {
        return;
    }
    let max = MAX_IDLE.load(Ordering::Relaxed);
    if max == 0 {
        return;
    }
    let now = crate::sys::clock::monotonic_ms();
    conn.idle_since_ms = now;
    let max_age = idle_timeout_ms();
    let _ = POOL.try_with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return;
        };
        let (hash, port, tls) = (conn.hash, conn.port, conn.tls);
        let slots = p.map.entry(hash).or_default();
        let idx = match slots
            .iter()
            .position(|s| s.port == port && s.tls == tls && s.host == conn.host)
        {
            Some(i) => i,
            None => {
                slots.push(Slot {
                    host: conn.host.clone(),
                    port,
                    tls,
                    idle: VecDeque::new(),
                });
                slots.len() - 1
            }
        };
        let idle = &mut slots[idx].idle;
        // Drop expired connections from the old end, and the oldest when full.
        while let Some(front) = idle.front() {
            if idle.len() >= max || now.saturating_sub(front.idle_since_ms) > max_age {
                idle.pop_front();
            } else {
                break;
            }
        }
        idle.push_back(conn);
    });
}

#[cfg(test)]
pub(super) fn pool_idle_count(target: &Target<'_>) -> usize {
    let hash = pool_key(target.host, target.port, target.tls);
    POOL.with(|p| {
        p.borrow_mut()
            .slot_mut(hash, target.host, target.port, target.tls)
            .map_or(0, |s| s.idle.len())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_key_differs() {
        let a = pool_key("127.0.0.1", 80, None);
        assert_ne!(a, pool_key("127.0.0.1", 81, None));
        assert_ne!(a, pool_key("127.0.0.1", 80, Some(TlsMode::Verify)));
        assert_ne!(a, pool_key("127.0.0.2", 80, None));
        assert_eq!(a, pool_key("127.0.0.1", 80, None));
    }
}
