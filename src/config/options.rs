//! Per-cache options ([`CacheOptions`]) and their resolution against the
//! service's configuration into the settings of one cache.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{feature_err, CacheFactoryConfig};
use crate::backend::config::{L1BackendKind, L1Config, L2Config};
use crate::breaker::CircuitBreakerConfig;
use crate::error::{config_err, ConfigError, Error, Result};
use crate::serializer::{self, CacheSerializer, Serializer};

/// Per-cache options: the namespace, TTLs, levels, serializer and breaker
/// overrides.
///
/// ```
/// use std::time::Duration;
/// use resilient_cache::CacheOptions;
///
/// let options = CacheOptions::new("users")
///     .l2_ttl(Duration::from_secs(3600))
///     .l1_maxsize(10_000)
///     .l1_ttl(Duration::from_secs(30))
///     .serializer("json");
/// assert_eq!(options.key_prefix(), "users");
/// ```
#[derive(Clone)]
pub struct CacheOptions {
    pub(crate) key_prefix: String,
    pub(crate) l2_ttl: Option<Duration>,
    pub(crate) l2_enabled: bool,
    pub(crate) l1_enabled: bool,
    pub(crate) l1_maxsize: usize,
    pub(crate) l1_ttl: Duration,
    pub(crate) l1_backend: Option<L1BackendKind>,
    pub(crate) serializer: Option<SerializerChoice>,
    pub(crate) breaker_enabled: Option<bool>,
    pub(crate) breaker_threshold: Option<u32>,
    pub(crate) breaker_timeout: Option<Duration>,
    pub(crate) replay_capacity: usize,
    pub(crate) max_value_bytes: Option<usize>,
    pub(crate) backplane: Option<bool>,
    pub(crate) tracking: Option<bool>,
    pub(crate) fail_safe_max_duration: Option<Duration>,
    pub(crate) load: crate::cache::load::LoadOptions,
    pub(crate) lease_fence: bool,
    pub(crate) ttl_jitter: Duration,
}

#[derive(Clone)]
pub(crate) enum SerializerChoice {
    Named(String),
    Instance(Serializer),
}

impl fmt::Debug for CacheOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheOptions")
            .field("key_prefix", &self.key_prefix)
            .field("l2_ttl", &self.l2_ttl)
            .field("l2_enabled", &self.l2_enabled)
            .field("l1_enabled", &self.l1_enabled)
            .field("l1_maxsize", &self.l1_maxsize)
            .field("l1_ttl", &self.l1_ttl)
            .field("l1_backend", &self.l1_backend)
            .field(
                "serializer",
                &self.serializer.as_ref().map(|s| match s {
                    SerializerChoice::Named(n) => n.clone(),
                    SerializerChoice::Instance(s) => s.name().to_string(),
                }),
            )
            .field("breaker_enabled", &self.breaker_enabled)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_timeout", &self.breaker_timeout)
            .field("replay_capacity", &self.replay_capacity)
            .field("fail_safe_max_duration", &self.fail_safe_max_duration)
            .field("ttl_jitter", &self.ttl_jitter)
            .field("load", &self.load)
            .finish()
    }
}

impl CacheOptions {
    /// Options for the cache whose L2 keys are `"{key_prefix}:{key}"`.
    /// `l2_ttl` must be set before the cache is created unless L2 is disabled.
    pub fn new(key_prefix: impl Into<String>) -> Self {
        Self {
            key_prefix: key_prefix.into(),
            l2_ttl: None,
            l2_enabled: true,
            l1_enabled: true,
            l1_maxsize: 1000,
            l1_ttl: Duration::from_secs(60),
            l1_backend: None,
            serializer: None,
            breaker_enabled: None,
            breaker_threshold: None,
            breaker_timeout: None,
            replay_capacity: crate::cache::DEFAULT_REPLAY_CAPACITY,
            max_value_bytes: None,
            backplane: None,
            tracking: None,
            fail_safe_max_duration: None,
            ttl_jitter: Duration::ZERO,
            load: crate::cache::load::LoadOptions::default(),
            lease_fence: true,
        }
    }

    /// The namespace.
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// Time to live of entries in L2 (required, >= 1 s).
    pub fn l2_ttl(mut self, ttl: Duration) -> Self {
        self.l2_ttl = Some(ttl);
        self
    }

    /// Turns L2 on or off for this cache (default on).
    pub fn l2_enabled(mut self, enabled: bool) -> Self {
        self.l2_enabled = enabled;
        self
    }

