//! Each operation's semantics against a real redis-server (SPEC §2).

use resilient_cache_testkit as common;

use std::sync::Arc;
use std::time::Duration;

use common::RedisServer;
use resilient_cache::{CacheOptions, CacheService, CircuitState, L1BackendKind, L2ClearStatus};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

fn opts(prefix: &str) -> CacheOptions {
    CacheOptions::new(prefix).l2_ttl(Duration::from_secs(300))
}

#[tokio::test]
async fn set_get_write_through_and_promotion() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let users = service.create_cache::<User>(opts("users")).unwrap();
    let ada = User {
        id: 1,
        name: "Ada".into(),
    };

    assert_eq!(users.get("1").await, None);
    users.set("1", ada.clone()).await;
    assert_eq!(users.get("1").await.as_deref(), Some(&ada));
    // Write-through: the value is in Redis under "{prefix}:{key}".
    assert!(redis.get_raw("users:1").is_some());

    // A second service (another instance) reads it from L2 and promotes it into its L1.
    let other = CacheService::new(redis.config()).await.unwrap();
    let users_b = other.create_cache::<User>(opts("users")).unwrap();
    assert_eq!(users_b.get("1").await.as_deref(), Some(&ada));
    redis.cmd::<()>(&["FLUSHALL"]);
    assert_eq!(
        users_b.get("1").await.as_deref(),
        Some(&ada),
        "served from L1 after promotion"
    );
    let stats = users_b.get_stats().await;
    assert_eq!(stats.l1.as_ref().unwrap().hits, 1);
    assert_eq!(stats.l1.as_ref().unwrap().size, 1);
}

#[tokio::test]
async fn l1_hit_shares_the_value() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let blobs = service.create_cache::<String>(opts("blobs")).unwrap();
    blobs.set("big", "x".repeat(10 << 20)).await;
    let a = blobs.get("big").await.unwrap();
    let b = blobs.get("big").await.unwrap();
    assert!(Arc::ptr_eq(&a, &b), "two L1 hits hand out the same allocation");
}

#[tokio::test]
async fn per_call_ttl_and_remaining_ttl_decrease_in_both_levels() {
    let mut redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        .create_cache::<u32>(opts("ttl").l1_ttl(Duration::from_secs(30)))
        .unwrap();
    c.set_with_ttl("k", 1, Some(Duration::from_secs(100))).await;
    let pttl: i64 = redis.cmd(&["PTTL", "ttl:k"]);
    assert!(pttl > 90_000 && pttl <= 100_000, "per-call TTL in L2: {pttl}");

    // The entry's shared remaining time (L2's, from the 100 s per-call TTL),
    // not the 30 s this instance's L1 copy has.
    let t1 = c.get_ttl("k").await.unwrap();
    assert!(
        t1 > Duration::from_secs(30) && t1 <= Duration::from_secs(100),
        "{t1:?}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t2 = c.get_ttl("k").await.unwrap();
    assert!(t2 < t1, "remaining TTL decreases: {t1:?} then {t2:?}");

    // Another instance without L1 gets the same answer from L2.
    let other = CacheService::new(redis.config()).await.unwrap();
    let l2_only = other.create_cache::<u32>(opts("ttl").l1_enabled(false)).unwrap();
    let a = l2_only.get_ttl("k").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = l2_only.get_ttl("k").await.unwrap();
    assert!(
        b < a && a <= Duration::from_secs(100),
        "L2 remaining TTL decreases: {a:?} then {b:?}"
    );
    assert_eq!(l2_only.get_ttl("absent").await, None);

    // Default L2 TTL applies when no per-call TTL is given.
    c.set("d", 2).await;
    let pttl: i64 = redis.cmd(&["PTTL", "ttl:d"]);
    assert!(pttl > 290_000 && pttl <= 300_000, "{pttl}");

    // With L2 gone, this instance's L1 copy answers with its real remaining TTL.
    redis.kill();
    let t3 = c.get_ttl("k").await.unwrap();
    assert!(t3 <= Duration::from_secs(30), "L1's own remaining time: {t3:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t4 = c.get_ttl("k").await.unwrap();
    assert!(t4 < t3, "L1 remaining TTL decreases: {t3:?} then {t4:?}");
}

#[tokio::test]
async fn ttl_backend_expires_entries() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        .create_cache::<u32>(opts("exp").l1_ttl(Duration::from_millis(200)))
        .unwrap();
    c.set("k", 1).await;
    redis.cmd::<()>(&["DEL", "exp:k"]);
    assert_eq!(c.get("k").await.as_deref(), Some(&1), "still in L1");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(c.get("k").await, None, "expired from L1, gone from L2");
}

#[tokio::test]
async fn lru_backend_evicts_least_recently_used() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        .create_cache::<u32>(
            opts("lru")
                .l1_backend(L1BackendKind::Lru)
                .l1_maxsize(3)
                .l2_enabled(false),
        )
        .unwrap();
    for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
        c.set(k, i as u32).await;
    }
    // Let moka settle its write log, then make "b" the least recently used.
    c.get_stats().await;
    assert!(c.get("a").await.is_some());
    assert!(c.get("c").await.is_some());
    c.get_stats().await;
    c.set("d", 3).await;
    c.get_stats().await;
    assert_eq!(c.list_keys(None).await, vec!["a", "c", "d"]);
    assert_eq!(c.get_stats().await.l1.unwrap().backend, "lru");
}

