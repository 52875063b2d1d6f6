use super::*;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

fn temp_path(tag: &str) -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "pygw_limit_test_{}_{}_{}",
        std::process::id(),
        tag,
        n
    ))
}

struct Cleanup(std::path::PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ShmTable>();
}

#[test]
fn key_hash_stable_and_separated() {
    let a = key_hash(&[b"route1", b"10.0.0.1"]);
    assert_eq!(a, key_hash(&[b"route1", b"10.0.0.1"]));
    assert_ne!(key_hash(&[b"ab", b"c"]), key_hash(&[b"a", b"bc"]));
    assert_ne!(key_hash(&[b"abc"]), key_hash(&[b"abc", b""]));
    assert_ne!(key_hash(&[]), 0);
    // Pinned value: must never change between releases / processes.
    let pinned = key_hash(&[b"limit-count", b"127.0.0.1"]);
    // Cross-checked against an independent Python implementation.
    assert_eq!(pinned, 0x5c32_8da7_bdf6_c479);
    assert_eq!(format!("{:016x}", key_hash(&[b""])).len(), 16);
}

#[test]
fn monotonic_advances() {
    let a = monotonic_ns();
    let b = monotonic_ns();
    assert!(b >= a);
    assert!(a > 0);
}

#[test]
fn gcra_steady_rate_allowed() {
    let t = ShmTable::anonymous(64).unwrap();
    let k = key_hash(&[b"steady"]);
    // 10 r/s, no burst: one request every 100 ms passes with no delay.
    for i in 0..50u64 {
        assert_eq!(t.gcra(k, 10.0, 0.0, SEC + i * 100 * MS), Ok(0), "i={i}");
    }
    // A request 50 ms after the last one is over the rate and burst=0 rejects it.
    assert_eq!(t.gcra(k, 10.0, 0.0, SEC + 49 * 100 * MS + 50 * MS), Err(()));
    // Rejection did not consume anything: at the next slot it passes.
    assert_eq!(t.gcra(k, 10.0, 0.0, SEC + 50 * 100 * MS), Ok(0));
}

#[test]
fn gcra_burst_delays_then_rejects_then_recovers() {
    let t = ShmTable::anonymous(64).unwrap();
    let k = key_hash(&[b"burst"]);
    let now = 5 * SEC;
    // rate 10 r/s (T = 100 ms), burst 3: like nginx, requests 2..4 are delayed.
    assert_eq!(t.gcra(k, 10.0, 3.0, now), Ok(0));
    assert_eq!(t.gcra(k, 10.0, 3.0, now), Ok(100 * MS));
    assert_eq!(t.gcra(k, 10.0, 3.0, now), Ok(200 * MS));
    assert_eq!(t.gcra(k, 10.0, 3.0, now), Ok(300 * MS));
    assert_eq!(t.gcra(k, 10.0, 3.0, now), Err(()));
    assert_eq!(t.gcra(k, 10.0, 3.0, now + 50 * MS), Err(()));
    // 100 ms later one unit of the bucket has leaked.
    assert_eq!(t.gcra(k, 10.0, 3.0, now + 100 * MS), Ok(300 * MS));
    assert_eq!(t.gcra(k, 10.0, 3.0, now + 100 * MS), Err(()));
    // Full recovery after the bucket drains.
    let later = now + 10 * SEC;
    assert_eq!(t.gcra(k, 10.0, 3.0, later), Ok(0));
    assert_eq!(t.gcra(k, 10.0, 3.0, later), Ok(100 * MS));
}

#[test]
fn gcra_fractional_rate_integer_burst_exact() {
    let t = ShmTable::anonymous(64).unwrap();
    let k = key_hash(&[b"frac"]);
    // rate 1.5 r/s: T rounds to 666_666_667 ns; burst 2 must allow exactly 3.
    let now = SEC;
    assert!(t.gcra(k, 1.5, 2.0, now).is_ok());
    assert!(t.gcra(k, 1.5, 2.0, now).is_ok());
    assert!(t.gcra(k, 1.5, 2.0, now).is_ok());
    assert_eq!(t.gcra(k, 1.5, 2.0, now), Err(()));
}

