//! A clock your tests can move: expiry, fail-safe and the circuit breaker
//! without sleeping.
//!
//! Every time this crate reads (L1 and [`MemoryL2`](super::MemoryL2)
//! expiry, the fail-safe window, the breaker's open timeout, invalidation
//! markers' lifetimes, timestamps in stats) moves forward by what
//! [`advance`] adds. Time never goes back: the moves add up for the rest of
//! the process.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::Duration;
//! use resilient_cache::testing::{clock, MemoryL2};
//! use resilient_cache::CacheBackend;
//!
//! let l2 = MemoryL2::new();
//! l2.set("k", b"v".to_vec(), Some(Duration::from_secs(60))).await.unwrap();
//! clock::advance(Duration::from_secs(61));
//! assert_eq!(l2.get("k").await.unwrap(), None, "expired, and no one slept");
//! # }
//! ```
//!
//! What it does not move:
//!
//! - **Redis.** A real server keeps its own time: entries in Redis expire
//!   when Redis says. Use it with [`MemoryL2`](super::MemoryL2) (or your
//!   own backend reading this clock) for expiry tests.
//! - **Tokio's timers**: the bound on each L2 call, load timeouts, the
//!   background workers' pauses. Tests of those run on a paused Tokio clock
//!   (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`).
//!
//! The offset is process-wide: tests that move it see each other's moves.
//! Put them in a test file of their own (one process), or keep the other
//! tests of that file free of short TTLs.

use std::time::Duration;

/// Moves this crate's clock forward by `by`, for every cache in the process.
pub fn advance(by: Duration) {
    crate::clock::advance_ms(by.as_millis().min(u128::from(u64::MAX / 4)) as u64);
}

/// How far [`advance`] has moved the clock in total.
pub fn advanced() -> Duration {
    Duration::from_millis(crate::clock::advanced_ms())
}
