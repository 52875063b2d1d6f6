//! Rate-limiter state shared by all worker processes of one node.
//!
//! The state lives in a fixed-size table of atomics in a memory mapping
//! (normally a file under `/dev/shm` created by the master and mapped by every
//! worker). There are no locks in shared memory: every decision is a single
//! compare-and-swap loop on one `AtomicU64`, so a worker that dies at any
//! point can never leave the table locked.
//!
//! # Layout (version 1)
//!
//! ```text
//! offset 0   header (64 bytes): magic u64 | version u64 | slots u64 | full_failures u64 | reserved
//! offset 64  slot[0]  (64 bytes, one cache line): key u64 | state u64 | padding
//! ...        slot[slots-1]
//! ```
//!
//! All fields are little-endian native atomics (the file is never shared across
//! machines). The stored `key` is the caller's 64-bit key hash with bits 62-63
//! replaced by the algorithm kind (00 = GCRA, 10 = fixed window, 01 = counter),
//! so one user key used by several algorithms occupies several slots. Stored
//! key 0 means "empty".
//!
//! # Slot life cycle
//!
//! * Empty slots are claimed by CAS on `key` (0 -> key). A freshly claimed slot
//!   has `state == 0`, meaning "no state yet"; a slot in that state is never
//!   reclaimed.
//! * Open addressing with linear probing over at most [`PROBE`] slots. Keys are
//!   never reset to 0, so a key, if present, always sits before the first
//!   empty slot of its probe sequence.
//! * A slot whose state is expired (GCRA: TAT in the past; window: window end in
//!   the past; counter: count 0) may be taken over by another key: CAS `state` expired ->
//!   `RECLAIMING`, store the new key, store `state = 0`. A concurrent updater of
//!   the old key cannot be confused by this: the expired value it read can
//!   never reappear in the slot (states of the new key are strictly later in
//!   time, and window states carry a tag bit that GCRA TATs never have; counter
//!   states carry a sequence number that every update bumps and that starts from
//!   the key's own bits), so its CAS fails and it re-validates the key.
//! * Two processes inserting the same absent key at the same moment agree on
//!   the slot (first empty-or-expired slot of the probe sequence, claimed by
//!   CAS), so counting is exact across processes. The only exception is a
//!   takeover race where processes disagree on whether a slot has expired
//!   (clock read a few ns apart); the later inserter notices the earlier copy
//!   and abandons its own slot, so at most one extra request can slip through.
//! * If neither the key nor a free / reclaimable slot is found within the
//!   probe window, the limiter fails open (the request is allowed) and the
//!   header counter `full_failures` is incremented.
//!
//! # Time
//!
//! Use [`monotonic_ns`] (`CLOCK_MONOTONIC`, identical in all processes of a
//! machine). All algorithms take `now_ns` as a parameter so tests can inject
//! time.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapMut, MmapOptions};

#[cfg(test)]
mod tests;

/// "PGWLIMT1" read as a little-endian u64.
const MAGIC: u64 = u64::from_le_bytes(*b"PGWLIMT1");
/// Layout version; bump on any incompatible change of the header or slots.
/// 2: two kind bits in stored keys (counters added).
const VERSION: u64 = 2;
const HEADER_BYTES: usize = 64;
const SLOT_BYTES: usize = 64;
/// Maximum number of slots probed for one key.
pub const PROBE: usize = 16;
/// Maximum number of restarts of a lookup caused by concurrent slot takeovers
/// before failing open.
const MAX_RESTARTS: usize = 64;

const H_MAGIC: usize = 0;
const H_VERSION: usize = 8;
const H_SLOTS: usize = 16;
const H_FULL: usize = 24;

/// State value of a slot being taken over by another key.
const RECLAIMING: u64 = u64::MAX;

const KIND_MASK: u64 = 0b11 << 62;
const KIND_GCRA: u64 = 0;
const KIND_WINDOW: u64 = 0b10 << 62;
const KIND_COUNTER: u64 = 0b01 << 62;

