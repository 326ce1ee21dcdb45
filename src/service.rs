//! [`CacheService`]: the entry point. One per process (or per Redis), it owns
//! the shared L2 connection and creates every cache.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::cache::{CacheStats, CacheValue, StatsSource};
use crate::clock::now_ms;
use crate::config::{CacheFactoryConfig, CacheOptions};
use crate::error::{config_err, ConnectionError, ConnectionErrorKind, Error, Result};
use crate::factory::{Cache, CacheFactory};

/// A cache the service reports on: its namespace and a weak handle.
type Registered = (String, Weak<dyn StatsSource>);

/// The cache service: one L2 connection, one breaker, and the caches built on them. Cheap to clone.
///
/// ```no_run
/// use std::time::Duration;
/// use resilient_cache::{CacheFactoryConfig, CacheOptions, CacheService};
///
/// # async fn demo() -> resilient_cache::Result<()> {
/// let service = CacheService::new(CacheFactoryConfig::from_env()?).await?;
/// let users = service.create_cache::<String>(
///     CacheOptions::new("users").l2_ttl(Duration::from_secs(3600)),
/// )?;
/// users.set("42", "Ada".to_string()).await;
/// assert_eq!(users.get("42").await.as_deref().map(String::as_str), Some("Ada"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CacheService {
    factory: Arc<CacheFactory>,
    caches: Arc<Mutex<Vec<Registered>>>,
    health: Arc<HealthState>,
}

/// What health checks remember between calls.
#[derive(Default)]
struct HealthState {
    /// When (ms) a health check last probed L2 past an open breaker.
    last_probe_ms: AtomicU64,
    /// The last L2 failure a health check saw, to name the cause while
    /// the breaker keeps L2 from being asked again.
    last_error: Mutex<Option<ConnectionError>>,
}

/// A health check probes L2 past an open breaker at most this often.
const HEALTH_PROBE_EVERY_MS: u64 = 1000;

impl std::fmt::Debug for CacheService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheService")
            .field("factory", &self.factory)
            .finish()
    }
}

impl CacheService {
    /// Validates `config` and prepares the shared L2 connection. Fails only on
    /// invalid configuration, **never** because Redis is down: without Redis
    /// the caches serve from L1, and pick L2 up when it appears.
    pub async fn new(config: CacheFactoryConfig) -> Result<Self> {
        Ok(Self {
            factory: Arc::new(CacheFactory::new(config)?),
            caches: Arc::default(),
            health: Arc::default(),
        })
    }

    /// [`CacheService::new`] with [`CacheFactoryConfig::from_env`].
    pub async fn from_env() -> Result<Self> {
        Self::new(CacheFactoryConfig::from_env()?).await
    }

    /// A typed cache for one namespace. Fails only on invalid options, and
    /// when a live cache of this service already has the namespace: two
    /// caches of one service on one namespace would not invalidate each
    /// other's L1 (the backplane skips its own service's messages). Clone the
    /// first handle instead; a namespace is free again once every clone of
    /// its cache is dropped.
    pub fn create_cache<V: CacheValue>(&self, options: CacheOptions) -> Result<Cache<V>> {
        let prefix = options.key_prefix();
        // Held across the check and the insert, so two racing creations cannot both pass.
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        // Weak: the service reports a cache while any clone of it is alive.
        caches.retain(|(_, w)| w.strong_count() > 0);
        if caches.iter().any(|(name, _)| name == prefix) {
            return Err(config_err(
                "l2_key_prefix",
                prefix,
                "free in this service: a live cache already uses this namespace (clone its handle to share it)",
            ));
        }
        let cache = self.factory.create_cache::<V>(&options)?;
        caches.push((prefix.to_string(), cache.stats_source()));
        Ok(cache)
    }

    /// The factory (configuration and shared connection).
    pub fn factory(&self) -> &CacheFactory {
        &self.factory
    }

