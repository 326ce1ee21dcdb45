//! What a new user ran into, one test per trap: per-call TTLs of zero, the
//! one rule for values that cannot be encoded, logical TTLs in stats and
//! warnings, refused keys that say so, one cache per namespace, and the
//! quickstart's own output.

use resilient_cache_testkit as common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::RedisServer;
use resilient_cache::{CacheOptions, CacheService, Error};

fn opts(prefix: &str) -> CacheOptions {
    CacheOptions::new(prefix).l2_ttl(Duration::from_secs(300))
}

#[tokio::test]
async fn a_zero_per_call_ttl_is_refused_not_silently_dropped() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<u32>(opts("zero")).unwrap();
    c.set("k", 1).await;

    let e = c
        .try_set_with_ttl("k", 2, Some(Duration::ZERO))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
    assert!(
        e.to_string().contains("ttl=0ns is not allowed: at least 1 ms"),
        "{e}"
    );
    let e = c.try_set_with_ttl("k", 2, Some(Duration::from_micros(500))).await;
    assert!(e.is_err(), "under a millisecond Redis cannot keep it either");
    assert!(!c.set_if_not_exist("new", 3, Some(Duration::ZERO)).await);
    c.set_with_ttl("k", 4, Some(Duration::ZERO)).await; // infallible: counted and logged

    // Refused calls change nothing, in either level.
    assert_eq!(c.get("k").await.as_deref(), Some(&1));
    assert!(redis.get_raw("zero:k").is_some());
    assert!(!c.is_on_cache("new").await);
    assert_eq!(c.get_stats().await.errors.invalid_ttl, 4);
    // `None` still means the cache's TTL.
    c.try_set_with_ttl("k", 5, None).await.unwrap();
    assert_eq!(c.get("k").await.as_deref(), Some(&5));
}

/// A value `json` cannot encode: a map whose keys are not strings.
type Unencodable = BTreeMap<(u8, u8), u8>;

fn unencodable() -> Unencodable {
    BTreeMap::from([((1, 2), 3)])
}

#[tokio::test]
async fn set_and_set_if_not_exist_follow_one_rule_for_values_that_cannot_be_encoded() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        .create_cache::<Unencodable>(opts("enc").serializer("json"))
        .unwrap();

    // Neither stores it anywhere, and both count it.
    assert!(c
        .try_set("a", unencodable())
        .await
        .unwrap_err()
        .is_serialization());
    assert!(!c.set_if_not_exist("b", unencodable(), None).await);
    assert_eq!(c.get("a").await, None);
    assert_eq!(c.get("b").await, None, "not kept in L1 either");
    assert!(redis.keys().is_empty(), "{:?}", redis.keys());
    assert_eq!(c.get_stats().await.errors.encode, 2);

    // Over the size bound: the same rule.
    let small = service
        .create_cache::<String>(opts("big").serializer("json").max_value_bytes(16))
        .unwrap();
    assert!(!small.set_if_not_exist("s", "x".repeat(100), None).await);
    assert_eq!(small.get("s").await, None);
    assert!(small.try_set("s", "x".repeat(100)).await.is_err());
    assert_eq!(small.get_stats().await.errors.oversize, 2);
}

#[tokio::test]
async fn fail_safe_time_is_not_counted_as_l1_ttl() {
    let redis = RedisServer::start();
    let (logs, _guard) = common::logs::capture();
    let service = CacheService::new(redis.config()).await.unwrap();
    // The README's read-through recipe: 60 s in L1, 300 s in L2, kept an hour more for bad days.
    let c = service
        .create_cache::<u32>(
            opts("fs")
                .l1_ttl(Duration::from_secs(60))
                .fail_safe_max_duration(Duration::from_secs(3600)),
        )
        .unwrap();
    let one_second = service
        .create_cache::<u32>(
            opts("fs1")
                .l1_ttl(Duration::from_secs(1))
                .fail_safe_max_duration(Duration::from_secs(60)),
        )
        .unwrap();
    assert!(
        !logs.text().contains("l1_ttl is longer than l2_ttl"),
        "{}",
        logs.text()
    );
    assert_eq!(c.get_stats().await.l1.unwrap().ttl, Some(60.0));
    assert_eq!(one_second.get_stats().await.l1.unwrap().ttl, Some(1.0));

    // A real misconfiguration is still pointed out.
    let _ = service
        .create_cache::<u32>(CacheOptions::new("long").l2_ttl(Duration::from_secs(10)))
        .unwrap();
    assert!(
        logs.text().contains("l1_ttl is longer than l2_ttl"),
        "{}",
        logs.text()
    );
}