/// Fixed-window state: bit 63 tag | 39 bits window end (ms) | 24 bits count.
const WIN_TAG: u64 = 1 << 63;
const WIN_COUNT_BITS: u32 = 24;
const WIN_COUNT_MASK: u64 = (1 << WIN_COUNT_BITS) - 1;
const WIN_END_MASK: u64 = (1 << 39) - 1;
/// Largest per-window limit that can be represented; larger limits are clamped.
pub const MAX_WINDOW_COUNT: u64 = WIN_COUNT_MASK;
const NS_PER_MS: u64 = 1_000_000;

/// Counter state: bit 63 tag | 31 bits sequence | 32 bits count. The sequence
/// changes on every update so a stale CAS can never hit a recycled slot (ABA).
const CNT_TAG: u64 = 1 << 63;
const CNT_SEQ_MASK: u64 = (1 << 31) - 1;
const CNT_COUNT_MASK: u64 = u32::MAX as u64;
/// Largest counter value; larger limits are clamped.
pub const MAX_COUNTER: u64 = CNT_COUNT_MASK;

/// Shared-memory (or process-local) table of limiter slots. See the module docs.
pub struct ShmTable {
    /// Keeps the mapping alive; all access goes through `base`.
    _map: MmapMut,
    /// Start of the mapping (page aligned). Derived from `as_mut_ptr` once, so
    /// writes through atomics are allowed.
    base: *mut u8,
    slots: usize,
}

// SAFETY: the mapping is only ever accessed through atomics (after
// initialisation, which happens before the value is shared), and the mapping
// stays valid for the lifetime of `_map`.
unsafe impl Send for ShmTable {}
// SAFETY: see above; all shared access is atomic.
unsafe impl Sync for ShmTable {}

/// Outcome of [`ShmTable::fixed_window`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowDecision {
    pub allowed: bool,
    /// Requests still allowed in the current window after this one.
    pub remaining: u64,
    /// Nanoseconds until the window resets.
    pub reset_ns: u64,
}

/// Outcome of [`ShmTable::counter_acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// Counted: the number of holders of the key including this one, and the
    /// slot that counted it (give it back to [`ShmTable::counter_release`]).
    Admitted { count: u64, slot: usize },
    /// Already `limit` holders: nothing changed.
    Rejected,
    /// No slot available: allowed but not counted (the caller must not release).
    Untracked,
}

/// `CLOCK_MONOTONIC` in nanoseconds (same clock in every process of the host).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Stable 64-bit hash of a list of byte strings (identical in every process and
/// every run): FNV-1a 64 over each part prefixed by its length (so part
/// boundaries are unambiguous), followed by the murmur3 fmix64 finaliser for
/// good low bits. Never returns 0.
pub fn key_hash(parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for part in parts {
        feed(&(part.len() as u64).to_le_bytes());
        feed(part);
    }
    let h = fmix64(h);
    if h == 0 {
        1
    } else {
        h
    }
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

fn bytes_for(slots: usize) -> io::Result<usize> {
    if slots == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "limiter table needs at least one slot",
        ));
    }
    slots
        .checked_mul(SLOT_BYTES)
        .and_then(|b| b.checked_add(HEADER_BYTES))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "too many slots"))
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Result of one state transition computed by an algorithm.
struct Step<R> {
    /// New state to CAS in, or `None` to leave the slot unchanged.
    new: Option<u64>,
    out: R,
}

enum Attempt<R> {
    Done(R),
    Restart,
}

impl ShmTable {
    /// Create (or truncate) the file at `path`, size it for `slots` slots and
    /// initialise the header.
    pub fn create(path: &Path, slots: usize) -> io::Result<ShmTable> {
        let map = crate::sys::shmfile::create(path, bytes_for(slots)?)?;
        let table = Self::from_map(map, slots);
        table.init_header(slots);
        Ok(table)
    }

