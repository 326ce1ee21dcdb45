//! Cheap monotonic millisecond clocks for TTL checks.
//!
//! `Instant::now()` costs about as much as a whole L1 hit; on Linux the coarse
//! monotonic clock ([`now_ms`]: a few ms of resolution, ample for TTLs) is
//! much cheaper, still a visible share of a hit. [`recent_ms`], read on every L1 hit, is one
//! atomic load: a ticker thread stores the coarse time every 4 ms while the
//! cache is being read, and parks after a second without reads (then the next
//! read falls back to [`now_ms`] and wakes it), so an idle process has no
//! thread waking up. Its value lags real time by up to two kernel ticks (≤ 8
//! ms), plus however long the ticker waits for a CPU: an entry may outlive its
//! TTL by that much.
//!
//! # Moving it in tests
//!
//! With the `testing` feature, [`testing::clock::advance`](crate::testing::clock::advance)
//! adds an offset that every clock here reads (one more relaxed load; none
//! at all without the feature), so TTLs, fail-safe windows and breaker
//! timeouts can be crossed without sleeping. The ticker keeps the unmoved
//! time; the offset is added when read, so a move is seen at once.

#[cfg(feature = "l1")]
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
#[cfg(feature = "l1")]
use std::thread::Thread;
#[cfg(feature = "l1")]
use std::time::Duration;
use std::time::Instant;

/// How far the clock was moved by [`testing::clock`](crate::testing::clock)
/// (milliseconds; only ever grows). Without the `testing` feature there is
/// no such offset, and no load of it.
#[cfg(feature = "testing")]
static OFFSET_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[inline(always)]
fn offset_ms() -> u64 {
    #[cfg(feature = "testing")]
    {
        OFFSET_MS.load(std::sync::atomic::Ordering::Relaxed)
    }
    #[cfg(not(feature = "testing"))]
    {
        0
    }
}

/// Moves every clock of this crate forward by `ms` (the `testing` feature).
#[cfg(feature = "testing")]
pub(crate) fn advance_ms(ms: u64) {
    OFFSET_MS.fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
}

/// How far [`advance_ms`] has moved the clocks, in total.
#[cfg(feature = "testing")]
pub(crate) fn advanced_ms() -> u64 {
    offset_ms()
}

/// Milliseconds since an arbitrary process-wide origin; never goes backwards.
#[inline]
pub(crate) fn now_ms() -> u64 {
    raw_ms() + offset_ms()
}

/// The coarse monotonic clock itself, unmoved.
#[inline]
fn raw_ms() -> u64 {
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

#[cfg(feature = "l1")]
/// What the ticker publishes; one cache line, read on every L1 hit.
#[repr(align(64))]
struct Recent {
    /// The coarse time at the last tick; 0 while the ticker is parked.
    ms: AtomicU64,
    /// Set by a read since the last tick (only when unset, so the line is
    /// written at most once per tick by readers).
    read: AtomicBool,
}

#[cfg(feature = "l1")]
static RECENT: Recent = Recent {
    ms: AtomicU64::new(0),
    read: AtomicBool::new(false),
};

#[cfg(feature = "l1")]
/// The ticker's thread (`None` if it could not start), with the process it
/// was started in: a child made by `fork` has no such thread and starts its own.
static TICKER: std::sync::Mutex<Option<(u32, Option<Thread>)>> = std::sync::Mutex::new(None);

#[cfg(feature = "l1")]
/// The coarse clock itself moves in steps of a kernel tick (1–4 ms, usually
/// 4): ticking faster would mostly store the same value again.
const TICK: Duration = Duration::from_millis(4);
#[cfg(feature = "l1")]
/// Ticks without a read before the ticker parks (one second).
const IDLE_TICKS: u32 = 250;

#[cfg(feature = "l1")]
/// [`now_ms`] as of the last tick of the ticker thread: one atomic load.
#[inline]
pub(crate) fn recent_ms() -> u64 {
    let ms = RECENT.ms.load(Relaxed);
    if ms == 0 {
        return recent_slow();
    }
    if !RECENT.read.load(Relaxed) {
        RECENT.read.store(true, Relaxed);
    }
    ms + offset_ms()
}

#[cfg(feature = "l1")]
/// The ticker is parked or not started yet: read the clock, wake the ticker.
#[cold]
fn recent_slow() -> u64 {
    let mut ticker = match TICKER.try_lock() {
        Ok(ticker) => ticker,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        // Another thread is starting or waking the ticker; or, in a child
        // made by fork, was doing so when its parent forked, and that lock
        // is never released here. Either way the clock itself answers.
        Err(std::sync::TryLockError::WouldBlock) => return now_ms(),
    };
    let pid = std::process::id();
    if ticker.as_ref().map(|(started_in, _)| *started_in) != Some(pid) {
        forget_ticker_in_forked_children();
        let thread = std::thread::Builder::new()
            .name("resilient-cache-clock".into())
            .stack_size(64 * 1024)
            .spawn(tick)
            .ok()
            .map(|handle| handle.thread().clone());
        *ticker = Some((pid, thread));
    }
    if let Some((_, Some(thread))) = ticker.as_ref() {
        // Unparking a running ticker only makes its next park return at once.
        thread.unpark();
    }
    now_ms()
}

/// A child made by `fork` inherits the last tick but not the ticker: its
/// clock would stand still. After a fork the child reads 0 ("parked"), so its
/// first read starts a ticker of its own.
#[cfg(all(feature = "l1", target_os = "linux"))]
fn forget_ticker_in_forked_children() {
    extern "C" fn in_child() {
        RECENT.ms.store(0, Relaxed);
    }
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: `in_child` is async-signal-safe (one atomic store) and lives
        // as long as the program; no prepare or parent handler is given.
        unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
}

#[cfg(all(feature = "l1", not(target_os = "linux")))]
fn forget_ticker_in_forked_children() {}

#[cfg(feature = "l1")]
fn tick() {
    let mut idle = 0;
    loop {
        // `max(1)`: 0 means "parked" (raw_ms is 0 only in its first ms without CLOCK_MONOTONIC_COARSE).
        RECENT.ms.store(raw_ms().max(1), Relaxed);
        std::thread::sleep(TICK);
        if RECENT.read.swap(false, Relaxed) {
            idle = 0;
            continue;
        }
        idle += 1;
        if idle >= IDLE_TICKS {
            // A reader that loaded the old value just before this store is at
            // most a tick behind; one that sees 0 reads the clock and unparks us.
            RECENT.ms.store(0, Relaxed);
            std::thread::park();
            idle = 0;
        }
    }
}

/// Microseconds since the Unix epoch, strictly increasing within the
/// process: the time stamp of a tagged write and of an invalidation marker.
/// Two stamps taken one after the other in this process always compare in
/// that order (even within one microsecond, or if the wall clock steps
/// back); across processes they compare as well as the hosts' clocks agree.
pub(crate) fn stamp_us() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = wall_us();
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// Microseconds since the Unix epoch as the wall clock says (no ordering
/// promise: for horizons, not for stamps).
pub(crate) fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
        + offset_ms() * 1000
}

