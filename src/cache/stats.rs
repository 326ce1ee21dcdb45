//! What one cache reports: its own counters, its replay queue, and the figures
//! of the parts it is made of.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use serde::Serialize;

use super::{CacheValue, Inner, TwoLevelCache};
use crate::backend::CacheBackend;

use crate::backend::{L1Stats, L2Stats};
use crate::backplane::{BackplaneStats, TrackingStats};
use crate::breaker::CircuitBreakerStats;
use crate::cache::load::LoaderStats;

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
    /// Writes and invalidations refused for an invalid tag.
    pub invalid_tag: u64,
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
    /// Invalidation markers waiting for L2.
    pub markers_pending: u64,
}

/// Invalidation by marker (tags, the whole namespace) in one cache.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct InvalidationStats {
    /// Markers this instance knows (tags removed or expired, namespace-wide ones).
    pub markers_known: u64,
    /// L2 entries read as absent because a removal marker covers them.
    pub removed_reads: u64,
    /// L2 entries read as stale because an expiry marker covers them.
    pub stale_reads: u64,
    /// Times L1 was cleared because its tag index was full.
    pub tag_index_clears: u64,
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
    /// Invalidation markers.
    pub invalidation: InvalidationStats,
    /// Cross-instance invalidation (service-wide figures), when this cache uses it.
    pub backplane: Option<BackplaneStats>,
    /// Tracking (service-wide figures), when this cache uses it.
    pub tracking: Option<TrackingStats>,
    /// `get_or_load` figures.
    pub loader: LoaderStats,
    /// L2 reads that found a value (L1 misses answered by L2).
    pub l2_hits: u64,
    /// L2 reads that found nothing.
    pub l2_misses: u64,
}

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// The backplane's figures (service-wide), without any I/O; `None` when
    /// this cache does not use the backplane. `connected` is this cache's
    /// view: also `false` until what its L1 took in before tracking covered
    /// its namespace has been checked against L2.
    pub fn backplane_stats(&self) -> Option<BackplaneStats> {
        self.inner.bus.as_ref().map(|b| {
            let mut s = b.stats();
            s.connected &= !self.inner.journal.is_pending();
            s
        })
    }

    /// Tracking's figures (service-wide), without any I/O; `None` when
    /// this cache is not tracked. `connected` is this cache's view: also
    /// `false` until what its L1 took in before tracking covered its
    /// namespace has been checked against L2.
    pub fn tracking_stats(&self) -> Option<TrackingStats> {
        self.inner.tracking.as_ref().map(|t| {
            let mut s = t.stats();
            s.connected &= !self.inner.journal.is_pending();
            s
        })
    }

    /// Figures for both levels, the breaker, the error counters and the
    /// recovery queue. L2 is asked only while the breaker is closed (bounded by
    /// the operation timeout).
    pub async fn get_stats(&self) -> CacheStats<A::Stats, B::Stats> {
        self.stats_asking_l2(true).await
    }

    /// Stats; with `ask_l2` false, L2's part is what is known without I/O
    /// (health checks and metrics scrapes must not scan namespaces).
    pub(crate) async fn stats_asking_l2(&self, ask_l2: bool) -> CacheStats<A::Stats, B::Stats> {
        let l1 = match &self.inner.l1 {
            Some(l1) => l1.get_stats().await.ok(),
            None => None,
        };
        let l2 = match &self.inner.l2 {
            None => None,
            // Only a closed breaker lets stats reach L2: stats must not spend
            // the single half-open probe meant for real traffic.
            Some(l2) if !ask_l2 => Some(l2.describe()),
            Some(l2) => Some(match self.inner.breaker.try_acquire().filter(|p| !p.is_probe()) {
                Some(permit) => {
                    let r = l2.get_stats().await;
                    self.settle(permit, "stats", r)
                        .ok()
                        .unwrap_or_else(|| l2.describe())
                }
                None => l2.describe(),
            }),
        };
        let e = &self.inner.counters;
        let q = &self.inner.queue;
        CacheStats {
            key_prefix: self.inner.prefix.clone(),
            l1,
            l2,
            circuit_breaker: self.inner.breaker.get_stats(),
            errors: ErrorStats {
                l2_timeout: e.l2_timeout.get(),
                l2_refused: e.l2_refused.get(),
                l2_connection: e.l2_connection.get(),
                l2_auth: e.l2_auth.get(),
                decode: e.decode.get(),
                encode: e.encode.get(),
                l2_skipped: e.l2_skipped.get(),
                invalid_key: e.invalid_key.get(),
                invalid_ttl: e.invalid_ttl.get(),
                invalid_tag: e.invalid_tag.get(),
                oversize: e.oversize.get(),
            },
            recovery: RecoveryStats {
                queue_depth: q.depth() as u64,
                queue_capacity: q.capacity() as u64,
                clear_pending: q.clear_pending(),
                overflow: q.overflow.get(),
                replayed: q.replayed.get(),
                markers_pending: q.marks_pending() as u64,
            },
            invalidation: InvalidationStats {
                markers_known: self.inner.markers.count(),
                removed_reads: e.marker_removed.get(),
                stale_reads: e.marker_stale.get(),
                tag_index_clears: e.tag_index_clears.get(),
            },
            backplane: self.backplane_stats(),
            tracking: self.tracking_stats(),
            loader: self.inner.flights.stats(),
            l2_hits: e.l2_hits.get(),
            l2_misses: e.l2_misses.get(),
        }
    }
}

/// What the service keeps of each cache to report its stats.
pub(crate) trait StatsSource: Send + Sync {
    /// See [`TwoLevelCache::stats_asking_l2`].
    fn stats(self: Arc<Self>, ask_l2: bool) -> Pin<Box<dyn Future<Output = CacheStats> + Send>>;
}

impl<V, A, B> StatsSource for Inner<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>, Stats = L1Stats>,
    B: CacheBackend<Value = Vec<u8>, Stats = L2Stats>,
{
    fn stats(self: Arc<Self>, ask_l2: bool) -> Pin<Box<dyn Future<Output = CacheStats> + Send>> {
        Box::pin(async move { TwoLevelCache { inner: self }.stats_asking_l2(ask_l2).await })
    }
}

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>, Stats = L1Stats>,
    B: CacheBackend<Value = Vec<u8>, Stats = L2Stats>,
{
    pub(crate) fn stats_source(&self) -> Weak<dyn StatsSource> {
        let weak: Weak<Inner<V, A, B>> = Arc::downgrade(&self.inner);
        weak
    }
}