    /// Round-trip time to L2, bounded by the operation timeout; an error when
    /// L2 is unreachable. Caches never need this: it is for health checks and demos.
    pub async fn ping(&self) -> Result<Duration> {
        #[cfg(feature = "redis")]
        {
            self.factory.connection().ping().await
        }
        #[cfg(not(feature = "redis"))]
        {
            Err(crate::error::Error::connection(
                crate::error::ConnectionErrorKind::Io,
                "built without the `redis` feature",
            ))
        }
    }

    /// Whether L2 is usable: `PING` under the shared breaker (so a health
    /// check counts as traffic: it can open the breaker, and it closes it
    /// again after an outage), plus the state of every live cache's breaker.
    /// Degraded means "serving from L1 only", not down.
    ///
    /// While the shared breaker is open, a health check still finds out for
    /// itself: at most once a second per service it sends its own `PING`
    /// (bounded by the operation timeout) as the breaker's probe, so a
    /// recovered L2 is reported, and used again, without waiting for the
    /// breaker's timeout. When L2 fails, the answer names the cause
    /// (refused, timeout, authentication, …).
    ///
    /// With a [registered](crate::backend::registry) L2 backend there is no
    /// Redis to `PING`: health is then the breakers' states alone (the
    /// caches' own calls keep them current).
    pub async fn health(&self) -> Health {
        let breaker = self.factory.circuit_breaker();
        if !self.factory.config().l2_backend.is_redis() {
            return self.health_from_breakers().await;
        }
        let permit = breaker.try_acquire().or_else(|| {
            let now = now_ms();
            let last = self.health.last_probe_ms.load(Relaxed);
            let due = now.saturating_sub(last) >= HEALTH_PROBE_EVERY_MS
                && self
                    .health
                    .last_probe_ms
                    .compare_exchange(last, now, Relaxed, Relaxed)
                    .is_ok();
            if due {
                breaker.probe_now()
            } else {
                None
            }
        });
        let ping = match permit {
            Some(permit) => {
                let r = self.ping().await;
                let mut last_error = self.health.last_error.lock().unwrap_or_else(|p| p.into_inner());
                match r {
                    Ok(rtt) => {
                        permit.success();
                        *last_error = None;
                        Some(rtt)
                    }
                    Err(Error::Connection(c)) => {
                        permit.failure();
                        *last_error = Some(c);
                        None
                    }
                    Err(_) => {
                        permit.success();
                        None
                    }
                }
            }
            None => None,
        };
        let l2_error = match ping {
            Some(_) => None,
            None => self
                .health
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        };
        // Breaker states only: a health check must not scan every namespace.
        let stats = self.stats_asking_l2(false).await;
        let open_breakers: Vec<String> = stats
            .caches
            .iter()
            .filter(|(_, c)| c.l2.is_some() && c.circuit_breaker.state == crate::CircuitState::Open)
            .map(|(name, _)| name.clone())
            .collect();
        let healthy = ping.is_some() && open_breakers.is_empty();
        let reason = match (&l2_error, ping) {
            _ if healthy => None,
            (Some(e), _) => Some(format!("L2 unavailable: {}", cause(e.kind))),
            (None, None) => Some("L2 unavailable".to_string()),
            (None, Some(_)) => Some(format!(
                "L2 answers, but the circuit breaker of {} is open until its next probe",
                open_breakers.join(", ")
            )),
        };
        Health {
            status: if healthy { "healthy" } else { "degraded" },
            reason,
            l2_error_kind: l2_error.as_ref().map(|e| e.kind),
            l2_error: l2_error.map(|e| e.message),
            l2_endpoint: stats.l2_endpoint,
            l2_ping_ms: ping.map(|d| d.as_secs_f64() * 1000.0),
            circuit_breaker: breaker.state(),
            open_breakers,
            caches: stats.caches.len(),
        }
    }

