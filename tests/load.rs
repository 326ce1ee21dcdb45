//! get_or_load: one loader per key, errors shared, no wedged keys. Counts, not times.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::RedisServer;
use resilient_cache::{blocking, CacheOptions, CacheService};

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
                c.get_or_load("hot", || async {
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
                c.get_or_load("k", || async {
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
        errors.iter().all(|e| **e == DbDown("connection refused")),
        "typed error for all"
    );
    assert!(
        errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])),
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

    // A leader whose loader panics while others wait.
    let leader = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get_or_load("p", || async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                panic!("loader bug");
                #[allow(unreachable_code)]
                Ok::<String, DbDown>(String::new())
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let (c, calls) = (c.clone(), calls.clone());
            tokio::spawn(async move {
                c.get_or_load("p", || async {
                    calls.fetch_add(1, SeqCst);
                    Ok::<_, DbDown>("recovered".to_string())
                })
                .await
            })
        })
        .collect();
    assert!(leader.await.unwrap_err().is_panic());
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
    let calls = AtomicUsize::new(0);
    for _ in 0..3 {
        let v = c
            .get_or_load("k", || async {
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
        *c.get_or_load("e", || Err::<u32, _>(DbDown("db"))).unwrap_err(),
        DbDown("db")
    );
}
