//! get_or_load: one loader per key, errors shared, no wedged keys, fail-safe,
//! timeouts, eager refresh, the distributed lock and the stale-write fence.
//! Counts and states, never times.

use resilient_cache_testkit as common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, RedisServer};
use resilient_cache::{blocking, CacheOptions, CacheService, InvalidationSources, LoadError, LoadOptions};
use tokio::sync::Notify;

fn opts(prefix: &str) -> CacheOptions {
    CacheOptions::new(prefix)
        .l2_ttl(Duration::from_secs(300))
        .serializer("json")
}

#[derive(Debug, PartialEq)]
struct DbDown(&'static str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_callers_share_one_loader_run() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<String>(opts("sf")).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (c, calls) = (c.clone(), calls.clone());
            tokio::spawn(async move {
                c.get_or_load("hot", move || async move {
                    calls.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, DbDown>("loaded".to_string())
                })
                .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().as_str(), "loaded");
    }
    assert_eq!(calls.load(SeqCst), 1, "one loader run for 1000 callers");
    assert_eq!(
        redis.get_raw("sf:hot"),
        Some(b"\"loaded\"".to_vec()),
        "stored in L2"
    );
    // Served from the cache afterwards.
    let again = c
        .get_or_load("hot", || async { Err::<String, _>(DbDown("not called")) })
        .await;
    assert_eq!(again.unwrap().as_str(), "loaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_error_reaches_every_waiter_and_nothing_is_stored() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<String>(opts("err")).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (c, calls) = (c.clone(), calls.clone());
            tokio::spawn(async move {
                c.get_or_load("k", move || async move {
                    calls.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<String, _>(DbDown("connection refused"))
                })
                .await
            })
        })
        .collect();
    let mut errors = Vec::new();
    for t in tasks {
        errors.push(t.await.unwrap().unwrap_err());
    }
    assert_eq!(calls.load(SeqCst), 1);
    assert!(
        errors
            .iter()
            .all(|e| e.loader_error() == Some(&DbDown("connection refused"))),
        "typed error for all"
    );
    assert!(
        errors.iter().all(|e| match (e, &errors[0]) {
            (LoadError::Loader(a), LoadError::Loader(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }),
        "the same error, shared"
    );
    assert_eq!(redis.get_raw("err:k"), None);
    assert_eq!(c.get("k").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_or_cancelled_loader_does_not_wedge_the_key() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<String>(opts("wedge")).unwrap();

    // A leader whose loader panics while others wait: it starts first (its
    // loader says so) and panics only once every waiter has joined its load.
    let (started, gate) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let leader = {
        let (c, started, gate) = (c.clone(), started.clone(), gate.clone());
        tokio::spawn(async move {
            c.get_or_load("p", move || async move {
                started.notify_one();
                gate.notified().await;
                panic!("loader bug");
                #[allow(unreachable_code)]
                Ok::<String, DbDown>(String::new())
            })
            .await
        })
    };
    started.notified().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let (c, calls) = (c.clone(), calls.clone());
            tokio::spawn(async move {
                c.get_or_load("p", move || async move {
                    calls.fetch_add(1, SeqCst);
                    Ok::<_, DbDown>("recovered".to_string())
                })
                .await
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), async || c.loader_stats().waits >= 11).await,
        "the leader and ten waiters on one load: {:?}",
        c.loader_stats()
    );
    gate.notify_one();
    assert!(
        matches!(leader.await.unwrap(), Err(LoadError::Panicked)),
        "the caller whose loader panicked gets a typed error"
    );
    for w in waiters {
        assert_eq!(w.await.unwrap().unwrap().as_str(), "recovered");
    }
    assert_eq!(calls.load(SeqCst), 1, "one waiter took over and loaded once");

    // A leader cancelled mid-load (its caller timed out).
    let slow = tokio::time::timeout(
        Duration::from_millis(20),
        c.get_or_load("q", || async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, DbDown>("never".to_string())
        }),
    )
    .await;
    assert!(slow.is_err(), "cancelled");
    let next = c
        .get_or_load("q", || async { Ok::<_, DbDown>("next".to_string()) })
        .await;
    assert_eq!(next.unwrap().as_str(), "next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_load_without_redis_still_loads_once_per_miss() {
    let mut redis = RedisServer::start();
    redis.kill();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<String>(opts("down")).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let calls = calls.clone();
        let v = c
            .get_or_load("k", move || async move {
                calls.fetch_add(1, SeqCst);
                Ok::<_, DbDown>("v".to_string())
            })
            .await;
        assert_eq!(v.unwrap().as_str(), "v");
    }
    assert_eq!(calls.load(SeqCst), 1, "L1 serves after the first load");
}

