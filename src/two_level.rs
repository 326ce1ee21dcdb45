//! The two-level cache: one L1 backend and one L2 backend composed, with the
//! circuit breaker in front of L2. Every behaviour of SPEC §2 lives here.
//!
//! L2 failures never reach the caller: a connection failure or timeout is a
//! breaker failure, counted, and the operation carries on with L1 alone. A
//! data failure (bytes that do not decode, a value that does not encode) is
//! counted too, but it proves L2 is healthy, so it is a breaker *success*: one
//! corrupt key must not switch L2 off for everyone.

use std::collections::BTreeSet;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::CacheBackend;
use crate::breaker::{CircuitBreaker, CircuitState, Permit};
use crate::clock::{now_ms, unix_now};
use crate::config::CircuitBreakerConfig;
use crate::error::{ConnectionErrorKind, Error};
use crate::serializer::Serializer;
use crate::stats::{CacheStats, Counter, ErrorStats, L1Stats, L2Stats};

/// What a cache value must be: serde both ways, shareable across tasks.
pub trait CacheValue: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> CacheValue for T {}

/// A two-level cache over any L1 backend holding `Arc<V>` and any L2 backend
/// holding bytes. Cheap to clone (one `Arc`), `Send + Sync`.
///
/// Most code uses the alias [`Cache<V>`](crate::Cache), built by
/// [`CacheService::create_cache`](crate::CacheService::create_cache).
pub struct TwoLevelCache<V, A, B> {
    inner: Arc<Inner<V, A, B>>,
}

impl<V, A, B> Clone for TwoLevelCache<V, A, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<V, A, B> {
    prefix: String,
    l1: Option<A>,
    l2: Option<B>,
    serializer: Serializer,
    breaker: CircuitBreaker,
    errors: Errors,
    _value: PhantomData<fn() -> V>,
}

#[derive(Default)]
struct Errors {
    l2_connection: Counter,
    l2_timeout: Counter,
    decode: Counter,
    encode: Counter,
    l2_skipped: Counter,
    log: LogLimiter,
}

