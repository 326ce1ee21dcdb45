//! [`CacheFactory`]: turns configuration into caches. This is the one place
//! where backend names become backends (see `BACKEND_GUIDE.md`).

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::registry::{self, RegisteredL1, RegisteredL2};
use crate::backend::CacheBackend;
use crate::backend::{L1Stats, L2BackendKind, L2Stats};
use crate::breaker::CircuitBreaker;
use crate::cache::{CacheValue, TwoLevelCache, TwoLevelSettings};
use crate::config::{CacheFactoryConfig, CacheOptions, L1BackendKind, L1Config, L2Config};
use crate::error::Result;
use crate::serializer::Serializer;

#[cfg(feature = "l1")]
use crate::backend::memory::{LruBackend, TtlBackend};
#[cfg(feature = "redis")]
use crate::backend::redis::{RedisBackend, RedisConnection};

/// The cache handle applications use: L1 and L2 chosen by configuration.
pub type Cache<V> = TwoLevelCache<V, AnyL1<V>, AnyL2>;

/// The L1 backend chosen at run time by `CACHE_L1_BACKEND`: a built-in one
/// or one registered by name.
#[non_exhaustive]
pub enum AnyL1<V> {
    /// `ttl`.
    #[cfg(feature = "l1")]
    Ttl(TtlBackend<Arc<V>>),
    /// `lru`.
    #[cfg(feature = "l1")]
    Lru(LruBackend<Arc<V>>),
    /// A backend registered with [`register_l1_backend`](crate::backend::registry::register_l1_backend).
    Registered(RegisteredL1<V>),
    #[doc(hidden)]
    _Never(Infallible, PhantomData<V>),
}

/// The L2 backend chosen at run time by `CACHE_L2_BACKEND`: a built-in one
/// (`redis` and `valkey` share one implementation: the protocol is the same)
/// or one registered by name.
#[non_exhaustive]
// The Redis backend is larger than a pointer; an L2 call is a network call.
#[allow(clippy::large_enum_variant)]
pub enum AnyL2 {
    /// `redis` or `valkey`.
    #[cfg(feature = "redis")]
    Redis(RedisBackend),
    /// A backend registered with [`register_l2_backend`](crate::backend::registry::register_l2_backend).
    Registered(RegisteredL2),
    #[doc(hidden)]
    _Never(Infallible),
}

