//! Single flight: the loads in flight of one cache, by key, their waiters,
//! the keys whose loader failed recently (fail-safe throttle), and the
//! loader's figures.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use crate::clock::now_ms;

/// Loader figures of one cache.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LoaderStats {
    /// Loader runs started.
    pub loads: u64,
    /// Loader runs that failed (or panicked).
    pub loader_errors: u64,
    /// Calls that waited for a load (hits served at once are not counted).
    pub waits: u64,
    /// Calls answered with a stale value (fail-safe: loader failed, timed out or throttled).
    pub stale_served: u64,
    /// Calls that stopped waiting at a soft or hard timeout.
    pub timeouts: u64,
    /// Background refreshes started by eager refresh.
    pub eager_refreshes: u64,
    /// Loads that found another instance's lease and waited for its value.
    pub lock_waits: u64,
    /// Loaded values not stored because the key was written or deleted while loading.
    pub stale_writes_prevented: u64,
}

#[derive(Default)]
pub(super) struct LoaderCounters {
    pub(super) loads: AtomicU64,
    pub(super) loader_errors: AtomicU64,
    pub(super) waits: AtomicU64,
    pub(super) stale_served: AtomicU64,
    pub(super) timeouts: AtomicU64,
    pub(super) eager_refreshes: AtomicU64,
    pub(super) lock_waits: AtomicU64,
    pub(super) stale_writes_prevented: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// The loads in flight of one cache, by key, and the keys whose loader failed recently.
#[derive(Default)]
pub(crate) struct Flights {
    pub(super) map: Mutex<HashMap<String, Arc<Flight>>>,
    /// Key → time (ms) until which a failed key is not loaded again.
    pub(super) throttled: Mutex<HashMap<String, u64>>,
    pub(super) counters: LoaderCounters,
}

#[derive(Default)]
pub(super) struct Flight {
    /// `Result<Arc<V>, Arc<E>>` of the load, type-erased (one map serves every `E`).
    pub(super) result: OnceLock<Box<dyn Any + Send + Sync>>,
    pub(super) finished: AtomicBool,
    pub(super) done: Notify,
    /// Callers waiting now; when the last one is cancelled, the load is too.
    pub(super) waiters: AtomicUsize,
    /// Set when the load must finish even with no one waiting (a caller
    /// stopped at a timeout, or an eager refresh).
    pub(super) detached: AtomicBool,
    pub(super) abort: OnceLock<tokio::task::AbortHandle>,
}

/// One caller waiting on a flight. Dropped without the flight finished nor
/// detached (the caller was cancelled), and last: the load is aborted, so a
/// loader whose callers are gone does not hold the key.
pub(super) struct Waiter<'a>(&'a Flight);

impl<'a> Waiter<'a> {
    pub(super) fn new(flight: &'a Flight) -> Self {
        flight.waiters.fetch_add(1, Relaxed);
        Self(flight)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let f = self.0;
        if f.waiters.fetch_sub(1, Relaxed) == 1
            && !f.detached.load(Relaxed)
            && !f.finished.load(std::sync::atomic::Ordering::Acquire)
        {
            if let Some(h) = f.abort.get() {
                h.abort();
            }
        }
    }
}

impl Flights {
    /// The flight of `key`, and whether this call created it (and must start it).
    pub(super) fn join(&self, key: &str) -> (Arc<Flight>, bool) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some(f) => (f.clone(), false),
            None => {
                let f = Arc::new(Flight::default());
                map.insert(key.to_string(), f.clone());
                (f, true)
            }
        }
    }

    pub(super) fn is_throttled(&self, key: &str) -> bool {
        let map = self.throttled.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).is_some_and(|until| *until > now_ms())
    }

    pub(super) fn throttle(&self, key: &str, for_: Duration) {
        let mut map = self.throttled.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        if map.len() >= 10_000 {
            map.retain(|_, until| *until > now);
        }
        map.insert(key.to_string(), now + for_.as_millis() as u64);
    }

    pub(super) fn unthrottle(&self, key: &str) {
        let mut map = self.throttled.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }

    pub(crate) fn stats(&self) -> LoaderStats {
        let c = &self.counters;
        LoaderStats {
            loads: c.loads.load(Relaxed),
            loader_errors: c.loader_errors.load(Relaxed),
            waits: c.waits.load(Relaxed),
            stale_served: c.stale_served.load(Relaxed),
            timeouts: c.timeouts.load(Relaxed),
            eager_refreshes: c.eager_refreshes.load(Relaxed),
            lock_waits: c.lock_waits.load(Relaxed),
            stale_writes_prevented: c.stale_writes_prevented.load(Relaxed),
        }
    }
}