/// Lets through about one warning per second per cache, so an outage does not
/// flood the log; the number of suppressed messages is reported with the next one.
#[derive(Default)]
struct LogLimiter {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// `Some(suppressed)` when this message may be logged.
    fn admit(&self) -> Option<u64> {
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

/// What `clear` did with L2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum L2ClearStatus {
    /// Every key of the namespace was removed.
    Cleared,
    /// The breaker was open: L2 was not touched.
    SkippedBreakerOpen,
    /// L2 failed during the clear (some keys may remain).
    Failed,
    /// This cache has no L2.
    Disabled,
}

/// The result of `clear`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClearReport {
    /// Entries removed from L1.
    pub l1_items_removed: u64,
    /// Keys removed from L2.
    pub l2_items_removed: u64,
    /// Whether L2 was actually cleared.
    pub l2_cleared: bool,
    /// Why or why not.
    pub l2_status: L2ClearStatus,
    /// Unix time of the clear.
    pub timestamp: f64,
}

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// Composes two levels (either may be absent) under one breaker.
    pub fn new(
        key_prefix: impl Into<String>,
        l1: Option<A>,
        l2: Option<B>,
        serializer: Serializer,
        breaker: CircuitBreakerConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                prefix: key_prefix.into(),
                l1,
                l2,
                serializer,
                breaker: CircuitBreaker::new(breaker),
                errors: Errors::default(),
                _value: PhantomData,
            }),
        }
    }

    /// The namespace.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The breaker guarding L2.
    pub fn circuit_breaker(&self) -> &CircuitBreaker {
        &self.inner.breaker
    }

    /// The serializer used for L2.
    pub fn serializer(&self) -> &Serializer {
        &self.inner.serializer
    }

    /// L2 and a permit to call it, or `None` (no L2, or breaker open: counted).
    fn l2(&self) -> Option<(&B, Permit<'_>)> {
        let l2 = self.inner.l2.as_ref()?;
        match self.inner.breaker.try_acquire() {
            Some(p) => Some((l2, p)),
            None => {
                self.inner.errors.l2_skipped.incr();
                None
            }
        }
    }

    /// Settles a permit with the outcome of an L2 call, counting and logging
    /// failures; returns the value on success.
    fn settle<T>(&self, permit: Permit<'_>, op: &'static str, r: Result<T, Error>) -> Option<T> {
        match r {
            Ok(v) => {
                permit.success();
                Some(v)
            }
            Err(e @ Error::Connection(_)) => {
                permit.failure();
                let errs = &self.inner.errors;
                match &e {
                    Error::Connection(c) if c.kind == ConnectionErrorKind::Timeout => errs.l2_timeout.incr(),
                    _ => errs.l2_connection.incr(),
                }
                if let Some(suppressed) = errs.log.admit() {
                    tracing::warn!(cache = %self.inner.prefix, op, error = %e, suppressed, "L2 unavailable; serving from L1");
                }
                None
            }
            Err(e) => {
                // L2 answered; the data was bad. Healthy for the breaker.
                permit.success();
                self.data_error(op, &e);
                None
            }
        }
    }

    fn data_error(&self, op: &'static str, e: &Error) {
        let errs = &self.inner.errors;
        if op == "encode" {
            errs.encode.incr()
        } else {
            errs.decode.incr()
        }
        if let Some(suppressed) = errs.log.admit() {
            tracing::warn!(cache = %self.inner.prefix, op, error = %e, suppressed, "bad cache data ignored");
        }
    }

    /// The value under `key`: L1, then L2 (promoting a hit into L1). Misses,
    /// L2 failures and undecodable bytes all read as `None`. An L1 hit hands
    /// out the stored `Arc`, never a copy.
    pub async fn get(&self, key: &str) -> Option<Arc<V>> {
        if let Some(l1) = &self.inner.l1 {
            if let Ok(Some(v)) = l1.get(key).await {
                return Some(v);
            }
        }
        let (l2, permit) = self.l2()?;
        let r = l2.get(key).await;
        let bytes = self.settle(permit, "get", r).flatten()?;
        match self.inner.serializer.decode::<V>(&bytes) {
            Ok(v) => {
                let v = Arc::new(v);
                if let Some(l1) = &self.inner.l1 {
                    let _ = l1.set(key, v.clone(), None).await;
                }
                Some(v)
            }
            Err(e) => {
                self.data_error("decode", &e);
                // Drop the bad key so the next read does not pay for it again.
                let _ = l2.delete(key).await;
                None
            }
        }
    }

    /// Stores `value` in L1 and L2 (write-through) with the cache's TTLs.
    pub async fn set(&self, key: &str, value: V) {
        self.set_with_ttl(key, value, None).await
    }

    /// Stores `value` with a per-call TTL (L2 uses it; L1 never keeps an entry
    /// longer than its own TTL). When L2 fails, L1 keeps the value.
    pub async fn set_with_ttl(&self, key: &str, value: V, ttl: Option<Duration>) {
        let value = Arc::new(value);
        if self.inner.l2.is_some() {
            self.write_l2(key, &value, ttl).await;
        }
        if let Some(l1) = &self.inner.l1 {
            let _ = l1.set(key, value, ttl).await;
        }
    }

    async fn write_l2(&self, key: &str, value: &V, ttl: Option<Duration>) {
        match self.inner.serializer.encode(value) {
            Ok(bytes) => {
                if let Some((l2, permit)) = self.l2() {
                    let r = l2.set(key, bytes, ttl).await;
                    self.settle(permit, "set", r);
                }
            }
            Err(e) => {
                self.data_error("encode", &e);
                // L2 must not keep serving the previous value for this key.
                if let Some((l2, permit)) = self.l2() {
                    let r = l2.delete(key).await;
                    self.settle(permit, "set", r);
                }
            }
        }
    }

    /// Stores `value` only if `key` is absent; `true` if it was stored. L2 is
    /// the source of truth (an atomic `SET NX`): L1 takes the value only if L2
    /// accepted it. Without a usable L2, the same rule applies to L1 alone.
    pub async fn set_if_not_exist(&self, key: &str, value: V, ttl: Option<Duration>) -> bool {
        let value = Arc::new(value);
        if self.inner.l2.is_some() {
            match self.inner.serializer.encode(&*value) {
                Err(e) => self.data_error("encode", &e),
                Ok(bytes) => {
                    if let Some((l2, permit)) = self.l2() {
                        let r = l2.set_if_not_exist(key, bytes, ttl).await;
                        if let Some(stored) = self.settle(permit, "set_if_not_exist", r) {
                            if stored {
                                if let Some(l1) = &self.inner.l1 {
                                    let _ = l1.set(key, value, ttl).await;
                                }
                            }
                            return stored;
                        }
                    }
                }
            }
        }
        match &self.inner.l1 {
            Some(l1) => l1.set_if_not_exist(key, value, ttl).await.unwrap_or(false),
            None => false,
        }
    }

    /// Removes `key`: L2 first, then L1 (always, even when L2 fails).
    /// `true` if either level held it.
    pub async fn delete(&self, key: &str) -> bool {
        let mut removed = false;
        if let Some((l2, permit)) = self.l2() {
            let r = l2.delete(key).await;
            removed |= self.settle(permit, "delete", r).unwrap_or(false);
        }
        if let Some(l1) = &self.inner.l1 {
            removed |= l1.delete(key).await.unwrap_or(false);
        }
        removed
    }

    /// Removes this cache's namespace only: all of L1, and every L2 key under
    /// `"{prefix}:"`. The report says whether L2 was actually cleared.
    pub async fn clear(&self) -> ClearReport {
        let (l2_items_removed, l2_status) = if self.inner.l2.is_none() {
            (0, L2ClearStatus::Disabled)
        } else if let Some((l2, permit)) = self.l2() {
            let r = l2.clear().await;
            match self.settle(permit, "clear", r) {
                Some(n) => (n, L2ClearStatus::Cleared),
                None => (0, L2ClearStatus::Failed),
            }
        } else {
            (0, L2ClearStatus::SkippedBreakerOpen)
        };
        let l1_items_removed = match &self.inner.l1 {
            Some(l1) => l1.clear().await.unwrap_or(0),
            None => 0,
        };
        ClearReport {
            l1_items_removed,
            l2_items_removed,
            l2_cleared: l2_status == L2ClearStatus::Cleared,
            l2_status,
            timestamp: unix_now(),
        }
    }

    /// Whether `key` is in L1 or L2.
    pub async fn is_on_cache(&self, key: &str) -> bool {
        if let Some(l1) = &self.inner.l1 {
            if l1.exists(key).await.unwrap_or(false) {
                return true;
            }
        }
        match self.l2() {
            Some((l2, permit)) => {
                let r = l2.exists(key).await;
                self.settle(permit, "exists", r).unwrap_or(false)
            }
            None => false,
        }
    }

    /// Remaining time to live: L1's real remaining TTL, else L2's. `None` when
    /// absent or without expiry.
    pub async fn get_ttl(&self, key: &str) -> Option<Duration> {
        if let Some(l1) = &self.inner.l1 {
            if let Ok(Some(t)) = l1.get_ttl(key).await {
                return Some(t);
            }
        }
        let (l2, permit) = self.l2()?;
        let r = l2.get_ttl(key).await;
        self.settle(permit, "get_ttl", r).flatten()
    }

    /// Keys (without the namespace) in L1 or L2 that start with `prefix`
    /// literally; sorted, without duplicates.
    pub async fn list_keys(&self, prefix: Option<&str>) -> Vec<String> {
        let mut keys = BTreeSet::new();
        if let Some(l1) = &self.inner.l1 {
            keys.extend(l1.list_keys(prefix).await.unwrap_or_default());
        }
        if let Some((l2, permit)) = self.l2() {
            let r = l2.list_keys(prefix).await;
            keys.extend(self.settle(permit, "list_keys", r).unwrap_or_default());
        }
        keys.into_iter().collect()
    }

    /// Figures for both levels, the breaker and the error counters. L2 is
    /// asked only while the breaker is closed (bounded by the operation timeout).
    pub async fn get_stats(&self) -> CacheStats<A::Stats, B::Stats> {
        let l1 = match &self.inner.l1 {
            Some(l1) => l1.get_stats().await.ok(),
            None => None,
        };
        let l2 = match &self.inner.l2 {
            None => None,
            // Only a closed breaker lets stats reach L2: stats must not spend
            // the single half-open probe meant for real traffic.
            Some(l2) => Some(match self.inner.breaker.try_acquire().filter(|p| !p.is_probe()) {
                Some(permit) => {
                    let r = l2.get_stats().await;
                    self.settle(permit, "stats", r).unwrap_or_else(|| l2.describe())
                }
                None => l2.describe(),
            }),
        };
        let e = &self.inner.errors;
        CacheStats {
            key_prefix: self.inner.prefix.clone(),
            l1,
            l2,
            circuit_breaker: self.inner.breaker.get_stats(),
            errors: ErrorStats {
                l2_connection: e.l2_connection.get(),
                l2_timeout: e.l2_timeout.get(),
                decode: e.decode.get(),
                encode: e.encode.get(),
                l2_skipped: e.l2_skipped.get(),
            },
        }
    }

    /// The breaker's state right now.
    pub fn breaker_state(&self) -> CircuitState {
        self.inner.breaker.state()
    }
}

