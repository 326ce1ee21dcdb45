//! Invalidation by tag and of the whole namespace, on real redis-servers:
//! both levels, every instance (and instances started later), through an
//! outage, against a load in flight; removed versus stale.

use resilient_cache_testkit as common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, RedisServer};
use resilient_cache::cache::MarkerStatus;
use resilient_cache::{Cache, CacheOptions, CacheService, CircuitState, LoadError, LoadOptions};

fn opts(prefix: &str) -> CacheOptions {
    CacheOptions::new(prefix)
        .l2_ttl(Duration::from_secs(300))
        .l1_ttl(Duration::from_secs(300)) // long: only an invalidation can make L1 forget
        .serializer("json")
        .circuit_breaker_threshold(2)
        .circuit_breaker_timeout(Duration::from_secs(1))
}

async fn service(redis: &RedisServer) -> CacheService {
    CacheService::new(redis.config()).await.unwrap()
}

async fn connected(c: &Cache<String>) {
    let up = eventually(Duration::from_secs(5), async || {
        c.get_stats().await.backplane.is_some_and(|b| b.connected)
    })
    .await;
    assert!(up, "subscriber connected");
}

async fn val(c: &Cache<String>, key: &str) -> Option<String> {
    c.get(key).await.map(|v| (*v).clone())
}