    /// Turns L1 on or off for this cache (default on).
    pub fn l1_enabled(mut self, enabled: bool) -> Self {
        self.l1_enabled = enabled;
        self
    }

    /// Maximum number of L1 entries (default 1000).
    pub fn l1_maxsize(mut self, maxsize: usize) -> Self {
        self.l1_maxsize = maxsize;
        self
    }

    /// Time to live of entries in L1 (default 60 s; ignored by the `lru` backend).
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = ttl;
        self
    }

    /// L1 backend of this cache, overriding `CACHE_L1_BACKEND`.
    pub fn l1_backend(mut self, kind: L1BackendKind) -> Self {
        self.l1_backend = Some(kind);
        self
    }

    /// A registered serializer by name, overriding `CACHE_SERIALIZER`.
    pub fn serializer(mut self, name: impl Into<String>) -> Self {
        self.serializer = Some(SerializerChoice::Named(name.into()));
        self
    }

    /// A serializer instance (registered or not).
    pub fn serializer_instance(mut self, serializer: Arc<dyn CacheSerializer>) -> Self {
        self.serializer = Some(SerializerChoice::Instance(Serializer::custom(serializer)));
        self
    }

    /// A serializer handle: a built-in format, or one made by
    /// [`Serializer::passthrough`] for values that arrive encoded.
    pub fn serializer_handle(mut self, serializer: Serializer) -> Self {
        self.serializer = Some(SerializerChoice::Instance(serializer));
        self
    }

    /// Turns this cache's circuit breaker on or off.
    pub fn circuit_breaker_enabled(mut self, enabled: bool) -> Self {
        self.breaker_enabled = Some(enabled);
        self
    }

    /// Consecutive L2 failures that open this cache's breaker (>= 1).
    pub fn circuit_breaker_threshold(mut self, threshold: u32) -> Self {
        self.breaker_threshold = Some(threshold);
        self
    }

    /// How long this cache's breaker stays open before a probe (>= 1 s).
    pub fn circuit_breaker_timeout(mut self, timeout: Duration) -> Self {
        self.breaker_timeout = Some(timeout);
        self
    }

    /// Turns this cache's backplane (cross-instance L1 invalidation, and
    /// invalidation markers as they are made) on or off, overriding
    /// `CACHE_BACKPLANE_ENABLED`. It applies to caches over a Redis L2; one
    /// without L1 only receives markers. Without it, a cache reloads the
    /// markers from L2 when they are more than a second old.
    pub fn backplane(mut self, enabled: bool) -> Self {
        self.backplane = Some(enabled);
        self
    }

    /// Which sources keep this cache's L1 coherent with L2, overriding
    /// `CACHE_INVALIDATION` (and `backplane`): the backplane, tracking
    /// (Redis announces every change to the namespace's keys, by any
    /// writer), both, or none. Both apply to caches over a Redis L2;
    /// tracking to caches with an L1.
    pub fn invalidation(mut self, sources: super::InvalidationSources) -> Self {
        self.backplane = Some(sources.backplane());
        self.tracking = Some(sources.tracking());
        self
    }

    /// The largest encoded value this cache's `set` accepts, overriding
    /// `CACHE_MAX_VALUE_BYTES`.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = Some(bytes);
        self
    }

    /// How many distinct keys of writes and deletes this cache keeps for
    /// replay while L2 is unavailable (default 10,000). See the README,
    /// "Failure modes", for what happens beyond it.
    pub fn replay_queue_capacity(mut self, capacity: usize) -> Self {
        self.replay_capacity = capacity;
        self
    }

    /// Turns on fail-safe: entries stay in both levels for `duration` past
    /// their TTL. `get` does not return them then, but
    /// [`get_or_load`](crate::TwoLevelCache::get_or_load) does when the
    /// loader fails or times out (see the README, "Loading"). All instances
    /// sharing a namespace should use the same value: it is kept in the
    /// entries' expiry, not in their bytes.
    pub fn fail_safe_max_duration(mut self, duration: Duration) -> Self {
        self.fail_safe_max_duration = Some(duration);
        self
    }

    /// Whether this namespace uses load leases in L2 (default `true`): every
    /// `set`/`delete` then also ends the key's lease (one `HDEL` pipelined in
    /// the same round trip; `set`s that overlap on one server share one `HDEL`
    /// and one request. In the load generator, with and without the fence,
    /// `set` and `set_plain` were within the machine's noise of each other:
    /// 0.67–0.99× against 0.79–0.93× of a raw `SET` at 64 tasks), which is what
    /// keeps `get_or_load` from storing a value loaded before a write on
    /// another instance, and what the distributed lock is made of. Turn it
    /// off only for a write-heavy namespace no instance loads with
    /// `get_or_load`; all instances of a namespace must agree.
    pub fn lease_fence(mut self, enabled: bool) -> Self {
        self.lease_fence = enabled;
        self
    }

    /// Spreads the expiries of entries written together (a `set_many`, a
    /// warm-up loop, a batch load): each write adds a random extra of up to
    /// `jitter` to its L2 TTL (and to L1's when that is the shorter), so
    /// that they do not all expire, and reload, in the same second. Default
    /// zero (no jitter); at most the L2 TTL.
    pub fn ttl_jitter(mut self, jitter: Duration) -> Self {
        self.ttl_jitter = jitter;
        self
    }

    /// Default [`LoadOptions`](crate::LoadOptions) of this cache's `get_or_load`.
    pub fn load(mut self, options: crate::cache::load::LoadOptions) -> Self {
        self.load = options;
        self
    }

    /// Resolves the options against the service defaults into the L1 and L2
    /// configurations of one cache, checking every value.
    pub(crate) fn resolve(&self, defaults: &CacheFactoryConfig) -> Result<ResolvedOptions> {
        let prefix = &self.key_prefix;
        let max_value_bytes = self.max_value_bytes.unwrap_or(defaults.max_value_bytes);
        crate::cache::check_settings(&crate::cache::SettingsToCheck {
            key_prefix: prefix,
            l1_ttl: self.l1_enabled.then_some(self.l1_ttl),
            l2_ttl: self.l2_ttl.filter(|_| self.l2_enabled),
            fail_safe_max_duration: self.fail_safe_max_duration,
            replay_capacity: self.replay_capacity,
            max_value_bytes,
            max_key_bytes: defaults.max_key_bytes,
            load: &self.load,
            ttl_jitter: self.ttl_jitter,
        })?;
        let breaker_shared = self.breaker_enabled.is_none()
            && self.breaker_threshold.is_none()
            && self.breaker_timeout.is_none();
        let breaker = CircuitBreakerConfig {
            enabled: self.breaker_enabled.unwrap_or(defaults.circuit_breaker.enabled),
            threshold: self
                .breaker_threshold
                .unwrap_or(defaults.circuit_breaker.threshold),
            timeout: self.breaker_timeout.unwrap_or(defaults.circuit_breaker.timeout),
        };
        breaker.check("circuit_breaker_threshold", "circuit_breaker_timeout")?;
        let l1 = if self.l1_enabled {
            if self.l1_maxsize == 0 {
                return Err(config_err("l1_maxsize", "0", "an integer >= 1"));
            }
            let backend = self.l1_backend.unwrap_or(defaults.l1_backend);
            if !backend.is_available() {
                return Err(feature_err("l1_backend", backend.name(), backend.feature()));
            }
            Some(L1Config {
                backend,
                maxsize: self.l1_maxsize,
                ttl: self.l1_ttl,
                fail_safe: self.fail_safe_max_duration.unwrap_or_default(),
            })
        } else {
            None
        };
        let serializer = match &self.serializer {
            None => serializer::get_serializer(&defaults.serializer)?,
            Some(SerializerChoice::Named(n)) => serializer::get_serializer(n)?,
            Some(SerializerChoice::Instance(s)) => s.clone(),
        };
        let l2 = if self.l2_enabled {
            let ttl = self.l2_ttl.ok_or_else(|| {
                Error::Configuration(ConfigError::missing(
                    "l2_ttl",
                    "a TTL >= 1 s whenever L2 is enabled (CacheOptions::l2_ttl)",
                ))
            })?;
            if let Some(l1) = &l1 {
                if l1.backend == L1BackendKind::Ttl && l1.ttl > ttl {
                    tracing::warn!(
                        cache = %prefix,
                        l1_ttl_s = l1.ttl.as_secs_f64(),
                        l2_ttl_s = ttl.as_secs_f64(),
                        "l1_ttl is longer than l2_ttl: L1 may serve values that L2 has already expired"
                    );
                }
            }
            Some(L2Config {
                backend: defaults.l2_backend,
                key_prefix: prefix.clone(),
                ttl,
                lease_fence: self.lease_fence,
            })
        } else {
            None
        };
        if l1.is_none() && l2.is_none() {
            return Err(config_err(
                "l1_enabled/l2_enabled",
                "false/false",
                "allowed: at least one level must be enabled",
            ));
        }
        // The backplane is Redis pub/sub: caches over a registered L2 have none.
        // A cache without L1 joins it too, to receive invalidation markers
        // (it announces no writes: it has no L1 copies to keep coherent).
        let backplane = l2.is_some()
            && defaults.l2_backend.is_redis()
            && self.backplane.unwrap_or(defaults.backplane_enabled);
        // Tracking evicts L1 entries: a cache without L1 has nothing to track.
        let tracking = l1.is_some()
            && l2.is_some()
            && defaults.l2_backend.is_redis()
            && self.tracking.unwrap_or(defaults.tracking_enabled);
        Ok(ResolvedOptions {
            backplane,
            tracking,
            max_value_bytes,
            max_key_bytes: defaults.max_key_bytes,
            prefix: prefix.clone(),
            l1,
            l2,
            serializer,
            breaker,
            breaker_shared,
            replay_capacity: self.replay_capacity,
            l1_ttl: self.l1_ttl,
            fail_safe_max_duration: self.fail_safe_max_duration,
            load: self.load.clone(),
            ttl_jitter: self.ttl_jitter,
        })
    }
}

