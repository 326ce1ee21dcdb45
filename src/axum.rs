//! axum integration (feature `axum`): the service in application state,
//! ready handlers for stats and health, and a tower [`Layer`] that caches
//! whole GET responses.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{extract::FromRef, routing::get, Router};
//! use resilient_cache::{axum::{cache_routes, ResponseCacheLayer}, Cache, CacheOptions, CacheService};
//!
//! #[derive(Clone)]
//! struct AppState {
//!     cache: CacheService,
//!     users: Cache<String>,
//! }
//! impl FromRef<AppState> for CacheService {
//!     fn from_ref(s: &AppState) -> Self { s.cache.clone() }
//! }
//!
//! # async fn app() -> resilient_cache::Result<()> {
//! let cache = CacheService::from_env().await?;
//! let users = cache.create_cache::<String>(CacheOptions::new("users").l2_ttl(Duration::from_secs(300)))?;
//! let pages = ResponseCacheLayer::new(&cache, "pages", Duration::from_secs(30))?;
//! let app: Router = Router::new()
//!     .route("/report", get(|| async { "expensive page" }).layer(pages))
//!     .nest("/cache", cache_routes())          // GET /cache/stats, GET /cache/health
//!     .with_state(AppState { cache, users });
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ::axum::body::Body;
use ::axum::extract::{FromRef, State};
use ::axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use ::axum::response::IntoResponse;
use ::axum::routing::get;
use ::axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tower::{Layer, Service};

use crate::{Cache, CacheOptions, CacheService, Health, ServiceStats};

/// `GET /stats` and `GET /health` for any state from which a
/// [`CacheService`] can be taken ([`FromRef`]). Nest it where you like.
pub fn cache_routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    CacheService: FromRef<S>,
{
    Router::new()
        .route("/stats", get(stats_handler))
        .route("/health", get(health_handler))
}

/// Every live cache's stats, as JSON.
pub async fn stats_handler(State(service): State<CacheService>) -> Json<ServiceStats> {
    Json(service.get_stats().await)
}

/// `200 {"status":"healthy",…}`, or `503 {"status":"degraded","reason":"L2 unavailable",…}`
/// when L2 does not answer or a breaker is open (see [`CacheService::health`]).
pub async fn health_handler(State(service): State<CacheService>) -> (StatusCode, Json<Health>) {
    let health = service.health().await;
    let code = if health.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(health))
}

/// A response kept by [`ResponseCacheLayer`]: status, headers and body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedResponse {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// Caches whole `GET` responses in a [`Cache`] of its own (both levels, so
/// instances share them), keyed by method, path and query. Apply one layer
/// per route (or group) for per-route TTLs.
///
/// Stored: `200` responses without `Set-Cookie` and without
/// `Cache-Control: no-store`/`private`, whose body has a known size of at
/// most `max_body_bytes` (1 MiB); streamed or larger bodies pass through.
/// A request with `Cache-Control: no-store` or `no-cache` skips the cache
/// (and `no-store` is not stored). Responses carry `x-cache: hit` or `miss`.
///
/// Stored responses can carry tags, so that
/// [`remove_by_tag`](crate::TwoLevelCache::remove_by_tag) on
/// [`cache`](Self::cache) drops them on every instance: fixed ones
/// ([`tags`](Self::tags), e.g. the route), ones computed from the request
/// ([`tag_by`](Self::tag_by), e.g. an id in the path), and ones the handler
/// names in a response header ([`tags_header`](Self::tags_header)).
///
/// ```
/// # use std::time::Duration;
/// # use resilient_cache::{axum::ResponseCacheLayer, CacheService};
/// # async fn demo(service: CacheService) -> resilient_cache::Result<()> {
/// let products = ResponseCacheLayer::new(&service, "product-pages", Duration::from_secs(60))?
///     .tags(["route:/products"])?
///     .tag_by(|req| {
///         // "/products/7" -> "product:7"
///         req.uri.path().strip_prefix("/products/").map(|id| format!("product:{id}")).into_iter().collect()
///     })
///     .tags_header("x-cache-tags");
/// // Later, when product 7 changes, on any instance:
/// products.cache().remove_by_tag("product:7").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ResponseCacheLayer {
    cache: Cache<CachedResponse>,
    ttl: Duration,
    max_body_bytes: usize,
    tags: Vec<String>,
    tag_by: Option<std::sync::Arc<TagFn>>,
    tags_header: Option<HeaderName>,
}

/// Computes a request's tags (see [`ResponseCacheLayer::tag_by`]).
type TagFn = dyn Fn(&::axum::http::request::Parts) -> Vec<String> + Send + Sync;

impl ResponseCacheLayer {
    /// A layer over a new cache `prefix` of `service` (L1 and L2), whose entries live `ttl`.
    pub fn new(service: &CacheService, prefix: &str, ttl: Duration) -> crate::Result<Self> {
        let l2_ttl = ttl.max(Duration::from_secs(1));
        let cache = service.create_cache(CacheOptions::new(prefix).l2_ttl(l2_ttl).l1_ttl(ttl))?;
        Ok(Self::with_cache(cache, ttl))
    }

    /// A layer over a cache you configured.
    pub fn with_cache(cache: Cache<CachedResponse>, ttl: Duration) -> Self {
        Self {
            cache,
            ttl,
            max_body_bytes: 1 << 20,
            tags: Vec::new(),
            tag_by: None,
            tags_header: None,
        }
    }

