//! Tracking: Redis tells a service about every change to its namespaces'
//! keys — made by any client, by expiry, by eviction, by `FLUSHDB` — and the
//! key leaves L1. On real servers; the "foreign" writer is a plain Redis
//! client, not this crate.

use resilient_cache_testkit as common;

use std::time::Duration;

use common::{eventually, RedisServer};
use resilient_cache::{Cache, CacheFactoryConfig, CacheOptions, CacheService, InvalidationSources};

fn opts(prefix: &str) -> CacheOptions {
    CacheOptions::new(prefix)
        .l2_ttl(Duration::from_secs(600))
        .l1_ttl(Duration::from_secs(600)) // long: only tracking can make L1 forget
        .serializer("json")
}

/// A service and a tracked cache, tracking established.
async fn tracked(config: &CacheFactoryConfig, o: CacheOptions) -> (CacheService, Cache<String>) {
    let service = CacheService::new(config.clone()).await.unwrap();
    let cache = service.create_cache::<String>(o).unwrap();
    let up = eventually(Duration::from_secs(10), async || {
        cache.tracking_stats().is_some_and(|t| t.connected)
    })
    .await;
    assert!(up, "tracking established: {:?}", cache.tracking_stats());
    (service, cache)
}

async fn l1_size(c: &Cache<String>) -> u64 {
    c.get_stats().await.l1.unwrap().size
}

/// Whether `c` gives up `key`'s L1 copy: `get` answers `want` (what L2
/// holds now) within 5 s.
async fn sees(c: &Cache<String>, key: &str, want: Option<&str>) -> bool {
    eventually(Duration::from_secs(5), async || {
        c.get(key).await.as_deref().map(String::as_str) == want
    })
    .await
}

/// The id of the first client in `CLIENT LIST` whose line satisfies `pick`.
fn client_id(redis: &RedisServer, pick: impl Fn(&str) -> bool) -> Option<String> {
    let list: String = redis.cmd(&["CLIENT", "LIST"]);
    list.lines().find(|l| pick(l)).and_then(|l| {
        l.split(' ')
            .find_map(|f| f.strip_prefix("id="))
            .map(str::to_string)
    })
}

fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_del_and_expire_by_another_client_evict_l1() {
    let redis = RedisServer::start();
    let (_s, c) = tracked(&redis.config(), opts("trk")).await;
    for k in ["a", "b", "c"] {
        c.set(k, format!("{k}1")).await;
        assert_eq!(
            c.get(k).await.as_deref().map(String::as_str),
            Some(&*format!("{k}1"))
        );
    }
    assert_eq!(l1_size(&c).await, 3);

    // A plain client, as `redis-cli` or a service in another language would.
    let _: () = redis.cmd(&["SET", "trk:a", &json("a2")]);
    assert!(sees(&c, "a", Some("a2")).await, "SET by another client");
    let _: () = redis.cmd(&["DEL", "trk:b"]);
    assert!(sees(&c, "b", None).await, "DEL by another client");
    let _: () = redis.cmd(&["PEXPIRE", "trk:c", "50"]);
    assert!(sees(&c, "c", None).await, "expired by Redis");

    let t = c.tracking_stats().unwrap();
    assert!(t.notifications >= 3 && t.keys_invalidated >= 3, "{t:?}");
    assert_eq!(t.loss_clears, 0, "nothing lost: {t:?}");

    // Keys outside the namespace are not this cache's business.
    c.set("d", "d1".into()).await;
    let _: () = redis.cmd(&["SET", "other:d", "x"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = c.get_stats().await.l1.unwrap().hits;
    assert_eq!(c.get("d").await.as_deref().map(String::as_str), Some("d1"));
    assert_eq!(
        c.get_stats().await.l1.unwrap().hits,
        before + 1,
        "still an L1 hit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_writes_keep_their_l1_entries() {
    let redis = RedisServer::start();
    let (_s, c) = tracked(&redis.config(), opts("own")).await;
    for i in 0..50 {
        c.set(&format!("k{i}"), format!("v{i}")).await;
    }
    c.delete("k0").await;
    c.set_many(
        (1..10)
            .map(|i| (format!("k{i}"), format!("w{i}")))
            .collect::<Vec<_>>(),
    )
    .await;
    // Give any notification time to arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = c.tracking_stats().unwrap();
    assert_eq!(t.keys_invalidated, 0, "own writes are not announced back: {t:?}");
    let before = c.get_stats().await.l1.unwrap().hits;
    for i in 1..50 {
        let want = if i < 10 { format!("w{i}") } else { format!("v{i}") };
        assert_eq!(c.get(&format!("k{i}")).await.as_deref(), Some(&want));
    }
    assert_eq!(
        c.get_stats().await.l1.unwrap().hits,
        before + 49,
        "every read after an own write is an L1 hit"
    );

    // Another instance's writes are foreign to this one.
    let (_s2, other) = tracked(&redis.config(), opts("own")).await;
    other.set("k20", "from-other".into()).await;
    assert!(sees(&c, "k20", Some("from-other")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_under_maxmemory_and_flushdb_reach_l1() {
    let redis = RedisServer::start();
    let (_s, c) = tracked(&redis.config(), opts("mem")).await;
    c.set("victim", "v".into()).await;
    assert_eq!(l1_size(&c).await, 1);
    // Every key is a candidate; filling memory evicts ours (and others).
    let _: () = redis.cmd(&["CONFIG", "SET", "maxmemory-policy", "allkeys-random"]);
    let used: String = redis.cmd(&["INFO", "memory"]);
    let used: u64 = used
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _: () = redis.cmd(&["CONFIG", "SET", "maxmemory", &(used + 200_000).to_string()]);
    let filler = "x".repeat(10_000);
    let mut conn = redis.conn();
    let evicted = (0..2000).any(|i| {
        let _: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("fill:{i}"))
            .arg(&filler)
            .query(&mut conn);
        let exists: i64 = redis::cmd("EXISTS").arg("mem:victim").query(&mut conn).unwrap();
        exists == 0
    });
    assert!(evicted, "Redis evicted the key");
    assert!(
        sees(&c, "victim", None).await,
        "evicted by Redis, evicted from L1"
    );
    let _: () = redis.cmd(&["CONFIG", "SET", "maxmemory", "0"]);

    c.set("x", "1".into()).await;
    c.set("y", "2".into()).await;
    assert!(l1_size(&c).await >= 2);
    let _: () = redis.cmd(&["FLUSHDB"]);
    let cleared = eventually(Duration::from_secs(5), async || l1_size(&c).await == 0).await;
    assert!(cleared, "FLUSHDB cleared L1");
    assert!(c.tracking_stats().unwrap().flushes >= 1);
    assert_eq!(c.get("x").await, None);
}

/// Loses the channel one way, then checks: L1 cleared and counted,
/// tracking back, and a foreign write evicts again.
async fn survives(redis: &mut RedisServer, c: &Cache<String>, lose: impl FnOnce(&mut RedisServer)) {
    c.set("held", "h1".into()).await;
    assert!(l1_size(c).await > 0);
    let before = c.tracking_stats().unwrap().loss_clears;
    lose(redis);
    let cleared = eventually(Duration::from_secs(15), async || {
        c.get("poke").await; // lets a silently reconnected data connection show itself
        let t = c.tracking_stats().unwrap();
        t.loss_clears > before && t.connected
    })
    .await;
    assert!(cleared, "loss cleared and counted: {:?}", c.tracking_stats());
    c.set("after", "a1".into()).await;
    assert_eq!(c.get("after").await.as_deref().map(String::as_str), Some("a1"));
    let _: () = redis.cmd(&["SET", "loss:after", &json("a2")]);
    assert!(sees(c, "after", Some("a2")).await, "tracking re-established");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_channel_clears_l1_and_tracking_comes_back() {
    let mut redis = RedisServer::start();
    let mut config = redis.config();
    config.redis.socket_timeout = Duration::from_millis(500);
    config.circuit_breaker.timeout = Duration::from_secs(1);
    let (_s, c) = tracked(&config, opts("loss")).await;

    // The invalidation connection killed.
    survives(&mut redis, &c, |r| {
        let id = client_id(r, |l| l.contains("name=resilient-cache-tracking"))
            .expect("tracking connection listed");
        let _: () = r.cmd(&["CLIENT", "KILL", "ID", &id]);
    })
    .await;
    // The data connection killed: it comes back without tracking.
    survives(&mut redis, &c, |r| {
        let id = client_id(r, |l| {
            l.split(' ')
                .any(|f| f.strip_prefix("flags=").is_some_and(|fl| fl.contains('t')))
        })
        .expect("data connection listed with the tracking flag");
        let _: () = r.cmd(&["CLIENT", "KILL", "ID", &id]);
    })
    .await;
    // Redis restarted.
    survives(&mut redis, &c, |r| {
        r.kill();
        r.restart();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_are_chosen_per_service_and_per_cache() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let both = service.create_cache::<String>(opts("both")).unwrap();
    let only_bp = service
        .create_cache::<String>(opts("bp").invalidation(InvalidationSources::Backplane))
        .unwrap();
    let only_trk = service
        .create_cache::<String>(opts("tk").invalidation(InvalidationSources::Tracking))
        .unwrap();
    let none = service
        .create_cache::<String>(opts("none").invalidation(InvalidationSources::None))
        .unwrap();
    let l2_only = service
        .create_cache::<String>(opts("l2o").l1_enabled(false))
        .unwrap();
    let s = |c: &Cache<String>| (c.backplane_stats().is_some(), c.tracking_stats().is_some());
    assert_eq!(s(&both), (true, true));
    assert_eq!(s(&only_bp), (true, false));
    assert_eq!(s(&only_trk), (false, true));
    assert_eq!(s(&none), (false, false));
    assert_eq!(s(&l2_only), (true, false), "nothing in L1 to track");

    // Tracking-only still sees other writers.
    eventually(Duration::from_secs(10), async || {
        only_trk.tracking_stats().unwrap().connected
    })
    .await;
    only_trk.set("k", "v1".into()).await;
    let _: () = redis.cmd(&["SET", "tk:k", &json("v2")]);
    assert!(sees(&only_trk, "k", Some("v2")).await);

    // The service-wide key.
    let config = CacheFactoryConfig::from_map([
        ("CACHE_REDIS_URL", redis.url()),
        ("CACHE_INVALIDATION", "backplane".to_string()),
    ])
    .unwrap();
    let service = CacheService::new(config).await.unwrap();
    let c = service.create_cache::<String>(opts("svc")).unwrap();
    assert_eq!(s(&c), (true, false));
    let err = CacheFactoryConfig::from_map([("CACHE_INVALIDATION", "pubsub")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("CACHE_INVALIDATION")
            && err.contains("pubsub")
            && err.contains("both, backplane, tracking, none"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loaded_values_keep_their_l1_entries_and_foreign_writes_still_evict_them() {
    let redis = RedisServer::start();
    let (_s, c) = tracked(&redis.config(), opts("load")).await;
    for i in 0..20 {
        let v = c
            .get_or_load(&format!("k{i}"), async move || {
                Ok::<_, std::io::Error>(format!("v{i}"))
            })
            .await
            .unwrap();
        assert_eq!(v.as_str(), format!("v{i}"));
    }
    // The fenced store is a script: Redis announces it back, tracking confirms it.
    let confirmed = eventually(Duration::from_secs(5), async || {
        c.tracking_stats().unwrap().own_stores_confirmed >= 20
    })
    .await;
    assert!(confirmed, "{:?}", c.tracking_stats());
    assert_eq!(c.tracking_stats().unwrap().keys_invalidated, 0);
    let before = c.get_stats().await.l1.unwrap().hits;
    for i in 0..20 {
        assert_eq!(c.get(&format!("k{i}")).await.as_deref(), Some(&format!("v{i}")));
    }
    assert_eq!(c.get_stats().await.l1.unwrap().hits, before + 20, "all L1 hits");

    // A foreign write right after a load is not mistaken for the load's store.
    for i in 0..20 {
        let key = format!("r{i}");
        let loaded = c.get_or_load(&key, async || Ok::<_, std::io::Error>("mine".to_string()));
        loaded.await.unwrap();
        let _: () = redis.cmd(&["SET", &format!("load:{key}"), &json("theirs")]);
        assert!(sees(&c, &key, Some("theirs")).await, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_change_is_reported_as_an_invalidation_by_tracking() {
    use resilient_cache::cache::InvalidatedBy;
    use resilient_cache::CacheEvent;
    let redis = RedisServer::start();
    let (_s, c) = tracked(&redis.config(), opts("trkev")).await;
    c.set("k", "mine".into()).await;
    let mut events = c.subscribe();
    let _: () = redis.cmd(&["SET", "trkev:k", &json("theirs")]);
    let told = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Some(CacheEvent::Invalidated { key, by }) => return (key, by),
                Some(_) => continue,
                None => panic!("the cache is gone"),
            }
        }
    })
    .await
    .expect("an invalidation event within 5 s");
    assert_eq!(told, (Some("k".to_string()), InvalidatedBy::Tracking));
    assert!(sees(&c, "k", Some("theirs")).await);
}

/// A new cache reads a key into L1 and writes another at once, and another
/// client changes both before the cache's tracking is set up, so Redis never
/// tells it of those changes. Once tracking is up, the old copies must not
/// stay in its L1. Whether the change lands before the set-up (a fraction of
/// a millisecond) is a matter of timing, so this repeats with new services
/// until it did (no notification came for it), for up to 60 s, and checks
/// every attempt. The same check on memory backends, without timing, is in
/// the library's unit tests (`cache::coverage`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_before_tracking_is_set_up_do_not_stay_in_l1() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut other = client.get_multiplexed_async_connection().await.unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let mut attempt = 0;
    while std::time::Instant::now() < until {
        attempt += 1;
        let prefix = format!("early{attempt}");
        let both = |v: &str| {
            [
                (format!("{prefix}:read"), json(v)),
                (format!("{prefix}:written"), json(v)),
            ]
        };
        let _: () = redis::cmd("MSET")
            .arg(&both("old"))
            .query_async(&mut other)
            .await
            .unwrap();
        let service = CacheService::new(redis.config()).await.unwrap();
        let c = service.create_cache::<String>(opts(&prefix)).unwrap();
        assert_eq!(c.get("read").await.as_deref().map(String::as_str), Some("old"));
        c.set("written", "mine".into()).await;
        let _: () = redis::cmd("MSET")
            .arg(&both("new"))
            .query_async(&mut other)
            .await
            .unwrap();
        for key in ["read", "written"] {
            assert!(
                sees(&c, key, Some("new")).await,
                "attempt {attempt}: {key} kept its old copy ({:?})",
                c.tracking_stats()
            );
        }
        let settled = eventually(Duration::from_secs(10), async || {
            c.tracking_stats().is_some_and(|t| t.connected)
        })
        .await;
        let t = c.tracking_stats().unwrap();
        assert!(settled, "{t:?}");
        if t.keys_invalidated == 0 {
            return;
        }
    }
    panic!("in {attempt} attempts the change never landed before tracking was set up");
}
