//! Counters the parts share: striped event counters that threads bump without
//! sharing a cache line, and a limiter that keeps an outage from flooding the log.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::clock::now_ms;

/// An event counter that threads bump without sharing a cache line: each
/// thread adds to its own stripe, and reading sums the stripes. Hits are
/// counted on every L1 read, so one shared atomic would make cores fight.
#[derive(Debug, Default)]
pub(crate) struct Counter([Stripe; STRIPES]);

const STRIPES: usize = 8;

#[derive(Debug, Default)]
#[repr(align(64))]
struct Stripe(AtomicU64);

/// A small number per thread, handed out in order of first use: threads that
/// count get distinct stripes while there are fewer of them than stripes.
#[inline]
fn thread_index() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed);
    }
    INDEX.with(|i| *i)
}

impl Counter {
    #[inline]
    pub fn incr(&self) {
        self.0[thread_index() % STRIPES].0.fetch_add(1, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

/// The L1 hit/miss counter: like [`Counter`], but bumped with a plain load and
/// store instead of an atomic read-modify-write, which would be a large
/// share of an L1 hit. Each of the first [`HOT_STRIPES`] threads that touch it
/// owns a stripe, so counts are exact; beyond that, two threads sharing a
/// stripe can, rarely, lose an increment.
#[cfg(feature = "l1")]
#[derive(Debug, Default)]
pub(crate) struct HotCounter([Stripe; HOT_STRIPES]);

#[cfg(feature = "l1")]
pub(crate) const HOT_STRIPES: usize = 16;

#[cfg(feature = "l1")]
impl HotCounter {
    #[inline]
    pub fn incr(&self) {
        let s = &self.0[thread_index() % HOT_STRIPES].0;
        s.store(s.load(Relaxed).wrapping_add(1), Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

/// Lets through about one warning per second per cache, so an outage does not
/// flood the log; the number of suppressed messages is reported with the next one.
#[derive(Default)]
pub(crate) struct LogLimiter {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// `Some(suppressed)` when this message may be logged.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = now_ms();
        let last = self.last_ms.load(Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .last_ms
                .compare_exchange(last, now.max(1), Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_sums_across_threads() {
        let c = std::sync::Arc::new(Counter::default());
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| c.incr()))
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(c.get(), 6000);
    }

    #[cfg(feature = "l1")]
    #[test]
    fn hot_counter_is_exact_with_few_threads() {
        let c = std::sync::Arc::new(HotCounter::default());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..10_000).for_each(|_| c.incr()))
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(c.get(), 40_000);
    }

    #[test]
    fn log_limiter_admits_about_once_a_second() {
        let l = LogLimiter::default();
        assert_eq!(l.admit(), Some(0));
        assert_eq!(l.admit(), None);
        assert_eq!(l.admit(), None);
        l.last_ms.store(now_ms().saturating_sub(2000).max(1), Relaxed);
        assert_eq!(l.admit(), Some(2));
    }
}
