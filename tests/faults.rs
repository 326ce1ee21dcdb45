//! The breaker and degraded mode, driven by killing, freezing and restarting a
//! real redis-server. No timing assertions: only states, counts and values.

use resilient_cache_testkit as common;

use std::time::Duration;

use common::{eventually, RedisServer};
use resilient_cache::error::ConnectionErrorKind;
use resilient_cache::{CacheOptions, CacheService, CircuitState, L2ClearStatus};

fn opts(prefix: &str, threshold: u32) -> CacheOptions {
    CacheOptions::new(prefix)
        .l2_ttl(Duration::from_secs(300))
        .circuit_breaker_threshold(threshold)
        .circuit_breaker_timeout(Duration::from_secs(1))
}

#[tokio::test]
async fn breaker_closed_open_half_open_closed_with_a_real_server() {
    let mut redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<u32>(opts("cb", 3)).unwrap();
    c.set("kept", 1).await;
    assert_eq!(c.breaker_state(), CircuitState::Closed);

    redis.kill();
    for i in 0..3 {
        // L1 misses go to L2, fail, and read as a miss: never an error.
        assert_eq!(c.get(&format!("miss{i}")).await, None);
    }
    assert_eq!(c.breaker_state(), CircuitState::Open);
    assert_eq!(c.get("kept").await.as_deref(), Some(&1), "L1 still serves");
    c.set("during", 2).await;
    assert_eq!(c.get("during").await.as_deref(), Some(&2), "writes land in L1");
    let s = c.get_stats().await;
    assert_eq!(s.circuit_breaker.failure_count, 3);
    assert!(
        s.errors.l2_refused + s.errors.l2_connection >= 3,
        "{:?}",
        s.errors
    );
    assert!(s.errors.l2_skipped >= 1, "open breaker skips L2");
    assert!(s.circuit_breaker.last_failure_time.is_some());

    redis.restart();
    // After its timeout the breaker lets one probe through: here the background
    // replay of the write made during the outage, or the next read.
    assert!(
        eventually(Duration::from_secs(5), async || {
            c.get("absent").await;
            c.breaker_state() == CircuitState::Closed
        })
        .await,
        "breaker should close once Redis answers a probe"
    );
    c.set("after", 3).await;
    assert!(
        eventually(Duration::from_secs(5), async || redis
            .get_raw("cb:after")
            .is_some())
        .await,
        "L2 used again after recovery"
    );
    assert!(
        redis.get_raw("cb:during").is_some(),
        "the write made during the outage was replayed"
    );
    assert_eq!(c.get_stats().await.circuit_breaker.transitions, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_lets_exactly_one_probe_reach_redis() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        .create_cache::<u32>(opts("probe", 2).l1_enabled(false))
        .unwrap();
    c.get("connect").await;
    redis.reset_stats();

    // A frozen server keeps the connection open and queues what it is sent,
    // so every GET that left this process is counted once it is thawed.
    redis.freeze();
    let (a, b) = tokio::join!(c.get("x"), c.get("y"));
    assert_eq!((a, b), (None, None));
    assert_eq!(c.breaker_state(), CircuitState::Open);
    assert!(
        eventually(Duration::from_secs(5), async || c.breaker_state()
            == CircuitState::HalfOpen)
        .await
    );

    let skipped_before = c.get_stats().await.errors.l2_skipped;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.get(&format!("k{i}")).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), None);
    }
    assert_eq!(
        c.breaker_state(),
        CircuitState::Open,
        "the probe timed out: open again"
    );
    let s = c.get_stats().await;
    assert_eq!(
        s.errors.l2_skipped - skipped_before,
        49,
        "all but one caller skipped L2"
    );

    redis.thaw();
    let calls = eventually(Duration::from_secs(5), async || {
        redis.command_calls().get("get").copied() == Some(3)
    })
    .await;
    assert!(
        calls,
        "2 failures + 1 probe reached Redis: {:?}",
        redis.command_calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_with_many_callers_opens_the_breaker() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<u32>(opts("frozen", 5)).unwrap();
    c.set("hot", 7).await;
    redis.freeze();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let miss = c.get(&format!("cold{i}")).await;
                let hit = c.get("hot").await;
                (miss, hit)
            })
        })
        .collect();
    for t in tasks {
        let (miss, hit) = t.await.unwrap();
        assert_eq!(miss, None);
        assert_eq!(hit.as_deref(), Some(&7));
    }
    assert_eq!(c.breaker_state(), CircuitState::Open);
    assert!(c.get_stats().await.errors.l2_timeout >= 5);
    redis.thaw();
}

