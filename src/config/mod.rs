//! Configuration: the service-wide [`CacheFactoryConfig`] (the `CACHE_*` keys)
//! and the per-cache [`CacheOptions`].
//!
//! Every value is checked when it is read; an invalid one is an
//! [`Error::Configuration`] that names the key, the
//! value given and what is allowed. Values that name a choice are trimmed and
//! lower-cased.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use crate::backend::config::{L1BackendKind, L1Config, L2BackendKind, L2Config, RedisConfig, RedisMode};
pub use crate::breaker::CircuitBreakerConfig;
use crate::error::{check_duration, config_err, seconds_allowed, ConfigError, Error, Result, MAX_SECONDS};
use crate::keys::redact_url;
pub use crate::keys::{self, validate_prefix, Secret};
use crate::serializer::{self, CacheSerializer, Serializer};

/// `a:1, b:2` → `["a:1", "b:2"]`.
fn node_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `host:port`, or a `redis://` / `rediss://` URL with host and port.
fn check_node(key: &str, node: &str) -> Result<()> {
    let bare = node
        .strip_prefix("redis://")
        .or_else(|| node.strip_prefix("rediss://"))
        .unwrap_or(node);
    let bare = bare.rsplit('@').next().unwrap_or(bare).trim_end_matches('/');
    let ok = match bare.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(config_err(
            key,
            &redact_url(node),
            "a comma-separated list of host:port",
        ))
    }
}

/// Service-wide configuration: every `CACHE_*` key of the public surface.
///
/// ```
/// use resilient_cache::CacheFactoryConfig;
///
/// let config = CacheFactoryConfig::from_map([
///     ("CACHE_REDIS_HOST", "redis.internal"),
///     ("CACHE_REDIS_SOCKET_TIMEOUT", "0.25"),
///     ("CACHE_L1_BACKEND", " LRU "),
/// ])
/// .unwrap();
/// assert_eq!(config.redis.host, "redis.internal");
/// assert_eq!(config.l1_backend.name(), "lru");
///
/// let err = CacheFactoryConfig::from_map([("CACHE_L1_BACKEND", "lfu")]).unwrap_err();
/// assert!(err.to_string().contains("CACHE_L1_BACKEND=\"lfu\" is not one of: ttl, lru"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CacheFactoryConfig {
    /// Where Redis is.
    pub redis: RedisConfig,
    /// Default breaker settings for every cache (a cache may override them).
    pub circuit_breaker: CircuitBreakerConfig,
    /// `CACHE_SERIALIZER` (default `msgpack`): a registered serializer name.
    pub serializer: String,
    /// `CACHE_L1_BACKEND` (default `ttl`).
    pub l1_backend: L1BackendKind,
    /// `CACHE_L2_BACKEND` (default `redis`).
    pub l2_backend: L2BackendKind,
    /// `CACHE_MAX_VALUE_BYTES` (default 16 MiB): the largest encoded value `set` accepts.
    pub max_value_bytes: usize,
    /// `CACHE_MAX_KEY_BYTES` (default 1 KiB): the longest key accepted.
    pub max_key_bytes: usize,
    /// `CACHE_BACKPLANE_ENABLED` (default true): caches with both levels keep
    /// their L1s coherent across instances over Redis pub/sub.
    pub backplane_enabled: bool,
}

/// Default `CACHE_MAX_VALUE_BYTES`: 16 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 16 << 20;
/// Default `CACHE_MAX_KEY_BYTES`: 1 KiB.
pub const DEFAULT_MAX_KEY_BYTES: usize = 1024;

impl Default for CacheFactoryConfig {
    fn default() -> Self {
        Self {
            redis: RedisConfig::default(),
            circuit_breaker: CircuitBreakerConfig::default(),
            serializer: serializer::DEFAULT_SERIALIZER.to_string(),
            l1_backend: L1BackendKind::default(),
            l2_backend: L2BackendKind::default(),
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            backplane_enabled: true,
        }
    }
}

