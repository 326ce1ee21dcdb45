//! The test kit's clock: expiry, the fail-safe window and the breaker's open
//! timeout crossed by moving the clock, not by sleeping, through caches a
//! service builds over the kit's in-memory L2. The clock is process-wide,
//! so this file is a process of its own and its scenarios run one after the
//! other, in one test.

use std::sync::Arc;
use std::time::Duration;

use resilient_cache::backend::registry::register_l2_backend;
use resilient_cache::testing::{clock, MemoryL2};
use resilient_cache::{Cache, CacheBackend, CacheFactoryConfig, CacheOptions, CacheService, CircuitState};

const MINUTE: Duration = Duration::from_secs(60);

/// A service whose caches use `l2` (registered as `name`); the breaker
/// opens after 2 failures and allows a probe after 30 s.
async fn service(name: &str, l2: Arc<MemoryL2>) -> CacheService {
    register_l2_backend(name, move |_| Ok(l2.clone())).unwrap();
    let config = CacheFactoryConfig::from_map([
        ("CACHE_L2_BACKEND", name),
        ("CACHE_CIRCUIT_BREAKER_THRESHOLD", "2"),
        ("CACHE_CIRCUIT_BREAKER_TIMEOUT", "30"),
    ])
    .unwrap();
    CacheService::new(config).await.unwrap()
}

fn text(v: Option<Arc<String>>) -> Option<String> {
    v.map(|v| v.as_str().to_string())
}

async fn entries_expire_at_their_ttl_in_each_level() {
    let l2 = Arc::new(MemoryL2::new());
    let svc = service("clock_ttl", l2.clone()).await;
    let c: Cache<String> = svc
        .create_cache(CacheOptions::new("ttl").l1_ttl(MINUTE).l2_ttl(10 * MINUTE))
        .unwrap();
    c.set("k", "v".into()).await;
    let l2_reads = l2.faults().calls();

    clock::advance(MINUTE - Duration::from_secs(1));
    assert_eq!(text(c.get("k").await).as_deref(), Some("v"));
    assert_eq!(l2.faults().calls(), l2_reads, "still an L1 hit");

    clock::advance(Duration::from_secs(2));
    assert_eq!(text(c.get("k").await).as_deref(), Some("v"));
    assert!(
        l2.faults().calls() > l2_reads,
        "L1 expired at its TTL: read from L2"
    );

    clock::advance(10 * MINUTE);
    assert_eq!(c.get("k").await, None, "expired in L2 too");
    assert_eq!(l2.get("k").await.unwrap(), None);
}

async fn fail_safe_serves_stale_within_its_window_only() {
    let l2 = Arc::new(MemoryL2::new());
    let svc = service("clock_fail_safe", l2).await;
    let c: Cache<String> = svc
        .create_cache(
            CacheOptions::new("fs")
                .l2_ttl(MINUTE)
                .fail_safe_max_duration(60 * MINUTE),
        )
        .unwrap();
    let loaded = c
        .get_or_load("k", async || Ok::<_, std::io::Error>("v1".to_string()))
        .await
        .unwrap();
    assert_eq!(loaded.as_str(), "v1");
    let failing = async || Err::<String, _>(std::io::Error::other("source down"));

    clock::advance(MINUTE + Duration::from_secs(1));
    assert_eq!(c.get("k").await, None, "past its TTL: not fresh");
    let stale = c.get_or_load("k", failing).await.unwrap();
    assert_eq!(
        stale.as_str(),
        "v1",
        "the loader failed: the stale value is served"
    );
    assert_eq!(c.get_stats().await.loader.stale_served, 1);

    clock::advance(60 * MINUTE);
    assert!(
        c.get_or_load("k", failing).await.is_err(),
        "past the fail-safe window: nothing to serve"
    );
}

async fn the_breaker_probes_once_its_timeout_has_passed() {
    let l2 = Arc::new(MemoryL2::new());
    let svc = service("clock_breaker", l2.clone()).await;
    let c: Cache<String> = svc.create_cache(CacheOptions::new("br").l2_ttl(MINUTE)).unwrap();

    l2.faults().drop_connection();
    assert_eq!(c.get("a").await, None);
    assert_eq!(c.get("b").await, None);
    assert_eq!(c.breaker_state(), CircuitState::Open);
    c.set("during", "queued".into()).await;
    l2.faults().restore();

    let calls = l2.faults().calls();
    clock::advance(Duration::from_secs(29));
    assert_eq!(c.get("x").await, None);
    assert_eq!(c.breaker_state(), CircuitState::Open, "29 s: still open");
    assert_eq!(l2.faults().calls(), calls, "no call reached L2");

    // The open timeout has up to 10 % of jitter: 33 s at most.
    clock::advance(Duration::from_secs(5));
    assert_eq!(c.get("x").await, None);
    assert_eq!(
        c.breaker_state(),
        CircuitState::Closed,
        "34 s: probed, and L2 answered"
    );
    // The probe's success starts the replay of the write queued meanwhile.
    let mut replayed = false;
    for _ in 0..250 {
        if l2.get("during").await.unwrap().is_some() {
            replayed = true;
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(replayed, "{:?}", c.get_stats().await.recovery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_clock_crosses_ttls_fail_safe_windows_and_breaker_timeouts() {
    let start = clock::advanced();
    entries_expire_at_their_ttl_in_each_level().await;
    fail_safe_serves_stale_within_its_window_only().await;
    the_breaker_probes_once_its_timeout_has_passed().await;
    assert!(clock::advanced() >= start + 72 * MINUTE);
}