#[test]
fn blocking_get_or_load() {
    let redis = RedisServer::start();
    let service = blocking::CacheService::new(redis.config()).unwrap();
    let c = service.create_cache::<u32>(opts("blk")).unwrap();
    assert_eq!(*c.get_or_load("k", || Ok::<_, DbDown>(7)).unwrap(), 7);
    assert_eq!(
        *c.get_or_load("k", || Err::<u32, _>(DbDown("not called")))
            .unwrap(),
        7
    );
    assert_eq!(
        c.get_or_load("e", || Err::<u32, _>(DbDown("db")))
            .unwrap_err()
            .loader_error(),
        Some(&DbDown("db"))
    );
    // Options are checked before L1 is read: refused even for a key L1 holds.
    let bad = LoadOptions::new().eager_refresh(1.5);
    assert!(matches!(
        c.get_or_load_with("k", &bad, || Ok::<_, DbDown>(0)),
        Err(LoadError::InvalidOptions(_))
    ));
    // Another instance finds the value in L2 without loading; its L1 miss and
    // L2 hit are each counted once.
    let other = blocking::CacheService::new(redis.config()).unwrap();
    let c2 = other.create_cache::<u32>(opts("blk")).unwrap();
    assert_eq!(
        *c2.get_or_load("k", || Err::<u32, _>(DbDown("not called")))
            .unwrap(),
        7
    );
    let s = c2.get_stats();
    assert_eq!((s.l1.unwrap().misses, s.l2_hits), (1, 1));
}

/// A loader that counts its runs and answers `value` after `delay`.
fn counted(
    calls: &Arc<AtomicUsize>,
    value: &str,
    delay: Duration,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, DbDown>> + Send>>
       + Send
       + 'static {
    let (calls, value) = (calls.clone(), value.to_string());
    move || {
        Box::pin(async move {
            calls.fetch_add(1, SeqCst);
            tokio::time::sleep(delay).await;
            Ok(value)
        })
    }
}

fn failing(
    calls: &Arc<AtomicUsize>,
) -> impl FnOnce() -> std::future::Ready<Result<String, DbDown>> + Send + 'static {
    let calls = calls.clone();
    move || {
        calls.fetch_add(1, SeqCst);
        std::future::ready(Err(DbDown("database down")))
    }
}

/// A fail-safe cache whose entries are logically fresh for 1 s and kept 60 s more.
fn fail_safe_opts(prefix: &str) -> CacheOptions {
    CacheOptions::new(prefix)
        .l2_ttl(Duration::from_secs(1))
        .l1_ttl(Duration::from_secs(1))
        .serializer("json")
        .fail_safe_max_duration(Duration::from_secs(60))
}

