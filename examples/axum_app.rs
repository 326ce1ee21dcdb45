//! The example web app: `cargo run --example axum_app --features axum,metrics`
//!
//! Listens on `APP_ADDR` (default `127.0.0.1:3000`); Redis from the `CACHE_*`
//! environment. Without Redis it runs degraded (L1 only, `/health` answers 503).
//!
//! ```text
//! curl localhost:3000/users/1          # {"user":{...},"source":"database"}, then "cache"
//! curl localhost:3000/users/1/clear    # drop one user from both levels
//! curl localhost:3000/cache/stats      # every cache's stats (JSON)
//! curl localhost:3000/cache/keys       # keys of the users namespace
//! curl localhost:3000/cache/clear      # clear the users namespace
//! curl localhost:3000/health           # 200 healthy / 503 degraded
//! curl -i localhost:3000/report        # x-cache: miss, then hit (whole response cached 10 s)
//! curl localhost:3000/metrics          # Prometheus text format
//! ```

use resilient_cache_testkit::app;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_target(false).init();
    let config = match resilient_cache::CacheFactoryConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            std::process::exit(2);
        }
    };
    let service = resilient_cache::CacheService::new(config)
        .await
        .expect("valid configuration");
    let (router, _) = app::app(service.clone()).expect("valid cache options");
    let addr = std::env::var("APP_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_string());
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let health = service.health().await;
    println!(
        "listening on http://{addr} — L2 {} ({})",
        health.l2_endpoint,
        if health.is_healthy() {
            "connected"
        } else {
            "unavailable: serving from L1 only"
        }
    );
    axum::serve(listener, router).await.expect("server error");
}
