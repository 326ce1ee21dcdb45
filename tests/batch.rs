//! Many keys at once on a real Redis: `get_many`, `set_many`, `delete_many`
//! and `get_or_load_many` keep the single-key rules (what is found, what is
//! stored, the fence, the outage queue, single flight), with L2 asked once
//! per batch; adaptive entries and not-modified refreshes. Counts and
//! states, never times.

use resilient_cache_testkit as common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, RedisServer};
use resilient_cache::{
    blocking, Cache, CacheEvent, CacheOptions, CacheService, CallOptions, CircuitState, LoadContext,
    LoadError, Loaded,
};
use tokio::sync::Notify;

fn opts(prefix: &str) -> CacheOptions {
    CacheOptions::new(prefix)
        .l2_ttl(Duration::from_secs(300))
        .serializer("json")
}

#[derive(Debug)]
struct DbDown;

fn names(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

/// Values as plain strings, for comparing answers.
fn plain(found: &[Option<Arc<String>>]) -> Vec<Option<String>> {
    found.iter().map(|v| v.as_deref().cloned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_answers_what_get_answers_for_hits_misses_stale_and_removed_keys() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let o = opts("mix").fail_safe_max_duration(Duration::from_secs(60));
    let writer = service.create_cache::<String>(o.clone()).unwrap();
    writer.set("l1", "in L1".into()).await;
    writer.set("stale", "old".into()).await;
    assert!(writer.expire("stale").await);
    writer.set_with_tags("tagged", "gone".into(), &["t"]).await;
    writer.remove_by_tag("t").await.unwrap();
    redis.set_raw("mix:l2only", b"\"from L2\"");
    redis.set_raw("mix:bad", b"\xff not json");

    let keys = ["l1", "absent", "stale", "l2only", "tagged", "bad", "l1"];
    // Fresh instances (empty L1) of the same namespace: one asks key by
    // key, the other in one batch.
    let single = CacheService::new(redis.config()).await.unwrap();
    let single = single.create_cache::<String>(o.clone()).unwrap();
    let mut one_by_one = Vec::new();
    for k in keys {
        one_by_one.push(single.get(k).await);
    }
    redis.set_raw("mix:bad", b"\xff not json");
    let batch = CacheService::new(redis.config()).await.unwrap();
    let batch = batch.create_cache::<String>(o).unwrap();
    let many = batch.get_many(keys).await;
    assert_eq!(plain(&many), plain(&one_by_one));
    assert_eq!(
        plain(&many),
        vec![
            Some("in L1".into()),
            None,
            None,
            Some("from L2".into()),
            None,
            None,
            Some("in L1".into())
        ]
    );
    let (s1, s2) = (single.get_stats().await, batch.get_stats().await);
    assert_eq!(
        s2.errors.decode, s1.errors.decode,
        "undecodable bytes counted alike"
    );
    assert_eq!(s2.errors.decode, 1);
    // Hits were promoted: the second batch is answered by L1 alone.
    redis.reset_stats();
    let again = batch.get_many(["l1", "l2only"]).await;
    assert_eq!(plain(&again), vec![Some("in L1".into()), Some("from L2".into())]);
    assert!(
        !redis.command_calls().contains_key("mget"),
        "{:?}",
        redis.command_calls()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_l1_misses_of_a_batch_cost_one_mget() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<String>(opts("one")).unwrap();
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    c.set_many(keys.iter().map(|k| (k.clone(), format!("v-{k}"))))
        .await;

    let reader = CacheService::new(redis.config()).await.unwrap();
    let reader = reader.create_cache::<String>(opts("one")).unwrap();
    // Counted once both caches' first moments are behind them (each checks
    // what its L1 took in before tracking covered it).
    for cache in [&c, &reader] {
        let settled = eventually(Duration::from_secs(10), async || {
            cache.tracking_stats().is_some_and(|t| t.connected)
        })
        .await;
        assert!(settled, "{:?}", cache.tracking_stats());
    }
    redis.reset_stats();
    let found = reader.get_many(&keys).await;
    assert!(found
        .iter()
        .zip(&keys)
        .all(|(v, k)| v.as_deref() == Some(&format!("v-{k}"))));
    let calls = redis.command_calls();
    assert_eq!(calls.get("mget"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("get"), None, "{calls:?}");
    assert_eq!(reader.get_stats().await.l2_hits, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_many_writes_every_key_and_tells_other_instances_in_one_message() {
    let redis = RedisServer::start();
    // The backplane alone, so that B asks for per-key messages (with
    // tracking, B hears of the writes from Redis and A sends none).
    let bp_only = opts("bp").invalidation(resilient_cache::InvalidationSources::Backplane);
    let (_a, ca, _b, cb) = common::service_pair::<String>(&redis.config(), bp_only).await;
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    ca.set_many(keys.iter().map(|k| (k.clone(), "old".to_string())))
        .await;
    // B holds every key in L1.
    assert!(cb
        .get_many(&keys)
        .await
        .iter()
        .all(|v| v.as_deref().map(String::as_str) == Some("old")));
    let sent_before = ca.get_stats().await.backplane.unwrap().messages_sent;
    redis.reset_stats();
    ca.set_many(keys.iter().map(|k| (k.as_str(), "new".to_string())))
        .await;
    assert_eq!(
        ca.get_stats().await.backplane.unwrap().messages_sent - sent_before,
        1,
        "one announcement"
    );
    assert!(
        eventually(Duration::from_secs(5), async || {
            cb.get_many(&keys)
                .await
                .iter()
                .all(|v| v.as_deref().map(String::as_str) == Some("new"))
        })
        .await,
        "B's L1 copies were evicted"
    );
    let calls = redis.command_calls();
    assert_eq!(calls.get("publish"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("set"), Some(&20), "{calls:?}");
    for k in &keys {
        assert_eq!(redis.get_raw(&format!("bp:{k}")), Some(b"\"new\"".to_vec()));
    }

    let removed = ca.delete_many(&keys[..10]).await;
    assert_eq!(removed, 10);
    assert!(
        eventually(Duration::from_secs(5), async || cb
            .get_many(&keys[..10])
            .await
            .iter()
            .all(Option::is_none))
        .await,
        "deletes reach B too"
    );
    assert_eq!(redis.get_raw("bp:k0"), None);
    assert_eq!(redis.get_raw("bp:k10"), Some(b"\"new\"".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_during_set_many_and_delete_many_replays_every_key() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        .create_cache::<String>(
            opts("out")
                .circuit_breaker_threshold(2)
                .circuit_breaker_timeout(Duration::from_secs(1)),
        )
        .unwrap();
    c.set_many([("doomed", "1".to_string()), ("kept", "1".to_string())])
        .await;
    redis.kill();
    let keys: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
    c.set_many(keys.iter().map(|k| (k.clone(), format!("v-{k}"))))
        .await;
    assert_eq!(c.delete_many(["doomed"]).await, 1, "L1 held it");
    assert!(c.get_stats().await.recovery.queue_depth >= 31);
    // L1 answers meanwhile.
    assert_eq!(c.get("k7").await.as_deref().map(String::as_str), Some("v-k7"));
    redis.restart();
    assert!(
        redis.get_raw("out:doomed").is_some(),
        "the server came back with its data"
    );
    let replayed = eventually(Duration::from_secs(10), async || {
        c.get("probe").await;
        let r = c.get_stats().await.recovery;
        c.breaker_state() == CircuitState::Closed && r.queue_depth == 0
    })
    .await;
    assert!(replayed, "{:?}", c.get_stats().await.recovery);
    for k in &keys {
        assert_eq!(
            redis.get_raw(&format!("out:{k}")),
            Some(format!("\"v-{k}\"").into_bytes())
        );
    }
    assert_eq!(redis.get_raw("out:doomed"), None, "no resurrection");
    assert_eq!(redis.get_raw("out:kept"), Some(b"\"1\"".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_load_many_calls_the_loader_once_with_exactly_the_missing_keys() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<String>(opts("gol")).unwrap();
    c.set("cached", "from cache".into()).await;
    let asked: Arc<Mutex<Vec<Vec<String>>>> = Default::default();
    let loader = |asked: Arc<Mutex<Vec<Vec<String>>>>| {
        move |keys: Vec<String>| async move {
            asked.lock().unwrap().push(keys.clone());
            // The database has every key but "nowhere".
            let rows: HashMap<String, String> = keys
                .into_iter()
                .filter(|k| k != "nowhere")
                .map(|k| (k.clone(), format!("db:{k}")))
                .collect();
            Ok::<_, DbDown>(rows)
        }
    };
    let keys = ["a", "cached", "b", "nowhere", "a"];
    let got = c.get_or_load_many(keys, loader(asked.clone())).await.unwrap();
    assert_eq!(
        plain(&got),
        vec![
            Some("db:a".into()),
            Some("from cache".into()),
            Some("db:b".into()),
            None,
            Some("db:a".into())
        ]
    );
    assert_eq!(*asked.lock().unwrap(), vec![names(&["a", "b", "nowhere"])]);
    assert_eq!(redis.get_raw("gol:a"), Some(b"\"db:a\"".to_vec()), "stored in L2");
    assert_eq!(redis.get_raw("gol:nowhere"), None);
    // Next time only the key the loader did not return is asked for.
    let again = c.get_or_load_many(keys, loader(asked.clone())).await.unwrap();
    assert_eq!(plain(&again), plain(&got));
    assert_eq!(asked.lock().unwrap()[1], names(&["nowhere"]));
    assert_eq!(c.loader_stats().loads, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_batches_and_single_calls_load_each_key_once() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<String>(opts("ovl")).unwrap();
    let loaded: Arc<Mutex<Vec<String>>> = Default::default();
    let gate = Arc::new(Notify::new());
    let slow_loader = |loaded: Arc<Mutex<Vec<String>>>, gate: Arc<Notify>| {
        move |keys: Vec<String>| async move {
            loaded.lock().unwrap().extend(keys.iter().cloned());
            gate.notified().await;
            Ok::<_, DbDown>(
                keys.into_iter()
                    .map(|k| (k.clone(), format!("v-{k}")))
                    .collect::<Vec<_>>(),
            )
        }
    };
    let first: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let second: Vec<String> = (10..30).map(|i| format!("k{i}")).collect();
    let (c1, f1, l1, g1) = (c.clone(), first.clone(), loaded.clone(), gate.clone());
    let a = tokio::spawn(async move { c1.get_or_load_many(f1, slow_loader(l1, g1)).await });
    assert!(
        eventually(Duration::from_secs(5), async || loaded.lock().unwrap().len()
            == 20)
        .await,
        "the first batch is loading"
    );
    let (c2, s2, l2, g2) = (c.clone(), second.clone(), loaded.clone(), gate.clone());
    let b = tokio::spawn(async move { c2.get_or_load_many(s2, slow_loader(l2, g2)).await });
    // A single call for a key of the first batch waits for it.
    let single_calls = Arc::new(AtomicUsize::new(0));
    let (c3, n3) = (c.clone(), single_calls.clone());
    let single = tokio::spawn(async move {
        c3.get_or_load("k5", move || async move {
            n3.fetch_add(1, SeqCst);
            Ok::<_, DbDown>("single".to_string())
        })
        .await
    });
    assert!(
        eventually(Duration::from_secs(5), async || loaded.lock().unwrap().len()
            == 30)
        .await,
        "the second batch loads only its own keys"
    );
    // Both loaders are parked: wake them (and any later waiter).
    for _ in 0..10 {
        gate.notify_waiters();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a = a.await.unwrap().unwrap();
    let b = b.await.unwrap().unwrap();
    assert!(a
        .iter()
        .zip(&first)
        .all(|(v, k)| v.as_deref() == Some(&format!("v-{k}"))));
    assert!(b
        .iter()
        .zip(&second)
        .all(|(v, k)| v.as_deref() == Some(&format!("v-{k}"))));
    assert_eq!(single.await.unwrap().unwrap().as_str(), "v-k5");
    assert_eq!(
        single_calls.load(SeqCst),
        0,
        "the single call waited for the batch"
    );
    let mut all = loaded.lock().unwrap().clone();
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!((before, all.len()), (30, 30), "every key loaded exactly once");
    assert_eq!(c.loader_stats().loads, 2, "one loader call per batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_many_or_set_many_while_a_batch_loads_leaves_nothing_stale() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<String>(opts("race")).unwrap();
    let other = CacheService::new(redis.config()).await.unwrap();
    let other = other.create_cache::<String>(opts("race")).unwrap();
    let gate = Arc::new(Notify::new());
    let started = Arc::new(AtomicUsize::new(0));
    let (c1, g1, s1) = (c.clone(), gate.clone(), started.clone());
    let load = tokio::spawn(async move {
        c1.get_or_load_many(["x", "y", "z", "w"], move |keys: Vec<String>| async move {
            s1.fetch_add(1, SeqCst);
            g1.notified().await;
            // Read from the source before the delete: now out of date.
            Ok::<_, DbDown>(
                keys.into_iter()
                    .map(|k| (k, "stale".to_string()))
                    .collect::<Vec<_>>(),
            )
        })
        .await
    });
    assert!(eventually(Duration::from_secs(5), async || started.load(SeqCst) == 1).await);
    // Here: on this instance, and on another one (the lease fence).
    c.delete_many(["x"]).await;
    other.delete_many(["y"]).await;
    other.set_many([("w", "fresh".to_string())]).await;
    gate.notify_waiters();
    let got = load.await.unwrap().unwrap();
    assert_eq!(got.len(), 4, "the callers of the load still get its values");
    assert_eq!(
        redis.get_raw("race:w"),
        Some(b"\"fresh\"".to_vec()),
        "not stored over another instance's set_many"
    );
    assert_eq!(redis.get_raw("race:x"), None, "not stored over a local delete");
    assert_eq!(
        redis.get_raw("race:y"),
        None,
        "not stored over another instance's delete"
    );
    assert_eq!(
        redis.get_raw("race:z"),
        Some(b"\"stale\"".to_vec()),
        "the untouched key is stored"
    );
    assert_eq!(c.get("x").await, None);
    assert_eq!(c.get("y").await, None);
    assert!(c.loader_stats().stale_writes_prevented >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_loader_serves_stale_values_where_it_can_and_the_error_otherwise() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        .create_cache::<String>(opts("fs").fail_safe_max_duration(Duration::from_secs(60)))
        .unwrap();
    c.set("old", "stale value".into()).await;
    assert!(c.expire("old").await);
    let failing = |_keys: Vec<String>| async { Err::<Vec<(String, String)>, _>(DbDown) };
    let r = c.get_or_load_many(["old"], failing).await.unwrap();
    assert_eq!(plain(&r), vec![Some("stale value".into())]);
    let r = c.get_or_load_many(["old", "new"], failing).await;
    assert!(matches!(r, Err(LoadError::Loader(_))), "{r:?}");
    assert!(c.loader_stats().stale_served >= 1);
    assert_eq!(redis.get_raw("fs:new"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_decides_each_entry_ttl_tags_and_whether_to_cache_it() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c: Cache<Option<String>> = service.create_cache(opts("ad")).unwrap();
    let got = c
        .get_or_load_many(["found", "missing", "secret"], |keys: Vec<String>| async move {
            Ok::<_, DbDown>(
                keys.into_iter()
                    .map(|k| {
                        let entry = match k.as_str() {
                            "found" => Loaded::new(Some("yes".to_string())).tags(["products"]),
                            "missing" => Loaded::new(None).ttl(Duration::from_secs(10)),
                            _ => Loaded::new(Some("do not keep".to_string())).do_not_cache(),
                        };
                        (k, entry)
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .await
        .unwrap();
    assert_eq!(got[0].as_deref(), Some(&Some("yes".to_string())));
    assert_eq!(got[1].as_deref(), Some(&None));
    assert_eq!(got[2].as_deref(), Some(&Some("do not keep".to_string())));
    let ttl: i64 = redis.cmd(&["PTTL", "ad:missing"]);
    assert!(ttl > 0 && ttl <= 10_000, "a not-found is kept 10 s: {ttl}");
    let ttl: i64 = redis.cmd(&["PTTL", "ad:found"]);
    assert!(ttl > 10_000, "a found one the cache's TTL: {ttl}");
    assert_eq!(redis.get_raw("ad:secret"), None, "not cached in L2");
    assert!(!c.is_on_cache("secret").await, "nor in L1");
    // The entry's own tags were stored with it.
    c.remove_by_tag("products").await.unwrap();
    assert_eq!(c.get("found").await, None);
    assert_eq!(c.get("missing").await.as_deref(), Some(&None));

    // Single-key loads decide the same way.
    let opts = c.load_defaults().clone();
    let v = c
        .get_or_load_entry("one", &opts, |ctx: LoadContext<Option<String>>| async move {
            assert_eq!(ctx.key(), "one");
            assert!(ctx.stale().is_none());
            Ok::<_, DbDown>(
                Loaded::new(None)
                    .ttl(Duration::from_secs(5))
                    .l1_ttl(Duration::from_secs(1)),
            )
        })
        .await
        .unwrap();
    assert_eq!(*v, None);
    let ttl: i64 = redis.cmd(&["PTTL", "ad:one"]);
    assert!(ttl > 0 && ttl <= 5_000, "{ttl}");
    let l1_left = c.get_ttl("one").await;
    assert!(
        l1_left.is_some_and(|t| t <= Duration::from_secs(5)),
        "{l1_left:?}"
    );
    // A TTL under a millisecond is refused: returned, not cached.
    let v = c
        .get_or_load_entry("tiny", &opts, |_| async {
            Ok::<_, DbDown>(Loaded::new(Some("t".to_string())).ttl(Duration::from_micros(10)))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("t"));
    assert_eq!(redis.get_raw("ad:tiny"), None);
    assert!(c.get_stats().await.errors.invalid_ttl >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_that_answers_not_modified_makes_the_stale_value_fresh_again() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Page {
        etag: String,
        body: String,
    }
    let c: Cache<Page> = service
        .create_cache(opts("nm").fail_safe_max_duration(Duration::from_secs(60)))
        .unwrap();
    let load = c.load_defaults().clone();
    let built = Arc::new(AtomicUsize::new(0));
    let fetch = |built: Arc<AtomicUsize>| {
        move |ctx: LoadContext<Page>| async move {
            // The source answers 304 when the ETag matches.
            if ctx.stale().is_some_and(|p| p.etag == "v1") {
                return Ok::<_, DbDown>(Loaded::not_modified());
            }
            built.fetch_add(1, SeqCst);
            Ok(Loaded::new(Page {
                etag: "v1".into(),
                body: "hello".into(),
            }))
        }
    };
    let first = c
        .get_or_load_entry("p", &load, fetch(built.clone()))
        .await
        .unwrap();
    assert!(c.expire("p").await);
    assert_eq!(c.get("p").await, None, "stale: get misses");
    let again = c
        .get_or_load_entry("p", &load, fetch(built.clone()))
        .await
        .unwrap();
    assert_eq!(*first, *again, "the held value");
    assert_eq!(built.load(SeqCst), 1, "built once");
    assert_eq!(
        c.get("p").await.map(|p| p.body.clone()),
        Some("hello".into()),
        "fresh again"
    );
    let other = CacheService::new(redis.config()).await.unwrap();
    let other: Cache<Page> = other
        .create_cache(opts("nm").fail_safe_max_duration(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(
        other.get("p").await.map(|p| p.etag.clone()),
        Some("v1".into()),
        "fresh in L2 too"
    );
    // Not modified with nothing held is an error, and nothing is stored.
    let r = c
        .get_or_load_entry("nothing", &load, |_| async {
            Ok::<_, DbDown>(Loaded::not_modified())
        })
        .await;
    assert!(matches!(r, Err(LoadError::NotModified)), "{r:?}");
    assert_eq!(redis.get_raw("nm:nothing"), None);
}

#[test]
fn the_blocking_api_has_the_batch_operations() {
    let redis = RedisServer::start();
    let service = blocking::CacheService::new(redis.config()).unwrap();
    let c = service.create_cache::<String>(opts("blk")).unwrap();
    c.set_many([("a", "1".to_string()), ("b", "2".to_string())]);
    let got = c.get_many(["a", "b", "c"]);
    assert_eq!(plain(&got), vec![Some("1".into()), Some("2".into()), None]);
    let loaded = c
        .get_or_load_many(["a", "c"], |keys: Vec<String>| {
            Ok::<_, DbDown>(
                keys.into_iter()
                    .map(|k| (k, "loaded".to_string()))
                    .collect::<Vec<_>>(),
            )
        })
        .unwrap();
    assert_eq!(plain(&loaded), vec![Some("1".into()), Some("loaded".into())]);
    assert_eq!(c.delete_many(["a", "b", "c"]), 3);
    assert_eq!(redis.keys(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_call_choices_skip_levels_and_notifications() {
    let redis = RedisServer::start();
    // The backplane alone: `no_notify` holds back this crate's announcement,
    // while tracking (Redis announcing every change) cannot be held back.
    let sources = resilient_cache::InvalidationSources::Backplane;
    let (_a, ca, _b, cb) =
        common::service_pair::<String>(&redis.config(), opts("call").invalidation(sources)).await;
    let l1_only = CallOptions::new().skip_l2_read();
    let l2_only = CallOptions::new().skip_l1_read();

    // L1 only: L2 never sees it.
    ca.set_with("local", "here".into(), &CallOptions::new().skip_l2())
        .await
        .unwrap();
    assert_eq!(redis.get_raw("call:local"), None);
    assert_eq!(
        ca.get_with("local", &l1_only)
            .await
            .as_deref()
            .map(String::as_str),
        Some("here")
    );
    assert_eq!(ca.get_with("local", &l2_only).await, None);

    // Not kept in L1: the older L1 copy goes too.
    ca.set("shared", "v1".into()).await;
    ca.set_with("shared", "v2".into(), &CallOptions::new().skip_l1_write())
        .await
        .unwrap();
    assert_eq!(ca.get_with("shared", &l1_only).await, None);
    assert_eq!(redis.get_raw("call:shared"), Some(b"\"v2\"".to_vec()));
    // A read that does not promote leaves L1 empty.
    let no_promote = CallOptions::new().skip_l1_write();
    assert_eq!(
        ca.get_with("shared", &no_promote)
            .await
            .as_deref()
            .map(String::as_str),
        Some("v2")
    );
    assert_eq!(ca.get_with("shared", &l1_only).await, None);
    assert_eq!(ca.get("shared").await.as_deref().map(String::as_str), Some("v2"));
    assert_eq!(
        ca.get_with("shared", &l1_only)
            .await
            .as_deref()
            .map(String::as_str),
        Some("v2")
    );

    // No notification: B's copy stays, and nothing was published. B first
    // takes in A's announcement of the key's last write, so that it cannot
    // evict the copy later.
    let mut events = cb.subscribe();
    ca.set("quiet", "q1".into()).await;
    let announced = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = events.recv().await {
            if matches!(e, CacheEvent::Invalidated { key: Some(ref k), .. } if k == "quiet") {
                return;
            }
        }
    })
    .await;
    assert!(announced.is_ok(), "B applied A's announcement");
    assert_eq!(cb.get("quiet").await.as_deref().map(String::as_str), Some("q1"));
    let sent = ca.get_stats().await.backplane.unwrap().messages_sent;
    ca.set_with("quiet", "q2".into(), &CallOptions::new().no_notify())
        .await
        .unwrap();
    assert_eq!(ca.get_stats().await.backplane.unwrap().messages_sent, sent);
    assert_eq!(redis.get_raw("call:quiet"), Some(b"\"q2\"".to_vec()));
    assert_eq!(
        cb.get_with("quiet", &l1_only)
            .await
            .as_deref()
            .map(String::as_str),
        Some("q1")
    );
    assert_eq!(
        cb.get_with("quiet", &l2_only)
            .await
            .as_deref()
            .map(String::as_str),
        Some("q2")
    );

    // A delete in L1 only leaves L2 alone; in L2 only leaves L1 alone.
    assert!(
        ca.delete_with("shared", &CallOptions::new().skip_l2_write())
            .await
    );
    assert_eq!(redis.get_raw("call:shared"), Some(b"\"v2\"".to_vec()));
    assert_eq!(ca.get_with("shared", &l1_only).await, None);
    ca.get("shared").await;
    assert!(
        ca.delete_with("shared", &CallOptions::new().skip_l1_write())
            .await
    );
    assert_eq!(redis.get_raw("call:shared"), None);
    assert_eq!(
        ca.get_with("shared", &l1_only)
            .await
            .as_deref()
            .map(String::as_str),
        Some("v2")
    );

    // A per-call TTL.
    ca.set_with(
        "short",
        "s".into(),
        &CallOptions::new().ttl(Duration::from_secs(7)),
    )
    .await
    .unwrap();
    let pttl: i64 = redis.cmd(&["PTTL", "call:short"]);
    assert!(pttl > 0 && pttl <= 7_000, "{pttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_jitter_spreads_expiries_within_its_bounds() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let err = service
        .create_cache::<String>(opts("bad").ttl_jitter(Duration::from_secs(301)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ttl_jitter") && err.contains("l2_ttl"), "{err}");
    let c = service
        .create_cache::<String>(
            CacheOptions::new("jit")
                .l2_ttl(Duration::from_secs(100))
                .ttl_jitter(Duration::from_secs(20))
                .serializer("json"),
        )
        .unwrap();
    let keys: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    c.set_many(keys.iter().map(|k| (k.clone(), "v".to_string())))
        .await;
    c.set("single", "v".into()).await;
    c.set_with_ttl("own", "v".into(), Some(Duration::from_secs(10)))
        .await;
    let mut ttls = Vec::new();
    for k in keys.iter().chain([&"single".to_string()]) {
        let pttl: i64 = redis.cmd(&["PTTL", &format!("jit:{k}")]);
        // 100 s, plus up to 20 s (less the moments since the write).
        assert!((95_000..=120_000).contains(&pttl), "{k}: {pttl}");
        ttls.push(pttl / 1000);
    }
    ttls.sort();
    ttls.dedup();
    assert!(ttls.len() > 5, "expiries spread over the jitter: {ttls:?}");
    let pttl: i64 = redis.cmd(&["PTTL", "jit:own"]);
    assert!(
        (5_000..=30_000).contains(&pttl),
        "a per-call TTL is jittered too: {pttl}"
    );
}
