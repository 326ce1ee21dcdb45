//! A cheap monotonic millisecond clock for TTL checks on the L1 hit path.
//!
//! `Instant::now()` costs about as much as a whole L1 hit; on Linux the coarse
//! monotonic clock (a few ms of resolution, ample for TTLs) costs a few ns.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since an arbitrary process-wide origin; never goes backwards.
#[inline]
pub(crate) fn now_ms() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC_COARSE exists on Linux.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        if rc == 0 {
            return ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000;
        }
    }
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Seconds since the Unix epoch, for timestamps shown in stats.
pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn clock_is_monotonic_and_moves() {
        let a = super::now_ms();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let b = super::now_ms();
        assert!(b > a, "{b} should be after {a}");
    }
}
