//! The example app on a free port, driven by a real HTTP client, against a
//! real `redis-server` that the test kills and restarts.
#![cfg(all(feature = "axum", feature = "metrics"))]

use resilient_cache_testkit as common;

use std::time::Duration;

use common::http::Running;
use common::{eventually, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_miss_then_hit_clear_keys_and_stats() {
    let redis = RedisServer::start();
    let app = Running::start(&redis).await;

    let (code, first) = app.get("/users/1").await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["source"], "database");
    assert_eq!(first["user"]["name"], "Ada Lovelace");
    let (_, second) = app.get("/users/1").await;
    assert_eq!(second["source"], "cache");
    assert_eq!(second["user"], first["user"]);
    assert_eq!(app.state.db.queries.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(redis.get_raw("users:1").is_some(), "stored in L2");

    let (code, missing) = app.get("/users/99").await;
    assert_eq!(code, 404, "{missing}");

    let (_, keys) = app.get("/cache/keys").await;
    assert_eq!(keys["keys"], serde_json::json!(["1"]));

    let (_, cleared) = app.get("/users/1/clear").await;
    assert_eq!(cleared["deleted"], true);
    assert_eq!(app.get("/users/1").await.1["source"], "database");

    let (code, stats) = app.get("/cache/stats").await;
    assert_eq!(code, 200);
    let users = &stats["caches"]["users"];
    assert!(users["l1"]["hits"].as_u64().unwrap() >= 1, "{stats}");
    assert_eq!(users["l2"]["available"], true, "{stats}");
    assert_eq!(users["circuit_breaker"]["state"], "closed");
    assert!(users["loader"]["loads"].as_u64().unwrap() >= 2, "{stats}");
    assert!(stats["l2_endpoint"]
        .as_str()
        .unwrap()
        .contains(&redis.port.to_string()));

    let (_, report) = app.get("/cache/clear").await;
    assert_eq!(report["l2_cleared"], true, "{report}");
    assert_eq!(redis.get_raw("users:1"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_redis_down_and_back() {
    let mut redis = RedisServer::start();
    let app = Running::start(&redis).await;
    let (code, body) = app.get("/health").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("healthy")), "{body}");

    redis.kill();
    assert!(
        eventually(Duration::from_secs(10), async || app.get("/health").await.0
            == 503)
        .await,
        "503 once Redis is gone"
    );
    let (_, body) = app.get("/health").await;
    assert_eq!(body["status"], "degraded");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("L2 unavailable: connection refused"), "{body}");
    assert_eq!(body["l2_error_kind"], "refused", "{body}");
    // Still serving, from L1 and the database.
    assert_eq!(app.get("/users/2").await.0, 200);

    redis.restart();
    assert!(
        eventually(Duration::from_secs(15), async || app.get("/health").await.0
            == 200)
        .await,
        "200 again after the restart, without restarting the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_layer_honours_no_store_no_cache_and_cookies() {
    let redis = RedisServer::start();
    let app = Running::start(&redis).await;

    let (x, body) = app.raw("/report", &[]).await;
    assert_eq!(x, "miss");
    let (x, again) = app.raw("/report", &[]).await;
    assert_eq!(
        (x.as_str(), &again),
        ("hit", &body),
        "the whole response, from the cache"
    );
    assert_eq!(redis.keys().iter().filter(|k| k.starts_with("pages:")).count(), 1);

    // A request that asks for a fresh answer gets one (and, with no-store, nothing is kept).
    let (x, fresh) = app.raw("/report", &[("cache-control", "no-cache")]).await;
    assert_eq!(x, "miss");
    assert_ne!(fresh, body);
    let (x, _) = app.raw("/report?v=2", &[("cache-control", "no-store")]).await;
    assert_eq!(x, "miss");
    let (x, _) = app.raw("/report?v=2", &[]).await;
    assert_eq!(x, "miss", "no-store kept nothing");

    // Neither is a response that is not 200.
    for _ in 0..2 {
        let r = app.send("/report/missing", &[]).await;
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["x-cache"], "miss");
    }
    // A response that sets a cookie is never cached.
    for _ in 0..2 {
        let (x, _) = app.raw("/report/personal", &[]).await;
        assert_eq!(x, "miss");
    }
    assert!(!redis
        .keys()
        .iter()
        .any(|k| k.contains("personal") || k.contains("missing")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_layer_tags_pages_by_route_request_and_handler() {
    let redis = RedisServer::start();
    let app = Running::start(&redis).await;
    let mut bodies = Vec::new();
    for id in 1..=4 {
        let (x, body) = app.raw(&format!("/products/{id}"), &[]).await;
        assert_eq!(x, "miss");
        let (x, again) = app.raw(&format!("/products/{id}"), &[]).await;
        assert_eq!((x.as_str(), &again), ("hit", &body));
        bodies.push(body);
    }
    let r = app.send("/products/1", &[]).await;
    assert!(
        r.headers().get("x-cache-tags").is_none(),
        "the tag header stays inside"
    );
    let raw = redis.get_raw("product-pages:GET /products/2").unwrap();
    let entry = resilient_cache::tags::open(&raw).unwrap().unwrap();
    assert_eq!(entry.tags, ["even", "product:2", "route:/products"]);

    // One product changed: only its page is rebuilt.
    let (status, _) = app.get("/tags/product:3/remove").await;
    assert_eq!(status, 200);
    let (x, _) = app.raw("/products/3", &[]).await;
    assert_eq!(x, "miss");
    let (x, _) = app.raw("/products/1", &[]).await;
    assert_eq!(x, "hit");
    // A tag the handler named: every even product.
    app.get("/tags/even/remove").await;
    for (id, want) in [(1, "hit"), (2, "miss"), (3, "hit"), (4, "miss")] {
        let (x, _) = app.raw(&format!("/products/{id}"), &[]).await;
        assert_eq!(x, want, "product {id}");
    }
    // The route's tag: all of them.
    app.get("/tags/route:%2Fproducts/remove").await;
    for id in 1..=4 {
        let (x, _) = app.raw(&format!("/products/{id}"), &[]).await;
        assert_eq!(x, "miss", "product {id}");
    }
}