/// Forwards every `CacheBackend` method to the variant's backend.
macro_rules! forward {
    ($self:ident, $b:ident => $call:expr, [$($variant:ident : $cfg:meta),*]) => {
        match $self {
            $( #[cfg($cfg)] Self::$variant($b) => $call, )*
            Self::_Never(never, ..) => match *never {},
        }
    };
}

macro_rules! impl_forwarding_backend {
    ($ty:ty, $value:ty, $stats:ty, [$($variant:ident : $cfg:meta),*] $(, $g:ident)?) => {
        // Arguments go unused when every variant is compiled out.
        #[allow(unused_variables)]
        impl$(<$g: CacheValue>)? CacheBackend for $ty {
            type Value = $value;
            type Stats = $stats;
            async fn get(&self, key: &str) -> Result<Option<$value>> {
                forward!(self, b => b.get(key).await, [$($variant : $cfg),*])
            }
            async fn set(&self, key: &str, value: $value, ttl: Option<Duration>) -> Result<()> {
                forward!(self, b => b.set(key, value, ttl).await, [$($variant : $cfg),*])
            }
            async fn set_if_not_exist(&self, key: &str, value: $value, ttl: Option<Duration>) -> Result<bool> {
                forward!(self, b => b.set_if_not_exist(key, value, ttl).await, [$($variant : $cfg),*])
            }
            async fn delete(&self, key: &str) -> Result<bool> {
                forward!(self, b => b.delete(key).await, [$($variant : $cfg),*])
            }
            async fn clear(&self) -> Result<u64> {
                forward!(self, b => b.clear().await, [$($variant : $cfg),*])
            }
            async fn exists(&self, key: &str) -> Result<bool> {
                forward!(self, b => b.exists(key).await, [$($variant : $cfg),*])
            }
            async fn get_ttl(&self, key: &str) -> Result<Option<Duration>> {
                forward!(self, b => b.get_ttl(key).await, [$($variant : $cfg),*])
            }
            async fn list_keys(&self, prefix: Option<&str>) -> Result<Vec<String>> {
                forward!(self, b => b.list_keys(prefix).await, [$($variant : $cfg),*])
            }
            async fn get_size(&self) -> Result<u64> {
                forward!(self, b => b.get_size().await, [$($variant : $cfg),*])
            }
            async fn get_stats(&self) -> Result<$stats> {
                forward!(self, b => b.get_stats().await, [$($variant : $cfg),*])
            }
            fn describe(&self) -> $stats {
                forward!(self, b => b.describe(), [$($variant : $cfg),*])
            }
            async fn get_with_ttl(&self, key: &str) -> Result<Option<($value, Option<Duration>)>> {
                forward!(self, b => b.get_with_ttl(key).await, [$($variant : $cfg),*])
            }
            #[inline(always)]
            fn get_with_ttl_now(&self, key: &str) -> Option<Option<($value, Option<Duration>)>> {
                forward!(self, b => b.get_with_ttl_now(key), [$($variant : $cfg),*])
            }
            async fn lease(&self, key: &str, token: u64, ttl: Duration, exclusive: bool) -> Result<Option<bool>> {
                forward!(self, b => b.lease(key, token, ttl, exclusive).await, [$($variant : $cfg),*])
            }
            async fn store_if_leased(
                &self,
                key: &str,
                token: u64,
                value: $value,
                ttl: Option<Duration>,
                only_if_absent: bool,
            ) -> Result<Option<bool>> {
                forward!(self, b => b.store_if_leased(key, token, value, ttl, only_if_absent).await, [$($variant : $cfg),*])
            }
            async fn clear_with_progress(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<u64> {
                forward!(self, b => b.clear_with_progress(progress).await, [$($variant : $cfg),*])
            }
            async fn release_lease(&self, key: &str, token: u64) -> Result<()> {
                forward!(self, b => b.release_lease(key, token).await, [$($variant : $cfg),*])
            }
            fn operation_timeout(&self) -> Option<Duration> {
                forward!(self, b => b.operation_timeout(), [$($variant : $cfg),*])
            }
            fn on_evict(&self, hook: crate::backend::EvictionHook) -> bool {
                forward!(self, b => b.on_evict(hook), [$($variant : $cfg),*])
            }
            async fn load_markers(&self) -> Result<Option<crate::backend::MarkerFields>> {
                forward!(self, b => b.load_markers().await, [$($variant : $cfg),*])
            }
            async fn put_marker(&self, field: &str, at_us: u64, keep: Duration) -> Result<bool> {
                forward!(self, b => b.put_marker(field, at_us, keep).await, [$($variant : $cfg),*])
            }
            async fn expire_in(&self, key: &str, ttl: Duration) -> Result<bool> {
                forward!(self, b => b.expire_in(key, ttl).await, [$($variant : $cfg),*])
            }
            async fn get_many(&self, keys: &[&str], with_ttl: bool) -> Result<Vec<Option<($value, Option<Duration>)>>> {
                forward!(self, b => b.get_many(keys, with_ttl).await, [$($variant : $cfg),*])
            }
            async fn set_many(&self, entries: Vec<(&str, $value, Option<Duration>)>) -> Result<()> {
                forward!(self, b => b.set_many(entries).await, [$($variant : $cfg),*])
            }
            async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
                forward!(self, b => b.delete_many(keys).await, [$($variant : $cfg),*])
            }
        }
    };
}

impl_forwarding_backend!(AnyL1<V>, Arc<V>, L1Stats, [Ttl: feature = "l1", Lru: feature = "l1", Registered: all()], V);
impl_forwarding_backend!(AnyL2, Vec<u8>, L2Stats, [Redis: feature = "redis", Registered: all()]);

/// Builds caches from a validated [`CacheFactoryConfig`]. Holds the service's
/// one shared L2 connection.
pub struct CacheFactory {
    config: CacheFactoryConfig,
    /// The endpoint's breaker, shared by every cache without breaker overrides:
    /// one view of L2's health, one probe for the whole service.
    breaker: Arc<CircuitBreaker>,
    #[cfg(feature = "redis")]
    connection: RedisConnection,
    /// Started with the first cache that uses it.
    #[cfg(feature = "redis")]
    backplane: std::sync::OnceLock<Arc<crate::backend::redis::backplane::Backplane>>,
    /// Started with the first tracked cache.
    #[cfg(feature = "redis")]
    tracker: std::sync::OnceLock<Arc<crate::backend::redis::tracking::Tracker>>,
}

impl std::fmt::Debug for CacheFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheFactory")
            .field("config", &self.config)
            .finish()
    }
}