async fn sees(c: &Cache<String>, key: &str, want: Option<&str>) -> bool {
    eventually(Duration::from_secs(5), async || {
        val(c, key).await.as_deref() == want
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_by_tag_reaches_both_levels_every_instance_and_later_ones() {
    let redis = RedisServer::start();
    let (a, b) = (service(&redis).await, service(&redis).await);
    let ca = a.create_cache::<String>(opts("inv")).unwrap();
    let cb = b.create_cache::<String>(opts("inv")).unwrap();
    connected(&ca).await;
    connected(&cb).await;
    ca.set_with_tags("u1", "one".into(), &["user:1", "page"]).await;
    ca.set_with_tags("u1-orders", "orders".into(), &["user:1"]).await;
    ca.set_with_tags("u2", "two".into(), &["user:2", "page"]).await;
    ca.set("plain", "untagged".into()).await;
    for k in ["u1", "u1-orders", "u2", "plain"] {
        assert!(val(&cb, k).await.is_some(), "{k} now in B's L1");
    }

    let r = ca.remove_by_tag("user:1").await.unwrap();
    assert_eq!(
        (r.scope, r.tag.as_deref(), r.kind),
        ("tag", Some("user:1"), "remove")
    );
    assert_eq!(r.l1_entries, 2, "both entries left A's L1");
    assert_eq!(r.l2, MarkerStatus::Recorded);
    assert_eq!(val(&ca, "u1").await, None, "at once on this instance");
    assert_eq!(val(&ca, "u1-orders").await, None);
    assert!(sees(&cb, "u1", None).await, "B's L1 after propagation");
    assert!(sees(&cb, "u1-orders", None).await);
    assert_eq!(
        val(&cb, "u2").await.as_deref(),
        Some("two"),
        "other tags untouched"
    );
    assert_eq!(val(&ca, "plain").await.as_deref(), Some("untagged"));
    assert!(
        redis.get_raw("inv:u1").is_some(),
        "the entry is not deleted: its marker covers it"
    );

    // A service started after the removal does not see what it removed.
    let c = service(&redis).await;
    let cc = c.create_cache::<String>(opts("inv")).unwrap();
    assert_eq!(val(&cc, "u1").await, None);
    assert_eq!(val(&cc, "u2").await.as_deref(), Some("two"));
    assert!(cc.get_stats().await.invalidation.removed_reads >= 1);
    assert_eq!(cc.get_stats().await.invalidation.markers_known, 1);

    // Written again after the removal, the tag is live again everywhere.
    ca.set_with_tags("u1", "one again".into(), &["user:1"]).await;
    assert_eq!(val(&ca, "u1").await.as_deref(), Some("one again"));
    assert!(sees(&cb, "u1", Some("one again")).await);
    assert!(sees(&cc, "u1", Some("one again")).await);

    // Removal by the other shared tag reaches the L1 of every instance.
    cb.remove_by_tag("page").await.unwrap();
    for c in [&ca, &cb, &cc] {
        assert!(sees(c, "u2", None).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untagged_entries_keep_the_plain_layout_and_tagged_ones_carry_their_tags() {
    let redis = RedisServer::start();
    let s = service(&redis).await;
    let c = s.create_cache::<String>(opts("lay")).unwrap();
    c.set("plain", "v".into()).await;
    assert_eq!(redis.get_raw("lay:plain"), Some(b"\"v\"".to_vec()), "plain JSON");
    c.set_with_tags("tagged", "v".into(), &["b", "a"]).await;
    let raw = redis.get_raw("lay:tagged").unwrap();
    let entry = resilient_cache::tags::open(&raw).unwrap().expect("tagged layout");
    assert_eq!(entry.tags, ["a", "b"]);
    assert_eq!(entry.body, b"\"v\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tags_are_refused_and_nothing_is_stored() {
    let redis = RedisServer::start();
    let s = service(&redis).await;
    let c = s.create_cache::<String>(opts("bad")).unwrap();
    for bad in ["", "new\nline", "nul\0", &"x".repeat(129)] {
        let e = c
            .try_set_with_tags("k", "v".into(), None, &[bad])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("control characters"), "{e}");
        assert!(c.remove_by_tag(bad).await.is_err());
    }
    assert_eq!(val(&c, "k").await, None);
    assert_eq!(redis.get_raw("bad:k"), None);
    let load = c
        .get_or_load_with("k", &LoadOptions::new().tags(["ok", "bad\ttab"]), || async {
            Ok::<_, std::io::Error>("loaded".to_string())
        })
        .await;
    assert!(matches!(load, Err(LoadError::InvalidOptions(ref e)) if e.key() == "tags"));
    assert_eq!(c.get_stats().await.errors.invalid_tag, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_are_stale_not_removed() {
    let redis = RedisServer::start();
    let s = service(&redis).await;
    let c = s
        .create_cache::<String>(opts("exp").fail_safe_max_duration(Duration::from_secs(600)))
        .unwrap();
    let other = service(&redis).await;
    let co = other
        .create_cache::<String>(opts("exp").fail_safe_max_duration(Duration::from_secs(600)))
        .unwrap();
    connected(&c).await;
    connected(&co).await;
    c.set_with_tags("p1", "price 1".into(), &["prices"]).await;
    c.set_with_tags("p2", "price 2".into(), &["prices"]).await;
    c.set("k", "key value".into()).await;
    assert!(val(&co, "p1").await.is_some());

    let r = c.expire_by_tag("prices").await.unwrap();
    assert_eq!(
        (r.kind, r.l1_entries, r.l2),
        ("expire", 2, MarkerStatus::Recorded)
    );
    assert!(c.expire("k").await);
    let ttl: i64 = redis.cmd(&["PTTL", "exp:k"]);
    assert!(
        ttl > 0 && ttl <= 600_000,
        "kept for its fail-safe time only: {ttl}"
    );
    for key in ["p1", "k"] {
        assert_eq!(
            val(&c, key).await,
            None,
            "{key}: a plain get misses a stale entry"
        );
        assert!(sees(&co, key, None).await, "{key}: on the other instance too");
    }
    // The loader fails: fail-safe serves the old value, on both instances.
    for cache in [&c, &co] {
        for (key, old) in [("p1", "price 1"), ("k", "key value")] {
            let v = cache
                .get_or_load(key, || async {
                    Err::<String, _>(std::io::Error::other("db down"))
                })
                .await
                .unwrap();
            assert_eq!(*v, old, "{key}: stale fallback");
        }
    }
    // The loader works: the value is reloaded.
    let v = co
        .get_or_load("p2", || async {
            Ok::<_, std::io::Error>("price 2, new".to_string())
        })
        .await
        .unwrap();
    assert_eq!(*v, "price 2, new");
    assert!(
        sees(&c, "p2", Some("price 2, new")).await,
        "the reload is fresh everywhere"
    );

    // Removed is different: no fallback.
    c.remove_by_tag("prices").await.unwrap();
    let r = c
        .get_or_load("p1", || async {
            Err::<String, _>(std::io::Error::other("db down"))
        })
        .await;
    assert!(
        matches!(r, Err(LoadError::Loader(_))),
        "a removed entry is no fallback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fail_safe_expiry_removes() {
    let redis = RedisServer::start();
    let s = service(&redis).await;
    let c = s.create_cache::<String>(opts("nofs")).unwrap();
    c.set_with_tags("a", "1".into(), &["t"]).await;
    c.set("b", "2".into()).await;
    c.expire_by_tag("t").await.unwrap();
    assert!(c.expire("b").await);
    assert_eq!(val(&c, "a").await, None);
    assert_eq!(redis.get_raw("nofs:b"), None, "no fail-safe: expire deletes");
    let r = c
        .get_or_load("a", || async { Err::<String, _>(std::io::Error::other("down")) })
        .await;
    assert!(matches!(r, Err(LoadError::Loader(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_all_costs_the_same_for_any_size_and_covers_later_instances() {
    let redis = RedisServer::start();
    let s = service(&redis).await;
    let c = s.create_cache::<String>(opts("all")).unwrap();
    c.invalidate_all().await; // the marker script is loaded once, before counting
    let up = eventually(Duration::from_secs(5), async || {
        c.backplane_stats().is_some_and(|b| b.connected)
    })
    .await;
    assert!(up);
    let mut costs = Vec::new();
    for n in [100, 1000] {
        for i in 0..n {
            if i % 2 == 0 {
                c.set(&format!("k{i}"), "old".into()).await;
            } else {
                c.set_with_tags(&format!("k{i}"), "old".into(), &["t"]).await;
            }
        }
        // The announcements of those writes go out first (gathered for 1 ms).
        tokio::time::sleep(Duration::from_millis(100)).await;
        redis.reset_stats();
        let r = c.invalidate_all().await;
        assert_eq!(r.l2, MarkerStatus::Recorded);
        tokio::time::sleep(Duration::from_millis(100)).await; // its announcement, sent by a task
        let mut calls = redis.command_calls();
        assert!(
            !calls.contains_key("scan") && !calls.contains_key("unlink"),
            "{calls:?}"
        );
        // Not the invalidation's: what runs on timers, and the subscriber's
        // connection set-up.
        calls.retain(|name, _| {
            !matches!(name.as_str(), "hello" | "psubscribe" | "select") && !common::from_timers(name)
        });
        costs.push(calls);
        for i in [0, 1, n - 2, n - 1] {
            assert_eq!(val(&c, &format!("k{i}")).await, None, "k{i} after the clear");
        }
    }
    assert_eq!(costs[0], costs[1], "the same commands for 100 and 1,000 entries");
    assert_eq!(
        costs[0].get("evalsha"),
        Some(&1),
        "one marker script: {:?}",
        costs[0]
    );

    // Writes after the marker are live, in the tagged layout while it lives.
    c.set("fresh", "new".into()).await;
    assert_eq!(val(&c, "fresh").await.as_deref(), Some("new"));
    assert!(resilient_cache::tags::open(&redis.get_raw("all:fresh").unwrap())
        .unwrap()
        .is_some());
    let later = service(&redis).await;
    let cl = later.create_cache::<String>(opts("all")).unwrap();
    assert_eq!(val(&cl, "k0").await, None, "plain entry from before");
    assert_eq!(val(&cl, "k1").await, None, "tagged entry from before");
    assert_eq!(val(&cl, "fresh").await.as_deref(), Some("new"));
    // `clear` keeps its meaning: keys really removed.
    let report = c.clear().await;
    assert!(report.l2_cleared && report.l2_items_removed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_all_keeps_fail_safe_fallbacks() {
    let redis = RedisServer::start();
    let s = service(&redis).await;
    let o = opts("expall").fail_safe_max_duration(Duration::from_secs(600));
    let c = s.create_cache::<String>(o.clone()).unwrap();
    c.set("a", "old a".into()).await;
    c.set_with_tags("b", "old b".into(), &["t"]).await;
    c.expire_all().await;
    let later = service(&redis).await;
    let cl = later.create_cache::<String>(o).unwrap();
    for cache in [&c, &cl] {
        assert_eq!(val(cache, "a").await, None);
        for (key, old) in [("a", "old a"), ("b", "old b")] {
            let v = cache
                .get_or_load(key, || async { Err::<String, _>(std::io::Error::other("down")) })
                .await
                .unwrap();
            assert_eq!(*v, old);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_during_an_outage_is_local_at_once_and_replayed_without_resurrection() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let s = service(&redis).await;
    let c = s.create_cache::<String>(opts("out")).unwrap();
    for i in 0..20 {
        c.set_with_tags(&format!("k{i}"), format!("v{i}"), &["doomed"])
            .await;
    }
    c.set_with_tags("keep", "kept".into(), &["other"]).await;
    redis.kill();
    let r = c.remove_by_tag("doomed").await.unwrap();
    assert_eq!(r.l2, MarkerStatus::Queued);
    assert_eq!(r.l1_entries, 20);
    assert_eq!(val(&c, "k0").await, None, "applied locally at once");
    assert_eq!(val(&c, "keep").await.as_deref(), Some("kept"));
    assert_eq!(c.get_stats().await.recovery.markers_pending, 1);

    redis.restart();
    let replayed = eventually(Duration::from_secs(15), async || {
        c.get("probe").await;
        c.breaker_state() == CircuitState::Closed && c.get_stats().await.recovery.markers_pending == 0
    })
    .await;
    assert!(replayed, "{:?}", c.get_stats().await.recovery);
    assert!(
        redis.get_raw("out:k0").is_some(),
        "the entries survived the restart in L2"
    );
    let later = service(&redis).await;
    let cl = later.create_cache::<String>(opts("out")).unwrap();
    let resurrected = {
        let mut n = 0;
        for i in 0..20 {
            for cache in [&c, &cl] {
                n += val(cache, &format!("k{i}")).await.is_some() as u32;
            }
        }
        n
    };
    assert_eq!(resurrected, 0, "nothing the removal covered came back");
    assert_eq!(val(&cl, "keep").await.as_deref(), Some("kept"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_began_before_a_removal_is_returned_but_not_stored() {
    let redis = RedisServer::start();
    let s = service(&redis).await;
    let c = s.create_cache::<String>(opts("race")).unwrap();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let loading = {
        let (c, release) = (c.clone(), release.clone());
        tokio::spawn(async move {
            c.get_or_load_with("k", &LoadOptions::new().tags(["t"]), move || async move {
                let _ = started_tx.send(());
                release.notified().await;
                Ok::<_, std::io::Error>("read before the removal".to_string())
            })
            .await
        })
    };
    started_rx.await.unwrap();
    c.remove_by_tag("t").await.unwrap();
    release.notify_one();
    let v = loading.await.unwrap().unwrap();
    assert_eq!(*v, "read before the removal", "the caller gets its value");
    assert_eq!(val(&c, "k").await, None, "but it is not stored over the removal");
    assert_eq!(redis.get_raw("race:k"), None);
    assert_eq!(c.loader_stats().stale_writes_prevented, 1);

    // A load that begins after the removal is stored as usual.
    let v = c
        .get_or_load_with("k", &LoadOptions::new().tags(["t"]), || async {
            Ok::<_, std::io::Error>("after".to_string())
        })
        .await
        .unwrap();
    assert_eq!(*v, "after");
    assert_eq!(val(&c, "k").await.as_deref(), Some("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_on_cache_and_get_ttl_agree_with_reads_after_a_removal() {
    let redis = RedisServer::start();
    let s = service(&redis).await;
    let c = s.create_cache::<String>(opts("seen")).unwrap();
    c.set_with_tags("a", "1".into(), &["t"]).await;
    c.set("b", "2".into()).await;
    assert!(c.is_on_cache("a").await && c.get_ttl("a").await.is_some());
    c.remove_by_tag("t").await.unwrap();
    assert!(
        !c.is_on_cache("a").await,
        "removed, though its key is still in L2"
    );
    assert_eq!(c.get_ttl("a").await, None);
    assert!(c.is_on_cache("b").await && c.get_ttl("b").await.is_some());
    let later = service(&redis).await;
    let cl = later.create_cache::<String>(opts("seen")).unwrap();
    assert!(!cl.is_on_cache("a").await, "a later instance agrees");
    assert!(cl.is_on_cache("b").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_without_l1_or_without_the_backplane_learn_of_markers_too() {
    let redis = RedisServer::start();
    let (a, b) = (service(&redis).await, service(&redis).await);
    let ca = a.create_cache::<String>(opts("reach")).unwrap();
    let l2_only = b.create_cache::<String>(opts("reach").l1_enabled(false)).unwrap();
    let c = service(&redis).await;
    // Without L1 too: without the backplane an L1 copy stays until its TTL (see the README).
    let no_bp = c
        .create_cache::<String>(opts("reach").l1_enabled(false).backplane(false))
        .unwrap();
    connected(&l2_only).await;
    assert!(no_bp.backplane_stats().is_none());
    ca.set_with_tags("k", "v".into(), &["t"]).await;
    assert_eq!(val(&l2_only, "k").await.as_deref(), Some("v"));
    assert_eq!(val(&no_bp, "k").await.as_deref(), Some("v"));
    ca.remove_by_tag("t").await.unwrap();
    // Pushed over the backplane to the cache without L1 (it announces no writes of its own).
    assert!(sees(&l2_only, "k", None).await);
    // Pulled from L2 by the cache without a backplane (its table is at most a second old).
    assert!(sees(&no_bp, "k", None).await);
}
