//! The example web app (the counterpart of the original Flask example),
//! shared by `examples/axum_app.rs` and `tests/axum_app.rs`: a fake user
//! database behind a `users` cache, the cache's stats/health/keys/clear
//! routes, a page cached whole by the response-caching layer, and `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{FromRef, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use resilient_cache::axum::{cache_routes, health_handler, ResponseCacheLayer};
use resilient_cache::{Cache, CacheOptions, CacheService, LoadError};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub email: String,
}

/// A slow "database" that counts its queries.
pub struct FakeDb {
    users: HashMap<u64, User>,
    pub queries: AtomicU64,
}

impl FakeDb {
    fn new() -> Self {
        let users = [(1, "Ada Lovelace"), (2, "Grace Hopper"), (3, "Edsger Dijkstra")]
            .into_iter()
            .map(|(id, name)| {
                let email = format!(
                    "{}@example.com",
                    name.split(' ').next().unwrap_or("user").to_lowercase()
                );
                (
                    id,
                    User {
                        id,
                        name: name.to_string(),
                        email,
                    },
                )
            })
            .collect();
        Self {
            users,
            queries: AtomicU64::new(0),
        }
    }

    async fn find(&self, id: u64) -> Option<User> {
        self.queries.fetch_add(1, SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.users.get(&id).cloned()
    }
}

#[derive(Clone)]
pub struct AppState {
    pub cache: CacheService,
    pub users: Cache<User>,
    /// The cache of the tagged product pages.
    pub products: Cache<resilient_cache::axum::CachedResponse>,
    pub db: Arc<FakeDb>,
    metrics: PrometheusHandle,
}

impl FromRef<AppState> for CacheService {
    fn from_ref(state: &AppState) -> Self {
        state.cache.clone()
    }
}

/// The process-wide Prometheus recorder (installed once).
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}

/// The app on `service`, and its state.
pub fn app(service: CacheService) -> resilient_cache::Result<(Router, AppState)> {
    let users = service.create_cache::<User>(
        CacheOptions::new("users")
            .l2_ttl(Duration::from_secs(300))
            .l1_ttl(Duration::from_secs(60)),
    )?;
    let pages = ResponseCacheLayer::new(&service, "pages", Duration::from_secs(10))?;
    // Product pages: tagged by route, by product (from the path) and by
    // what the handler names in `x-cache-tags`.
    let product_pages = ResponseCacheLayer::new(&service, "product-pages", Duration::from_secs(60))?
        .tags(["route:/products"])?
        .tag_by(|req| {
            req.uri
                .path()
                .strip_prefix("/products/")
                .map(|id| format!("product:{id}"))
                .into_iter()
                .collect()
        })
        .tags_header("x-cache-tags");
    let state = AppState {
        cache: service,
        users,
        products: product_pages.cache().clone(),
        db: Arc::new(FakeDb::new()),
        metrics: prometheus(),
    };
    let router = Router::new()
        .route("/users/{id}", get(get_user))
        .route("/users/{id}/clear", get(clear_user))
        .route(
            "/products/{id}",
            get(|Path(id): Path<u64>| async move {
                (
                    [("x-cache-tags", if id % 2 == 0 { "even" } else { "odd" })],
                    format!("product {id} at {:?}", std::time::SystemTime::now()),
                )
            })
            .layer(product_pages),
        )
        .route("/tags/{tag}/remove", get(remove_tag))
        .route("/cache/clear", get(clear_cache))
        .route("/cache/keys", get(cache_keys))
        .nest("/cache", cache_routes()) // GET /cache/stats, GET /cache/health
        .route("/health", get(health_handler))
        .route("/metrics", get(metrics))
        .route(
            "/report",
            get(|| async { format!("report built at {:?}", std::time::SystemTime::now()) })
                .layer(pages.clone()),
        )
        .route(
            "/report/missing",
            get(|| async { (StatusCode::NOT_FOUND, "no such report") }).layer(pages.clone()),
        )
        .route(
            "/report/personal",
            get(|| async {
                (
                    [(header::SET_COOKIE, "session=abc")],
                    format!("personal report {:?}", std::time::SystemTime::now()),
                )
            })
            .layer(pages),
        )
        .with_state(state.clone());
    Ok((router, state))
}

async fn get_user(State(s): State<AppState>, Path(id): Path<u64>) -> Response {
    let from_db = Arc::new(AtomicBool::new(false));
    let loader = {
        let (db, from_db) = (s.db.clone(), from_db.clone());
        move || async move {
            from_db.store(true, SeqCst);
            db.find(id).await.ok_or("user not found")
        }
    };
    match s.users.get_or_load(&id.to_string(), loader).await {
        Ok(user) => {
            let source = if from_db.load(SeqCst) { "database" } else { "cache" };
            Json(json!({"user": *user, "source": source})).into_response()
        }
        Err(LoadError::Loader(e)) => (StatusCode::NOT_FOUND, Json(json!({"error": *e}))).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn clear_user(State(s): State<AppState>, Path(id): Path<u64>) -> Json<serde_json::Value> {
    let deleted = s.users.delete(&id.to_string()).await;
    Json(json!({"key": id.to_string(), "deleted": deleted}))
}

async fn remove_tag(State(s): State<AppState>, Path(tag): Path<String>) -> Response {
    match s.products.remove_by_tag(&tag).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn clear_cache(State(s): State<AppState>) -> Json<resilient_cache::ClearReport> {
    Json(s.users.clear().await)
}

async fn cache_keys(State(s): State<AppState>) -> Json<serde_json::Value> {
    let keys = s.users.list_keys(None).await;
    Json(json!({"count": keys.len(), "keys": keys}))
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    resilient_cache::metrics::record(&s.cache).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