impl CacheFactory {
    /// Validates `config` and prepares the L2 connection without connecting
    /// (so a dead Redis is not an error). Must run inside a Tokio runtime.
    pub fn new(config: CacheFactoryConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            #[cfg(feature = "redis")]
            connection: RedisConnection::new(&config.redis)?,
            breaker: Arc::new(CircuitBreaker::new(config.circuit_breaker).with_name(config.redis.endpoint())),
            #[cfg(feature = "redis")]
            backplane: std::sync::OnceLock::new(),
            #[cfg(feature = "redis")]
            tracker: std::sync::OnceLock::new(),
            config,
        })
    }

    /// The breaker shared by every cache that does not override breaker settings.
    pub fn circuit_breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    /// The configuration in force.
    pub fn config(&self) -> &CacheFactoryConfig {
        &self.config
    }

    /// The shared L2 connection.
    #[cfg(feature = "redis")]
    pub fn connection(&self) -> &RedisConnection {
        &self.connection
    }

    /// Builds a cache. Fails only on invalid options.
    pub fn create_cache<V: CacheValue>(&self, options: &CacheOptions) -> Result<Cache<V>> {
        let resolved = options.resolve(&self.config)?;
        let l1 = resolved
            .l1
            .as_ref()
            .map(|c| self.create_l1_backend::<V>(c))
            .transpose()?;
        let l2 = resolved
            .l2
            .as_ref()
            .map(|c| self.create_l2_backend(c, &resolved.serializer))
            .transpose()?;
        let breaker = if resolved.breaker_shared {
            self.breaker.clone()
        } else {
            Arc::new(CircuitBreaker::new(resolved.breaker).with_name(resolved.prefix.clone()))
        };
        let settings = TwoLevelSettings {
            key_prefix: resolved.prefix,
            serializer: resolved.serializer,
            breaker,
            l2_ttl: resolved.l2.as_ref().map_or(Duration::from_secs(1), |c| c.ttl),
            replay_capacity: resolved.replay_capacity,
            max_key_bytes: resolved.max_key_bytes,
            max_value_bytes: resolved.max_value_bytes,
            bus: None,
            tracking: None,
            l1_ttl: resolved.l1_ttl,
            fail_safe_max_duration: resolved.fail_safe_max_duration,
            load: resolved.load,
            ttl_jitter: resolved.ttl_jitter,
        };
        #[cfg(feature = "redis")]
        let backplane = resolved.backplane.then(|| self.backplane());
        #[cfg(feature = "redis")]
        let tracker = resolved.tracking.then(|| self.tracker());
        #[cfg(feature = "redis")]
        let settings = TwoLevelSettings {
            bus: backplane
                .clone()
                .map(|b| b as Arc<dyn crate::backplane::InvalidationBus>),
            tracking: tracker
                .clone()
                .map(|t| t as Arc<dyn crate::backplane::TrackingSource>),
            ..settings
        };
        let cache = TwoLevelCache::new(l1, l2, settings)?;
        #[cfg(feature = "redis")]
        if let Some(t) = &tracker {
            cache.note_until_covered();
            t.register(cache.key_prefix(), cache.invalidation_target());
        }
        #[cfg(feature = "redis")]
        if let Some(bp) = backplane {
            if let Some(t) = &tracker {
                bp.follow_tracking(t);
            }
            bp.register(
                cache.key_prefix(),
                cache.invalidation_target(),
                cache.has_l1(),
                tracker.is_some(),
            );
        }
        Ok(cache)
    }

    /// The service's backplane, started on first use (needs a Tokio runtime).
    #[cfg(feature = "redis")]
    fn backplane(&self) -> Arc<crate::backend::redis::backplane::Backplane> {
        self.backplane
            .get_or_init(|| {
                let bp = crate::backend::redis::backplane::Backplane::new(self.connection.clone());
                bp.spawn_workers(
                    self.connection.clone(),
                    self.breaker.clone(),
                    self.connection.op_timeout(),
                );
                bp
            })
            .clone()
    }

    /// The service's tracking worker, started on first use (needs a Tokio runtime).
    #[cfg(feature = "redis")]
    fn tracker(&self) -> Arc<crate::backend::redis::tracking::Tracker> {
        self.tracker
            .get_or_init(|| {
                crate::backend::redis::tracking::Tracker::new(self.connection.clone(), self.breaker.clone())
            })
            .clone()
    }

    /// The L1 backend named by `config.backend`.
    fn create_l1_backend<V: CacheValue>(&self, config: &L1Config) -> Result<AnyL1<V>> {
        match config.backend {
            L1BackendKind::Registered(name) => registry::build_l1(name, config).map(AnyL1::Registered),
            #[cfg(feature = "l1")]
            L1BackendKind::Ttl => Ok(AnyL1::Ttl(TtlBackend::new(config))),
            #[cfg(feature = "l1")]
            L1BackendKind::Lru => Ok(AnyL1::Lru(LruBackend::new(config))),
            #[allow(unreachable_patterns)]
            other => Err(crate::error::config_err(
                "l1_backend",
                other.name(),
                "compiled in: enable the Cargo feature `l1`",
            )),
        }
    }

    /// The L2 backend named by `config.backend`.
    fn create_l2_backend(&self, config: &L2Config, serializer: &Serializer) -> Result<AnyL2> {
        if let L2BackendKind::Registered(name) = config.backend {
            return registry::build_l2(name, config).map(AnyL2::Registered);
        }
        #[cfg(feature = "redis")]
        {
            // `redis` and `valkey` speak the same protocol; the name is kept for stats.
            Ok(AnyL2::Redis(RedisBackend::new(
                self.connection.clone(),
                config,
                serializer.name(),
            )))
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = serializer;
            Err(crate::error::config_err(
                crate::config::keys::L2_BACKEND,
                config.backend.name(),
                "compiled in: enable the Cargo feature `redis` (or disable L2 for this cache)",
            ))
        }
    }
}