#[test]
fn gcra_invalid_rate_rejects() {
    let t = ShmTable::anonymous(8).unwrap();
    assert_eq!(t.gcra(1, 0.0, 1.0, SEC), Err(()));
    assert_eq!(t.gcra(1, -3.0, 1.0, SEC), Err(()));
    assert_eq!(t.gcra(1, f64::NAN, 1.0, SEC), Err(()));
    // Absurdly high rate: T clamps to 1 ns, always allowed.
    assert_eq!(t.gcra(1, 1e12, 0.0, SEC), Ok(0));
}

#[test]
fn gcra_keys_independent() {
    let t = ShmTable::anonymous(64).unwrap();
    let a = key_hash(&[b"a"]);
    let b = key_hash(&[b"b"]);
    assert_eq!(t.gcra(a, 1.0, 0.0, SEC), Ok(0));
    assert_eq!(t.gcra(a, 1.0, 0.0, SEC), Err(()));
    assert_eq!(t.gcra(b, 1.0, 0.0, SEC), Ok(0));
}

#[test]
fn fixed_window_count_remaining_reset_next_window() {
    let t = ShmTable::anonymous(64).unwrap();
    let k = key_hash(&[b"win"]);
    let start = 10 * SEC + 500 * MS; // window aligned to this first request
    let d = t.fixed_window(k, 3, 60 * SEC, start);
    assert_eq!(
        d,
        WindowDecision {
            allowed: true,
            remaining: 2,
            reset_ns: 60 * SEC
        }
    );
    let d = t.fixed_window(k, 3, 60 * SEC, start + 10 * SEC);
    assert_eq!((d.allowed, d.remaining, d.reset_ns), (true, 1, 50 * SEC));
    let d = t.fixed_window(k, 3, 60 * SEC, start + 20 * SEC);
    assert_eq!((d.allowed, d.remaining, d.reset_ns), (true, 0, 40 * SEC));
    let d = t.fixed_window(k, 3, 60 * SEC, start + 30 * SEC);
    assert_eq!((d.allowed, d.remaining, d.reset_ns), (false, 0, 30 * SEC));
    let d = t.fixed_window(k, 3, 60 * SEC, start + 60 * SEC - 1);
    assert_eq!((d.allowed, d.remaining, d.reset_ns), (false, 0, 1));
    // Next window starts with the next request after the end (not at a clock multiple).
    let next = start + 75 * SEC;
    let d = t.fixed_window(k, 3, 60 * SEC, next);
    assert_eq!((d.allowed, d.remaining, d.reset_ns), (true, 2, 60 * SEC));
    let d = t.fixed_window(k, 3, 60 * SEC, next + 59 * SEC);
    assert_eq!((d.allowed, d.remaining, d.reset_ns), (true, 1, SEC));
}

#[test]
fn fixed_window_sub_ms_rounds_up() {
    let t = ShmTable::anonymous(8).unwrap();
    // now not on a ms boundary: the stored end rounds up, never shortening the window.
    let d = t.fixed_window(7, 1, SEC, 1_234_567);
    assert!(d.allowed);
    assert!(d.reset_ns >= SEC && d.reset_ns < SEC + MS, "{d:?}");
    assert!(!t.fixed_window(7, 1, SEC, 1_234_567 + SEC - 1).allowed);
}

#[test]
fn fixed_window_zero_and_huge_count() {
    let t = ShmTable::anonymous(8).unwrap();
    assert!(!t.fixed_window(3, 0, SEC, SEC).allowed);
    let d = t.fixed_window(4, u64::MAX, SEC, SEC);
    assert!(d.allowed);
    assert_eq!(d.remaining, MAX_WINDOW_COUNT - 1);
}

#[test]
fn same_key_different_algorithms_do_not_clash() {
    let t = ShmTable::anonymous(64).unwrap();
    let k = key_hash(&[b"shared"]);
    assert_eq!(t.gcra(k, 1.0, 0.0, SEC), Ok(0));
    let d = t.fixed_window(k, 2, SEC, SEC);
    assert_eq!((d.allowed, d.remaining), (true, 1));
    assert_eq!(t.gcra(k, 1.0, 0.0, SEC), Err(()));
    assert_eq!(t.fixed_window(k, 2, SEC, SEC).remaining, 0);
    // Key hash 0 maps to a valid slot key.
    assert_eq!(t.gcra(0, 1.0, 0.0, SEC), Ok(0));
    assert_eq!(t.gcra(0, 1.0, 0.0, SEC), Err(()));
}

