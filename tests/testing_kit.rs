//! The test kit's in-memory L2 drives a bad day through a real cache —
//! failures, a frozen server, an outage and its replay — with no Redis:
//! what a service's own tests can do with the `testing` feature.

use std::sync::Arc;
use std::time::Duration;

use resilient_cache::backend::memory::TtlBackend;
use resilient_cache::breaker::CircuitBreakerConfig;
use resilient_cache::error::ConnectionErrorKind;
use resilient_cache::testing::MemoryL2;
use resilient_cache::{
    CacheBackend, CircuitBreaker, CircuitState, L1BackendKind, L1Config, Serializer, TwoLevelCache,
    TwoLevelSettings,
};

type Cache = TwoLevelCache<u32, TtlBackend<Arc<u32>>, Arc<MemoryL2>>;

fn cache(l2: &Arc<MemoryL2>, breaker_timeout: Duration) -> Cache {
    let l1 = TtlBackend::new(&L1Config {
        backend: L1BackendKind::Ttl,
        maxsize: 100,
        ttl: Duration::from_secs(60),
        fail_safe: Duration::ZERO,
    });
    let settings = TwoLevelSettings {
        breaker: Arc::new(CircuitBreaker::new(CircuitBreakerConfig {
            enabled: true,
            threshold: 3,
            timeout: breaker_timeout,
        })),
        ..TwoLevelSettings::new("kit", Serializer::json())
    };
    TwoLevelCache::new(Some(l1), Some(l2.clone()), settings).unwrap()
}

async fn eventually(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if ok().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never: {what}");
}

#[tokio::test]
async fn injected_failures_open_the_breaker_and_reach_no_caller() {
    let l2 = Arc::new(MemoryL2::new());
    let c = cache(&l2, Duration::from_secs(60));
    l2.faults().fail_next(3, ConnectionErrorKind::Timeout);
    for i in 0..3 {
        assert_eq!(c.get(&format!("k{i}")).await, None);
    }
    assert_eq!(c.breaker_state(), CircuitState::Open);
    let calls = l2.faults().calls();
    assert_eq!(c.get("k9").await, None);
    assert_eq!(l2.faults().calls(), calls, "an open breaker does not call L2");
    let e = c.get_stats().await.errors;
    assert_eq!((e.l2_timeout, e.l2_skipped), (3, 1));
}

#[tokio::test]
async fn a_frozen_l2_costs_one_operation_timeout_and_is_counted() {
    let l2 = Arc::new(MemoryL2::new().operation_timeout(Duration::from_millis(100)));
    let c = cache(&l2, Duration::from_secs(60));
    c.set("k", 1).await;
    l2.faults().freeze();
    // L1 still answers; an L2 read times out and reads as a miss.
    assert_eq!(c.get("k").await.as_deref(), Some(&1));
    assert_eq!(c.get("absent").await, None);
    l2.faults().release();
    assert_eq!(c.get_stats().await.errors.l2_timeout, 1);
}

#[tokio::test]
async fn writes_during_an_outage_are_replayed_when_l2_returns() {
    let l2 = Arc::new(MemoryL2::new());
    let c = cache(&l2, Duration::from_millis(200));
    c.set("before", 1).await;
    l2.faults().drop_connection();
    c.set("k", 7).await;
    assert!(c.delete("before").await, "L1 held it");
    assert_eq!(
        c.get("k").await.as_deref(),
        Some(&7),
        "L1 serves during the outage"
    );
    let waiting = c.get_stats().await.recovery;
    assert_eq!(waiting.queue_depth, 2, "{waiting:?}");
    l2.faults().restore();
    eventually("the outage writes replayed", async || {
        c.get_stats().await.recovery.queue_depth == 0
    })
    .await;
    assert_eq!(l2.get("k").await.unwrap().as_deref(), Some(&b"7"[..]));
    assert_eq!(
        l2.get("before").await.unwrap(),
        None,
        "the delete was replayed too"
    );
    assert_eq!(c.get_stats().await.recovery.replayed, 2);
}
