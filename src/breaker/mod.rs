//! The circuit breaker that guards L2.
//!
//! CLOSED: calls go through; `threshold` consecutive failures open it.
//! OPEN: calls are refused at once (no network call, no wait) until `timeout`
//! has passed. HALF_OPEN: exactly **one** caller gets a probe [`Permit`]; its
//! success closes the breaker, its failure re-opens it and restarts the
//! timeout. Everyone else keeps being refused while the probe is in flight.
//!
//! Every field is an atomic: the breaker sits on every L2 call, so it takes no
//! lock, and a CLOSED breaker with no failures writes nothing on success (no
//! cache-line ping-pong between cores).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::*};
use std::time::Duration;

use serde::Serialize;

use crate::clock::{now_ms, unix_now};
use crate::error::Error;

mod config;
pub use config::CircuitBreakerConfig;

/// The breaker's state (in stats: `closed`, `open`, `half_open`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// L2 is used.
    Closed = 0,
    /// L2 is skipped.
    Open = 1,
    /// One probe is allowed through.
    HalfOpen = 2,
}

impl CircuitState {
    fn from_u8(v: u8) -> Self {
        match v {
            OPEN => Self::Open,
            HALF_OPEN => Self::HalfOpen,
            _ => Self::Closed,
        }
    }

    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// A lock-free circuit breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    name: String,
    enabled: bool,
    threshold: u32,
    timeout_ms: u64,
    state: AtomicU8,
    failures: AtomicU32,
    probe_at_ms: AtomicU64,
    probe_in_flight: AtomicBool,
    // Unix time in ms, 0 = never. Written only when the second changes.
    last_failure_unix_ms: AtomicU64,
    last_success_unix_ms: AtomicU64,
    transitions: AtomicU64,
    state_since_ms: AtomicU64,
    // Milliseconds spent in CLOSED, OPEN and HALF_OPEN before the current state.
    time_in_ms: [AtomicU64; 3],
}

/// Breaker figures for stats.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CircuitBreakerStats {
    /// Whether the breaker is active.
    pub enabled: bool,
    /// `closed`, `open` or `half_open`.
    pub state: CircuitState,
    /// Consecutive failures counted so far.
    pub failure_count: u32,
    /// Failures that open it.
    pub threshold: u32,
    /// Seconds it stays open.
    pub timeout: f64,
    /// Unix time of the last failure, if any.
    pub last_failure_time: Option<f64>,
    /// Unix time of the last success, if any.
    pub last_success_time: Option<f64>,
    /// How many state changes happened.
    pub transitions: u64,
    /// Seconds spent in each state since the breaker was created.
    pub time_in_state: TimeInState,
}