/// What the service keeps of each cache to report its stats.
pub(crate) trait StatsSource: Send + Sync {
    fn stats(self: Arc<Self>) -> Pin<Box<dyn Future<Output = CacheStats> + Send>>;
}

impl<V, A, B> StatsSource for Inner<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>, Stats = L1Stats>,
    B: CacheBackend<Value = Vec<u8>, Stats = L2Stats>,
{
    fn stats(self: Arc<Self>) -> Pin<Box<dyn Future<Output = CacheStats> + Send>> {
        Box::pin(async move { TwoLevelCache { inner: self }.get_stats().await })
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

impl<V, A, B> std::fmt::Debug for TwoLevelCache<V, A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("key_prefix", &self.inner.prefix)
            .field("l1", &self.inner.l1.is_some())
            .field("l2", &self.inner.l2.is_some())
            .field("serializer", &self.inner.serializer.name())
            .field("breaker", &self.inner.breaker.state())
            .finish()
    }
}

#[cfg(all(test, feature = "l1"))]
mod tests {
    use super::*;
    use crate::backend::memory::TtlBackend;
    use crate::config::{L1BackendKind, L1Config};

    type L1Only = TwoLevelCache<String, TtlBackend<Arc<String>>, TtlBackend<Vec<u8>>>;

    fn l1(ttl_s: u64) -> TtlBackend<Arc<String>> {
        TtlBackend::new(&L1Config {
            backend: L1BackendKind::Ttl,
            maxsize: 100,
            ttl: Duration::from_secs(ttl_s),
        })
    }