#[test]
fn expired_slots_are_reused() {
    // One slot: the second key can only get in once the first key's state expired.
    let t = ShmTable::anonymous(1).unwrap();
    let a = key_hash(&[b"a"]);
    let b = key_hash(&[b"b"]);
    assert!(t.fixed_window(a, 5, SEC, 0).allowed);
    // Table full while `a`'s window is live: fail open and count it.
    let d = t.fixed_window(b, 1, SEC, 500 * MS);
    assert!(d.allowed);
    assert_eq!(t.full_failures(), 1);
    assert!(t.fixed_window(b, 1, SEC, 600 * MS).allowed);
    assert_eq!(t.full_failures(), 2);
    // After `a`'s window ended, `b` takes the slot and is limited for real.
    let d = t.fixed_window(b, 1, SEC, SEC);
    assert_eq!((d.allowed, d.remaining), (true, 0));
    assert!(!t.fixed_window(b, 1, SEC, SEC + 1).allowed);
    assert_eq!(t.full_failures(), 2);
    // GCRA state expires when its TAT is in the past.
    assert!(t.gcra(a, 10.0, 0.0, 3 * SEC).is_ok()); // b's window over: reclaimed
    assert_eq!(t.gcra(a, 10.0, 0.0, 3 * SEC), Err(()));
    assert!(t.fixed_window(b, 1, SEC, 3 * SEC + 50 * MS).allowed); // TAT not passed: full
    assert_eq!(t.full_failures(), 3);
    assert!(t.fixed_window(b, 1, SEC, 3 * SEC + 100 * MS).allowed); // TAT passed: reclaimed
    assert!(!t.fixed_window(b, 1, SEC, 3 * SEC + 200 * MS).allowed);
    assert_eq!(t.full_failures(), 3);
}

#[test]
fn table_full_fails_open_and_counts() {
    let t = ShmTable::anonymous(4).unwrap();
    for i in 0..4u64 {
        assert!(
            t.fixed_window(key_hash(&[&i.to_le_bytes()]), 1, 60 * SEC, SEC)
                .allowed
        );
    }
    assert_eq!(t.full_failures(), 0);
    let k = key_hash(&[b"late"]);
    for _ in 0..3 {
        let d = t.fixed_window(k, 1, 60 * SEC, SEC);
        assert_eq!(
            d,
            WindowDecision {
                allowed: true,
                remaining: 0,
                reset_ns: 60 * SEC
            }
        );
    }
    assert_eq!(t.gcra(k, 1.0, 0.0, SEC), Ok(0));
    assert_eq!(t.gcra(k, 1.0, 0.0, SEC), Ok(0));
    assert_eq!(t.full_failures(), 5);
    // Existing keys keep being limited exactly.
    assert!(
        !t.fixed_window(key_hash(&[&0u64.to_le_bytes()]), 1, 60 * SEC, SEC)
            .allowed
    );
}

#[test]
fn many_keys_fit_and_stay_exact() {
    let t = ShmTable::anonymous(4096).unwrap();
    for i in 0..2000u64 {
        let k = key_hash(&[b"k", &i.to_le_bytes()]);
        assert!(t.fixed_window(k, 2, SEC, SEC).allowed);
        assert!(t.fixed_window(k, 2, SEC, SEC).allowed);
    }
    for i in 0..2000u64 {
        let k = key_hash(&[b"k", &i.to_le_bytes()]);
        assert!(!t.fixed_window(k, 2, SEC, SEC).allowed, "key {i}");
    }
    assert_eq!(t.full_failures(), 0);
}

#[test]
fn create_open_share_state() {
    let path = temp_path("share");
    let _c = Cleanup(path.clone());
    let a = ShmTable::create(&path, 128).unwrap();
    let b = ShmTable::open(&path).unwrap();
    assert_eq!(b.slots(), 128);
    let k = key_hash(&[b"x"]);
    assert!(a.fixed_window(k, 2, SEC, SEC).allowed);
    assert!(b.fixed_window(k, 2, SEC, SEC).allowed);
    assert!(!a.fixed_window(k, 2, SEC, SEC).allowed);
    // Re-creating truncates.
    drop(a);
    drop(b);
    let a = ShmTable::create(&path, 16).unwrap();
    assert!(a.fixed_window(k, 2, SEC, SEC).allowed);
    assert_eq!(ShmTable::open(&path).unwrap().slots(), 16);
}