#[tokio::test]
async fn starts_without_redis_and_picks_it_up_without_restart() {
    let mut redis = RedisServer::start();
    redis.kill(); // keep the port, no server
    let service = CacheService::new(redis.config())
        .await
        .expect("a dead Redis is not a config error");
    assert!(service.ping().await.is_err());
    let c = service.create_cache::<u32>(opts("late", 5)).unwrap();
    c.set("a", 1).await;
    assert_eq!(c.get("a").await.as_deref(), Some(&1), "served from L1");
    assert_eq!(c.get("b").await, None);
    let report = c.clear().await;
    assert!(!report.l2_cleared);
    assert_eq!(
        report.l2_status,
        L2ClearStatus::Deferred,
        "queued behind the write of a that failed"
    );

    redis.restart();
    c.set("c", 3).await;
    assert!(
        eventually(Duration::from_secs(5), async || redis.get_raw("late:c").is_some()).await,
        "the first write after Redis appears reaches L2"
    );
    assert!(service.ping().await.is_ok());

    // A cache created during an outage that opened its breaker recovers too.
    redis.kill();
    let d = service.create_cache::<u32>(opts("during", 1)).unwrap();
    d.set("x", 1).await;
    assert_eq!(d.breaker_state(), CircuitState::Open);
    redis.restart();
    assert!(
        eventually(Duration::from_secs(5), async || {
            d.set("y", 2).await;
            redis.get_raw("during:y").is_some()
        })
        .await,
        "uses L2 once Redis is back"
    );
    assert_eq!(d.breaker_state(), CircuitState::Closed);
}