    /// Health for a service whose L2 is not Redis: degraded while a breaker is open.
    async fn health_from_breakers(&self) -> Health {
        let breaker = self.factory.circuit_breaker();
        let stats = self.stats_asking_l2(false).await;
        let mut open_breakers: Vec<String> = stats
            .caches
            .iter()
            .filter(|(_, c)| c.l2.is_some() && c.circuit_breaker.state == crate::CircuitState::Open)
            .map(|(name, _)| name.clone())
            .collect();
        if breaker.state() == crate::CircuitState::Open && open_breakers.is_empty() {
            open_breakers.push(breaker.name().to_string());
        }
        let healthy = open_breakers.is_empty();
        Health {
            status: if healthy { "healthy" } else { "degraded" },
            reason: (!healthy).then(|| {
                format!(
                    "L2 unavailable: the circuit breaker of {} is open until its next probe",
                    open_breakers.join(", ")
                )
            }),
            l2_error_kind: None,
            l2_error: None,
            l2_endpoint: stats.l2_endpoint,
            l2_ping_ms: None,
            circuit_breaker: breaker.state(),
            open_breakers,
            caches: stats.caches.len(),
        }
    }

    /// Stats of every live cache, by namespace.
    pub async fn get_stats(&self) -> ServiceStats {
        self.stats_asking_l2(true).await
    }

    /// Stats; with `ask_l2` false, without any L2 I/O (no `SCAN`, no `INFO`).
    pub(crate) async fn stats_asking_l2(&self, ask_l2: bool) -> ServiceStats {
        let sources: Vec<(String, Arc<dyn StatsSource>)> = {
            let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
            caches
                .iter()
                .filter_map(|(n, w)| w.upgrade().map(|s| (n.clone(), s)))
                .collect()
        };
        let mut out = BTreeMap::new();
        for (name, source) in sources {
            out.insert(name, source.stats(ask_l2).await);
        }
        ServiceStats {
            l2_endpoint: self.factory.config().redis.endpoint(),
            serializer: self.factory.config().serializer.clone(),
            caches: out,
        }
    }
}

/// Service-wide stats: one entry per cache, by namespace.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceStats {
    /// `host:port/db` of L2, without credentials.
    pub l2_endpoint: String,
    /// Serializer default.
    pub serializer: String,
    /// Each live cache's stats.
    pub caches: BTreeMap<String, CacheStats>,
}

/// The answer of [`CacheService::health`] (serializable; the axum
/// integration returns it with 200 or 503).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    /// `"healthy"` or `"degraded"` (L1 serving alone).
    pub status: &'static str,
    /// Why degraded, in a sentence (e.g. `L2 unavailable: authentication failed …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The kind of the last L2 failure, while L2 is unavailable
    /// (`refused`, `timeout`, `auth`, `io`, `server`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l2_error_kind: Option<ConnectionErrorKind>,
    /// The last L2 failure's message (never with credentials).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub l2_error: Option<String>,
    /// `host:port/db`, without credentials.
    pub l2_endpoint: String,
    /// Round trip of the `PING`, when it answered.
    pub l2_ping_ms: Option<f64>,
    /// The service's shared breaker.
    pub circuit_breaker: crate::CircuitState,
    /// Namespaces whose breaker is open.
    pub open_breakers: Vec<String>,
    /// Live caches.
    pub caches: usize,
}

/// A cause a person can act on.
fn cause(kind: ConnectionErrorKind) -> &'static str {
    match kind {
        ConnectionErrorKind::Refused => "connection refused (is the server running, on that host and port?)",
        ConnectionErrorKind::Timeout => {
            "no answer within the operation timeout (frozen or overloaded server, or a network black hole)"
        }
        ConnectionErrorKind::Auth => {
            "authentication failed (check CACHE_REDIS_USERNAME / CACHE_REDIS_PASSWORD)"
        }
        ConnectionErrorKind::Server => {
            "the server answers but cannot serve (loading, read-only, out of memory, wrong database…)"
        }
        _ => "connection error",
    }
}

impl Health {
    /// `status == "healthy"`.
    pub fn is_healthy(&self) -> bool {
        self.status == "healthy"
    }
}
