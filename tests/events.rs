//! Cache events: what a subscriber sees for reads, loads, L2 failures,
//! breaker changes, replays and invalidations from other instances; nothing
//! before subscribing; lag counted, never waited for.

use std::sync::Arc;
use std::time::Duration;

use resilient_cache::backend::memory::TtlBackend;
use resilient_cache::breaker::CircuitBreakerConfig;
use resilient_cache::cache::{InvalidatedBy, Level};
use resilient_cache::error::ConnectionErrorKind;
use resilient_cache::testing::{MemoryBackplane, MemoryL2};
use resilient_cache::{
    CacheBackend, CacheEvent, CacheOptions, CacheService, CircuitBreaker, EventStream, L1BackendKind,
    L1Config, LoadOptions, Serializer, TwoLevelCache, TwoLevelSettings,
};

type Cache = TwoLevelCache<u32, TtlBackend<Arc<u32>>, Arc<MemoryL2>>;

fn cache(l2: &Arc<MemoryL2>, settings: TwoLevelSettings) -> Cache {
    let l1 = TtlBackend::new(&L1Config {
        backend: L1BackendKind::Ttl,
        maxsize: 10_000,
        ttl: Duration::from_secs(60),
        fail_safe: settings.fail_safe_max_duration.unwrap_or_default(),
    });
    TwoLevelCache::new(Some(l1), Some(l2.clone()), settings).unwrap()
}

fn settings() -> TwoLevelSettings {
    TwoLevelSettings {
        breaker: Arc::new(CircuitBreaker::new(CircuitBreakerConfig {
            enabled: true,
            threshold: 2,
            timeout: Duration::from_secs(1),
        })),
        ..TwoLevelSettings::new("ev", Serializer::json())
    }
}

fn drain(events: &mut EventStream) -> Vec<CacheEvent> {
    std::iter::from_fn(|| events.try_recv()).collect()
}

/// Waits (up to 10 s) for an event that `wanted` accepts; returns every event seen until then.
async fn until(events: &mut EventStream, wanted: impl Fn(&CacheEvent) -> bool) -> Vec<CacheEvent> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.recv()).await {
        let done = wanted(&e);
        seen.push(e);
        if done {
            return seen;
        }
    }
    panic!("event never seen; saw {seen:?}");
}

#[tokio::test]
async fn reads_report_the_level_that_answered() {
    let l2 = Arc::new(MemoryL2::new());
    let c = cache(&l2, settings());
    c.set("before", 1).await;
    c.get("before").await;
    let mut events = c.subscribe();
    assert!(drain(&mut events).is_empty(), "nothing from before subscribing");

    c.set("k", 7).await;
    c.get("k").await; // L1
    l2.set("only_l2", b"8".to_vec(), None).await.unwrap();
    c.get("only_l2").await; // L2, promoted
    c.get("absent").await;
    assert_eq!(
        drain(&mut events),
        [
            CacheEvent::Hit {
                key: "k".into(),
                level: Level::L1
            },
            CacheEvent::Miss {
                key: "only_l2".into(),
                level: Level::L1
            },
            CacheEvent::Hit {
                key: "only_l2".into(),
                level: Level::L2
            },
            CacheEvent::Miss {
                key: "absent".into(),
                level: Level::L1
            },
            CacheEvent::Miss {
                key: "absent".into(),
                level: Level::L2
            },
        ]
    );
    drop(events);
    c.get("k").await;
    let mut again = c.subscribe();
    c.get("k").await;
    assert_eq!(
        drain(&mut again),
        [CacheEvent::Hit {
            key: "k".into(),
            level: Level::L1
        }]
    );
}

#[tokio::test]
async fn failures_breaker_changes_and_the_replay_are_reported() {
    let l2 = Arc::new(MemoryL2::new());
    let c = cache(&l2, settings());
    let mut events = c.subscribe();
    l2.faults().drop_connection();
    c.set("k", 1).await; // refused: queued
    c.get("x").await; // refused: the second failure opens the breaker
    let seen = until(&mut events, |e| *e == CacheEvent::BreakerOpened).await;
    assert!(
        seen.contains(&CacheEvent::L2Failure {
            op: "write",
            kind: ConnectionErrorKind::Refused
        }),
        "{seen:?}"
    );
    l2.faults().restore();
    // The replay timer probes once the breaker allows it: closed again, then replayed.
    let seen = until(&mut events, |e| matches!(e, CacheEvent::Replayed { .. })).await;
    assert!(seen.contains(&CacheEvent::BreakerClosed), "{seen:?}");
    assert!(seen.contains(&CacheEvent::Replayed { count: 1 }), "{seen:?}");
}

