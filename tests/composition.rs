//! The two-level cache composes any backends: here an L1 that must be awaited
//! (it keeps the trait's default `get_with_ttl_now`, as a backend behind a
//! lock or a channel would) in front of the real Redis backend. Every read
//! then takes the awaited path instead of the memory backends' direct one,
//! and must behave the same.

use resilient_cache_testkit as common;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use common::RedisServer;
use resilient_cache::backend::memory::TtlBackend;
use resilient_cache::backend::redis::{RedisBackend, RedisConnection};
use resilient_cache::stats::L1Stats;
use resilient_cache::{
    CacheBackend, CircuitBreaker, L1BackendKind, L1Config, L2BackendKind, L2Config, LoadOptions, Result,
    Serializer, TwoLevelCache, TwoLevelSettings,
};

/// An in-memory L1 that suspends once on every call and counts its reads.
struct AwaitedL1 {
    inner: TtlBackend<Arc<String>>,
    reads: Arc<AtomicU64>,
}

impl CacheBackend for AwaitedL1 {
    type Value = Arc<String>;
    type Stats = L1Stats;

    async fn get(&self, key: &str) -> Result<Option<Arc<String>>> {
        tokio::task::yield_now().await;
        self.reads.fetch_add(1, Relaxed);
        self.inner.get(key).await
    }
    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Arc<String>, Option<Duration>)>> {
        tokio::task::yield_now().await;
        self.reads.fetch_add(1, Relaxed);
        self.inner.get_with_ttl(key).await
    }
    async fn set(&self, key: &str, value: Arc<String>, ttl: Option<Duration>) -> Result<()> {
        self.inner.set(key, value, ttl).await
    }
    async fn set_if_not_exist(&self, key: &str, value: Arc<String>, ttl: Option<Duration>) -> Result<bool> {
        self.inner.set_if_not_exist(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.inner.delete(key).await
    }
    async fn clear(&self) -> Result<u64> {
        self.inner.clear().await
    }
    async fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(key).await
    }
    async fn get_ttl(&self, key: &str) -> Result<Option<Duration>> {
        self.inner.get_ttl(key).await
    }
    async fn list_keys(&self, prefix: Option<&str>) -> Result<Vec<String>> {
        self.inner.list_keys(prefix).await
    }
    async fn get_size(&self) -> Result<u64> {
        self.inner.get_size().await
    }
    async fn get_stats(&self) -> Result<L1Stats> {
        self.inner.get_stats().await
    }
    fn describe(&self) -> L1Stats {
        self.inner.describe()
    }
}

type Composed = TwoLevelCache<String, AwaitedL1, RedisBackend>;

/// The composed cache and the count of its L1's (awaited) reads.
fn compose(
    redis: &RedisServer,
    prefix: &str,
    ttl: Duration,
    fail_safe: Option<Duration>,
) -> (Composed, Arc<AtomicU64>) {
    let config = redis.config();
    let reads = Arc::new(AtomicU64::new(0));
    let l1 = AwaitedL1 {
        inner: TtlBackend::new(&L1Config {
            backend: L1BackendKind::Ttl,
            maxsize: 100,
            ttl,
            // The L1 backend keeps entries this much longer, readable as stale.
            fail_safe: fail_safe.unwrap_or_default(),
        }),
        reads: reads.clone(),
    };
    let conn = RedisConnection::new(&config.redis).unwrap();
    let l2_config = L2Config {
        backend: L2BackendKind::Redis,
        key_prefix: prefix.into(),
        ttl,
        lease_fence: true,
    };
    let l2 = RedisBackend::new(conn, &l2_config, "json");
    let settings = TwoLevelSettings {
        key_prefix: prefix.into(),
        serializer: Serializer::json(),
        breaker: Arc::new(CircuitBreaker::new(config.circuit_breaker)),
        l2_ttl: ttl,
        replay_capacity: 100,
        max_key_bytes: 1024,
        max_value_bytes: 1 << 20,
        bus: None,
        tracking: None,
        l1_ttl: ttl,
        fail_safe_max_duration: fail_safe,
        load: LoadOptions::default(),
        ttl_jitter: Duration::ZERO,
    };
    (TwoLevelCache::new(Some(l1), Some(l2), settings).unwrap(), reads)
}

#[tokio::test]
async fn an_awaited_l1_serves_hits_and_falls_through_to_l2() {
    let redis = RedisServer::start();
    let (cache, reads) = compose(&redis, "awaited", Duration::from_secs(60), None);

    cache.set("a", "alpha".to_string()).await;
    assert_eq!(cache.get("a").await.as_deref().map(String::as_str), Some("alpha"));
    assert_eq!(reads.load(Relaxed), 1, "the hit was read through the awaited L1");
    let stats = cache.get_stats().await;
    assert_eq!((stats.l1.as_ref().unwrap().hits, stats.l2_hits), (1, 0));

    // Only in L2 (written by another writer): the L1 miss falls through to
    // L2, and the value is promoted, so the next read is an L1 hit.
    redis.set_raw("awaited:b", br#""beta""#);
    assert_eq!(cache.get("b").await.as_deref().map(String::as_str), Some("beta"));
    assert_eq!(cache.get("b").await.as_deref().map(String::as_str), Some("beta"));
    let stats = cache.get_stats().await;
    assert_eq!(stats.l2_hits, 1, "one L2 read, then the promoted copy");
    assert_eq!(stats.l1.as_ref().unwrap().hits, 2);
    assert_eq!(reads.load(Relaxed), 3);

    assert_eq!(cache.get("absent").await, None);
    assert_eq!(cache.get_stats().await.l2_misses, 1);
}

#[tokio::test]
async fn an_awaited_l1_keeps_fail_safe_copies() {
    let redis = RedisServer::start();
    let ttl = Duration::from_secs(1);
    let (cache, reads) = compose(&redis, "awaited-fs", ttl, Some(Duration::from_secs(60)));
    cache.set("k", "old".to_string()).await;
    // Past its TTL, inside its fail-safe time; gone from L2 (so only L1's
    // stale copy is left to serve).
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let _: i64 = redis.cmd(&["DEL", "awaited-fs:k"]);

    assert_eq!(cache.get("k").await, None, "a stale entry is not a hit");
    let failed = cache
        .get_or_load("k", || async {
            Err::<String, _>(std::io::Error::other("source down"))
        })
        .await;
    assert_eq!(
        failed.unwrap().as_str(),
        "old",
        "the loader failed: the stale copy is served"
    );

    let loaded = cache
        .get_or_load_with("fresh", &LoadOptions::default(), || async {
            Ok::<_, std::io::Error>("new".to_string())
        })
        .await;
    assert_eq!(loaded.ok().as_deref().map(String::as_str), Some("new"));
    assert!(reads.load(Relaxed) >= 3, "every read went through the awaited L1");
}
