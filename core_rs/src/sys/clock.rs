//! Coarse clocks: the kernel's last tick (a few ms resolution), read without a time-stamp
//! counter. A precise clock read showed up at ~30 ns in profiles on this project's VMs; these are
//! for what needs no better than nginx's cached per-loop time (log timestamps, pool ageing).

use std::time::{Duration, SystemTime};

fn read(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and out-pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Monotonic milliseconds.
pub fn monotonic_ms() -> u64 {
    read(libc::CLOCK_MONOTONIC_COARSE).as_millis() as u64
}

/// Wall-clock time.
pub fn wall() -> SystemTime {
    SystemTime::UNIX_EPOCH + read(libc::CLOCK_REALTIME_COARSE)
}

#[cfg(test)]
mod tests {
    #[test]
    fn close_to_the_precise_clocks() {
        let precise = std::time::SystemTime::now();
        let coarse = super::wall();
        let d = precise
            .duration_since(coarse)
            .unwrap_or_else(|e| e.duration());
        assert!(d < std::time::Duration::from_millis(50), "{d:?}");
        let a = super::monotonic_ms();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let b = super::monotonic_ms();
        assert!((20..200).contains(&(b - a)), "{a} {b}");
    }
}