async fn until_stale(c: &resilient_cache::Cache<String>, key: &str) {
    assert!(
        eventually(Duration::from_secs(5), async || c.get(key).await.is_none()).await,
        "the entry's TTL passed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_serves_the_stale_value_and_throttles_the_loader() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<String>(fail_safe_opts("fs")).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let v1 = c.get_or_load("k", counted(&calls, "v1", Duration::ZERO)).await;
    assert_eq!(v1.unwrap().as_str(), "v1");
    // Stored format: the plain JSON bytes; the fail-safe time lives in the TTL.
    assert_eq!(redis.get_raw("fs:k"), Some(b"\"v1\"".to_vec()));
    let pttl: i64 = redis.cmd(&["PTTL", "fs:k"]);
    assert!(
        pttl > 30_000,
        "physical TTL = 1 s + 60 s fail-safe, got {pttl} ms"
    );
    let ttl = c.get_ttl("k").await.expect("a TTL");
    assert!(
        ttl <= Duration::from_secs(1),
        "get_ttl reports the logical TTL, got {ttl:?}"
    );

    until_stale(&c, "k").await;
    assert!(c.is_on_cache("k").await, "physically kept for fail-safe");
    let failures = Arc::new(AtomicUsize::new(0));
    let opts = LoadOptions::new().fail_safe_throttle(Duration::from_millis(300));
    let r = c.get_or_load_with("k", &opts, failing(&failures)).await;
    assert_eq!(r.unwrap().as_str(), "v1", "stale value instead of the error");
    let r = c.get_or_load_with("k", &opts, failing(&failures)).await;
    assert_eq!(r.unwrap().as_str(), "v1");
    assert_eq!(
        failures.load(SeqCst),
        1,
        "throttled: the loader is not called again at once"
    );
    let stats = c.loader_stats();
    assert_eq!(stats.stale_served, 2);
    assert_eq!(stats.loader_errors, 1);

    // After the throttle, the loader runs again and its value replaces the stale one.
    assert!(
        eventually(Duration::from_secs(5), async || {
            let r = c
                .get_or_load_with("k", &opts, counted(&calls, "v2", Duration::ZERO))
                .await;
            r.is_ok_and(|v| v.as_str() == "v2")
        })
        .await
    );
    assert_eq!(c.get("k").await.as_deref().map(String::as_str), Some("v2"));

    // With no stale value, the error reaches the caller.
    let r = c.get_or_load_with("absent", &opts, failing(&failures)).await;
    assert_eq!(r.unwrap_err().loader_error(), Some(&DbDown("database down")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_safe_survives_an_l2_outage_from_l1() {
    let mut redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        .create_cache::<String>(fail_safe_opts("fsl1").circuit_breaker_threshold(1))
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    c.get_or_load("k", counted(&calls, "v1", Duration::ZERO))
        .await
        .unwrap();
    redis.kill();
    until_stale(&c, "k").await;
    let failures = Arc::new(AtomicUsize::new(0));
    let r = c.get_or_load("k", failing(&failures)).await;
    assert_eq!(
        r.unwrap().as_str(),
        "v1",
        "the stale L1 copy serves while both Redis and the database are down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_timeout_returns_stale_at_once_and_the_load_completes_in_the_background() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<String>(fail_safe_opts("soft")).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    c.get_or_load("k", counted(&calls, "v1", Duration::ZERO))
        .await
        .unwrap();
    until_stale(&c, "k").await;

    let finished = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Notify::new());
    let loader = {
        let (finished, gate) = (finished.clone(), gate.clone());
        move || async move {
            gate.notified().await;
            finished.store(true, SeqCst);
            Ok::<_, DbDown>("v2".to_string())
        }
    };
    let opts = LoadOptions::new()
        .soft_timeout(Duration::from_millis(20))
        .hard_timeout(Duration::from_secs(30));
    let r = c.get_or_load_with("k", &opts, loader).await;
    assert_eq!(r.unwrap().as_str(), "v1", "stale after the soft timeout");
    assert!(
        !finished.load(SeqCst),
        "returned while the loader was still running"
    );
    assert_eq!(c.loader_stats().timeouts, 1);
    gate.notify_one();
    assert!(
        eventually(Duration::from_secs(5), async || {
            c.get("k").await.as_deref().map(String::as_str) == Some("v2")
        })
        .await,
        "the background load refreshed the cache"
    );
    assert_eq!(redis.get_raw("soft:k"), Some(b"\"v2\"".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_timeout_without_a_stale_value_is_an_error() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<String>(opts("hard")).unwrap();
    let gate = Arc::new(Notify::new());
    let loader = {
        let gate = gate.clone();
        move || async move {
            gate.notified().await;
            Ok::<_, DbDown>("late".to_string())
        }
    };
    let opts = LoadOptions::new().hard_timeout(Duration::from_millis(50));
    let r = c.get_or_load_with("k", &opts, loader).await;
    assert!(matches!(r, Err(LoadError::Timeout(_))), "got {r:?}");
    // The load was not abandoned: released, it stores its value.
    gate.notify_one();
    assert!(
        eventually(Duration::from_secs(5), async || c.get("k").await.is_some()).await,
        "the load finished in the background"
    );
    // Invalid per-call options are an error naming the option.
    let bad = LoadOptions::new().eager_refresh(1.5);
    let r = c
        .get_or_load_with("k2", &bad, || async { Ok::<_, DbDown>(String::new()) })
        .await;
    match r {
        Err(LoadError::InvalidOptions(e)) => {
            assert_eq!((e.key(), e.value()), ("eager_refresh", "1.5"), "{e}")
        }
        other => panic!("expected InvalidOptions, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eager_refresh_keeps_a_hot_key_from_expiring() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        .create_cache::<String>(
            CacheOptions::new("eager")
                .l2_ttl(Duration::from_secs(1))
                .l1_ttl(Duration::from_secs(1))
                .load(LoadOptions::new().eager_refresh(0.5)),
        )
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut seen = std::collections::BTreeSet::new();
    // Read for three TTLs; each refresh answers a new value.
    let stop = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < stop {
        let n = calls.load(SeqCst);
        let v = c
            .get_or_load("hot", counted(&calls, &format!("v{n}"), Duration::ZERO))
            .await
            .unwrap();
        seen.insert(v.to_string());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = c.loader_stats();
    assert!(
        stats.eager_refreshes >= 2,
        "refreshed in the background: {stats:?}"
    );
    assert!(seen.len() >= 3, "new values arrived: {seen:?}");
    assert_eq!(
        stats.waits, 1,
        "only the cold first read waited for the loader: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_distributed_lock_gives_one_loader_run_across_instances() {
    let redis = RedisServer::start();
    let a = CacheService::new(redis.config()).await.unwrap();
    let b = CacheService::new(redis.config()).await.unwrap();
    let o = opts("dl").load(LoadOptions::new().distributed_lock(true));
    let caches = [
        a.create_cache::<String>(o.clone()).unwrap(),
        b.create_cache::<String>(o).unwrap(),
    ];
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in &caches {
        for _ in 0..100 {
            let (c, calls) = (c.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                c.get_or_load("k", counted(&calls, "once", Duration::from_millis(200)))
                    .await
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().as_str(), "once");
    }
    assert_eq!(calls.load(SeqCst), 1, "one loader run for two instances");
    let waits = caches[0].loader_stats().lock_waits + caches[1].loader_stats().lock_waits;
    assert_eq!(waits, 1, "the other instance waited on the lease");
    assert!(
        redis.keys().iter().all(|k| !k.starts_with("rc:lease")),
        "lease released: {:?}",
        redis.keys()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lock_owner_costs_one_bounded_wait() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let o = opts("dead").load(
        LoadOptions::new()
            .distributed_lock(true)
            .lock_wait(Duration::from_millis(200)),
    );
    let c = service.create_cache::<String>(o).unwrap();
    // An owner that took the lease and died: it would hold it for ten
    // minutes (a field of the lease hash: `<token>:<deadline in ms>`).
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 600_000;
    let held = format!("12345:{deadline}");
    let _: () = redis.cmd(&["HSET", "rc:leases", "dead:k", &held]);
    redis.reset_stats();
    let calls = Arc::new(AtomicUsize::new(0));
    // The guard is far above the 200 ms bound and far below the owner's
    // 10-minute lease: it only catches a wait for the dead owner.
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        c.get_or_load("k", counted(&calls, "mine", Duration::ZERO)),
    )
    .await
    .expect("the wait for a dead owner is bounded by lock_wait, not by its lease");
    assert_eq!(r.unwrap().as_str(), "mine");
    // Polls back off 2 ms → 50 ms within the 200 ms lock_wait: a handful of
    // reads, never one per millisecond of the owner's lease.
    let gets = redis.command_calls().get("get").copied().unwrap_or(0);
    assert!((2..=15).contains(&gets), "{gets} GETs while waiting");
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(c.loader_stats().lock_waits, 1);
    assert_eq!(
        redis.get_raw("dead:k"),
        Some(b"\"mine\"".to_vec()),
        "stored after taking the lease over"
    );
}

/// Starts a load of `key` whose loader waits for `gate`; returns once the loader runs.
async fn gated_load(
    c: &resilient_cache::Cache<String>,
    key: &'static str,
    value: &'static str,
    gate: &Arc<Notify>,
) -> tokio::task::JoinHandle<Result<Arc<String>, LoadError<DbDown>>> {
    let started = Arc::new(Notify::new());
    let task = {
        let (c, gate, started) = (c.clone(), gate.clone(), started.clone());
        tokio::spawn(async move {
            c.get_or_load(key, move || async move {
                started.notify_one();
                gate.notified().await;
                Ok::<_, DbDown>(value.to_string())
            })
            .await
        })
    };
    started.notified().await;
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_loaded_before_a_delete_or_set_is_not_stored_after_it() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<String>(opts("fence")).unwrap();

    // delete while loading: the caller gets its value, the cache keeps nothing.
    let gate = Arc::new(Notify::new());
    let load = gated_load(&c, "d", "loaded-before-delete", &gate).await;
    assert!(!c.delete("d").await);
    gate.notify_one();
    assert_eq!(load.await.unwrap().unwrap().as_str(), "loaded-before-delete");
    assert_eq!(c.get("d").await, None, "not in L1 or L2");
    assert_eq!(redis.get_raw("fence:d"), None);

    // set while loading: the set wins in both levels.
    let load = gated_load(&c, "s", "loaded-before-set", &gate).await;
    c.set("s", "written".to_string()).await;
    gate.notify_one();
    load.await.unwrap().unwrap();
    assert_eq!(c.get("s").await.as_deref().map(String::as_str), Some("written"));
    assert_eq!(redis.get_raw("fence:s"), Some(b"\"written\"".to_vec()));
    assert_eq!(c.loader_stats().stale_writes_prevented, 2);

    // A load with no interference is stored.
    let load = gated_load(&c, "n", "stored", &gate).await;
    gate.notify_one();
    load.await.unwrap().unwrap();
    assert_eq!(redis.get_raw("fence:n"), Some(b"\"stored\"".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_another_instance_fences_the_load_too() {
    let redis = RedisServer::start();
    let (_a, ca, _b, cb) = common::service_pair::<String>(&redis.config(), opts("xfence")).await;
    let gate = Arc::new(Notify::new());
    let load = gated_load(&ca, "k", "old", &gate).await;
    cb.delete("k").await;
    gate.notify_one();
    assert_eq!(load.await.unwrap().unwrap().as_str(), "old");
    assert_eq!(redis.get_raw("xfence:k"), None, "L2 kept the delete");
    assert_eq!(ca.get("k").await, None, "and so did the loading instance's L1");

    let load = gated_load(&ca, "k", "old", &gate).await;
    cb.set("k", "new".to_string()).await;
    gate.notify_one();
    load.await.unwrap().unwrap();
    assert_eq!(redis.get_raw("xfence:k"), Some(b"\"new\"".to_vec()));
    assert!(
        eventually(Duration::from_secs(5), async || {
            ca.get("k").await.as_deref().map(String::as_str) == Some("new")
        })
        .await
    );
}

/// The lease alone fences a load against a delete made elsewhere: the
/// loading instance hears of no foreign write (neither backplane nor
/// tracking), so nothing in its process can tell that the key changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_fences_a_load_on_an_instance_that_hears_nothing() {
    let redis = RedisServer::start();
    let deaf = opts("deaf").invalidation(InvalidationSources::None);
    let (_a, loading, _b, other) = common::service_pair::<String>(&redis.config(), deaf).await;
    let gate = Arc::new(Notify::new());

    let load = gated_load(&loading, "k", "loaded-before-delete", &gate).await;
    other.delete("k").await;
    gate.notify_one();
    assert_eq!(load.await.unwrap().unwrap().as_str(), "loaded-before-delete");
    assert_eq!(
        redis.get_raw("deaf:k"),
        None,
        "the delete ended the lease: the load did not store after it"
    );
    assert_eq!(loading.loader_stats().stale_writes_prevented, 1);

    // With nothing in between, the same load is stored.
    let load = gated_load(&loading, "n", "stored", &gate).await;
    gate.notify_one();
    load.await.unwrap().unwrap();
    assert_eq!(redis.get_raw("deaf:n"), Some(b"\"stored\"".to_vec()));
}

/// The same for a `set` sent alone (nothing else on its way): its lease
/// `DEL` fences the load. The loading instance reloads a stale value, so its
/// store does not need the key absent: only the lease can keep it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_fences_a_load_on_an_instance_that_hears_nothing() {
    let redis = RedisServer::start();
    let deaf = fail_safe_opts("deafset").invalidation(InvalidationSources::None);
    let (_a, loading, _b, other) = common::service_pair::<String>(&redis.config(), deaf).await;
    loading.set("k", "v0".into()).await;
    until_stale(&loading, "k").await;
    let gate = Arc::new(Notify::new());
    let load = gated_load(&loading, "k", "loaded-before-set", &gate).await;
    other.set("k", "written".into()).await;
    gate.notify_one();
    assert_eq!(load.await.unwrap().unwrap().as_str(), "loaded-before-set");
    assert_eq!(
        redis.get_raw("deafset:k"),
        Some(b"\"written\"".to_vec()),
        "the set ended the lease: the load did not store over it"
    );
    assert_eq!(loading.loader_stats().stale_writes_prevented, 1);
}

/// Spawns `c.set(key, value)`.
fn spawn_set(c: &resilient_cache::Cache<String>, key: String, value: String) -> tokio::task::JoinHandle<()> {
    let c = c.clone();
    tokio::spawn(async move { c.set(key, value).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_overlap_leave_together_and_still_fence_a_load() {
    let redis = RedisServer::start();
    let a = service_with_timeout(&redis, Duration::from_secs(10)).await;
    let b = service_with_timeout(&redis, Duration::from_secs(10)).await;
    // The loading instance hears of no foreign write (neither backplane nor
    // tracking), and it reloads a stale value (so its store does not need
    // the key absent): only the lease in Redis can keep its load out.
    let loading = a
        .create_cache::<String>(fail_safe_opts("gathered").invalidation(InvalidationSources::None))
        .unwrap();
    let c = b.create_cache::<String>(opts("gathered")).unwrap();
    // A third instance holds a key in L1 that the gathered writes replace.
    let w = service_with_timeout(&redis, Duration::from_secs(10)).await;
    let watcher = w.create_cache::<String>(opts("gathered")).unwrap();
    c.set("w0", "before".into()).await;
    assert_eq!(
        watcher.get("w0").await.as_deref().map(String::as_str),
        Some("before")
    );
    loading.set("k", "v0".into()).await;
    until_stale(&loading, "k").await;
    let gate = Arc::new(Notify::new());
    let load = gated_load(&loading, "k", "loaded-before-set", &gate).await;
    let conn = b.factory().connection();
    let before = conn.round_trips();
    // Frozen, Redis answers nothing: the first writes stay on their way and
    // the later ones wait behind them, the write of the loading key among
    // them; they leave together once it answers again.
    redis.freeze();
    let mut writes: Vec<_> = (0..40)
        .map(|i| spawn_set(&c, format!("w{i}"), format!("v{i}")))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    writes.push(spawn_set(&c, "k".into(), "written".into()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.thaw();
    for w in writes {
        w.await.unwrap();
    }
    let trips = conn.round_trips() - before;
    gate.notify_one();
    assert_eq!(load.await.unwrap().unwrap().as_str(), "loaded-before-set");

    for i in 0..40 {
        assert_eq!(
            redis.get_raw(&format!("gathered:w{i}")),
            Some(format!("\"v{i}\"").into_bytes()),
            "w{i}"
        );
    }
    assert_eq!(
        redis.get_raw("gathered:k"),
        Some(b"\"written\"".to_vec()),
        "the gathered write ended the lease: the load did not store over it"
    );
    assert_eq!(loading.loader_stats().stale_writes_prevented, 1);
    assert!(redis.keys().iter().all(|k| !k.starts_with("rc:lease")));
    assert!(
        eventually(Duration::from_secs(5), async || {
            loading.get("k").await.as_deref().map(String::as_str) == Some("written")
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), async || {
            watcher.get("w0").await.as_deref().map(String::as_str) == Some("v0")
        })
        .await,
        "the other instance's L1 was invalidated"
    );
    let e = c.get_stats().await.errors;
    assert_eq!(e.l2_timeout + e.l2_refused + e.l2_connection, 0, "{e:?}");
    // Gathered: far fewer requests than writes (a few sent alone, the rest
    // in batches, and the backplane's announcements).
    assert!(trips <= 20, "{trips} requests for 41 writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathered_writes_that_fail_are_each_replayed() {
    let mut redis = RedisServer::start();
    let service = service_with_timeout(&redis, Duration::from_secs(10)).await;
    let c = service
        .create_cache::<String>(
            opts("gathered_fail")
                .circuit_breaker_threshold(2)
                .circuit_breaker_timeout(Duration::from_secs(1)),
        )
        .unwrap();
    c.set("warm-up", "x".into()).await;
    redis.freeze();
    let writes: Vec<_> = (0..30)
        .map(|i| spawn_set(&c, format!("w{i}"), format!("v{i}")))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The server dies with the writes on their way or waiting: each fails,
    // and each is queued for the replay.
    redis.kill();
    for w in writes {
        w.await.unwrap();
    }
    for i in 0..30 {
        let v = c.get(format!("w{i}")).await;
        assert_eq!(
            v.as_deref().map(String::as_str),
            Some(format!("v{i}").as_str()),
            "L1 kept w{i}"
        );
    }
    assert!(c.get_stats().await.recovery.queue_depth >= 30);
    redis.restart();
    let replayed = eventually(Duration::from_secs(20), async || {
        c.get("probe-trigger").await; // traffic lets the half-open probe through
        (0..30).all(|i| redis.get_raw(&format!("gathered_fail:w{i}")).is_some())
    })
    .await;
    assert!(replayed, "{:?}", c.get_stats().await.recovery);
    for i in 0..30 {
        assert_eq!(
            redis.get_raw(&format!("gathered_fail:w{i}")),
            Some(format!("\"v{i}\"").into_bytes())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_leases_loaded_values_are_written_like_a_set() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        .create_cache::<String>(opts("nolease").lease_fence(false))
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let v = c
        .get_or_load("k", counted(&calls, "loaded", Duration::ZERO))
        .await;
    assert_eq!(v.unwrap().as_str(), "loaded");
    assert_eq!(
        redis.get_raw("nolease:k"),
        Some(b"\"loaded\"".to_vec()),
        "stored in L2"
    );
    c.set("k2", "x".into()).await;
    c.delete("k2").await;
    let calls_by_name = redis.command_calls();
    assert!(
        !calls_by_name.contains_key("del") && !calls_by_name.contains_key("hdel"),
        "no lease ended on writes: {calls_by_name:?}"
    );
    assert!(redis.keys().iter().all(|k| !k.starts_with("rc:lease")));
}

/// A service on `redis` whose operation timeout is `op_timeout`.
async fn service_with_timeout(redis: &RedisServer, op_timeout: Duration) -> CacheService {
    let mut config = redis.config();
    config.redis.socket_timeout = op_timeout;
    config.redis.connect_timeout = op_timeout;
    CacheService::new(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_timeout_bounds_the_l2_read_too_and_a_healthy_loader_still_answers() {
    // The operation timeout (1.5 s) is longer than the hard timeout (600 ms):
    // if the L2 read on the frozen server were not cut, the caller would
    // reach its hard timeout before the loader even started.
    let redis = RedisServer::start();
    let service = service_with_timeout(&redis, Duration::from_millis(1500)).await;
    let c = service.create_cache::<String>(opts("frozen_hard")).unwrap();
    c.get("warm-up").await;
    redis.freeze();
    let got = c
        .get_or_load_with(
            "cold",
            &LoadOptions::new().hard_timeout(Duration::from_millis(600)),
            || async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<_, DbDown>("from the loader".to_string())
            },
        )
        .await;
    redis.thaw();
    assert_eq!(
        got.expect("the loader's value, not a timeout").as_str(),
        "from the loader"
    );
    let s = c.get_stats().await;
    assert_eq!(s.loader.loads, 1);
    assert_eq!(
        s.errors.l2_timeout, 1,
        "one L2 wait (the read), cut at its budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_through_waits_for_a_frozen_l2_once_not_once_per_step() {
    let redis = RedisServer::start();
    let service = service_with_timeout(&redis, Duration::from_millis(300)).await;
    // No invalidation source: the backplane's subscriber, or tracking,
    // reconnecting after the freeze would clear L1.
    let c = service
        .create_cache::<String>(opts("frozen_once").invalidation(resilient_cache::InvalidationSources::None))
        .unwrap();
    c.get("warm-up").await; // connected before the freeze: the wait below is the read's
    redis.freeze();
    let got = c
        .get_or_load("cold", || async { Ok::<_, DbDown>("loaded".to_string()) })
        .await;
    assert_eq!(got.unwrap().as_str(), "loaded");
    redis.thaw(); // before the stats: they ask L2 too, and would count their own wait
    let s = c.get_stats().await;
    // The read timed out; the lease and the store did not wait again.
    let e = &s.errors;
    assert_eq!(e.l2_timeout + e.l2_connection + e.l2_refused, 1, "{e:?}");
    assert_eq!(
        c.get("cold").await.as_deref().map(String::as_str),
        Some("loaded"),
        "kept in L1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_stale_value_at_hand_the_soft_timeout_leaves_room_for_the_loader() {
    // Soft timeout 400 ms, operation timeout 3 s: the L2 read on the frozen
    // server gets 200 ms, then a 5 ms loader answers well within the soft
    // timeout, so the caller gets the fresh value, not the stale one.
    let redis = RedisServer::start();
    let service = service_with_timeout(&redis, Duration::from_secs(3)).await;
    let c = service
        .create_cache::<String>(
            opts("frozen_soft")
                .l1_ttl(Duration::from_secs(1))
                .fail_safe_max_duration(Duration::from_secs(600)),
        )
        .unwrap();
    c.set("k", "old".to_string()).await;
    // Past its 1 s L1 TTL: stale in L1 (and fresh in L2, which is frozen).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    redis.freeze();
    let got = c
        .get_or_load_with(
            "k",
            &LoadOptions::new()
                .soft_timeout(Duration::from_millis(400))
                .hard_timeout(Duration::from_secs(2)),
            || async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<_, DbDown>("new".to_string())
            },
        )
        .await;
    redis.thaw();
    assert_eq!(got.unwrap().as_str(), "new");
    assert_eq!(c.get_stats().await.loader.stale_served, 0);
}

/// The Redis backend of namespace `prefix`, with leases.
fn leased_backend(redis: &RedisServer, prefix: &str) -> resilient_cache::backend::redis::RedisBackend {
    use resilient_cache::backend::redis::{RedisBackend, RedisConnection};
    let conn = RedisConnection::new(&redis.config().redis).unwrap();
    let l2 = resilient_cache::L2Config {
        backend: resilient_cache::L2BackendKind::Redis,
        key_prefix: prefix.into(),
        ttl: Duration::from_secs(60),
        lease_fence: true,
    };
    RedisBackend::new(conn, &l2, "json")
}

/// On one server the leases are fields of one hash, `rc:leases`: it exists
/// only while some lease does, lives as long as its longest lease, and an
/// expired lease neither blocks an exclusive one nor lets its holder store.
#[tokio::test]
async fn one_server_keeps_its_leases_in_one_hash_that_ends_with_them() {
    use resilient_cache::CacheBackend;
    let redis = RedisServer::start();
    let b = leased_backend(&redis, "lh");
    let hash_exists = || redis.cmd::<u64>(&["EXISTS", "rc:leases"]) == 1;

    // No load in flight: a write's fence touches no key.
    b.set("k", b"1".to_vec(), None).await.unwrap();
    assert!(!hash_exists(), "{:?}", redis.keys());

    let hold = Duration::from_secs(30);
    assert_eq!(b.lease("k", 1, hold, true).await.unwrap(), Some(true));
    let held: Option<String> = redis.cmd(&["HGET", "rc:leases", "lh:k"]);
    assert!(held.as_deref().is_some_and(|h| h.starts_with("1:")), "{held:?}");
    let pttl: i64 = redis.cmd(&["PTTL", "rc:leases"]);
    assert!(
        pttl > 20_000 && pttl <= 30_000,
        "the hash lives as long as its lease: {pttl} ms"
    );
    assert_eq!(b.lease("k", 2, hold, true).await.unwrap(), Some(false), "held");

    // A write ends the lease: its holder's store is refused.
    b.set("k", b"2".to_vec(), None).await.unwrap();
    assert!(!hash_exists(), "the last lease ended with the write");
    let stored = b.store_if_leased("k", 1, b"loaded".to_vec(), None, false).await;
    assert_eq!(stored.unwrap(), Some(false));
    assert_eq!(redis.get_raw("lh:k"), Some(b"2".to_vec()));

    // An expired lease, in a hash that a longer one keeps alive: taken over
    // by an exclusive lease; its holder cannot store.
    assert_eq!(b.lease("other", 9, hold, true).await.unwrap(), Some(true));
    assert_eq!(
        b.lease("k", 3, Duration::from_millis(50), true).await.unwrap(),
        Some(true)
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let stored = b.store_if_leased("k", 3, b"late".to_vec(), None, false).await;
    assert_eq!(stored.unwrap(), Some(false), "an expired lease stores nothing");
    assert_eq!(
        b.lease("k", 4, Duration::from_millis(50), true).await.unwrap(),
        Some(true)
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        b.lease("k", 5, hold, true).await.unwrap(),
        Some(true),
        "an expired lease does not block an exclusive one"
    );
    assert_eq!(
        b.store_if_leased("k", 5, b"fresh".to_vec(), None, false)
            .await
            .unwrap(),
        Some(true)
    );
    assert_eq!(redis.get_raw("lh:k"), Some(b"fresh".to_vec()));
    let fields: Vec<String> = redis.cmd(&["HKEYS", "rc:leases"]);
    assert_eq!(fields, ["lh:other"], "the store ended its lease");
    b.release_lease("other", 9).await.unwrap();
    assert!(!hash_exists(), "released: no lease is left");
}

/// `clear` ends the leases of its own namespace only, and a batch of writes
/// ends each of its keys' leases.
#[tokio::test]
async fn clear_and_batches_end_their_own_leases() {
    use resilient_cache::CacheBackend;
    let redis = RedisServer::start();
    let (a, other) = (leased_backend(&redis, "la"), leased_backend(&redis, "lb"));
    let hold = Duration::from_secs(30);
    for (b, token) in [(&a, 1), (&other, 2)] {
        assert_eq!(b.lease("x", token, hold, false).await.unwrap(), Some(true));
        assert_eq!(b.lease("y", token, hold, false).await.unwrap(), Some(true));
    }
    a.clear().await.unwrap();
    let fields: Vec<String> = redis.cmd(&["HKEYS", "rc:leases"]);
    assert_eq!(
        sorted(fields),
        ["lb:x", "lb:y"],
        "only the cleared namespace's leases ended"
    );

    other
        .set_many(vec![("x", b"1".to_vec(), None), ("z", b"1".to_vec(), None)])
        .await
        .unwrap();
    let fields: Vec<String> = redis.cmd(&["HKEYS", "rc:leases"]);
    assert_eq!(fields, ["lb:y"]);
    other.delete_many(&["y"]).await.unwrap();
    assert_eq!(redis.cmd::<u64>(&["EXISTS", "rc:leases"]), 0);
    for (key, token) in [("x", 2), ("y", 2)] {
        let stored = other
            .store_if_leased(key, token, b"old".to_vec(), None, false)
            .await;
        assert_eq!(stored.unwrap(), Some(false), "{key}: its lease ended");
    }
}

/// Leases whose process died before ending them are dropped once the hash
/// grows past a thousand fields: it does not grow without bound.
#[tokio::test]
async fn expired_leases_are_pruned_when_the_hash_grows() {
    use resilient_cache::CacheBackend;
    let redis = RedisServer::start();
    let b = leased_backend(&redis, "lp");
    let mut dead = redis::pipe();
    for i in 0..1500 {
        dead.cmd("HSET")
            .arg("rc:leases")
            .arg(format!("lp:dead{i}"))
            .arg("7:1000");
    }
    let _: () = dead.query(&mut redis.conn()).unwrap();
    assert_eq!(
        b.lease("k", 1, Duration::from_secs(30), true).await.unwrap(),
        Some(true)
    );
    let fields: Vec<String> = redis.cmd(&["HKEYS", "rc:leases"]);
    assert_eq!(fields, ["lp:k"], "the expired leases were dropped");
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A key `rc:leases` of another type (planted by hand) makes every lease
/// command fail: a fenced write is reported failed (its `SET`, in the same
/// pipeline, still lands, and the replay writes it again), a load's value
/// stays in L1, and a stale value can never be stored. Once it is removed,
/// all is as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_hash_of_the_wrong_type_costs_writes_their_l2_until_removed() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    // The failures open the breaker, as any failing L2 does: a short timeout.
    let o = opts("wrongtype").circuit_breaker_timeout(Duration::from_secs(1));
    let c = service.create_cache::<String>(o).unwrap();
    redis.set_raw("rc:leases", b"not a hash");
    c.set("k", "v".into()).await;
    assert_eq!(c.get("k").await.as_deref().map(String::as_str), Some("v"));
    let failures = c.get_stats().await.errors.l2_connection;
    assert!(failures >= 1, "the failed fence is counted: {failures}");
    let calls = Arc::new(AtomicUsize::new(0));
    let v = c
        .get_or_load("loaded", counted(&calls, "l", Duration::ZERO))
        .await;
    assert_eq!(v.unwrap().as_str(), "l");
    assert_eq!(
        redis.get_raw("wrongtype:loaded"),
        None,
        "no lease, no store in L2"
    );
    assert_eq!(redis.get_raw("rc:leases"), Some(b"not a hash".to_vec()));

    let _: () = redis.cmd(&["DEL", "rc:leases"]);
    assert!(
        eventually(Duration::from_secs(20), async || {
            c.set("k2", "v2".into()).await;
            redis.get_raw("wrongtype:k2").is_some()
        })
        .await,
        "written once the hash was removed"
    );
    assert_eq!(redis.get_raw("wrongtype:k"), Some(b"\"v\"".to_vec()));
    let v = c
        .get_or_load("loaded2", counted(&calls, "l2", Duration::ZERO))
        .await;
    assert_eq!(v.unwrap().as_str(), "l2");
    assert_eq!(redis.get_raw("wrongtype:loaded2"), Some(b"\"l2\"".to_vec()));
}
