//! [`CacheService`]: the entry point. One per process (or per Redis), it owns
//! the shared L2 connection and creates every cache.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::config::{CacheFactoryConfig, CacheOptions};
use crate::error::Result;
use crate::factory::{Cache, CacheFactory};
use crate::stats::ServiceStats;
use crate::two_level::{CacheValue, StatsSource};

/// A cache the service reports on: its namespace and a weak handle.
type Registered = (String, Weak<dyn StatsSource>);

/// The cache service (the original's `CacheService`). Cheap to clone.
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
}

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
        })
    }

    /// [`CacheService::new`] with [`CacheFactoryConfig::from_env`].
    pub async fn from_env() -> Result<Self> {
        Self::new(CacheFactoryConfig::from_env()?).await
    }

    /// A typed cache for one namespace. Fails only on invalid options.
    pub fn create_cache<V: CacheValue>(&self, options: CacheOptions) -> Result<Cache<V>> {
        let cache = self.factory.create_cache::<V>(&options)?;
        // Weak: the service reports a cache while any clone of it is alive.
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches.retain(|(_, w)| w.strong_count() > 0);
        caches.push((options.key_prefix().to_string(), cache.stats_source()));
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
    /// check counts as traffic: it can open the breaker, and it is the probe
    /// that closes it again after an outage), plus the state of every live
    /// cache's breaker. Degraded means "serving from L1 only", not down.
    pub async fn health(&self) -> Health {
        let breaker = self.factory.circuit_breaker();
        let ping = match breaker.try_acquire() {
            Some(permit) => {
                let r = self.ping().await;
                match (&r, permit) {
                    (Ok(_), p) => p.success(),
                    (Err(e), p) if e.is_connection() => p.failure(),
                    (Err(_), p) => p.success(),
                }
                r.ok()
            }
            None => None,
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
        Health {
            status: if healthy { "healthy" } else { "degraded" },
            reason: (!healthy).then_some("L2 unavailable"),
            l2_endpoint: stats.l2_endpoint,
            l2_ping_ms: ping.map(|d| d.as_secs_f64() * 1000.0),
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

/// The answer of [`CacheService::health`] (serializable; the axum
/// integration returns it with 200 or 503).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    /// `"healthy"` or `"degraded"` (L1 serving alone).
    pub status: &'static str,
    /// Why degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
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

impl Health {
    /// `status == "healthy"`.
    pub fn is_healthy(&self) -> bool {
        self.status == "healthy"
    }
}