#[tokio::test]
async fn an_over_long_key_is_logged_not_dropped_in_silence() {
    let redis = RedisServer::start();
    let mut config = redis.config();
    config.max_key_bytes = 8;
    let service = CacheService::new(config).await.unwrap();
    let c = service.create_cache::<u32>(opts("long")).unwrap();
    let (logs, _guard) = common::logs::capture();
    c.set("a-key-longer-than-8", 1).await;
    let text = logs.text();
    assert!(
        text.contains("WARN") && text.contains("key of 19 bytes is longer than the maximum of 8 bytes"),
        "{text}"
    );
    assert!(
        !text.contains("a-key-longer-than-8"),
        "keys' contents are never logged: {text}"
    );
    assert_eq!(c.get_stats().await.errors.invalid_key, 1);
    assert_eq!(c.get("a-key-longer-than-8").await, None);
    assert_eq!(
        c.get_stats().await.errors.invalid_key,
        2,
        "one refused read counts once"
    );
}

#[tokio::test]
async fn one_service_has_one_cache_per_namespace() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let first = service.create_cache::<u32>(opts("users")).unwrap();
    let e = service
        .create_cache::<u32>(opts("users"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("l2_key_prefix=\"users\"") && e.contains("clone its handle"),
        "{e}"
    );
    // Another service (another instance) may; and once every handle is gone, so may this one.
    let other = CacheService::new(redis.config()).await.unwrap();
    other.create_cache::<u32>(opts("users")).unwrap();
    drop(first);
    service.create_cache::<u32>(opts("users")).unwrap();
}

/// The quickstart example, run as a user runs it, without Redis and with it.
fn quickstart(redis_url: &str) -> String {
    // Examples are built next to the test binaries (target/<profile>/examples).
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("quickstart");
    assert!(path.exists(), "{} is built by `cargo test`", path.display());
    let out = std::process::Command::new(&path)
        .env_clear()
        .env("CACHE_REDIS_URL", redis_url)
        .env("CACHE_REDIS_SOCKET_TIMEOUT", "0.5")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn the_quickstart_tells_a_user_what_happened() {
    let port = common::free_port(); // nothing listens there
    let text = quickstart(&format!("redis://127.0.0.1:{port}/0"));
    assert!(text.contains("running on L1 only"), "{text}");
    // The breaker is seen opening, not already open.
    assert!(text.contains("after miss 1: breaker closed"), "{text}");
    assert!(text.contains("after miss 3: breaker open"), "{text}");
    assert!(text.contains("refused"), "refused connections are named: {text}");
    for debug in ["Some(", "None", "Deferred", "SkippedBreakerOpen"] {
        assert!(!text.contains(debug), "no Rust debug output ({debug}): {text}");
    }

    let redis = RedisServer::start();
    let text = quickstart(&redis.url());
    assert!(text.contains("two-level mode"), "{text}");
    assert!(text.contains("after miss 5: breaker closed"), "{text}");
    // The shared entry's time left (L2: 300 s), not the L1 copy's 30 s.
    let ttl: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("get_ttl(\"1\"): ")?.strip_suffix(" s left"))
        .unwrap_or_else(|| panic!("{text}"))
        .parse()
        .unwrap();
    assert!(ttl > 290.0 && ttl <= 300.0, "{text}");
    assert!(!text.contains("Some(") && !text.contains("None"), "{text}");
}
