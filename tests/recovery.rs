//! Recovery without resurrection: writes and deletes made while L2 was
//! unavailable are replayed when it is back, and nothing deleted comes back.

use resilient_cache_testkit as common;

use std::time::Duration;

use common::{eventually, RedisServer};
use resilient_cache::{CacheOptions, CacheService, CircuitState, L2ClearStatus};

fn opts(prefix: &str) -> CacheOptions {
    CacheOptions::new(prefix)
        .l2_ttl(Duration::from_secs(300))
        .circuit_breaker_threshold(2)
        .circuit_breaker_timeout(Duration::from_secs(1))
}

async fn wait_replayed<V: resilient_cache::two_level::CacheValue>(c: &resilient_cache::Cache<V>) {
    let done = eventually(Duration::from_secs(10), async || {
        c.get("probe-trigger").await; // traffic lets the half-open probe through
        let r = c.get_stats().await.recovery;
        c.breaker_state() == CircuitState::Closed && r.queue_depth == 0 && !r.clear_pending
    })
    .await;
    assert!(done, "replay should finish: {:?}", c.get_stats().await.recovery);
}

/// A server that keeps its data across a kill and restart (append-only,
/// fsync on every write): a delete that was not replayed would come back.
fn durable_server() -> RedisServer {
    RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
}