#[tokio::test]
async fn loader_errors_timeouts_and_stale_values_are_reported() {
    let l2 = Arc::new(MemoryL2::new());
    let s = TwoLevelSettings {
        fail_safe_max_duration: Some(Duration::from_secs(60)),
        ..settings()
    };
    let c = cache(&l2, s);
    let mut events = c.subscribe();
    let short = LoadOptions::new().ttl(Duration::from_millis(50));
    c.get_or_load_with("k", &short, || async { Ok::<_, String>(1) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await; // now stale
    let v = c
        .get_or_load_with("k", &short, || async { Err::<u32, _>("db down".to_string()) })
        .await
        .unwrap();
    assert_eq!(*v, 1, "fail-safe served the stale value");
    let slow = LoadOptions::new().hard_timeout(Duration::from_millis(50));
    let r = c
        .get_or_load_with("slow", &slow, || async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<u32, String>(2)
        })
        .await;
    assert!(r.is_err());
    let seen = drain(&mut events);
    for wanted in [
        CacheEvent::LoaderError { key: "k".into() },
        CacheEvent::StaleServed {
            key: "k".into(),
            why: "loader failed",
        },
        CacheEvent::LoaderTimeout { key: "slow".into() },
    ] {
        assert!(seen.contains(&wanted), "{wanted:?} not in {seen:?}");
    }
}

#[tokio::test]
async fn a_slow_subscriber_loses_the_oldest_events_and_is_told_how_many() {
    let l2 = Arc::new(MemoryL2::new());
    let c = cache(&l2, settings());
    c.set("k", 1).await;
    let mut events = c.subscribe();
    for _ in 0..5000 {
        c.get("k").await;
    }
    let kept = drain(&mut events).len() as u64;
    assert_eq!(
        events.lagged() + kept,
        5000,
        "every event is either kept or counted"
    );
    assert!(
        events.lagged() > 0 && kept > 0,
        "lagged {} kept {kept}",
        events.lagged()
    );
}

/// The backplane's messages as events (in memory: what is checked is the
/// cache's side; the Redis transport has its own tests in `backplane.rs`).
#[tokio::test]
async fn another_instances_writes_and_tag_removals_are_reported() {
    let l2 = Arc::new(MemoryL2::new());
    let backplane = MemoryBackplane::new();
    let instance = || {
        let bus = backplane.join();
        let c = cache(
            &l2,
            TwoLevelSettings {
                bus: Some(bus.clone()),
                ..settings()
            },
        );
        bus.attach(&c);
        c
    };
    let (writer, reader) = (instance(), instance());
    writer.set("k", 1).await;
    backplane.settle().await;
    assert_eq!(reader.get("k").await.as_deref(), Some(&1));
    let mut events = reader.subscribe();
    writer.set("k", 2).await;
    writer.remove_by_tag("team").await.unwrap();
    backplane.settle().await;
    assert_eq!(
        drain(&mut events),
        [
            CacheEvent::Invalidated {
                key: Some("k".into()),
                by: InvalidatedBy::Backplane,
            },
            CacheEvent::Marked {
                tag: Some("team".into()),
                kind: resilient_cache::tags::MarkKind::Remove,
            },
        ]
    );
}

/// Filling L1 past its size bound evicts; each eviction is one `Evicted`
/// event naming a key that L1 no longer holds, and the L1 stats count them.
/// Deletes, expiries and overwrites are not evictions.
#[tokio::test]
async fn l1_capacity_evictions_are_told_and_counted() {
    for backend in [L1BackendKind::Ttl, L1BackendKind::Lru] {
        let service = CacheService::new(Default::default()).await.unwrap();
        let c = service
            .create_cache::<u32>(
                CacheOptions::new("evict")
                    .l2_enabled(false)
                    .l1_backend(backend)
                    .l1_maxsize(20),
            )
            .unwrap();
        // Writing a key L1 holds replaces its value: not an eviction.
        let mut events = c.subscribe();
        for i in 0..10u32 {
            c.set("same", i).await;
        }
        let replaced = drain(&mut events);
        assert!(
            !replaced.iter().any(|e| matches!(e, CacheEvent::Evicted { .. })),
            "{backend:?}: an overwrite was told as an eviction: {replaced:?}"
        );
        let l1 = c.get_stats().await.l1.expect("L1 stats");
        assert_eq!(l1.evictions, 0, "{backend:?}: overwrites counted as evictions");
        c.delete("same").await;

        c.set("gone", 0).await;
        c.delete("gone").await;
        let mut events = c.subscribe();
        for i in 0..200u32 {
            c.set(&format!("k{i}"), i).await;
        }
        let stats = c.get_stats().await;
        let l1 = stats.l1.expect("L1 stats");
        let evicted: Vec<String> = drain(&mut events)
            .into_iter()
            .filter_map(|e| match e {
                CacheEvent::Evicted { key } => Some(key),
                _ => None,
            })
            .collect();
        assert!(l1.size <= 20, "{backend:?}: {l1:?}");
        assert!(
            evicted.len() as u64 >= 200 - 20 - 5 && evicted.len() as u64 == l1.evictions,
            "{backend:?}: {} evicted events, stats say {}",
            evicted.len(),
            l1.evictions
        );
        assert!(
            !evicted.iter().any(|k| k == "gone"),
            "a delete is not an eviction"
        );
        for key in &evicted {
            assert!(
                !c.is_on_cache(key).await,
                "{backend:?}: {key} was told evicted but is still in L1"
            );
        }
    }
}