/// Seconds spent in each breaker state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TimeInState {
    /// Seconds CLOSED.
    pub closed: f64,
    /// Seconds OPEN.
    pub open: f64,
    /// Seconds HALF_OPEN.
    pub half_open: f64,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Self {
            name: "l2".to_string(),
            enabled: config.enabled,
            threshold: config.threshold.max(1),
            timeout_ms: config.timeout.as_millis().max(1) as u64,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            probe_at_ms: AtomicU64::new(0),
            probe_in_flight: AtomicBool::new(false),
            last_failure_unix_ms: AtomicU64::new(0),
            last_success_unix_ms: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            state_since_ms: AtomicU64::new(now_ms()),
            time_in_ms: Default::default(),
        }
    }

    /// Names the breaker in its logs and metrics (the service's shared
    /// breaker is named after the endpoint, a cache's own after its namespace).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The name given by [`with_name`](Self::with_name) (`"l2"` by default).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current state (a disabled breaker is always closed). An OPEN
    /// breaker whose timeout has passed reports `half_open`.
    pub fn state(&self) -> CircuitState {
        if !self.enabled {
            return CircuitState::Closed;
        }
        let s = self.state.load(Acquire);
        if s == OPEN && self.timeout_elapsed() {
            return CircuitState::HalfOpen;
        }
        CircuitState::from_u8(s)
    }

    /// `true` when L2 would be skipped right now: open and not yet due for a probe.
    pub fn is_open(&self) -> bool {
        self.state() == CircuitState::Open
    }

    fn timeout_elapsed(&self) -> bool {
        now_ms() >= self.probe_at_ms.load(Acquire)
    }

    /// How long until an open breaker lets a probe through (zero when it already may).
    pub fn time_until_probe(&self) -> Duration {
        if self.state.load(Acquire) != OPEN {
            return Duration::ZERO;
        }
        Duration::from_millis(self.probe_at_ms.load(Acquire).saturating_sub(now_ms()))
    }

    /// When an open breaker may probe: `timeout` plus up to 10 % jitter, so
    /// that many processes that saw one outage do not probe in lockstep.
    fn probe_time(&self) -> u64 {
        let now = now_ms();
        let jitter = splitmix(now ^ (self as *const Self as u64)) % (self.timeout_ms / 10 + 1);
        now + self.timeout_ms + jitter
    }

    /// Asks to call L2. `None` means skip it. The permit must be resolved with
    /// [`Permit::success`] or [`Permit::failure`]; dropping it unresolved (a
    /// cancelled call, a call that proved nothing) gives the probe slot back.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        if !self.enabled {
            return Some(Permit {
                breaker: self,
                probe: false,
                done: false,
            });
        }
        match self.state.load(Acquire) {
            CLOSED => Some(Permit {
                breaker: self,
                probe: false,
                done: false,
            }),
            OPEN => {
                if !self.timeout_elapsed() {
                    return None;
                }
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, AcqRel, Acquire)
                    .is_ok()
                {
                    self.transition(CircuitState::Open, CircuitState::HalfOpen);
                }
                self.try_probe()
            }
            _ => self.try_probe(),
        }
    }

    /// [`try_acquire`](Self::try_acquire) as a `Result`, for code that guards
    /// its own calls with the breaker: [`Error::CircuitBreakerOpen`] while the
    /// breaker refuses (open, or half-open with its probe in flight).
    pub fn permit(&self) -> Result<Permit<'_>, Error> {
        self.try_acquire().ok_or(Error::CircuitBreakerOpen)
    }

    /// A probe permit now, even if an open breaker's timeout has not run
    /// out: for a caller that checks L2's health on purpose (the service's
    /// health check, itself rate-limited), so recovery is seen without
    /// waiting for the timeout. `None` when closed (use
    /// [`try_acquire`](Self::try_acquire)), disabled, or a probe is in flight.
    pub fn probe_now(&self) -> Option<Permit<'_>> {
        if self.enabled
            && self
                .state
                .compare_exchange(OPEN, HALF_OPEN, AcqRel, Acquire)
                .is_ok()
        {
            self.transition(CircuitState::Open, CircuitState::HalfOpen);
        }
        self.try_probe()
    }

    fn try_probe(&self) -> Option<Permit<'_>> {
        if self.state.load(Acquire) != HALF_OPEN {
            return None;
        }
        self.probe_in_flight
            .compare_exchange(false, true, AcqRel, Acquire)
            .ok()
            .map(|_| Permit {
                breaker: self,
                probe: true,
                done: false,
            })
    }

    /// Records an L2 success outside of a permit.
    pub fn record_success(&self) {
        self.on_success(false);
    }

    /// Records an L2 failure outside of a permit.
    pub fn record_failure(&self) {
        self.on_failure(false);
    }

    fn on_success(&self, probe: bool) {
        stamp(&self.last_success_unix_ms);
        if !self.enabled {
            return;
        }
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
        if probe {
            self.state.store(CLOSED, Release);
            self.probe_in_flight.store(false, Release);
            self.transition(CircuitState::HalfOpen, CircuitState::Closed);
        }
    }

    fn on_failure(&self, probe: bool) {
        stamp(&self.last_failure_unix_ms);
        if !self.enabled {
            return;
        }
        let n = self.failures.fetch_add(1, AcqRel).saturating_add(1);
        if probe {
            self.probe_at_ms.store(self.probe_time(), Release);
            self.state.store(OPEN, Release);
            self.probe_in_flight.store(false, Release);
            self.transition(CircuitState::HalfOpen, CircuitState::Open);
        } else if n >= self.threshold && self.state.load(Acquire) == CLOSED {
            // The timeout starts before the state flips, so nobody sees OPEN with
            // an old start time; late failures of calls begun before it opened
            // find it not CLOSED and change nothing.
            self.probe_at_ms.store(self.probe_time(), Release);
            if self.state.compare_exchange(CLOSED, OPEN, AcqRel, Acquire).is_ok() {
                self.transition(CircuitState::Closed, CircuitState::Open);
            }
        }
    }

    fn transition(&self, from: CircuitState, to: CircuitState) {
        self.transitions.fetch_add(1, Relaxed);
        let now = now_ms();
        let since = self.state_since_ms.swap(now, AcqRel);
        self.time_in_ms[from as usize].fetch_add(now.saturating_sub(since), Relaxed);
        #[cfg(feature = "metrics")]
        {
            let state = match to {
                CircuitState::Closed => 0.0,
                CircuitState::HalfOpen => 1.0,
                CircuitState::Open => 2.0,
            };
            metrics::gauge!("resilient_cache_circuit_breaker_state", "breaker" => self.name.clone())
                .set(state);
            metrics::counter!("resilient_cache_circuit_breaker_transitions_total", "breaker" => self.name.clone())
                .increment(1);
        }
        let breaker = self.name.as_str();
        match to {
            CircuitState::Open => tracing::warn!(
                breaker,
                from = from.as_str(),
                to = "open",
                "circuit breaker opened: L2 skipped"
            ),
            CircuitState::Closed => tracing::info!(
                breaker,
                from = from.as_str(),
                to = "closed",
                "circuit breaker closed: L2 back"
            ),
            CircuitState::HalfOpen => tracing::info!(
                breaker,
                from = from.as_str(),
                to = "half_open",
                "circuit breaker half-open: probing L2"
            ),
        }
    }

    /// Back to CLOSED with no failures.
    pub fn reset(&self) {
        self.failures.store(0, Release);
        self.state.store(CLOSED, Release);
        self.probe_in_flight.store(false, Release);
    }

    /// Number of consecutive failures counted.
    pub fn failure_count(&self) -> u32 {
        self.failures.load(Relaxed)
    }

    /// Figures for stats.
    pub fn get_stats(&self) -> CircuitBreakerStats {
        let t = |a: &AtomicU64| match a.load(Relaxed) {
            0 => None,
            ms => Some(ms as f64 / 1000.0),
        };
        CircuitBreakerStats {
            enabled: self.enabled,
            state: self.state(),
            failure_count: self.failure_count(),
            threshold: self.threshold,
            timeout: Duration::from_millis(self.timeout_ms).as_secs_f64(),
            last_failure_time: t(&self.last_failure_unix_ms),
            last_success_time: t(&self.last_success_unix_ms),
            transitions: self.transitions.load(Relaxed),
            time_in_state: self.time_in_state(),
        }
    }

    fn time_in_state(&self) -> TimeInState {
        let mut ms = [0u64; 3];
        for (slot, total) in ms.iter_mut().zip(&self.time_in_ms) {
            *slot = total.load(Relaxed);
        }
        let current = CircuitState::from_u8(self.state.load(Acquire)) as usize;
        ms[current] += now_ms().saturating_sub(self.state_since_ms.load(Acquire));
        let s = |v: u64| v as f64 / 1000.0;
        TimeInState {
            closed: s(ms[0]),
            open: s(ms[1]),
            half_open: s(ms[2]),
        }
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Writes the current unix time (ms) unless it is the same second already: a
/// hot L2 path then writes this shared word about once a second, not per call.
fn stamp(slot: &AtomicU64) {
    let now = (unix_now() * 1000.0) as u64;
    if slot.load(Relaxed) / 1000 != now / 1000 {
        slot.store(now, Relaxed);
    }
}

/// Permission to make one L2 call.
#[must_use = "resolve the permit with success() or failure()"]
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    done: bool,
}

