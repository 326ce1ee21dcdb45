//! L2 backends registered by name: selected by `CACHE_L2_BACKEND` from the
//! environment's keys, refused with clear errors when the name is wrong, and
//! given what built-in backends get (breaker, outage replay, stats). The
//! registry is process-wide: each test registers names of its own.

use std::sync::Arc;
use std::time::Duration;

use resilient_cache::backend::registry::{list_backends, register_l2_backend, RegisteredL2};
use resilient_cache::error::ConnectionErrorKind;
use resilient_cache::testing::conformance::{self, Options};
use resilient_cache::testing::MemoryL2;
use resilient_cache::{CacheBackend, CacheFactoryConfig, CacheOptions, CacheService, CircuitState};

#[tokio::test]
async fn a_registered_backend_is_selected_by_name_and_gets_breaker_replay_and_stats() {
    let l2 = Arc::new(MemoryL2::new());
    let shared = l2.clone();
    register_l2_backend("reg_shared", move |config| {
        assert_eq!(
            config.key_prefix, "users",
            "the factory sees the cache's namespace"
        );
        Ok(shared.clone())
    })
    .unwrap();
    let config = CacheFactoryConfig::from_map([
        ("CACHE_L2_BACKEND", " REG_shared "),
        ("CACHE_CIRCUIT_BREAKER_THRESHOLD", "2"),
        ("CACHE_CIRCUIT_BREAKER_TIMEOUT", "1"),
    ])
    .unwrap();
    assert_eq!(config.l2_backend.name(), "reg_shared");
    let service = CacheService::new(config).await.unwrap();
    let users = service
        .create_cache::<String>(CacheOptions::new("users").l2_ttl(Duration::from_secs(60)))
        .unwrap();

    users.set("42", "Ada".into()).await;
    assert!(
        l2.exists("42").await.unwrap(),
        "the write reached the registered backend"
    );
    let stats = users.get_stats().await;
    assert_eq!(stats.l2.as_ref().map(|s| s.backend), Some("memory"));
    assert!(stats.backplane.is_none(), "no Redis pub/sub for a registered L2");

    // An outage: the breaker opens, writes wait, and are replayed on recovery.
    l2.faults().drop_connection();
    for key in ["a", "b"] {
        assert_eq!(users.get(key).await, None);
    }
    assert_eq!(users.breaker_state(), CircuitState::Open);
    users.set("43", "Grace".into()).await;
    assert_eq!(
        users.get("43").await.as_deref().map(String::as_str),
        Some("Grace")
    );
    l2.faults().restore();
    let mut replayed = false;
    for _ in 0..300 {
        if l2.exists("43").await.unwrap_or(false) {
            replayed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        replayed,
        "the outage write was replayed into the registered backend"
    );
    assert!(users.get_stats().await.errors.l2_refused >= 2);
}

#[test]
fn names_are_checked_and_listed() {
    register_l2_backend("reg_listed", |_| Ok(MemoryL2::new())).unwrap();
    assert!(list_backends().l2.contains(&"reg_listed"));
    for bad in ["redis", "valkey", "ttl", "reg_listed", "Upper", "with space", ""] {
        let e = register_l2_backend(bad, |_| Ok(MemoryL2::new()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CACHE_L2_BACKEND") && e.contains("lowercase"),
            "{bad:?}: {e}"
        );
    }
    let e = CacheFactoryConfig::from_map([("CACHE_L2_BACKEND", "nope")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"nope\"") && e.contains("redis, valkey") && e.contains("reg_listed"),
        "an unknown name lists every known one: {e}"
    );
}

#[tokio::test]
async fn a_factory_error_reaches_create_cache() {
    register_l2_backend("reg_failing", |_| -> resilient_cache::Result<MemoryL2> {
        Err(resilient_cache::Error::connection(
            ConnectionErrorKind::Io,
            "no such store",
        ))
    })
    .unwrap();
    let config = CacheFactoryConfig::from_map([("CACHE_L2_BACKEND", "reg_failing")]).unwrap();
    let service = CacheService::new(config).await.unwrap();
    let e = service
        .create_cache::<u32>(CacheOptions::new("x").l2_ttl(Duration::from_secs(60)))
        .unwrap_err();
    assert!(e.to_string().contains("no such store"), "{e}");
}

#[tokio::test]
async fn the_registered_wrapper_forwards_every_rule() {
    let wrapped = Arc::new(RegisteredL2::new(MemoryL2::new()));
    let report = conformance::check(wrapped, Options::default(), |i: u32| i.to_be_bytes().to_vec()).await;
    report.assert_ok();
    assert_eq!(report.passed, conformance::RULES);
}

#[tokio::test]
async fn health_with_a_registered_backend_does_not_ping_redis() {
    let l2 = Arc::new(MemoryL2::new());
    let shared = l2.clone();
    register_l2_backend("reg_health", move |_| Ok(shared.clone())).unwrap();
    // No Redis anywhere: a PING would be refused and count against the breaker.
    let config = CacheFactoryConfig::from_map([
        ("CACHE_L2_BACKEND", "reg_health"),
        ("CACHE_REDIS_URL", "redis://127.0.0.1:1"),
        ("CACHE_CIRCUIT_BREAKER_THRESHOLD", "2"),
    ])
    .unwrap();
    let service = CacheService::new(config).await.unwrap();
    let c = service
        .create_cache::<u32>(CacheOptions::new("h").l2_ttl(Duration::from_secs(60)))
        .unwrap();
    for _ in 0..5 {
        let health = service.health().await;
        assert!(health.is_healthy(), "{health:?}");
    }
    c.set("k", 1).await;
    assert!(
        l2.exists("k").await.unwrap(),
        "the breaker stayed closed: L2 was written"
    );
    // A failing registered backend opens the breaker: health says so.
    l2.faults().drop_connection();
    c.get("a").await;
    c.get("b").await;
    let health = service.health().await;
    assert!(!health.is_healthy(), "{health:?}");
    assert!(
        health.reason.as_deref().unwrap_or("").contains("circuit breaker"),
        "{health:?}"
    );
}

#[tokio::test]
async fn a_registered_l1_is_selected_by_name_and_serves_caches_of_any_value_type() {
    use resilient_cache::backend::memory::TtlBackend;
    use resilient_cache::backend::registry::{register_l1_backend, AnyValue};
    use resilient_cache::cache::Level;
    use resilient_cache::CacheEvent;

    register_l1_backend("reg_l1", |l1| Ok(TtlBackend::<AnyValue>::new(l1))).unwrap();
    let l2 = Arc::new(MemoryL2::new());
    let shared = l2.clone();
    register_l2_backend("reg_l1_l2", move |_| Ok(shared.clone())).unwrap();
    let config =
        CacheFactoryConfig::from_map([("CACHE_L1_BACKEND", "Reg_L1"), ("CACHE_L2_BACKEND", "reg_l1_l2")])
            .unwrap();
    assert_eq!(config.l1_backend.name(), "reg_l1");
    assert!(list_backends().l1.contains(&"reg_l1"));
    let service = CacheService::new(config).await.unwrap();
    let names = service
        .create_cache::<String>(CacheOptions::new("names").l2_ttl(Duration::from_secs(60)))
        .unwrap();
    let counts = service
        .create_cache::<u64>(CacheOptions::new("counts").l2_ttl(Duration::from_secs(60)))
        .unwrap();

    let mut events = names.subscribe();
    names.set("ada", "Ada".into()).await;
    counts.set("ada", 36).await;
    let calls = l2.faults().calls();
    assert_eq!(names.get("ada").await.as_deref().map(String::as_str), Some("Ada"));
    assert_eq!(counts.get("ada").await.as_deref(), Some(&36));
    assert_eq!(l2.faults().calls(), calls, "both answered by the registered L1");
    assert_eq!(
        events.try_recv(),
        Some(CacheEvent::Hit {
            key: "ada".into(),
            level: Level::L1
        })
    );
    assert_eq!(names.get_stats().await.l1.map(|s| s.size), Some(1));
    // Evicted by a delete like a built-in L1.
    names.delete("ada").await;
    assert_eq!(names.get("ada").await, None);
}

#[tokio::test]
async fn the_registered_l1_wrapper_keeps_every_rule_and_types_values() {
    use resilient_cache::backend::memory::TtlBackend;
    use resilient_cache::backend::registry::{AnyValue, RegisteredL1};
    use resilient_cache::{L1BackendKind, L1Config};

    let l1 = || {
        TtlBackend::<AnyValue>::new(&L1Config {
            backend: L1BackendKind::Ttl,
            maxsize: 1000,
            ttl: Duration::from_secs(60),
            fail_safe: Duration::ZERO,
        })
    };
    let wrapped = Arc::new(RegisteredL1::<u32>::new(l1()));
    let report = conformance::check(wrapped, Options::default(), Arc::new).await;
    report.assert_ok();
    assert_eq!(report.passed, conformance::RULES);

    // One backend shared, by mistake, by caches of two types: a value of the
    // other type reads as a miss, never as a wrong value.
    let shared = Arc::new(l1());
    let numbers = RegisteredL1::<u32>::new(shared.clone());
    let words = RegisteredL1::<String>::new(shared);
    numbers.set("k", Arc::new(7), None).await.unwrap();
    assert_eq!(words.get("k").await.unwrap(), None);
    assert_eq!(words.get_with_ttl_now("k"), Some(None));
    assert_eq!(numbers.get("k").await.unwrap().as_deref(), Some(&7));
}

#[test]
fn l1_names_are_checked_and_unknown_ones_list_every_known_one() {
    use resilient_cache::backend::memory::TtlBackend;
    use resilient_cache::backend::registry::{register_l1_backend, AnyValue};

    register_l1_backend("reg_l1_listed", |l1| Ok(TtlBackend::<AnyValue>::new(l1))).unwrap();
    register_l2_backend("reg_l2_taken", |_| Ok(MemoryL2::new())).unwrap();
    for bad in [
        "ttl",
        "lru",
        "redis",
        "reg_l1_listed",
        "reg_l2_taken",
        "Upper",
        "",
    ] {
        let e = register_l1_backend(bad, |l1| Ok(TtlBackend::<AnyValue>::new(l1)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("CACHE_L1_BACKEND") && e.contains("lowercase"),
            "{bad:?}: {e}"
        );
    }
    let e = register_l2_backend("reg_l1_listed", |_| Ok(MemoryL2::new()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("CACHE_L2_BACKEND"),
        "a name taken by an L1 is not an L2's: {e}"
    );
    let e = CacheFactoryConfig::from_map([("CACHE_L1_BACKEND", "nope")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"nope\"") && e.contains("ttl, lru") && e.contains("reg_l1_listed"),
        "{e}"
    );
}
