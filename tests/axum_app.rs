//! The example app on a free port, driven by a real HTTP client, against a
//! real `redis-server` that the test kills and restarts.
#![cfg(all(feature = "axum", feature = "metrics"))]

mod common;

use std::time::Duration;

use common::{app, eventually, RedisServer};
use resilient_cache::CacheService;
use serde_json::Value;

struct Running {
    base: String,
    http: reqwest::Client,
    state: app::AppState,
}

impl Running {
    async fn start(redis: &RedisServer) -> Self {
        let mut config = redis.config();
        config.redis.socket_timeout = Duration::from_millis(300);
        config.circuit_breaker.threshold = 2;
        config.circuit_breaker.timeout = Duration::from_secs(1);
        let service = CacheService::new(config).await.unwrap();
        let (router, state) = app::app(service).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self {
            base,
            http: reqwest::Client::new(),
            state,
        }
    }

    async fn send(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.send(path, &[]).await;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn raw(&self, path: &str, headers: &[(&str, &str)]) -> (String, String) {
        let r = self.send(path, headers).await;
        assert_eq!(r.status(), 200);
        let x_cache = r.headers()["x-cache"].to_str().unwrap().to_string();
        (x_cache, r.text().await.unwrap())
    }
}

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

    // /metrics: the hit counters after that traffic.
    let (code, metrics) = app.get("/metrics").await;
    assert_eq!(code, 200);
    let text = metrics.as_str().unwrap();
    let hits = text
        .lines()
        .find(|l| l.starts_with("resilient_cache_l1_hits_total{cache=\"users\"}"))
        .unwrap_or_else(|| panic!("no users hit counter in:\n{text}"));
    let n: f64 = hits.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{hits}");
    assert!(
        text.contains("resilient_cache_l2_command_seconds"),
        "L2 latency histogram"
    );
    assert!(text.contains("resilient_cache_loads_total{cache=\"users\"}"));
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
    assert_eq!(body["reason"], "L2 unavailable");
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