impl Permit<'_> {
    /// L2 answered (a miss is an answer too).
    pub fn success(mut self) {
        self.done = true;
        self.breaker.on_success(self.probe);
    }

    /// L2 failed to answer (connection error or timeout).
    pub fn failure(mut self) {
        self.done = true;
        self.breaker.on_failure(self.probe);
    }

    /// Whether this is the single HALF_OPEN probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.done {
            self.breaker.probe_in_flight.store(false, Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32, timeout_ms: u64) -> CircuitBreaker {
        CircuitBreaker::new(CircuitBreakerConfig {
            enabled: true,
            threshold,
            timeout: Duration::from_millis(timeout_ms),
        })
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let b = breaker(3, 60_000);
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().success(); // resets
        assert_eq!(b.failure_count(), 0);
        for _ in 0..3 {
            b.try_acquire().unwrap().failure();
        }
        assert_eq!(b.state(), CircuitState::Open);
        assert!(b.try_acquire().is_none());
        assert!(matches!(b.permit(), Err(Error::CircuitBreakerOpen)));
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through() {
        let b = breaker(1, 20);
        b.try_acquire().unwrap().failure();
        assert!(b.try_acquire().is_none());
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.try_acquire().expect("probe");
        assert!(probe.is_probe());
        assert!(b.try_acquire().is_none(), "second caller must be refused");
        probe.failure();
        assert_eq!(b.state(), CircuitState::Open);
        assert!(b.try_acquire().is_none(), "failure restarts the timeout");
        std::thread::sleep(Duration::from_millis(40));
        b.try_acquire().unwrap().success();
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(b.try_acquire().is_some());
        assert_eq!(b.get_stats().transitions, 5);
    }

    #[test]
    fn one_probe_among_many_threads() {
        let b = std::sync::Arc::new(breaker(1, 10));
        b.try_acquire().unwrap().failure();
        std::thread::sleep(Duration::from_millis(30));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let granted: usize = (0..8)
            .map(|_| {
                let (b, barrier) = (b.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    // Hold the permit (if any) so no one can get a second one.
                    let p = b.try_acquire();
                    let got = p.is_some() as usize;
                    barrier.wait();
                    std::mem::forget(p);
                    got
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(granted, 1);
    }

    #[test]
    fn dropped_probe_frees_the_slot() {
        let b = breaker(1, 10);
        b.try_acquire().unwrap().failure();
        std::thread::sleep(Duration::from_millis(30));
        drop(b.try_acquire().unwrap());
        assert!(b.try_acquire().is_some());
    }

    #[test]
    fn disabled_is_always_closed() {
        let b = CircuitBreaker::new(CircuitBreakerConfig {
            enabled: false,
            threshold: 1,
            timeout: Duration::from_secs(60),
        });
        for _ in 0..10 {
            b.try_acquire().unwrap().failure();
        }
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(b.try_acquire().is_some());
    }

    #[test]
    fn reset_closes() {
        let b = breaker(1, 60_000);
        b.record_failure();
        assert!(b.is_open());
        b.reset();
        assert_eq!(b.state(), CircuitState::Closed);
        let s = b.get_stats();
        assert!(s.last_failure_time.is_some() && s.enabled && s.threshold == 1);
        assert!(s.time_in_state.closed >= 0.0 && s.time_in_state.open >= 0.0);
    }
}
