//! The example app on a free port, driven by a real HTTP client.

use std::time::Duration;

use resilient_cache::CacheService;
use serde_json::Value;

use super::app::{self, AppState};
use super::RedisServer;

/// The example app serving on a free port, against `redis`.
pub struct Running {
    base: String,
    http: reqwest::Client,
    pub state: AppState,
}

impl Running {
    pub async fn start(redis: &RedisServer) -> Self {
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

    pub async fn send(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.http.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.send(path, &[]).await;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn raw(&self, path: &str, headers: &[(&str, &str)]) -> (String, String) {
        let r = self.send(path, headers).await;
        assert_eq!(r.status(), 200);
        let x_cache = r.headers()["x-cache"].to_str().unwrap().to_string();
        (x_cache, r.text().await.unwrap())
    }
}