impl CacheFactoryConfig {
    /// Reads every `CACHE_*` key from the process environment; absent keys keep
    /// their defaults. The result is validated.
    pub fn from_env() -> Result<Self> {
        Self::from_map(std::env::vars().filter(|(k, _)| k.starts_with("CACHE_")))
    }

    /// Reads the `CACHE_*` keys from any key/value source (a web framework's
    /// settings, a parsed file, a `HashMap`); other keys are ignored, and an
    /// unknown `CACHE_*` key is logged as a warning (it is probably a typo).
    /// An empty value counts as absent for the keys without a default
    /// ([`keys::OPTIONAL`]: password, user, URL, …) and is refused for the
    /// others (`CACHE_REDIS_PORT=` is a mistake, not a request for 6379).
    /// The result is validated.
    pub fn from_map<I, K, V>(entries: I) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut map = BTreeMap::new();
        for (k, v) in entries {
            let (k, v) = (k.as_ref(), v.as_ref());
            if keys::ALL.contains(&k) {
                if !v.trim().is_empty() {
                    map.insert(k.to_string(), v.to_string());
                } else if !keys::OPTIONAL.contains(&k) {
                    return Err(config_err(
                        k,
                        v,
                        "allowed empty: set a value, or remove the key for the default",
                    ));
                }
            } else if k.starts_with("CACHE_") {
                tracing::warn!(key = k, "unknown configuration key ignored");
            }
        }
        let mut c = Self::default();
        let get = |k: &str| map.get(k).map(String::as_str);
        if let Some(v) = get(keys::REDIS_HOST) {
            c.redis.host = v.trim().to_string();
        }
        if let Some(v) = get(keys::REDIS_PORT) {
            c.redis.port = parse_int(keys::REDIS_PORT, v, 1, 65535)? as u16;
        }
        if let Some(v) = get(keys::REDIS_DB) {
            c.redis.db = parse_int(keys::REDIS_DB, v, 0, MAX_DB)?;
        }
        // Passwords are taken verbatim: trimming could change them.
        c.redis.password = get(keys::REDIS_PASSWORD).map(Secret::new);
        c.redis.username = get(keys::REDIS_USERNAME).map(|v| Secret::new(v.trim()));
        c.redis.url = get(keys::REDIS_URL).map(|v| Secret::new(v.trim()));
        if let Some(v) = get(keys::REDIS_CONNECT_TIMEOUT) {
            c.redis.connect_timeout = parse_seconds(keys::REDIS_CONNECT_TIMEOUT, v, 0.001)?;
        }
        if let Some(v) = get(keys::REDIS_SOCKET_TIMEOUT) {
            c.redis.socket_timeout = parse_seconds(keys::REDIS_SOCKET_TIMEOUT, v, 0.001)?;
        }
        if let Some(v) = get(keys::CIRCUIT_BREAKER_ENABLED) {
            c.circuit_breaker.enabled = parse_bool(keys::CIRCUIT_BREAKER_ENABLED, v)?;
        }
        if let Some(v) = get(keys::CIRCUIT_BREAKER_THRESHOLD) {
            c.circuit_breaker.threshold =
                parse_int(keys::CIRCUIT_BREAKER_THRESHOLD, v, 1, u32::MAX as i64)? as u32;
        }
        if let Some(v) = get(keys::CIRCUIT_BREAKER_TIMEOUT) {
            c.circuit_breaker.timeout = parse_seconds(keys::CIRCUIT_BREAKER_TIMEOUT, v, 1.0)?;
        }
        if let Some(v) = get(keys::SERIALIZER) {
            c.serializer = v.trim().to_ascii_lowercase();
        }
        if let Some(v) = get(keys::L1_BACKEND) {
            c.l1_backend = v.parse()?;
        }
        if let Some(v) = get(keys::L2_BACKEND) {
            c.l2_backend = v.parse()?;
        }
        if let Some(v) = get(keys::REDIS_TLS_CA) {
            c.redis.tls_ca = Some(v.trim().into());
        }
        if let Some(v) = get(keys::MAX_VALUE_BYTES) {
            c.max_value_bytes =
                parse_int(keys::MAX_VALUE_BYTES, v, 1, keys::MAX_VALUE_BYTES_LIMIT as i64)? as usize;
        }
        if let Some(v) = get(keys::BACKPLANE_ENABLED) {
            c.backplane_enabled = parse_bool(keys::BACKPLANE_ENABLED, v)?;
        }
        if let Some(v) = get(keys::MAX_KEY_BYTES) {
            c.max_key_bytes =
                parse_int(keys::MAX_KEY_BYTES, v, 1, keys::MAX_KEY_BYTES_LIMIT as i64)? as usize;
        }
        let single_node = [keys::REDIS_URL, keys::REDIS_HOST, keys::REDIS_PORT]
            .into_iter()
            .find(|k| get(k).is_some());
        for (key, other) in [
            (keys::REDIS_CLUSTER_NODES, single_node),
            (keys::REDIS_SENTINEL_NODES, single_node),
            (
                keys::REDIS_CLUSTER_NODES,
                get(keys::REDIS_SENTINEL_NODES).map(|_| keys::REDIS_SENTINEL_NODES),
            ),
        ] {
            if let (Some(v), Some(other)) = (get(key), other) {
                return Err(config_err(
                    key,
                    &redact_url(v),
                    format!(
                        "allowed together with {other}: choose one of a single server \
                         (CACHE_REDIS_URL or CACHE_REDIS_HOST/PORT), a cluster \
                         (CACHE_REDIS_CLUSTER_NODES) or sentinels (CACHE_REDIS_SENTINEL_NODES)"
                    ),
                ));
            }
        }
        if let Some(v) = get(keys::REDIS_CLUSTER_NODES) {
            c.redis.cluster_nodes = node_list(v);
        }
        if let Some(v) = get(keys::REDIS_SENTINEL_NODES) {
            c.redis.sentinel_nodes = node_list(v);
        }
        c.redis.sentinel_master = get(keys::REDIS_SENTINEL_MASTER).map(|v| v.trim().to_string());
        c.validate()?;
        Ok(c)
    }

    /// Checks every field (including those set in code), the serializer name
    /// against the registry, and that the chosen backends are compiled in.
    pub fn validate(&self) -> Result<()> {
        let r = &self.redis;
        if r.host.trim().is_empty() {
            return Err(config_err(keys::REDIS_HOST, &r.host, "a non-empty host name"));
        }
        if r.port == 0 {
            return Err(config_err(keys::REDIS_PORT, "0", "an integer from 1 to 65535"));
        }
        if !(0..=MAX_DB).contains(&r.db) {
            return Err(config_err(keys::REDIS_DB, &r.db.to_string(), DB_ALLOWED));
        }
        check_duration(keys::REDIS_CONNECT_TIMEOUT, r.connect_timeout, 0.001)?;
        check_duration(keys::REDIS_SOCKET_TIMEOUT, r.socket_timeout, 0.001)?;
        if let Some(url) = &r.url {
            let u = url.expose();
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return Err(config_err(
                    keys::REDIS_URL,
                    &redact_url(u),
                    "a redis:// or rediss:// URL",
                ));
            }
            if u.starts_with("rediss://") && !cfg!(feature = "tls") {
                return Err(config_err(
                    keys::REDIS_URL,
                    &redact_url(u),
                    "usable in this build: rediss:// (TLS) needs the Cargo feature `tls` of resilient-cache",
                ));
            }
            #[cfg(feature = "redis")]
            crate::backend::redis::connect::check_url(u)?;
        }
        for n in &r.cluster_nodes {
            check_node(keys::REDIS_CLUSTER_NODES, n)?;
        }
        for n in &r.sentinel_nodes {
            check_node(keys::REDIS_SENTINEL_NODES, n)?;
        }
        if !r.cluster_nodes.is_empty() {
            if !r.sentinel_nodes.is_empty() {
                return Err(config_err(
                    keys::REDIS_SENTINEL_NODES,
                    &r.sentinel_nodes.join(","),
                    "empty in cluster mode: a cluster and sentinels are two different deployments",
                ));
            }
            if r.url.is_some() {
                return Err(config_err(
                    keys::REDIS_URL,
                    &redact_url(r.url.as_ref().map_or("", |u| u.expose())),
                    "allowed in cluster mode (the seed nodes say where the cluster is)",
                ));
            }
            if r.db != 0 {
                return Err(config_err(
                    keys::REDIS_DB,
                    &r.db.to_string(),
                    "0 in cluster mode (Redis Cluster has database 0 only)",
                ));
            }
        }
        if !r.sentinel_nodes.is_empty() {
            if r.url.is_some() {
                return Err(config_err(
                    keys::REDIS_URL,
                    &redact_url(r.url.as_ref().map_or("", |u| u.expose())),
                    "allowed in sentinel mode (the sentinels say where the primary is)",
                ));
            }
            if r.sentinel_master.as_deref().is_none_or(|m| m.trim().is_empty()) {
                return Err(config_err(
                    keys::REDIS_SENTINEL_NODES,
                    &r.sentinel_nodes.join(","),
                    "usable without CACHE_REDIS_SENTINEL_MASTER: set it to the name of the primary \
                     the sentinels watch (sentinel monitor <name> …)",
                ));
            }
        } else if let Some(m) = &r.sentinel_master {
            return Err(config_err(
                keys::REDIS_SENTINEL_MASTER,
                m,
                "allowed without CACHE_REDIS_SENTINEL_NODES (the sentinels to ask for it)",
            ));
        }
        if let Some(ca) = &r.tls_ca {
            if !ca.is_file() {
                return Err(config_err(
                    keys::REDIS_TLS_CA,
                    &ca.display().to_string(),
                    "a readable PEM file",
                ));
            }
        }
        keys::check_max_value_bytes(keys::MAX_VALUE_BYTES, self.max_value_bytes)?;
        keys::check_max_key_bytes(keys::MAX_KEY_BYTES, self.max_key_bytes)?;
        self.circuit_breaker
            .check(keys::CIRCUIT_BREAKER_THRESHOLD, keys::CIRCUIT_BREAKER_TIMEOUT)?;
        serializer::get_serializer(&self.serializer).map_err(|_| {
            config_err(
                keys::SERIALIZER,
                &self.serializer,
                format!(
                    "a registered serializer: {}",
                    serializer::list_serializers().join(", ")
                ),
            )
        })?;
        if !self.l1_backend.is_available() {
            return Err(feature_err(
                keys::L1_BACKEND,
                self.l1_backend.name(),
                self.l1_backend.feature(),
            ));
        }
        if !self.l2_backend.is_available() {
            return Err(feature_err(
                keys::L2_BACKEND,
                self.l2_backend.name(),
                self.l2_backend.feature(),
            ));
        }
        Ok(())
    }
}