    /// A byte store standing in for L2 in unit tests of the composition
    /// (real-Redis behaviour is covered by the integration tests).
    fn bytes_store() -> TtlBackend<Vec<u8>> {
        TtlBackend::new(&L1Config {
            backend: L1BackendKind::Ttl,
            maxsize: 100,
            ttl: Duration::from_secs(600),
        })
    }

    fn cache(l2: Option<TtlBackend<Vec<u8>>>) -> L1Only {
        TwoLevelCache::new(
            "t",
            Some(l1(60)),
            l2,
            Serializer::json(),
            CircuitBreakerConfig::default(),
        )
    }

    #[tokio::test]
    async fn l1_only_semantics() {
        let c = cache(None);
        assert_eq!(c.get("a").await, None);
        c.set("a", "1".into()).await;
        assert_eq!(c.get("a").await.as_deref().map(String::as_str), Some("1"));
        assert!(!c.set_if_not_exist("a", "2".into(), None).await);
        assert!(c.set_if_not_exist("b", "2".into(), None).await);
        assert!(c.is_on_cache("b").await);
        assert_eq!(c.list_keys(None).await, vec!["a", "b"]);
        assert!(c.delete("a").await);
        let r = c.clear().await;
        assert_eq!(
            (r.l1_items_removed, r.l2_cleared, r.l2_status),
            (1, false, L2ClearStatus::Disabled)
        );
    }

    #[tokio::test]
    async fn promotion_and_undecodable_bytes() {
        let c = cache(Some(bytes_store()));
        c.set("k", "v".into()).await;
        c.inner.l1.as_ref().unwrap().clear().await.unwrap();
        assert_eq!(c.get("k").await.as_deref().map(String::as_str), Some("v"));
        assert!(
            c.inner.l1.as_ref().unwrap().exists("k").await.unwrap(),
            "promoted"
        );

        let l2 = c.inner.l2.as_ref().unwrap();
        l2.set("bad", b"\xff not json".to_vec(), None).await.unwrap();
        for _ in 0..10 {
            l2.set("bad", b"\xff not json".to_vec(), None).await.unwrap();
            assert_eq!(c.get("bad").await, None);
        }
        let s = c.get_stats().await;
        assert_eq!(s.errors.decode, 10);
        assert_eq!(
            s.circuit_breaker.state,
            CircuitState::Closed,
            "data errors do not open the breaker"
        );
        assert!(!l2.exists("bad").await.unwrap(), "bad key dropped");
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