#[test]
fn open_rejects_garbage() {
    let path = temp_path("garbage");
    let _c = Cleanup(path.clone());
    std::fs::write(&path, [0u8; 10]).unwrap();
    assert!(ShmTable::open(&path).is_err());
    std::fs::write(&path, [7u8; 4096]).unwrap();
    assert!(ShmTable::open(&path).is_err());
    // Valid header but truncated file.
    ShmTable::create(&path, 64).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(128).unwrap();
    assert!(ShmTable::open(&path).is_err());
    assert!(ShmTable::open(&temp_path("missing")).is_err());
    assert!(ShmTable::anonymous(0).is_err());
}

#[test]
fn threads_fixed_window_exact() {
    let t = Arc::new(ShmTable::anonymous(256).unwrap());
    let k = key_hash(&[b"threads"]);
    let allowed = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..8)
        .map(|_| {
            let t = t.clone();
            let allowed = allowed.clone();
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    if t.fixed_window(k, 1000, 3600 * SEC, SEC).allowed {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(allowed.load(Ordering::Relaxed), 1000);
}

#[test]
fn threads_gcra_exact() {
    let t = Arc::new(ShmTable::anonymous(256).unwrap());
    let k = key_hash(&[b"threads-gcra"]);
    let allowed = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..8)
        .map(|_| {
            let t = t.clone();
            let allowed = allowed.clone();
            std::thread::spawn(move || {
                for _ in 0..500 {
                    if t.gcra(k, 1.0, 299.0, 7 * SEC).is_ok() {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(allowed.load(Ordering::Relaxed), 300);
}

#[test]
fn threads_many_keys_with_reclaim_churn() {
    // Small table, many short-lived keys: exercise takeover races; no panics,
    // and a long-lived key stays exact throughout.
    let t = Arc::new(ShmTable::anonymous(32).unwrap());
    let hot = key_hash(&[b"hot"]);
    let allowed = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..6u64)
        .map(|tid| {
            let t = t.clone();
            let allowed = allowed.clone();
            std::thread::spawn(move || {
                for i in 0..3000u64 {
                    let now = SEC + i * MS;
                    let k = key_hash(&[&tid.to_le_bytes(), &(i % 7).to_le_bytes()]);
                    let _ = t.fixed_window(k, 3, MS, now);
                    let _ = t.gcra(k ^ 1, 1000.0, 1.0, now);
                    if t.fixed_window(hot, 500, 3600 * SEC, now).allowed {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(allowed.load(Ordering::Relaxed), 500);
}

/// Real multi-process test: children share the file mapping (MAP_SHARED,
/// inherited over fork) and hammer one key; the parent sums the allowed
/// counts reported through pipes. Children do not allocate (fork in a
/// multi-threaded test binary).
#[test]
fn cross_process_exact() {
    const CHILDREN: usize = 4;
    const ATTEMPTS: u64 = 1500;
    let path = temp_path("fork");
    let _c = Cleanup(path.clone());
    let _creator = ShmTable::create(&path, 1024).unwrap();
    let table = ShmTable::open(&path).unwrap();
    let win_key = key_hash(&[b"fork", b"window"]);
    let gcra_key = key_hash(&[b"fork", b"gcra"]);
    let cnt_key = key_hash(&[b"fork", b"counter"]);
    // SAFETY: fresh shared anonymous page used as a start gate; unmapped below.
    let gate_ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(gate_ptr, libc::MAP_FAILED);
    // SAFETY: page aligned, zero-initialised, only used atomically.
    let gate = unsafe { &*(gate_ptr as *const AtomicU64) };
    let gcra_now = monotonic_ns();

    let mut pids = Vec::new();
    let mut fds = Vec::new();
    for _ in 0..CHILDREN {
        let mut p = [0i32; 2];
        // SAFETY: valid array for pipe(2).
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        // SAFETY: the child only touches the shared mapping, the pipe and _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // Child: wait for the start gate so all children run concurrently.
            let deadline = monotonic_ns() + 20 * SEC;
            while gate.load(Ordering::Acquire) == 0 && monotonic_ns() < deadline {
                std::hint::spin_loop();
            }
            let mut win = 0u64;
            let mut gcra = 0u64;
            let mut held = 0u64;
            for _ in 0..ATTEMPTS {
                // Holders never release: exactly `limit` acquisitions succeed node-wide;
                // acquire/release pairs of a second key churn alongside.
                if let Acquire::Admitted { .. } = table.counter_acquire(cnt_key, 50, monotonic_ns())
                {
                    held += 1;
                }
                if let Acquire::Admitted { slot, .. } =
                    table.counter_acquire(cnt_key ^ 1, 2, monotonic_ns())
                {
                    table.counter_release(cnt_key ^ 1, slot);
                }
                if table
                    .fixed_window(win_key, 1000, 3600 * SEC, monotonic_ns())
                    .allowed
                {
                    win += 1;
                }
                if table.gcra(gcra_key, 1.0, 99.0, gcra_now).is_ok() {
                    gcra += 1;
                }
            }
            let mut buf = [0u8; 24];
            buf[..8].copy_from_slice(&win.to_le_bytes());
            buf[8..16].copy_from_slice(&gcra.to_le_bytes());
            buf[16..].copy_from_slice(&held.to_le_bytes());
            // SAFETY: plain write of a stack buffer to our pipe, then _exit.
            unsafe {
                libc::write(p[1], buf.as_ptr() as *const libc::c_void, 24);
                libc::_exit(0);
            }
        }
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(p[1]) };
        pids.push(pid);
        fds.push(p[0]);
    }
    gate.store(1, Ordering::Release);

    let (mut win_total, mut gcra_total, mut held_total) = (0u64, 0u64, 0u64);
    for fd in fds {
        let mut buf = [0u8; 24];
        let mut got = 0usize;
        while got < 24 {
            // SAFETY: reading into the remaining part of a stack buffer.
            let n =
                unsafe { libc::read(fd, buf[got..].as_mut_ptr() as *mut libc::c_void, 24 - got) };
            assert!(n > 0, "child died without reporting");
            got += n as usize;
        }
        // SAFETY: closing our read end.
        unsafe { libc::close(fd) };
        win_total += u64::from_le_bytes(buf[..8].try_into().unwrap());
        gcra_total += u64::from_le_bytes(buf[8..16].try_into().unwrap());
        held_total += u64::from_le_bytes(buf[16..].try_into().unwrap());
    }
    for pid in pids {
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
    assert_eq!(win_total, 1000);
    assert_eq!(gcra_total, 100);
    assert_eq!(held_total, 50);
    assert_eq!(table.counter_value(cnt_key), 50);
    assert_eq!(table.counter_value(cnt_key ^ 1), 0);
    assert_eq!(table.full_failures(), 0);
    // SAFETY: unmapping the gate page mapped above; children are gone.
    unsafe { libc::munmap(gate_ptr, 4096) };
}

/// Take one place of `k` (limit `n`); the holder count and slot.
fn take(t: &ShmTable, k: u64, n: u64) -> Option<(u64, usize)> {
    match t.counter_acquire(k, n, SEC) {
        Acquire::Admitted { count, slot } => Some((count, slot)),
        Acquire::Rejected => None,
        Acquire::Untracked => panic!("table full"),
    }
}

#[test]
fn counter_acquire_release() {
    let t = ShmTable::anonymous(64).unwrap();
    let k = key_hash(&[b"conn"]);
    assert_eq!(t.counter_value(k), 0);
    let (c1, s) = take(&t, k, 3).unwrap();
    assert_eq!(c1, 1);
    assert_eq!(take(&t, k, 3), Some((2, s)));
    assert_eq!(take(&t, k, 3), Some((3, s)));
    assert_eq!(take(&t, k, 3), None);
    assert_eq!(t.counter_value(k), 3);
    assert_eq!(t.counter_release(k, s), 2);
    assert_eq!(take(&t, k, 3), Some((3, s)));
    for left in [2, 1, 0] {
        assert_eq!(t.counter_release(k, s), left);
    }
    // A release without an acquire never goes below zero; another key's slot is left alone.
    assert_eq!(t.counter_release(k, s), 0);
    assert_eq!(t.counter_release(key_hash(&[b"never"]), s), 0);
    assert_eq!(t.counter_release(k, usize::MAX), 0);
    assert_eq!(take(&t, k, 1), Some((1, s)));
    assert_eq!(t.counter_release(key_hash(&[b"other"]), s), 0);
    assert_eq!(t.counter_value(k), 1);
    // A limit of 0 admits nobody; a lower limit than the current count rejects.
    assert_eq!(t.counter_acquire(k, 0, SEC), Acquire::Rejected);
    assert_eq!(take(&t, k, 1), None);
    assert_eq!(t.full_failures(), 0);
}

#[test]
fn counter_separate_from_other_algorithms() {
    let t = ShmTable::anonymous(64).unwrap();
    let k = key_hash(&[b"shared-key"]);
    assert!(t.fixed_window(k, 1, 60 * SEC, SEC).allowed);
    assert_eq!(t.gcra(k, 1.0, 0.0, SEC), Ok(0));
    assert!(take(&t, k, 1).is_some());
    assert!(!t.fixed_window(k, 1, 60 * SEC, SEC).allowed);
    assert_eq!(t.gcra(k, 1.0, 0.0, SEC), Err(()));
    assert_eq!(take(&t, k, 1), None);
}

#[test]
fn counter_at_zero_frees_its_slot() {
    let t = ShmTable::anonymous(1).unwrap();
    let (a, b) = (key_hash(&[b"a"]), key_hash(&[b"b"]));
    let (_, sa) = take(&t, a, 5).unwrap();
    // The only slot is held: another key is let in untracked (fail open) and counted.
    assert_eq!(t.counter_acquire(b, 5, SEC), Acquire::Untracked);
    assert_eq!(t.full_failures(), 1);
    assert_eq!(t.counter_value(a), 1);
    assert_eq!(t.counter_release(a, sa), 0);
    // Released to zero: the slot is reclaimable, and a stale release of `a` leaves `b` alone.
    assert_eq!(take(&t, b, 5), Some((1, sa)));
    assert_eq!(t.counter_release(a, sa), 0);
    assert_eq!(t.counter_value(a), 0);
    assert_eq!(t.counter_value(b), 1);
}

#[test]
fn threads_counter_never_leaks() {
    // Small table and churning keys: slots of counters at zero are reclaimed while
    // the hot key is acquired and released concurrently. Every slot must end at
    // zero, and the limit holds (up to the one-extra-per-takeover-race bound).
    const LIMIT: u64 = 5;
    const THREADS: u64 = 8;
    let t = Arc::new(ShmTable::anonymous(16).unwrap());
    let hot = key_hash(&[b"hot-conn"]);
    let inside = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..THREADS)
        .map(|tid| {
            let (t, inside, peak) = (t.clone(), inside.clone(), peak.clone());
            std::thread::spawn(move || {
                for i in 0..5000u64 {
                    let now = monotonic_ns();
                    let churn = key_hash(&[&tid.to_le_bytes(), &(i % 5).to_le_bytes()]);
                    if let Acquire::Admitted { slot, .. } = t.counter_acquire(churn, 1, now) {
                        t.counter_release(churn, slot);
                    }
                    let _ = t.gcra(churn ^ 7, 1e6, 0.0, now);
                    match t.counter_acquire(hot, LIMIT, now) {
                        Acquire::Admitted { slot, .. } => {
                            let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(n, Ordering::SeqCst);
                            inside.fetch_sub(1, Ordering::SeqCst);
                            t.counter_release(hot, slot);
                        }
                        // A tiny table under churn may fail open now and then; nothing to release.
                        Acquire::Rejected | Acquire::Untracked => {}
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    for i in 0..t.slots() {
        let (k, st) = t.slot(i);
        let skey = k.load(Ordering::SeqCst);
        if skey & KIND_MASK == KIND_COUNTER {
            let state = st.load(Ordering::SeqCst);
            assert_eq!(counter_parts(0, state).1, 0, "slot {i} leaked");
        }
    }
    assert_eq!(t.counter_value(hot), 0);
    let peak = peak.load(Ordering::SeqCst) as u64;
    assert!((1..=LIMIT + THREADS - 1).contains(&peak), "peak {peak}");
}
