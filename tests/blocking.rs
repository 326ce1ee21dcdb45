//! The blocking facade mirrors the async API, against a real redis-server.

use resilient_cache_testkit as common;

use std::time::Duration;

use common::RedisServer;
use resilient_cache::{blocking, CacheOptions, CircuitState};

#[test]
fn blocking_api_round_trip() {
    let redis = RedisServer::start();
    let service = blocking::CacheService::new(redis.config()).unwrap();
    assert!(service.ping().is_ok());
    let c = service
        .create_cache::<Vec<String>>(CacheOptions::new("blk").l2_ttl(Duration::from_secs(60)))
        .unwrap();
    c.set("k", vec!["a".into()]);
    assert_eq!(c.get("k").as_deref(), Some(&vec!["a".to_string()]));
    assert!(redis.get_raw("blk:k").is_some());
    assert!(c.is_on_cache("k"));
    assert!(c.get_ttl("k").is_some());
    assert!(!c.set_if_not_exist("k", vec![], None));
    assert!(c.set_if_not_exist("n", vec![], Some(Duration::from_secs(5))));
    assert_eq!(c.list_keys(None), vec!["k", "n"]);
    assert!(c.delete("n"));
    c.set_with_ttl("t", vec![], Some(Duration::from_secs(9)));
    assert!(c.get_stats().l2.unwrap().available);
    assert!(service.get_stats().caches.contains_key("blk"));
    assert!(service.health().is_healthy());
    let report = c.clear();
    assert!(report.l2_cleared);
    assert_eq!(report.l2_items_removed, 2);
    // The progress callback sees the running count of removed keys.
    c.set("p1", vec![]);
    c.set("p2", vec![]);
    let seen = std::sync::atomic::AtomicU64::new(0);
    let progress = |n| seen.store(n, std::sync::atomic::Ordering::SeqCst);
    let report = c.clear_with_progress(&progress);
    assert_eq!((report.l2_items_removed, seen.into_inner()), (2, 2));
    assert_eq!(c.breaker_state(), CircuitState::Closed);
}

#[test]
fn blocking_get_falls_through_to_l2_and_promotes_into_l1() {
    let redis = RedisServer::start();
    // Without the backplane: the writer's announcement could reach the reader
    // after it promoted "k" and evict it, which is not what this test is about.
    let options = || {
        CacheOptions::new("blk")
            .l2_ttl(Duration::from_secs(60))
            .backplane(false)
    };
    let writer = blocking::CacheService::new(redis.config()).unwrap();
    let reader = blocking::CacheService::new(redis.config()).unwrap();
    writer.create_cache::<u32>(options()).unwrap().set("k", 7);
    let c = reader.create_cache::<u32>(options()).unwrap();
    let counts = || {
        let s = c.get_stats();
        (s.l1.unwrap().hits, s.l2_hits, s.l2_misses)
    };
    // Not in this L1: `try_get_now` cannot answer without L2 and says so.
    assert_eq!(c.try_get_now("k"), None);
    assert_eq!(counts(), (0, 0, 0));
    // Answered by L2, then by L1; an absent key is a miss.
    assert_eq!(c.get("k").as_deref(), Some(&7));
    assert_eq!(counts(), (0, 1, 0));
    assert_eq!(c.get("k").as_deref(), Some(&7));
    assert_eq!(counts(), (1, 1, 0));
    assert_eq!(c.try_get_now("k").flatten().as_deref(), Some(&7));
    assert_eq!(counts(), (2, 1, 0));
    assert_eq!(c.get("absent"), None);
    assert_eq!(counts(), (2, 1, 1));
    // A cache with nothing behind L1 answers a miss at once.
    let l1_only = reader
        .create_cache::<u32>(CacheOptions::new("blk-l1").l2_enabled(false).l1_enabled(true))
        .unwrap();
    assert_eq!(l1_only.try_get_now("k"), Some(None));
}

#[test]
fn blocking_api_without_redis_serves_from_l1() {
    let mut redis = RedisServer::start();
    redis.kill();
    let service = blocking::CacheService::new(redis.config()).unwrap();
    let c = service
        .create_cache::<u32>(
            CacheOptions::new("blk")
                .l2_ttl(Duration::from_secs(60))
                .circuit_breaker_threshold(1),
        )
        .unwrap();
    c.set("k", 1);
    assert_eq!(c.get("k").as_deref(), Some(&1));
    assert_eq!(c.breaker_state(), CircuitState::Open);
}

#[test]
fn blocking_tags_and_invalidation() {
    let redis = RedisServer::start();
    let service = blocking::CacheService::new(redis.config()).unwrap();
    let c = service
        .create_cache::<String>(
            CacheOptions::new("blktag")
                .l2_ttl(Duration::from_secs(60))
                .fail_safe_max_duration(Duration::from_secs(60)),
        )
        .unwrap();
    c.set_with_tags("a", "1".into(), &["t"]);
    c.try_set_with_tags("b", "2".into(), Some(Duration::from_secs(30)), &["t", "u"])
        .unwrap();
    assert!(c.try_set_with_tags("c", "3".into(), None, &["bad\n"]).is_err());
    c.set("d", "4".into());
    assert_eq!(c.remove_by_tag("u").unwrap().l1_entries, 1);
    assert_eq!(c.get("b"), None);
    assert_eq!(c.expire_by_tag("t").unwrap().l1_entries, 1);
    assert_eq!(c.get("a"), None, "stale: a plain get misses");
    assert!(c.expire("d"));
    assert_eq!(c.get("d"), None);
    let d = c
        .get_or_load("d", || Err::<String, _>(std::io::Error::other("down")))
        .unwrap();
    assert_eq!(*d, "4", "fail-safe fallback");
    c.set("e", "5".into());
    assert_eq!(c.invalidate_all().l1_entries, 3, "a's and d's fallbacks, and e");
    assert_eq!(c.get("e"), None);
    c.set("f", "6".into());
    c.expire_all();
    assert_eq!(c.get("f"), None);
}
