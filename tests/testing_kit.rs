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

mod backplane {
    use super::*;
    use resilient_cache::backplane::InvalidationBus;
    use resilient_cache::testing::MemoryBackplane;

    type L1 = Arc<TtlBackend<Arc<u32>>>;

    /// An instance of a service: its own L1 (a handle kept to look into
    /// it), the shared L2, on `backplane`.
    struct Instance {
        cache: TwoLevelCache<u32, L1, Arc<MemoryL2>>,
        bus: Arc<resilient_cache::testing::MemoryBus>,
        l1: L1,
    }

    impl std::ops::Deref for Instance {
        type Target = TwoLevelCache<u32, L1, Arc<MemoryL2>>;
        fn deref(&self) -> &Self::Target {
            &self.cache
        }
    }

    impl Instance {
        /// Whether `key` is in this instance's L1 (without counting a read).
        async fn holds(&self, key: &str) -> bool {
            self.l1.exists(key).await.unwrap()
        }
    }

    fn instance(l2: &Arc<MemoryL2>, backplane: &MemoryBackplane) -> Instance {
        let bus = backplane.join();
        let l1 = Arc::new(TtlBackend::new(&L1Config {
            backend: L1BackendKind::Ttl,
            maxsize: 100,
            ttl: Duration::from_secs(600),
            fail_safe: Duration::ZERO,
        }));
        let settings = TwoLevelSettings {
            bus: Some(bus.clone()),
            ..TwoLevelSettings::new("kitbp", Serializer::json())
        };
        let cache = TwoLevelCache::new(Some(l1.clone()), Some(l2.clone()), settings).unwrap();
        bus.attach(&cache);
        Instance { cache, bus, l1 }
    }

    /// `b` reads `key` as `value`, and now holds it in its L1. (Callers
    /// settle the backplane first: a write's message arriving after this
    /// read would evict the copy.)
    async fn held(b: &Instance, key: &str, value: u32) {
        assert_eq!(b.get(key).await.as_deref(), Some(&value));
        assert!(b.holds(key).await, "{key} is in the L1");
    }

    /// Two instances over one L2 on a new backplane.
    fn two_instances() -> (MemoryBackplane, Instance, Instance) {
        let l2 = Arc::new(MemoryL2::new());
        let backplane = MemoryBackplane::new();
        let (a, b) = (instance(&l2, &backplane), instance(&l2, &backplane));
        (backplane, a, b)
    }

    /// `a` writes `entries`, the backplane settles, and `b` reads each into its L1.
    async fn shared(backplane: &MemoryBackplane, a: &Instance, b: &Instance, entries: &[(&str, u32)]) {
        for (key, value) in entries {
            a.set(*key, *value).await;
        }
        backplane.settle().await;
        for (key, value) in entries {
            held(b, key, *value).await;
        }
    }

    #[tokio::test]
    async fn a_write_evicts_the_other_instances_copy_and_not_its_own() {
        let (backplane, a, b) = two_instances();
        shared(&backplane, &a, &b, &[("k", 1)]).await;
        a.set("k", 2).await;
        backplane.settle().await;
        assert!(!b.holds("k").await, "a's write evicted b's copy");
        assert!(a.holds("k").await, "a's own write stays in a's L1");
        assert_eq!(b.get("k").await.as_deref(), Some(&2));
        let (sa, sb) = (a.bus.stats(), b.bus.stats());
        assert_eq!((sa.messages_sent, sa.messages_received), (2, 0));
        assert_eq!((sb.messages_received, sb.messages_applied), (2, 2));
        assert!(sb.connected && sb.last_message_age_s.is_some());
    }

    #[tokio::test]
    async fn a_frozen_backplane_holds_messages_until_released() {
        let (backplane, a, b) = two_instances();
        shared(&backplane, &a, &b, &[("k", 1)]).await;
        backplane.freeze();
        a.delete("k").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(b.holds("k").await, "frozen: the message has not arrived");
        assert_eq!(
            b.get("k").await.as_deref(),
            Some(&1),
            "b serves its stale copy meanwhile"
        );
        backplane.release();
        backplane.settle().await;
        assert_eq!(b.get("k").await, None, "released: the delete reached b");
    }

    #[tokio::test(start_paused = true)]
    async fn latency_delays_delivery_on_the_test_clock() {
        let (backplane, a, b) = two_instances();
        shared(&backplane, &a, &b, &[("k", 1)]).await;
        backplane.set_latency(Duration::from_secs(5));
        a.set("k", 2).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(b.holds("k").await, "4 s of 5: not delivered yet");
        tokio::time::sleep(Duration::from_secs(2)).await;
        backplane.settle().await;
        assert!(!b.holds("k").await, "delivered after 5 s");
    }

    #[tokio::test]
    async fn a_lost_connection_loses_messages_and_the_reconnect_clears_every_l1() {
        let (backplane, a, b) = two_instances();
        shared(&backplane, &a, &b, &[("k", 1), ("other", 5)]).await;
        backplane.disconnect();
        assert!(!b.bus.stats().connected);
        a.set("k", 2).await;
        backplane.settle().await;
        assert_eq!(
            b.get("k").await.as_deref(),
            Some(&1),
            "the message was lost: b is stale"
        );
        backplane.reconnect();
        backplane.settle().await;
        assert_eq!(
            b.get("k").await.as_deref(),
            Some(&2),
            "the reconnect cleared b's L1"
        );
        assert!(!a.holds("other").await, "every instance clears");
        assert_eq!(
            (a.bus.stats().reconnect_clears, b.bus.stats().reconnect_clears),
            (1, 1)
        );
    }

    #[tokio::test]
    async fn a_dropped_message_clears_the_receivers_l1_instead() {
        let (backplane, a, b) = two_instances();
        shared(&backplane, &a, &b, &[("k", 1), ("other", 5)]).await;
        backplane.drop_next(1);
        a.set("k", 2).await;
        backplane.settle().await;
        assert!(!b.holds("other").await, "b cleared its whole L1");
        assert_eq!(b.get("k").await.as_deref(), Some(&2));
        assert!(a.holds("other").await, "the sender clears nothing");
        assert_eq!(
            (a.bus.stats().overflow_clears, b.bus.stats().overflow_clears),
            (0, 1)
        );
    }

    #[tokio::test]
    async fn batches_clears_and_tag_removals_travel_too() {
        let (backplane, a, b) = two_instances();
        a.set_many([("x", 1), ("y", 2)]).await;
        backplane.settle().await;
        held(&b, "x", 1).await;
        held(&b, "y", 2).await;
        a.set_many([("x", 3), ("y", 4)]).await;
        backplane.settle().await;
        assert!(!b.holds("x").await && !b.holds("y").await);
        held(&b, "x", 3).await;
        a.clear().await;
        backplane.settle().await;
        assert!(!b.holds("x").await, "a clear empties b's L1");

        a.set_with_tags("t1", 1, &["team"]).await;
        a.set("untagged", 2).await;
        backplane.settle().await;
        held(&b, "t1", 1).await;
        held(&b, "untagged", 2).await;
        a.remove_by_tag("team").await.unwrap();
        backplane.settle().await;
        assert!(!b.holds("t1").await, "the tag's removal reached b");
        assert_eq!(b.get("t1").await, None);
        assert!(b.holds("untagged").await, "only the tag's entries go");
    }
}