fn dec(redis: &RedisServer, key: &str) -> u32 {
    resilient_cache::Serializer::msgpack()
        .decode(&redis.get_raw(key).expect(key))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_writes_while_the_breaker_is_open_are_replayed_without_resurrection() {
    let mut redis = durable_server();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<u32>(opts("rec")).unwrap();
    c.set("deleted", 1).await;
    c.set("updated", 1).await;
    c.set("untouched", 1).await;

    redis.kill();
    c.get("miss-1").await;
    c.get("miss-2").await;
    assert_eq!(c.breaker_state(), CircuitState::Open, "open before the writes");
    // Skipped by the open breaker: nothing reaches any socket, only the queue has them.
    assert!(c.delete("deleted").await, "L1 held it");
    c.set("updated", 2).await;
    c.set("created", 3).await;
    c.set("updated", 4).await; // last write wins
    let s = c.get_stats().await;
    assert_eq!(s.recovery.queue_depth, 3, "{:?}", s.recovery);
    assert!(s.errors.l2_skipped >= 3, "{:?}", s.errors);

    redis.restart();
    assert!(
        redis.get_raw("rec:deleted").is_some(),
        "the server came back with its data"
    );
    wait_replayed(&c).await;

    assert_eq!(redis.get_raw("rec:deleted"), None, "no resurrection");
    assert_eq!(dec(&redis, "rec:updated"), 4);
    assert_eq!(dec(&redis, "rec:created"), 3);
    assert_eq!(dec(&redis, "rec:untouched"), 1);
    let s = c.get_stats().await;
    assert_eq!(s.recovery.replayed, 3, "{:?}", s.recovery);

    // A fresh instance (empty L1) agrees with L2.
    let other = CacheService::new(redis.config()).await.unwrap();
    let c2 = other.create_cache::<u32>(opts("rec")).unwrap();
    assert_eq!(c2.get("deleted").await, None);
    assert_eq!(c2.get("updated").await.as_deref(), Some(&4));
}

/// The queue answers for its keys while L2 is readable again but the replay
/// has not run: a current-thread runtime runs the replay task only when the
/// test awaits something that waits, so L2 still holds the old values here.
#[tokio::test]
async fn pending_operations_answer_reads_before_l2_does() {
    let mut redis = durable_server();
    let service = CacheService::new(redis.config()).await.unwrap();
    // A breaker that stays closed through the outage: L2 is read again at once.
    let c = service
        .create_cache::<u32>(opts("pend").circuit_breaker_threshold(100))
        .unwrap();
    c.set("deleted", 1).await;
    c.set("updated", 1).await;
    redis.kill();
    assert!(c.delete("deleted").await); // refused: queued
    c.set("updated", 2).await; // refused: queued
    redis.restart();
    assert_eq!(c.breaker_state(), CircuitState::Closed);
    assert!(
        redis.get_raw("pend:deleted").is_some(),
        "L2 still has the deleted key"
    );
    assert_eq!(dec(&redis, "pend:updated"), 1, "and the old value");
    // (No other await before this read: it would let the replay task run.)
    assert_eq!(c.get("deleted").await, None, "the queued delete answers, not L2");
    wait_replayed(&c).await;
    assert_eq!(redis.get_raw("pend:deleted"), None);
    assert_eq!(dec(&redis, "pend:updated"), 2);
}

#[tokio::test]
async fn writes_during_a_kill_reach_the_restarted_server() {
    let mut redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        .create_cache::<String>(opts("kill").serializer("json"))
        .unwrap();
    redis.kill();
    for i in 0..20 {
        c.set(&format!("k{i}"), format!("v{i}")).await;
    }
    c.set_with_ttl("short", "s".into(), Some(Duration::from_secs(60)))
        .await;
    assert!(
        eventually(Duration::from_secs(5), async || c.breaker_state()
            == CircuitState::Open)
        .await
    );
    redis.restart();
    wait_replayed(&c).await;
    for i in 0..20 {
        assert_eq!(
            redis.get_raw(&format!("kill:k{i}")),
            Some(format!("\"v{i}\"").into_bytes())
        );
    }
    let pttl: i64 = redis.cmd(&["PTTL", "kill:short"]);
    assert!(pttl > 0 && pttl <= 60_000, "the queued TTL is kept: {pttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_during_an_outage_clears_l2_on_recovery() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<u32>(opts("clr")).unwrap();
    let other = service.create_cache::<u32>(opts("clr2")).unwrap();
    for i in 0..10 {
        c.set(&format!("k{i}"), i).await;
    }
    other.set("keep", 1).await;
    redis.freeze();
    c.get("x").await;
    c.get("y").await; // breaker open
    let report = c.clear().await;
    assert!(!report.l2_cleared);
    assert_eq!(report.l2_status, L2ClearStatus::SkippedBreakerOpen);
    assert!(c.get_stats().await.recovery.clear_pending);
    c.set("after-clear", 7).await;
    redis.thaw();
    wait_replayed(&c).await;
    assert_eq!(redis.keys(), vec!["clr2:keep", "clr:after-clear"]);
}

/// As above, for a pending `clear`: while it waits, the namespace is not read
/// from L2, even with the breaker closed and L2 holding the old keys.
#[tokio::test]
async fn a_pending_clear_keeps_l2_from_being_read() {
    let mut redis = durable_server();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        .create_cache::<u32>(opts("pclr").circuit_breaker_threshold(100))
        .unwrap();
    c.set("k1", 1).await;
    redis.kill();
    let report = c.clear().await; // refused: the clear waits for recovery
    assert_eq!(report.l2_status, L2ClearStatus::Failed);
    redis.restart();
    assert_eq!(c.breaker_state(), CircuitState::Closed);
    assert!(redis.get_raw("pclr:k1").is_some(), "L2 still has the key");
    assert_eq!(
        c.get("k1").await,
        None,
        "not read back from L2 while the clear is pending"
    );
    wait_replayed(&c).await;
    assert_eq!(redis.get_raw("pclr:k1"), None);
}

#[tokio::test]
async fn overflow_is_counted_and_falls_back_to_clearing_the_namespace() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        // No invalidation source: the backplane's reconnect, or tracking
        // found lost, after the freeze would (rightly) clear L1.
        .create_cache::<u32>(
            opts("ovf")
                .replay_queue_capacity(3)
                .l1_maxsize(100)
                .invalidation(resilient_cache::InvalidationSources::None),
        )
        .unwrap();
    c.set("old", 0).await;
    redis.freeze();
    for i in 0..5 {
        c.set(&format!("k{i}"), i).await;
    }
    let s = c.get_stats().await;
    assert_eq!(s.recovery.overflow, 2);
    assert_eq!(s.recovery.queue_depth, 3);
    assert!(s.recovery.clear_pending);
    redis.thaw();
    wait_replayed(&c).await;
    // The namespace was cleared (nothing stale can return), then the queued writes applied.
    assert_eq!(redis.keys(), vec!["ovf:k0", "ovf:k1", "ovf:k2"]);
    assert_eq!(
        c.get("k4").await.as_deref(),
        Some(&4),
        "L1 still has the overflowed write: {:?}",
        c.tracking_stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_without_overrides_share_one_view_of_the_endpoint() {
    let redis = RedisServer::start();
    let mut config = redis.config();
    config.circuit_breaker.threshold = 2;
    let service = CacheService::new(config).await.unwrap();
    let a = service
        .create_cache::<u32>(CacheOptions::new("a").l2_ttl(Duration::from_secs(60)))
        .unwrap();
    let b = service
        .create_cache::<u32>(CacheOptions::new("b").l2_ttl(Duration::from_secs(60)))
        .unwrap();
    redis.freeze();
    a.get("x").await;
    a.get("y").await;
    assert_eq!(a.breaker_state(), CircuitState::Open);
    assert_eq!(
        b.breaker_state(),
        CircuitState::Open,
        "b does not wait on a Redis a found dead"
    );
    assert_eq!(b.get("z").await, None);
    assert_eq!(b.get_stats().await.errors.l2_skipped, 1);
    let s = a.get_stats().await.circuit_breaker;
    assert_eq!(s.transitions, 1);
    assert!(s.time_in_state.closed > 0.0);
    redis.thaw();
}

#[tokio::test]
async fn set_if_not_exist_winner_during_an_outage_claims_the_key_on_recovery() {
    let mut redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<u32>(opts("nxr")).unwrap();
    redis.kill();
    assert!(c.set_if_not_exist("lock", 1, None).await, "L1-only rule");
    assert!(!c.set_if_not_exist("lock", 2, None).await);
    redis.restart();
    wait_replayed(&c).await;
    assert_eq!(
        resilient_cache::Serializer::msgpack()
            .decode::<u32>(&redis.get_raw("nxr:lock").unwrap())
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn set_if_not_exist_won_during_an_outage_yields_to_a_claim_made_meanwhile() {
    let mut redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<u32>(opts("nxc")).unwrap();
    redis.kill();
    assert!(c.set_if_not_exist("lock", 1, None).await, "won in L1 alone");
    c.get("miss-1").await;
    c.get("miss-2").await;
    assert_eq!(
        c.breaker_state(),
        CircuitState::Open,
        "the claim waits in the queue"
    );
    redis.restart();
    // Another instance claimed the key in L2 before this one's replay.
    redis.set_raw(
        "nxc:lock",
        &resilient_cache::Serializer::msgpack().encode(&2u32).unwrap(),
    );
    wait_replayed(&c).await;
    assert_eq!(
        dec(&redis, "nxc:lock"),
        2,
        "L2 wins: the replayed SET NX did not overwrite it"
    );
    assert_eq!(
        c.get("lock").await.as_deref(),
        Some(&2),
        "the local L1 claim was dropped"
    );
}