#[tokio::test]
async fn open_breaker_keeps_every_operation_off_redis() {
    let mut redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        .create_cache::<u32>(
            CacheOptions::new("off")
                .l2_ttl(Duration::from_secs(300))
                .circuit_breaker_threshold(1)
                .circuit_breaker_timeout(Duration::from_secs(3600))
                // No backplane subscriber or tracking: their upkeep is not this cache's traffic.
                .invalidation(resilient_cache::InvalidationSources::None),
        )
        .unwrap();
    c.set("a", 1).await;
    redis.kill();
    assert_eq!(c.get("gone").await, None);
    assert_eq!(c.breaker_state(), CircuitState::Open);

    redis.restart();
    redis.set_raw("off:survivor", b"x");
    redis.reset_stats();

    let stats = c.get_stats().await;
    let l2 = stats.l2.unwrap();
    assert!(!l2.available);
    assert_eq!(l2.size, None);
    assert_eq!(stats.circuit_breaker.state, CircuitState::Open);
    let report = c.clear().await;
    assert!(!report.l2_cleared);
    assert_eq!(report.l2_status, L2ClearStatus::SkippedBreakerOpen);
    assert_eq!(report.l1_items_removed, 1);
    c.set("b", 2).await;
    assert_eq!(c.get("x").await, None);
    assert!(!c.delete("x").await);
    assert!(!c.is_on_cache("y").await);
    assert_eq!(c.get_ttl("y").await, None);
    assert_eq!(c.list_keys(None).await, vec!["b"]);
    assert!(
        !c.set_if_not_exist("b", 3, None).await,
        "L1-only rule while L2 is unavailable"
    );
    assert!(c.set_if_not_exist("n", 3, None).await);

    let calls = redis.command_calls();
    let ours: u64 = calls
        .iter()
        // CONFIG is the test's own RESETSTAT; INFO counts: stats must not ask an open breaker's L2.
        .filter(|(n, _)| !n.starts_with("config"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        ours, 0,
        "no command reached Redis while the breaker was open: {calls:?}"
    );
    assert_eq!(redis.keys(), vec!["off:survivor"]);
}

#[tokio::test]
async fn delete_cleans_l1_even_when_l2_fails() {
    let mut redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<u32>(opts("dl", 5)).unwrap();
    c.set("k", 1).await;
    redis.kill();
    assert!(c.delete("k").await, "removed from L1");
    assert_eq!(c.get("k").await, None);
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_and_l1_keeps_serving() {
    let redis = RedisServer::start_with(&["--requirepass", "right-horse-battery"]);
    let mut config = redis.config();
    config.redis.password = Some(resilient_cache::Secret::new("wrong-staple"));
    let service = CacheService::new(config).await.unwrap();
    let c = service.create_cache::<u32>(opts("auth", 5)).unwrap();
    c.set("k", 1).await;
    assert_eq!(c.get("k").await.as_deref(), Some(&1));
    assert_eq!(c.get("other").await, None);
    let s = c.get_stats().await;
    assert!(s.errors.l2_auth >= 1, "{:?}", s.errors);
    let err = service.ping().await.unwrap_err().to_string();
    assert!(!err.contains("wrong-staple"), "{err}");

    let mut config = redis.config();
    config.redis.password = Some(resilient_cache::Secret::new("right-horse-battery"));
    let ok = CacheService::new(config).await.unwrap();
    let c = ok.create_cache::<u32>(opts("auth", 5)).unwrap();
    c.set("k", 2).await;
    assert!(ok.ping().await.is_ok());
    let mut admin = redis::Client::open(format!("redis://:right-horse-battery@127.0.0.1:{}/0", redis.port))
        .unwrap()
        .get_connection()
        .unwrap();
    let stored: Option<Vec<u8>> = redis::cmd("GET").arg("auth:k").query(&mut admin).unwrap();
    assert_eq!(
        stored,
        Some(resilient_cache::Serializer::msgpack().encode(&2u32).unwrap()),
        "the right password reaches L2"
    );
}

#[tokio::test]
async fn health_names_an_authentication_failure() {
    let redis = RedisServer::start_with(&["--requirepass", "right-horse-battery"]);
    let mut config = redis.config();
    config.redis.password = Some(resilient_cache::Secret::new("wrong-staple"));
    let service = CacheService::new(config).await.unwrap();
    let h = service.health().await;
    assert!(!h.is_healthy());
    assert_eq!(h.l2_error_kind, Some(ConnectionErrorKind::Auth), "{h:?}");
    let reason = h.reason.clone().unwrap_or_default();
    assert!(reason.contains("authentication failed"), "{reason}");
    assert!(!format!("{h:?}").contains("wrong-staple"), "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_sees_a_recovered_l2_without_waiting_for_the_breaker() {
    let mut redis = RedisServer::start();
    let mut config = redis.config();
    config.circuit_breaker.threshold = 1;
    // An hour: only the health check's own probe can close it within this test.
    config.circuit_breaker.timeout = Duration::from_secs(3600);
    let service = CacheService::new(config).await.unwrap();
    // No breaker options of its own: the cache shares the service's breaker.
    let c = service
        .create_cache::<u32>(CacheOptions::new("hl").l2_ttl(Duration::from_secs(300)))
        .unwrap();
    assert!(service.health().await.is_healthy());

    redis.kill();
    let h = service.health().await;
    assert!(!h.is_healthy());
    assert!(
        h.l2_error_kind.is_some(),
        "a cause (the old connection breaks first): {h:?}"
    );
    assert_eq!(c.breaker_state(), CircuitState::Open);
    // The health check keeps probing on its own (at most once a second):
    // the reconnection is refused, and says so.
    assert!(
        eventually(Duration::from_secs(10), async || service
            .health()
            .await
            .l2_error_kind
            == Some(ConnectionErrorKind::Refused))
        .await
    );
    let h = service.health().await;
    assert!(
        h.reason
            .clone()
            .unwrap_or_default()
            .contains("connection refused"),
        "{h:?}"
    );
    assert_eq!(
        c.breaker_state(),
        CircuitState::Open,
        "still open: its timeout is an hour"
    );

    redis.restart();
    assert!(
        eventually(Duration::from_secs(10), async || service
            .health()
            .await
            .is_healthy())
        .await,
        "healthy again long before the breaker's one-hour timeout"
    );
    assert_eq!(
        c.breaker_state(),
        CircuitState::Closed,
        "the health probe closed the shared breaker"
    );
    let h = service.health().await;
    assert_eq!((h.l2_error_kind, h.reason.clone()), (None, None), "{h:?}");
    c.set("k", 1).await;
    assert!(redis.get_raw("hl:k").is_some(), "the cache uses L2 again");
}