    /// Tags every stored response carries (e.g. its route). An invalid tag
    /// is an error here, at set-up.
    pub fn tags<S: AsRef<str>>(mut self, tags: impl IntoIterator<Item = S>) -> crate::Result<Self> {
        let tags: Vec<String> = tags.into_iter().map(|t| t.as_ref().to_string()).collect();
        self.tags = crate::tags::check_tags(&tags)?;
        Ok(self)
    }

    /// Tags computed from each request (method, URI, headers). A response
    /// whose tags turn out invalid is served but not stored (counted in the
    /// cache's `errors.invalid_tag`).
    pub fn tag_by(
        mut self,
        f: impl Fn(&::axum::http::request::Parts) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.tag_by = Some(std::sync::Arc::new(f));
        self
    }

    /// Tags named by the handler in the response header `name`, separated
    /// by commas (`x-cache-tags: product:7, prices`); the header is not sent
    /// on to the client.
    pub fn tags_header(mut self, name: &'static str) -> Self {
        self.tags_header = Some(HeaderName::from_static(name));
        self
    }

    /// Largest body stored (larger responses pass through uncached).
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// The cache holding the responses (to clear it, or read its stats).
    pub fn cache(&self) -> &Cache<CachedResponse> {
        &self.cache
    }
}

impl<S> Layer<S> for ResponseCacheLayer {
    type Service = ResponseCache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResponseCache {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`ResponseCacheLayer`].
#[derive(Clone)]
pub struct ResponseCache<S> {
    inner: S,
    layer: ResponseCacheLayer,
}

fn has_directive(headers: &HeaderMap, directives: &[&str]) -> bool {
    headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str().unwrap_or("").split(',').any(|d| {
            let d = d.trim();
            directives.iter().any(|x| d.eq_ignore_ascii_case(x))
        })
    })
}

fn x_cache(resp: &mut Response<Body>, value: &'static str) {
    resp.headers_mut().insert(
        HeaderName::from_static("x-cache"),
        HeaderValue::from_static(value),
    );
}

impl<S> Service<Request<Body>> for ResponseCache<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The ready clone serves this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            if req.method() != Method::GET {
                return inner.call(req).await;
            }
            let key = format!("{} {}", req.method(), req.uri());
            let mut tags = layer.tags.clone();
            let req = match &layer.tag_by {
                Some(f) => {
                    let (parts, body) = req.into_parts();
                    tags.extend(f(&parts));
                    Request::from_parts(parts, body)
                }
                None => req,
            };
            let skip_lookup = has_directive(req.headers(), &["no-store", "no-cache"]);
            let may_store = !has_directive(req.headers(), &["no-store"]);
            if !skip_lookup {
                if let Some(hit) = layer.cache.get(&key).await {
                    if let Some(mut resp) = rebuild(&hit) {
                        x_cache(&mut resp, "hit");
                        return Ok(resp);
                    }
                }
            }
            let mut resp = inner.call(req).await?;
            if let Some(name) = &layer.tags_header {
                for v in resp.headers().get_all(name) {
                    let v = v.to_str().unwrap_or("");
                    tags.extend(
                        v.split(',')
                            .map(str::trim)
                            .filter(|t| !t.is_empty())
                            .map(str::to_string),
                    );
                }
                resp.headers_mut().remove(name);
            }
            // Only bodies of known size are buffered; streams pass through uncached.
            let small = ::axum::body::HttpBody::size_hint(resp.body())
                .exact()
                .is_some_and(|n| n <= layer.max_body_bytes as u64);
            let storable = may_store
                && small
                && resp.status() == StatusCode::OK
                && !resp.headers().contains_key(header::SET_COOKIE)
                && !has_directive(resp.headers(), &["no-store", "private"]);
            if !storable {
                let mut resp = resp;
                x_cache(&mut resp, "miss");
                return Ok(resp);
            }
            let (parts, body) = resp.into_parts();
            let body = match ::axum::body::to_bytes(body, layer.max_body_bytes).await {
                Ok(b) => b,
                Err(e) => {
                    let mut resp =
                        (StatusCode::BAD_GATEWAY, format!("upstream body failed: {e}")).into_response();
                    x_cache(&mut resp, "miss");
                    return Ok(resp);
                }
            };
            let cached = CachedResponse {
                status: parts.status.as_u16(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                    .collect(),
                body: body.to_vec(),
            };
            if tags.is_empty() {
                layer.cache.set_with_ttl(&key, cached, Some(layer.ttl)).await;
            } else {
                let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
                let _ = layer
                    .cache
                    .try_set_with_tags(&key, cached, Some(layer.ttl), &tags)
                    .await;
            }
            let mut resp = Response::from_parts(parts, Body::from(body));
            x_cache(&mut resp, "miss");
            Ok(resp)
        })
    }
}

fn rebuild(c: &CachedResponse) -> Option<Response<Body>> {
    let mut resp = Response::builder().status(StatusCode::from_u16(c.status).ok()?);
    for (k, v) in &c.headers {
        resp = resp.header(
            HeaderName::from_bytes(k.as_bytes()).ok()?,
            HeaderValue::from_bytes(v).ok()?,
        );
    }
    resp.body(Body::from(c.body.clone())).ok()
}