    /// Map an existing table created by [`ShmTable::create`]; verifies magic,
    /// version and size.
    pub fn open(path: &Path) -> io::Result<ShmTable> {
        let map = crate::sys::shmfile::open(path, HEADER_BYTES, "limiter table")?;
        let flen = map.len();
        let mut table = Self::from_map(map, 0);
        if table.header(H_MAGIC).load(Ordering::Acquire) != MAGIC {
            return Err(invalid("limiter table: bad magic"));
        }
        if table.header(H_VERSION).load(Ordering::Acquire) != VERSION {
            return Err(invalid("limiter table: unsupported layout version"));
        }
        let slots = table.header(H_SLOTS).load(Ordering::Acquire);
        let slots = usize::try_from(slots).map_err(|_| invalid("limiter table: bad slot count"))?;
        if slots == 0 || bytes_for(slots)? > flen {
            return Err(invalid(
                "limiter table: slot count does not match file size",
            ));
        }
        table.slots = slots;
        Ok(table)
    }

    /// Process-local table (private anonymous mapping): tests, single worker.
    pub fn anonymous(slots: usize) -> io::Result<ShmTable> {
        let len = bytes_for(slots)?;
        let map = MmapOptions::new().len(len).map_anon()?;
        let table = Self::from_map(map, slots);
        table.init_header(slots);
        Ok(table)
    }

    fn from_map(mut map: MmapMut, slots: usize) -> ShmTable {
        let base = map.as_mut_ptr();
        ShmTable {
            _map: map,
            base,
            slots,
        }
    }

    fn init_header(&self, slots: usize) {
        self.header(H_VERSION).store(VERSION, Ordering::Relaxed);
        self.header(H_SLOTS).store(slots as u64, Ordering::Relaxed);
        self.header(H_FULL).store(0, Ordering::Relaxed);
        // Magic last: a reader that sees it also sees the rest.
        self.header(H_MAGIC).store(MAGIC, Ordering::Release);
    }

