//! Statistics structures: everything `get_stats` returns is `serde::Serialize`
//! and holds no secret (endpoints are shown without credentials).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::breaker::CircuitBreakerStats;

/// L1 figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct L1Stats {
    /// `ttl` or `lru`.
    pub backend: &'static str,
    /// Entries held now.
    pub size: u64,
    /// Maximum entries.
    pub maxsize: u64,
    /// Entry TTL in seconds (`None` for `lru`).
    pub ttl: Option<f64>,
    /// Reads that found a live entry.
    pub hits: u64,
    /// Reads that found nothing (or an expired entry).
    pub misses: u64,
    /// hits / (hits + misses), 0 when there were no reads.
    pub hit_rate: f64,
    /// size / maxsize × 100.
    pub usage_percent: f64,
}

impl L1Stats {
    /// Fills `hit_rate` and `usage_percent` from the counts (for backend authors).
    pub fn compute_rates(mut self) -> Self {
        let total = self.hits + self.misses;
        self.hit_rate = if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        };
        self.usage_percent = if self.maxsize == 0 {
            0.0
        } else {
            self.size as f64 * 100.0 / self.maxsize as f64
        };
        self
    }
}

/// L2 figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct L2Stats {
    /// `redis` or `valkey`.
    pub backend: &'static str,
    /// `host:port/db` or the URL, never with credentials.
    pub endpoint: String,
    /// Database number.
    pub db: i64,
    /// Namespace.
    pub key_prefix: String,
    /// Default TTL in seconds.
    pub ttl: f64,
    /// Serializer name.
    pub serializer: String,
    /// Whether the server answered for these stats.
    pub available: bool,
    /// Keys in this namespace (`None` when the server was not asked or did not answer).
    pub size: Option<u64>,
    /// Selected server figures from `INFO` (hits, misses, memory, clients…):
    /// counters as numbers, names and versions as strings.
    pub server: BTreeMap<String, serde_json::Value>,
}

/// Per-cache error and event counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ErrorStats {
    /// L2 calls that ran past the operation timeout (frozen or overloaded server).
    pub l2_timeout: u64,
    /// L2 connections refused (server down).
    pub l2_refused: u64,
    /// Other L2 connection or protocol failures (broken connection, server errors).
    pub l2_connection: u64,
    /// L2 authentication failures (wrong password or ACL user).
    pub l2_auth: u64,
    /// Stored bytes that could not be decoded (read as a miss, key dropped).
    pub decode: u64,
    /// Values that could not be encoded (not written to L2).
    pub encode: u64,
    /// L2 calls skipped because the breaker was open.
    pub l2_skipped: u64,
    /// Operations refused for a key longer than the maximum.
    pub invalid_key: u64,
    /// Writes refused for a per-call TTL under 1 ms (e.g. zero).
    pub invalid_ttl: u64,
    /// `set`s refused because the encoded value was larger than the maximum.
    pub oversize: u64,
}

/// The outage replay queue of one cache.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RecoveryStats {
    /// Keys with a write or delete waiting for L2.
    pub queue_depth: u64,
    /// Queue capacity (distinct keys).
    pub queue_capacity: u64,
    /// Whether L2's namespace will be cleared first on recovery (a `clear`
    /// during the outage, or an overflow).
    pub clear_pending: bool,
    /// Operations dropped because the queue was full.
    pub overflow: u64,
    /// Operations replayed into L2 after an outage.
    pub replayed: u64,
}

/// Everything `Cache::get_stats` reports.
#[derive(Debug, Clone, Serialize)]
pub struct CacheStats<L1 = L1Stats, L2 = L2Stats> {
    /// Namespace of the cache.
    pub key_prefix: String,
    /// L1 figures, when L1 is enabled.
    pub l1: Option<L1>,
    /// L2 figures, when L2 is enabled.
    pub l2: Option<L2>,
    /// Breaker figures.
    pub circuit_breaker: CircuitBreakerStats,
    /// Error counters.
    pub errors: ErrorStats,
    /// Outage replay queue.
    pub recovery: RecoveryStats,
    /// Cross-instance invalidation (service-wide figures), when this cache uses it.
    pub backplane: Option<crate::backplane::BackplaneStats>,
    /// `get_or_load` figures.
    pub loader: crate::load::LoaderStats,
    /// L2 reads that found a value (L1 misses answered by L2).
    pub l2_hits: u64,
    /// L2 reads that found nothing.
    pub l2_misses: u64,
}

/// Service-wide stats: one entry per cache, by namespace.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStats {
    /// `host:port/db` of L2, without credentials.
    pub l2_endpoint: String,
    /// Serializer default.
    pub serializer: String,
    /// Each live cache's stats.
    pub caches: BTreeMap<String, CacheStats>,
}

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
/// store instead of an atomic read-modify-write, which costs as much as a
/// third of an L1 hit. Each of the first [`HOT_STRIPES`] threads that touch it
/// owns a stripe, so counts are exact; beyond that, two threads sharing a
/// stripe can, rarely, lose an increment.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "l1"), allow(dead_code))]
pub(crate) struct HotCounter([Stripe; HOT_STRIPES]);

pub(crate) const HOT_STRIPES: usize = 16;

#[cfg_attr(not(feature = "l1"), allow(dead_code))]
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
    fn rates_are_computed() {
        let s = L1Stats {
            backend: "ttl",
            size: 5,
            maxsize: 10,
            ttl: Some(1.0),
            hits: 3,
            misses: 1,
            hit_rate: 0.0,
            usage_percent: 0.0,
        }
        .compute_rates();
        assert_eq!(s.hit_rate, 0.75);
        assert_eq!(s.usage_percent, 50.0);
    }
}