fn feature_err(key: &str, value: &str, feature: &str) -> Error {
    config_err(
        key,
        value,
        format!("available in this build: enable the Cargo feature `{feature}` of resilient-cache"),
    )
}

fn parse_int(key: &str, raw: &str, min: i64, max: i64) -> Result<i64> {
    let allowed = || {
        if max == i64::MAX || max == u32::MAX as i64 {
            format!("an integer >= {min}")
        } else {
            format!("an integer from {min} to {max}")
        }
    };
    match raw.trim().parse::<i64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(config_err(key, raw, allowed())),
    }
}

fn parse_seconds(key: &str, raw: &str, min: f64) -> Result<Duration> {
    match raw.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s >= min && s <= MAX_SECONDS => Ok(Duration::from_secs_f64(s)),
        _ => Err(config_err(key, raw, seconds_allowed(min))),
    }
}

/// The highest database a Redis or Valkey server has by default (`databases
/// 16`). A server configured with more is reached with a URL naming the
/// database (`CACHE_REDIS_URL=redis://host:6379/42`), which is not capped.
const MAX_DB: i64 = 15;
const DB_ALLOWED: &str = "an integer from 0 to 15 (a server's default `databases 16`; \
     for a server with more, name the database in CACHE_REDIS_URL)";

fn parse_bool(key: &str, raw: &str) -> Result<bool> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(config_err(key, raw, "one of: true, false, 1, 0, yes, no")),
    }
}

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
    pub(crate) fail_safe_max_duration: Option<Duration>,
    pub(crate) load: crate::cache::load::LoadOptions,
    pub(crate) lease_fence: bool,
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
            fail_safe_max_duration: None,
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

    /// Turns this cache's backplane (cross-instance L1 invalidation) on or off,
    /// overriding `CACHE_BACKPLANE_ENABLED`. It only ever applies to a cache
    /// with both levels.
    pub fn backplane(mut self, enabled: bool) -> Self {
        self.backplane = Some(enabled);
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
    /// `set`/`delete` then also ends the key's lease (one `DEL` pipelined in
    /// the same round trip, about 10 % of `set` throughput), which is what
    /// keeps `get_or_load` from storing a value loaded before a write on
    /// another instance, and what the distributed lock is made of. Turn it
    /// off only for a write-heavy namespace no instance loads with
    /// `get_or_load`; all instances of a namespace must agree.
    pub fn lease_fence(mut self, enabled: bool) -> Self {
        self.lease_fence = enabled;
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
        let backplane = l1.is_some() && l2.is_some() && self.backplane.unwrap_or(defaults.backplane_enabled);
        Ok(ResolvedOptions {
            backplane,
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
    pub l1_ttl: Duration,
    pub fail_safe_max_duration: Option<Duration>,
    pub load: crate::cache::load::LoadOptions,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(key: &str, value: &str) -> String {
        CacheFactoryConfig::from_map([(key, value)])
            .unwrap_err()
            .to_string()
    }

    fn err_of(entries: &[(&str, &str)]) -> String {
        CacheFactoryConfig::from_map(entries.iter().copied())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn cluster_and_sentinel_settings_are_checked() {
        let c =
            CacheFactoryConfig::from_map([("CACHE_REDIS_CLUSTER_NODES", " 10.0.0.1:7000, 10.0.0.2:7001 ,")])
                .unwrap();
        assert_eq!(c.redis.cluster_nodes, ["10.0.0.1:7000", "10.0.0.2:7001"]);
        assert_eq!(c.redis.mode(), RedisMode::Cluster);
        assert_eq!(c.redis.endpoint(), "cluster[10.0.0.1:7000,10.0.0.2:7001]");
        let s = CacheFactoryConfig::from_map([
            ("CACHE_REDIS_SENTINEL_NODES", "10.0.0.1:26379"),
            ("CACHE_REDIS_SENTINEL_MASTER", "mymaster"),
        ])
        .unwrap();
        assert_eq!(s.redis.mode(), RedisMode::Sentinel);
        assert_eq!(s.redis.endpoint(), "sentinel[mymaster@10.0.0.1:26379]/0");

        // Mutually exclusive with a single server, and with each other: the error names both.
        for other in [
            ("CACHE_REDIS_URL", "redis://h:1/0"),
            ("CACHE_REDIS_HOST", "h"),
            ("CACHE_REDIS_PORT", "6380"),
        ] {
            let e = err_of(&[("CACHE_REDIS_CLUSTER_NODES", "a:1"), other]);
            assert!(
                e.contains("CACHE_REDIS_CLUSTER_NODES") && e.contains(other.0),
                "{e}"
            );
            let e = err_of(&[
                ("CACHE_REDIS_SENTINEL_NODES", "a:1"),
                ("CACHE_REDIS_SENTINEL_MASTER", "m"),
                other,
            ]);
            assert!(
                e.contains("CACHE_REDIS_SENTINEL_NODES") && e.contains(other.0),
                "{e}"
            );
        }
        let e = err_of(&[
            ("CACHE_REDIS_CLUSTER_NODES", "a:1"),
            ("CACHE_REDIS_SENTINEL_NODES", "b:2"),
        ]);
        assert!(e.contains("CACHE_REDIS_SENTINEL_NODES"), "{e}");
        // Bad node lists, a missing master name, a database other than 0 on a cluster.
        for bad in ["a", "a:", ":1", "a:0", "a:99999", "a:1,b"] {
            let e = err("CACHE_REDIS_CLUSTER_NODES", bad);
            assert!(
                e.contains("CACHE_REDIS_CLUSTER_NODES") && e.contains("host:port"),
                "{bad}: {e}"
            );
        }
        let e = err("CACHE_REDIS_SENTINEL_NODES", "a:1");
        assert!(e.contains("CACHE_REDIS_SENTINEL_MASTER"), "{e}");
        let e = err("CACHE_REDIS_SENTINEL_MASTER", "m");
        assert!(e.contains("CACHE_REDIS_SENTINEL_NODES"), "{e}");
        let e = err_of(&[("CACHE_REDIS_CLUSTER_NODES", "a:1"), ("CACHE_REDIS_DB", "2")]);
        assert!(e.contains("CACHE_REDIS_DB") && e.contains("cluster"), "{e}");
        // A password in a node URL never shows.
        let e = err("CACHE_REDIS_CLUSTER_NODES", "redis://u:hunter2@a");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = CacheFactoryConfig::from_map(Vec::<(String, String)>::new()).unwrap();
        assert_eq!(c.redis.host, "localhost");
        assert_eq!(c.redis.port, 6379);
        assert_eq!(c.redis.db, 0);
        assert_eq!(c.redis.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.redis.socket_timeout, Duration::from_secs(5));
        assert!(c.circuit_breaker.enabled);
        assert_eq!(c.circuit_breaker.threshold, 5);
        assert_eq!(c.circuit_breaker.timeout, Duration::from_secs(60));
        assert_eq!(c.serializer, "msgpack");
        assert_eq!(c.l1_backend, L1BackendKind::Ttl);
        assert_eq!(c.l2_backend, L2BackendKind::Redis);
        assert_eq!(c, CacheFactoryConfig::default());
    }

    #[test]
    fn every_key_is_read() {
        let c = CacheFactoryConfig::from_map([
            ("CACHE_REDIS_HOST", " 10.1.2.3 "),
            ("CACHE_REDIS_PORT", "6380"),
            ("CACHE_REDIS_DB", "3"),
            ("CACHE_REDIS_PASSWORD", " s3cret "),
            ("CACHE_REDIS_USERNAME", "app"),
            ("CACHE_REDIS_CONNECT_TIMEOUT", "0.25"),
            ("CACHE_REDIS_SOCKET_TIMEOUT", "1.5"),
            ("CACHE_CIRCUIT_BREAKER_ENABLED", "No"),
            ("CACHE_CIRCUIT_BREAKER_THRESHOLD", "7"),
            ("CACHE_CIRCUIT_BREAKER_TIMEOUT", "2.5"),
            ("CACHE_SERIALIZER", " JSON "),
            ("CACHE_L1_BACKEND", "LRU"),
            ("CACHE_L2_BACKEND", "Valkey"),
            ("OTHER_KEY", "ignored"),
        ])
        .unwrap();
        assert_eq!(c.redis.host, "10.1.2.3");
        assert_eq!(c.redis.port, 6380);
        assert_eq!(c.redis.db, 3);
        assert_eq!(c.redis.password.as_ref().unwrap().expose(), " s3cret ");
        assert_eq!(c.redis.username.as_ref().unwrap().expose(), "app");
        assert_eq!(c.redis.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.redis.socket_timeout, Duration::from_millis(1500));
        assert!(!c.circuit_breaker.enabled);
        assert_eq!(c.circuit_breaker.threshold, 7);
        assert_eq!(c.circuit_breaker.timeout, Duration::from_millis(2500));
        assert_eq!(c.serializer, "json");
        assert_eq!(c.l1_backend, L1BackendKind::Lru);
        assert_eq!(c.l2_backend, L2BackendKind::Valkey);
    }

    #[test]
    fn booleans_accept_every_documented_spelling() {
        for (raw, want) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("yes", true),
            ("Yes", true),
            ("false", false),
            ("0", false),
            ("no", false),
            ("NO", false),
        ] {
            let c = CacheFactoryConfig::from_map([("CACHE_CIRCUIT_BREAKER_ENABLED", raw)]).unwrap();
            assert_eq!(c.circuit_breaker.enabled, want, "{raw}");
        }
    }

    #[test]
    fn every_invalid_value_names_key_value_and_allowed() {
        let cases = [
            ("CACHE_REDIS_PORT", "0", "an integer from 1 to 65535"),
            ("CACHE_REDIS_PORT", "65536", "an integer from 1 to 65535"),
            ("CACHE_REDIS_PORT", "http", "an integer from 1 to 65535"),
            ("CACHE_REDIS_DB", "-1", "an integer from 0 to 15"),
            ("CACHE_REDIS_DB", "one", "an integer from 0 to 15"),
            ("CACHE_REDIS_DB", "16", "an integer from 0 to 15"),
            ("CACHE_REDIS_CONNECT_TIMEOUT", "0", "seconds > 0"),
            ("CACHE_REDIS_CONNECT_TIMEOUT", "-2", "seconds > 0"),
            ("CACHE_REDIS_SOCKET_TIMEOUT", "soon", "seconds > 0"),
            ("CACHE_REDIS_SOCKET_TIMEOUT", "NaN", "seconds > 0"),
            ("CACHE_REDIS_SOCKET_TIMEOUT", "inf", "seconds > 0"),
            (
                "CACHE_CIRCUIT_BREAKER_ENABLED",
                "maybe",
                "one of: true, false, 1, 0, yes, no",
            ),
            ("CACHE_CIRCUIT_BREAKER_THRESHOLD", "0", "an integer >= 1"),
            ("CACHE_CIRCUIT_BREAKER_THRESHOLD", "1.5", "an integer >= 1"),
            ("CACHE_CIRCUIT_BREAKER_TIMEOUT", "0.5", "seconds >= 1"),
            ("CACHE_SERIALIZER", "pickle", "a registered serializer: "),
            ("CACHE_L1_BACKEND", "lfu", "one of: ttl, lru"),
            ("CACHE_L2_BACKEND", "memcached", "one of: redis, valkey"),
            ("CACHE_REDIS_URL", "http://example", "a redis:// or rediss:// URL"),
            ("CACHE_MAX_VALUE_BYTES", "0", "an integer from 1 to 536870912"),
            ("CACHE_MAX_VALUE_BYTES", "lots", "an integer from 1 to 536870912"),
            ("CACHE_MAX_KEY_BYTES", "-5", "an integer from 1 to 1048576"),
            ("CACHE_REDIS_TLS_CA", "/nonexistent/ca.pem", "a readable PEM file"),
        ];
        for (key, value, allowed) in cases {
            let msg = err(key, value);
            assert!(
                msg.contains(&format!("{key}={value:?} is not")) && msg.contains(allowed),
                "{key}={value}: {msg}"
            );
        }
        assert!(err("CACHE_SERIALIZER", "pickle").contains("json"));
        assert!(err("CACHE_SERIALIZER", "pickle").contains("msgpack"));
    }

    #[test]
    fn url_password_never_in_errors_or_debug() {
        let msg = err("CACHE_REDIS_URL", "http://user:hunter2@host:1");
        assert!(!msg.contains("hunter2"), "{msg}");
        let c = CacheFactoryConfig::from_map([
            ("CACHE_REDIS_URL", "redis://user:hunter2@host:1/2"),
            ("CACHE_REDIS_PASSWORD", "hunter3"),
        ])
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("hunter3"), "{dbg}");
        assert_eq!(c.redis.endpoint(), "redis://***@host:1/2");
    }

    #[test]
    fn empty_values_are_absent_only_for_keys_without_a_default() {
        for key in keys::OPTIONAL {
            let c = CacheFactoryConfig::from_map([(*key, "  ")]).unwrap();
            assert_eq!(
                format!("{c:?}"),
                format!("{:?}", CacheFactoryConfig::default()),
                "{key}"
            );
        }
        for key in keys::ALL.iter().filter(|k| !keys::OPTIONAL.contains(k)) {
            let e = err_of(&[(key, "")]);
            assert!(e.contains(&format!("{key}=\"\" is not allowed empty")), "{e}");
        }
    }

    /// Run by the test command's default-features pass (no `tls`).
    #[test]
    #[cfg(not(feature = "tls"))]
    fn rediss_without_the_tls_feature_names_the_feature() {
        let e = err_of(&[("CACHE_REDIS_URL", "rediss://u:pw@127.0.0.1:6380/0")]);
        assert!(e.contains("Cargo feature `tls`"), "{e}");
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    #[cfg(feature = "tls")]
    fn rediss_with_the_tls_feature_is_accepted() {
        CacheFactoryConfig::from_map([("CACHE_REDIS_URL", "rediss://127.0.0.1:6380/0")]).unwrap();
    }

    #[test]
    fn database_numbers_beyond_the_servers_default_are_refused() {
        let e = err_of(&[("CACHE_REDIS_DB", "99")]);
        assert!(
            e.contains("CACHE_REDIS_DB=\"99\"") && e.contains("0 to 15"),
            "{e}"
        );
        assert_eq!(
            CacheFactoryConfig::from_map([("CACHE_REDIS_DB", "15")])
                .unwrap()
                .redis
                .db,
            15
        );
        // A URL names its database explicitly, for servers configured with more.
        let c = CacheFactoryConfig::from_map([("CACHE_REDIS_URL", "redis://127.0.0.1:6379/99")]).unwrap();
        assert_eq!(c.redis.endpoint(), "redis://127.0.0.1:6379/99");
    }

    #[test]
    fn messages_read_as_sentences() {
        for entries in [
            &[("CACHE_REDIS_CLUSTER_NODES", "a:1"), ("CACHE_REDIS_HOST", "h")][..],
            &[("CACHE_REDIS_SENTINEL_NODES", "a:1")][..],
            &[("CACHE_REDIS_SENTINEL_MASTER", "m")][..],
            &[
                ("CACHE_REDIS_CLUSTER_NODES", "a:1"),
                ("CACHE_REDIS_URL", "redis://u:pw@h:1/0"),
            ][..],
        ] {
            let e = err_of(entries);
            assert!(
                !e.contains("not not") && !e.contains("not unset") && !e.contains("not usable only"),
                "{e}"
            );
            assert!(!e.contains("pw@"), "{e}");
        }
        let e = CacheOptions::new("p")
            .resolve(&CacheFactoryConfig::default())
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            e,
            "invalid cache configuration: l2_ttl is required: a TTL >= 1 s whenever L2 is enabled (CacheOptions::l2_ttl)"
        );
    }

    #[test]
    fn validate_checks_fields_set_in_code() {
        let mut c = CacheFactoryConfig::default();
        c.redis.socket_timeout = Duration::ZERO;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("CACHE_REDIS_SOCKET_TIMEOUT"));
        let c = CacheFactoryConfig {
            serializer: "nope".into(),
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("CACHE_SERIALIZER=\"nope\""));
        let mut c = CacheFactoryConfig::default();
        c.redis.host = " ".into();
        assert!(c.validate().unwrap_err().to_string().contains("CACHE_REDIS_HOST"));
    }

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