/// Seconds since the Unix epoch, for timestamps shown in stats.
pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
        + offset_ms() as f64 / 1000.0
}

/// A number in `[0, 1)`, different on every call (not for cryptography:
/// for spreading expiries).
pub(crate) fn unit_random() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let bits = RandomState::new().hash_one(SEQ.fetch_add(1, Relaxed));
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    /// A child made by `fork` must not read its parent's last tick forever.
    #[cfg(all(feature = "l1", target_os = "linux"))]
    #[test]
    fn a_forked_child_has_a_clock_that_moves() {
        use std::time::Duration;
        super::recent_ms();
        std::thread::sleep(Duration::from_millis(20));
        super::recent_ms();
        // SAFETY: the child only reads clocks, sleeps, starts a thread and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let before = super::recent_ms();
            std::thread::sleep(Duration::from_millis(100));
            let after = super::recent_ms();
            // SAFETY: ends the child at once, without the test harness's exit path.
            unsafe { libc::_exit(if after >= before + 50 { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child made above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child's clock stood still (status {status})"
        );
    }

    #[test]
    fn stamps_strictly_increase() {
        let mut last = 0;
        for _ in 0..10_000 {
            let s = super::stamp_us();
            assert!(s > last, "{s} after {last}");
            last = s;
        }
    }

    #[test]
    fn clock_is_monotonic_and_moves() {
        let a = super::now_ms();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let b = super::now_ms();
        assert!(b > a, "{b} should be after {a}");
    }

    #[cfg(feature = "l1")]
    /// Polls `ok` every ms for up to `secs` seconds.
    fn within(secs: u64, mut ok: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if ok() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        false
    }

    #[cfg(feature = "l1")]
    #[test]
    fn recent_clock_follows_the_coarse_clock() {
        let first = super::recent_ms();
        // It may lag (by design), never run ahead.
        assert!(first <= super::now_ms(), "recent clock ahead of the real one");
        // Read as a busy cache would: the ticker moves the value along.
        assert!(
            within(10, || super::recent_ms() >= first + 50),
            "recent clock stuck near {first}"
        );
        assert!(
            super::recent_ms() <= super::now_ms(),
            "recent clock ahead of the real one"
        );
    }

    #[cfg(feature = "l1")]
    #[test]
    fn ticker_parks_when_unread_and_resumes_on_a_read() {
        use std::sync::atomic::Ordering::Relaxed;
        super::recent_ms();
        // Other tests may read meanwhile; the ticker parks after a second without reads.
        assert!(
            within(60, || super::RECENT.ms.load(Relaxed) == 0),
            "ticker never parked"
        );
        // A read while parked still gives the current time, and wakes the
        // ticker. (Another test may wake it first, so its lagging value is
        // allowed too: what must hold is that it does not run ahead.)
        let before = super::now_ms();
        let read = super::recent_ms();
        assert!(read <= super::now_ms(), "recent clock ahead of the real one");
        assert!(read + 1000 >= before, "recent clock {read} far behind {before}");
        assert!(
            within(10, || super::RECENT.ms.load(Relaxed) != 0),
            "ticker not woken by a read"
        );
    }

    #[test]
    fn unit_random_stays_in_zero_one_and_varies() {
        let draws: Vec<f64> = (0..1000).map(|_| super::unit_random()).collect();
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(draws.iter().any(|&x| x < 0.25) && draws.iter().any(|&x| x > 0.75));
    }
}