#[tokio::test]
async fn set_if_not_exist_uses_l2_as_truth() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<String>(opts("nx")).unwrap();
    assert!(c.set_if_not_exist("k", "first".into(), None).await);
    assert!(!c.set_if_not_exist("k", "second".into(), None).await);
    assert_eq!(c.get("k").await.as_deref().map(String::as_str), Some("first"));

    // Present in L2 only (written by someone else): L1 must not take our value.
    redis.set_raw(
        "nx:other",
        &resilient_cache::Serializer::msgpack().encode("theirs").unwrap(),
    );
    assert!(!c.set_if_not_exist("other", "ours".into(), None).await);
    assert_eq!(
        c.get("other").await.as_deref().map(String::as_str),
        Some("theirs")
    );

    // The TTL is set atomically with the value.
    assert!(
        c.set_if_not_exist("t", "v".into(), Some(Duration::from_secs(50)))
            .await
    );
    let pttl: i64 = redis.cmd(&["PTTL", "nx:t"]);
    assert!(pttl > 40_000 && pttl <= 50_000, "{pttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_if_not_exist_race_between_two_services_has_one_winner() {
    let redis = RedisServer::start();
    let a = CacheService::new(redis.config()).await.unwrap();
    let b = CacheService::new(redis.config()).await.unwrap();
    let ca = a.create_cache::<u32>(opts("race")).unwrap();
    let cb = b.create_cache::<u32>(opts("race")).unwrap();
    for round in 0..20 {
        let key = format!("k{round}");
        let mut tasks = Vec::new();
        for i in 0..16u32 {
            let (c, key) = (if i % 2 == 0 { ca.clone() } else { cb.clone() }, key.clone());
            tasks.push(tokio::spawn(
                async move { c.set_if_not_exist(&key, i, None).await },
            ));
        }
        let mut wins = 0;
        for t in tasks {
            wins += t.await.unwrap() as u32;
        }
        assert_eq!(wins, 1, "round {round}: exactly one caller stores");
    }
}

#[tokio::test]
async fn delete_removes_from_both_levels() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<u32>(opts("del")).unwrap();
    c.set("k", 1).await;
    assert!(c.delete("k").await);
    assert_eq!(redis.get_raw("del:k"), None);
    assert_eq!(c.get("k").await, None);
    assert!(!c.is_on_cache("k").await);
    assert!(!c.delete("k").await, "nothing left to delete");
}

#[tokio::test]
async fn clear_removes_own_namespace_only() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let users = service.create_cache::<u32>(opts("users")).unwrap();
    let users2 = service.create_cache::<u32>(opts("users2")).unwrap();
    for i in 0..2500 {
        users.set(&format!("u{i}"), i).await;
    }
    users2.set("x", 1).await;
    redis.set_raw("other:1", b"o");
    redis.set_raw("usersX", b"x");
    redis.set_raw("users", b"bare");

    let report = users.clear().await;
    assert!(report.l2_cleared);
    assert_eq!(report.l2_status, L2ClearStatus::Cleared);
    assert_eq!(report.l2_items_removed, 2500);
    assert!(report.l1_items_removed > 0 && report.l1_items_removed <= 1000);
    assert!(report.timestamp > 1.0e9);
    assert_eq!(redis.keys(), vec!["other:1", "users", "users2:x", "usersX"]);
    assert_eq!(users.get("u1").await, None);
    assert_eq!(users2.get("x").await.as_deref(), Some(&1));
}

#[tokio::test]
async fn list_keys_is_the_union_without_namespace() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<u32>(opts("lk")).unwrap();
    c.set("apple", 1).await;
    c.set("apricot", 2).await;
    c.set("banana", 3).await;
    redis.set_raw(
        "lk:avocado",
        &resilient_cache::Serializer::msgpack().encode(&4u32).unwrap(),
    ); // L2 only
    redis.set_raw("lkx:apple", b"x"); // another namespace
    assert_eq!(
        c.list_keys(None).await,
        vec!["apple", "apricot", "avocado", "banana"]
    );
    assert_eq!(c.list_keys(Some("ap")).await, vec!["apple", "apricot"]);
    assert_eq!(c.list_keys(Some("a")).await, vec!["apple", "apricot", "avocado"]);
    assert!(c.list_keys(Some("zzz")).await.is_empty());
}

