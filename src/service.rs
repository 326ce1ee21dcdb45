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

    /// Stats of every live cache, by namespace.
    pub async fn get_stats(&self) -> ServiceStats {
        let sources: Vec<(String, Arc<dyn StatsSource>)> = {
            let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
            caches
                .iter()
                .filter_map(|(n, w)| w.upgrade().map(|s| (n.clone(), s)))
                .collect()
        };
        let mut out = BTreeMap::new();
        for (name, source) in sources {
            out.insert(name, source.stats().await);
        }
        ServiceStats {
            l2_endpoint: self.factory.config().redis.endpoint(),
            serializer: self.factory.config().serializer.clone(),
            caches: out,
        }
    }
}