    fn header(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off + 8 <= HEADER_BYTES && off & 7 == 0);
        // SAFETY: in bounds of the mapping (>= HEADER_BYTES long), 8-aligned
        // (mapping is page aligned), and only accessed atomically.
        unsafe { &*(self.base.add(off) as *const AtomicU64) }
    }

    fn slot(&self, idx: usize) -> (&AtomicU64, &AtomicU64) {
        debug_assert!(idx < self.slots);
        let off = HEADER_BYTES + idx * SLOT_BYTES;
        // SAFETY: idx < slots and the mapping holds HEADER + slots*SLOT bytes;
        // offsets are 64-aligned; only accessed atomically.
        unsafe {
            let key = &*(self.base.add(off) as *const AtomicU64);
            let state = &*(self.base.add(off + 8) as *const AtomicU64);
            (key, state)
        }
    }

    /// Number of slots in the table.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Number of decisions that failed open because no slot was available.
    pub fn full_failures(&self) -> u64 {
        self.header(H_FULL).load(Ordering::Relaxed)
    }

    fn fail_open(&self) {
        self.header(H_FULL).fetch_add(1, Ordering::Relaxed);
    }

    /// GCRA (what nginx `limit_req` / APISIX `limit-req` implement as a leaky
    /// bucket): `rate` requests per second, `burst` extra requests.
    ///
    /// `Ok(delay_ns)`: allowed; the caller should sleep `delay_ns` (0 when the
    /// request is within `rate`) unless `nodelay`. `Err(())`: reject (state is
    /// not changed by a rejected request).
    ///
    /// Emission interval `T = 1e9 / rate` ns (rounded, at least 1), tolerance
    /// `tau = T * burst`. With TAT the stored theoretical arrival time:
    /// allowed iff `max(tat, now) - now <= tau`; then `tat' = max(tat, now) + T`
    /// and `delay = max(tat, now) - now`. This equals nginx's
    /// `excess = max(excess - rate*elapsed, 0) + 1; reject if excess > burst;
    /// delay = excess / rate` (first request of an idle key has excess 0).
    ///
    /// A non-positive or NaN `rate` rejects everything. If the table is full
    /// the request is allowed with no delay and counted in `full_failures`.
    #[allow(clippy::result_unit_err)]
    pub fn gcra(&self, key: u64, rate: f64, burst: f64, now_ns: u64) -> Result<u64, ()> {
        if rate.is_nan() || rate <= 0.0 {
            return Err(());
        }
        let t = (1e9 / rate).round().clamp(1.0, u64::MAX as f64 / 4.0) as u64;
        let burst = if burst.is_finite() && burst > 0.0 {
            burst
        } else if burst == f64::INFINITY {
            f64::MAX
        } else {
            0.0
        };
        // Tolerance in units of the *rounded* T so that integer bursts are exact.
        let tau_f = t as f64 * burst;
        let tau = if tau_f >= (u64::MAX / 4) as f64 {
            u64::MAX / 4
        } else {
            tau_f.round() as u64
        };
        let res = self.update(key, KIND_GCRA, now_ns, true, |state| {
            // state 0: no previous request (and never a valid TAT: TATs are >= T >= 1).
            let tat = if state == 0 {
                now_ns
            } else {
                state.max(now_ns)
            };
            let wait = tat - now_ns;
            if wait > tau {
                Step {
                    new: None,
                    out: Err(()),
                }
            } else {
                Step {
                    new: Some(tat.saturating_add(t).min(RECLAIMING - 1)),
                    out: Ok(wait),
                }
            }
        });
        match res {
            Some((_, r)) => r,
            None => {
                self.fail_open();
                Ok(0)
            }
        }
    }

    /// Fixed window counter (APISIX `limit-count`, policy `local`): at most
    /// `count` requests per `window_ns`.
    ///
    /// Window alignment follows APISIX: a window starts with the first request
    /// of a key (nothing stored or previous window over) and lasts `window_ns`
    /// (the window end is stored in whole milliseconds, rounded up). Rejected
    /// requests do not extend or consume anything.
    ///
    /// `count` above [`MAX_WINDOW_COUNT`] (2^24 - 1) is clamped; `count == 0`
    /// rejects everything. If the table is full the request is allowed
    /// (`remaining = count - 1`, `reset_ns = window_ns`) and counted in
    /// `full_failures`.
    pub fn fixed_window(
        &self,
        key: u64,
        count: u64,
        window_ns: u64,
        now_ns: u64,
    ) -> WindowDecision {
        let limit = count.min(MAX_WINDOW_COUNT);
        if limit == 0 {
            return WindowDecision {
                allowed: false,
                remaining: 0,
                reset_ns: window_ns,
            };
        }
        let res = self.update(key, KIND_WINDOW, now_ns, true, |state| {
            let live = state & WIN_TAG != 0 && !window_expired(state, now_ns);
            if live {
                let end_ns = ((state >> WIN_COUNT_BITS) & WIN_END_MASK) * NS_PER_MS;
                let used = state & WIN_COUNT_MASK;
                let reset_ns = end_ns.saturating_sub(now_ns);
                if used >= limit {
                    Step {
                        new: None,
                        out: WindowDecision {
                            allowed: false,
                            remaining: 0,
                            reset_ns,
                        },
                    }
                } else {
                    Step {
                        new: Some(state + 1),
                        out: WindowDecision {
                            allowed: true,
                            remaining: limit - used - 1,
                            reset_ns,
                        },
                    }
                }
            } else {
                let end_ns = now_ns.saturating_add(window_ns.max(1));
                let end_ms = end_ns.div_ceil(NS_PER_MS).min(WIN_END_MASK - 1);
                let new = WIN_TAG | (end_ms << WIN_COUNT_BITS) | 1;
                Step {
                    new: Some(new),
                    out: WindowDecision {
                        allowed: true,
                        remaining: limit - 1,
                        reset_ns: (end_ms * NS_PER_MS).saturating_sub(now_ns),
                    },
                }
            }
        });
        match res {
            Some((_, d)) => d,
            None => {
                self.fail_open();
                WindowDecision {
                    allowed: true,
                    remaining: limit - 1,
                    reset_ns: window_ns,
                }
            }
        }
    }

    /// Concurrency counter (APISIX `limit-conn`): take one of `limit` places
    /// of `key`, exact across processes. Every `Admitted` must be paired with
    /// one [`ShmTable::counter_release`] of its slot. A counter at 0 holds no
    /// slot (it may be reclaimed by other keys). `limit` above [`MAX_COUNTER`]
    /// is clamped; `limit == 0` rejects everything. If the table is full the
    /// caller is let in `Untracked` and counted in `full_failures`.
    ///
    /// The takeover race of the module docs can leave a key briefly in two
    /// slots (so up to one extra holder per such race); releasing by slot
    /// keeps each slot's count exact, so nothing leaks and the copy that
    /// lookups no longer find drains to 0 and is reclaimed.
    pub fn counter_acquire(&self, key: u64, limit: u64, now_ns: u64) -> Acquire {
        let limit = limit.min(MAX_COUNTER);
        if limit == 0 {
            return Acquire::Rejected;
        }
        let res = self.update(key, KIND_COUNTER, now_ns, true, |state| {
            let (seq, count) = counter_parts(key, state);
            if count >= limit {
                Step {
                    new: None,
                    out: None,
                }
            } else {
                Step {
                    new: Some(counter_state(seq + 1, count + 1)),
                    out: Some(count + 1),
                }
            }
        });
        match res {
            Some((slot, Some(count))) => Acquire::Admitted { count, slot },
            Some((_, None)) => Acquire::Rejected,
            None => {
                self.fail_open();
                Acquire::Untracked
            }
        }
    }

    /// Give back the place `counter_acquire` took in `slot`; returns the
    /// holders left there. Never goes below 0 (a release without an acquire is
    /// a no-op), and a slot that no longer holds `key` is left alone.
    pub fn counter_release(&self, key: u64, slot: usize) -> u64 {
        if slot >= self.slots {
            return 0;
        }
        let skey = stored_key(key, KIND_COUNTER);
        let step = &mut |state: u64| {
            let (seq, count) = counter_parts(key, state);
            if count == 0 {
                Step { new: None, out: 0 }
            } else {
                Step {
                    new: Some(counter_state(seq + 1, count - 1)),
                    out: count - 1,
                }
            }
        };
        match self.apply(slot, skey, step) {
            Attempt::Done(left) => left,
            // Reclaimed meanwhile: it was at 0 already.
            Attempt::Restart => 0,
        }
    }

    /// Current holders of `key` in the slot lookups find (0 when absent).
    pub fn counter_value(&self, key: u64) -> u64 {
        self.update(key, KIND_COUNTER, 0, false, |state| Step {
            new: None,
            out: counter_parts(key, state).1,
        })
        .map_or(0, |(_, n)| n)
    }

    /// Find (or, with `claim`, insert) the slot of `key` and apply `step` to its
    /// state in a CAS loop. `None`: no slot available (or, without `claim`, the
    /// key is absent).
    fn update<R>(
        &self,
        key: u64,
        kind: u64,
        now_ns: u64,
        claim: bool,
        mut step: impl FnMut(u64) -> Step<R>,
    ) -> Option<(usize, R)> {
        let skey = stored_key(key, kind);
        let start = (fmix64(key) % self.slots as u64) as usize;
        let probe = PROBE.min(self.slots);
        for _ in 0..MAX_RESTARTS {
            let idx = if claim {
                self.find_or_claim(skey, start, probe, now_ns)?
            } else {
                self.find(skey, start, probe)?
            };
            match self.apply(idx, skey, &mut step) {
                Attempt::Done(r) => return Some((idx, r)),
                Attempt::Restart => std::hint::spin_loop(),
            }
        }
        None
    }

    fn apply<R>(&self, idx: usize, skey: u64, step: &mut impl FnMut(u64) -> Step<R>) -> Attempt<R> {
        let (k, st) = self.slot(idx);
        loop {
            let cur = st.load(Ordering::SeqCst);
            if cur == RECLAIMING {
                return Attempt::Restart;
            }
            // Re-validate ownership *after* reading the state: a takeover stores
            // the new key before resetting the state, so a state read here that
            // belongs to another key implies we see the other key now.
            if k.load(Ordering::SeqCst) != skey {
                return Attempt::Restart;
            }
            let Step { new, out } = step(cur);
            match new {
                None => return Attempt::Done(out),
                Some(new) => {
                    if st
                        .compare_exchange_weak(cur, new, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        return Attempt::Done(out);
                    }
                }
            }
        }
    }

    /// The slot of `skey` if present: it is before the first empty slot.
    fn find(&self, skey: u64, start: usize, probe: usize) -> Option<usize> {
        for i in 0..probe {
            let idx = (start + i) % self.slots;
            let k = self.slot(idx).0.load(Ordering::SeqCst);
            if k == skey {
                return Some(idx);
            }
            if k == 0 {
                break;
            }
        }
        None
    }

    fn find_or_claim(&self, skey: u64, start: usize, probe: usize, now_ns: u64) -> Option<usize> {
        let pos = |i: usize| (start + i) % self.slots;
        // Pass 1: the key, if present.
        if let Some(idx) = self.find(skey, start, probe) {
            return Some(idx);
        }
        // Pass 2: claim the first empty or expired slot (or find the key if a
        // concurrent inserter just put it there).
        for i in 0..probe {
            let idx = pos(i);
            let (k, st) = self.slot(idx);
            let mut cur = k.load(Ordering::SeqCst);
            if cur == 0 {
                match k.compare_exchange(0, skey, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => return Some(self.dedupe(idx, skey, start, probe)),
                    Err(actual) => cur = actual,
                }
            }
            if cur == skey {
                return Some(idx);
            }
            let s = st.load(Ordering::SeqCst);
            if s != 0 && s != RECLAIMING && state_expired(cur, s, now_ns) {
                if st
                    .compare_exchange(s, RECLAIMING, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    k.store(skey, Ordering::SeqCst);
                    st.store(0, Ordering::SeqCst);
                    return Some(self.dedupe(idx, skey, start, probe));
                }
                // Lost the race; the slot may now hold our key.
                if k.load(Ordering::SeqCst) == skey {
                    return Some(idx);
                }
            }
        }
        None
    }

    /// After inserting `skey` at `idx`: if a concurrent inserter put the same
    /// key at an earlier probe position, give our fresh slot up (mark it
    /// expired so it is reclaimable) and use the earlier one, which is what
    /// every later lookup finds first.
    fn dedupe(&self, idx: usize, skey: u64, start: usize, probe: usize) -> usize {
        for i in 0..probe {
            let j = (start + i) % self.slots;
            if j == idx {
                break;
            }
            if self.slot(j).0.load(Ordering::SeqCst) == skey {
                let expired = match skey & KIND_MASK {
                    KIND_WINDOW => WIN_TAG | 1,
                    KIND_COUNTER => CNT_TAG,
                    _ => 1,
                };
                let _ = self.slot(idx).1.compare_exchange(
                    0,
                    expired,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                return j;
            }
        }
        idx
    }
}