#[tokio::test]
async fn list_keys_and_clear_treat_glob_characters_literally() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<u32>(opts("g").l1_enabled(false)).unwrap();
    for k in ["a*", "a*b", "ab", "a?", "a[1]"] {
        c.set(k, 1).await;
    }
    assert_eq!(c.list_keys(Some("a*")).await, vec!["a*", "a*b"]);
    assert_eq!(c.list_keys(Some("a?")).await, vec!["a?"]);
    assert_eq!(c.list_keys(Some("a[")).await, vec!["a[1]"]);
}

#[tokio::test]
async fn is_on_cache_checks_both_levels() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<u32>(opts("ex")).unwrap();
    assert!(!c.is_on_cache("k").await);
    redis.set_raw(
        "ex:k",
        &resilient_cache::Serializer::msgpack().encode(&1u32).unwrap(),
    );
    assert!(c.is_on_cache("k").await, "found in L2");
    c.set("m", 1).await;
    redis.cmd::<()>(&["FLUSHALL"]);
    assert!(c.is_on_cache("m").await, "found in L1");
}

#[tokio::test]
async fn stats_report_both_levels_without_secrets() {
    let redis = RedisServer::start();
    let mut config = redis.config();
    config.redis.password = None;
    let service = CacheService::new(config).await.unwrap();
    let c = service
        .create_cache::<u32>(opts("st").l1_maxsize(10).serializer("json"))
        .unwrap();
    c.set("a", 1).await;
    c.get("a").await;
    c.get("b").await;
    let s = c.get_stats().await;
    let l1 = s.l1.as_ref().unwrap();
    assert_eq!(
        (l1.backend, l1.size, l1.maxsize, l1.hits, l1.misses),
        ("ttl", 1, 10, 1, 1)
    );
    assert_eq!(l1.hit_rate, 0.5);
    assert_eq!(l1.usage_percent, 10.0);
    let l2 = s.l2.as_ref().unwrap();
    assert!(l2.available);
    assert_eq!(l2.size, Some(1));
    assert_eq!(l2.key_prefix, "st");
    assert_eq!(l2.serializer, "json");
    assert_eq!(l2.endpoint, format!("127.0.0.1:{}/0", redis.port));
    assert!(l2.server.contains_key("redis_version"));
    assert!(l2.server.contains_key("keyspace_hits"));
    assert_eq!(s.circuit_breaker.state, CircuitState::Closed);
    assert_eq!(s.circuit_breaker.threshold, 5);

    let json = serde_json::to_value(&s).unwrap();
    for k in ["l1", "l2", "circuit_breaker", "errors"] {
        assert!(json.get(k).is_some(), "{k} in {json}");
    }
    for k in [
        "enabled",
        "state",
        "failure_count",
        "threshold",
        "timeout",
        "last_failure_time",
        "last_success_time",
    ] {
        assert!(json["circuit_breaker"].get(k).is_some(), "{k}");
    }
    assert_eq!(json["circuit_breaker"]["state"], "closed");

    let all = service.get_stats().await;
    assert!(all.caches.contains_key("st"));
}

#[tokio::test]
async fn exactly_one_redis_command_per_l2_get() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        .create_cache::<u32>(opts("one").l1_enabled(false))
        .unwrap();
    c.set("hit", 1).await;
    // The first read that finds an entry also loads the invalidation markers, once.
    assert_eq!(c.get("hit").await.as_deref(), Some(&1));
    // The backplane subscriber (markers reach this cache through it) is up
    // before counting: its connection set-up is not the gets' doing.
    let up = common::eventually(std::time::Duration::from_secs(5), async || {
        c.backplane_stats().is_some_and(|b| b.connected)
    })
    .await;
    assert!(up);
    redis.reset_stats();
    for _ in 0..100 {
        assert_eq!(c.get("hit").await.as_deref(), Some(&1));
        assert_eq!(c.get("miss").await, None);
    }
    let calls = redis.command_calls();
    let ours: u64 = calls
        .iter()
        // CONFIG is the test's own RESETSTAT (the INFO reading these counts is
        // not in them yet); PING is the subscriber's keepalive, on its own connection.
        .filter(|(name, _)| !name.starts_with("config") && *name != "ping")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(calls.get("get"), Some(&200), "{calls:?}");
    assert_eq!(ours, 200, "no PING or other command besides GET: {calls:?}");
}

#[tokio::test]
async fn valkey_backend_name_is_kept() {
    let redis = RedisServer::start();
    let mut config = redis.config();
    config.l2_backend = resilient_cache::L2BackendKind::Valkey;
    let service = CacheService::new(config).await.unwrap();
    let c = service.create_cache::<u32>(opts("vk")).unwrap();
    c.set("a", 1).await;
    assert!(redis.get_raw("vk:a").is_some());
    assert_eq!(c.get_stats().await.l2.unwrap().backend, "valkey");
}