pub(crate) struct ResolvedOptions {
    pub prefix: String,
    pub l1: Option<L1Config>,
    pub l2: Option<L2Config>,
    pub serializer: Serializer,
    pub breaker: CircuitBreakerConfig,
    /// No per-cache breaker override: use the service's shared breaker.
    pub breaker_shared: bool,
    pub replay_capacity: usize,
    pub max_value_bytes: usize,
    pub max_key_bytes: usize,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub backplane: bool,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub tracking: bool,
    pub l1_ttl: Duration,
    pub fail_safe_max_duration: Option<Duration>,
    pub load: crate::cache::load::LoadOptions,
    pub ttl_jitter: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_options_are_checked() {
        let d = CacheFactoryConfig::default();
        let e = |o: CacheOptions| o.resolve(&d).err().expect("should fail").to_string();
        assert!(e(CacheOptions::new("")).contains("l2_key_prefix"));
        for bad in [
            "users:admin",
            "a*",
            "a?",
            "a[1]",
            "a]",
            "back\\slash",
            "tab\there",
            "nl\n",
            &"x".repeat(257),
        ] {
            let msg = e(CacheOptions::new(bad).l2_ttl(Duration::from_secs(5)));
            assert!(
                msg.contains("l2_key_prefix") && msg.contains("without ':'"),
                "{bad:?}: {msg}"
            );
        }
        for good in ["users", "users2", "user-profiles_v2", "ünïcode", "a.b"] {
            assert!(
                CacheOptions::new(good)
                    .l2_ttl(Duration::from_secs(5))
                    .resolve(&d)
                    .is_ok(),
                "{good}"
            );
        }
        assert!(e(CacheOptions::new("u")).contains("l2_ttl"));
        assert!(e(CacheOptions::new("u").l2_ttl(Duration::from_millis(500))).contains("l2_ttl"));
        assert!(e(CacheOptions::new("u")
            .l2_ttl(Duration::from_secs(5))
            .l1_maxsize(0))
        .contains("l1_maxsize"));
        assert!(e(CacheOptions::new("u")
            .l2_ttl(Duration::from_secs(5))
            .circuit_breaker_threshold(0))
        .contains("circuit_breaker_threshold"));
        assert!(e(CacheOptions::new("u")
            .l2_ttl(Duration::from_secs(5))
            .serializer("pickle"))
        .contains("pickle"));
        assert!(e(CacheOptions::new("u").l1_enabled(false).l2_enabled(false)).contains("at least one level"));
        let r = CacheOptions::new("u").l2_enabled(false).resolve(&d).unwrap();
        assert!(r.l2.is_none() && r.l1.is_some());
        let r = CacheOptions::new("u")
            .l2_ttl(Duration::from_secs(9))
            .resolve(&d)
            .unwrap();
        assert_eq!(r.l1.unwrap().maxsize, 1000);
        assert_eq!(r.l2.unwrap().key_prefix, "u");
        assert_eq!(r.serializer.name(), "msgpack");
    }
}