/// The key as stored in a slot: the caller's hash with the kind in bits 62-63 (never 0).
fn stored_key(key: u64, kind: u64) -> u64 {
    let skey = (key & !KIND_MASK) | kind;
    if skey == 0 {
        1
    } else {
        skey
    }
}

fn window_expired(state: u64, now_ns: u64) -> bool {
    let end_ms = (state >> WIN_COUNT_BITS) & WIN_END_MASK;
    end_ms.saturating_mul(NS_PER_MS) <= now_ns
}

/// Whether a slot holding stored key `skey` with (non-zero) `state` can be
/// taken over at `now_ns`.
fn state_expired(skey: u64, state: u64, now_ns: u64) -> bool {
    match skey & KIND_MASK {
        KIND_WINDOW => state & WIN_TAG == 0 || window_expired(state, now_ns),
        KIND_COUNTER => state & CNT_COUNT_MASK == 0,
        _ => state <= now_ns,
    }
}

/// (sequence, count) of a counter state; a fresh slot (state 0) starts its
/// sequence from the key's bits so it differs from the slot's previous owner's.
fn counter_parts(skey_bits: u64, state: u64) -> (u64, u64) {
    if state == 0 {
        ((skey_bits ^ (skey_bits >> 31)) & CNT_SEQ_MASK, 0)
    } else {
        ((state >> 32) & CNT_SEQ_MASK, state & CNT_COUNT_MASK)
    }
}

fn counter_state(seq: u64, count: u64) -> u64 {
    CNT_TAG | ((seq & CNT_SEQ_MASK) << 32) | count
}
