//! Configuration: the service-wide [`CacheFactoryConfig`] (the `CACHE_*` keys)
//! and the per-cache [`CacheOptions`].
//!
//! Every value is checked when it is read; an invalid one is an
//! [`Error::Configuration`] that names the key, the
//! value given and what is allowed. Values that name a choice are trimmed and
//! lower-cased.
//!
//! `mod.rs` reads and checks the service-wide keys; `options.rs` resolves one
//! cache's options against them into the settings its parts are built from.

use std::collections::BTreeMap;
use std::time::Duration;

pub use crate::backend::config::{L1BackendKind, L1Config, L2BackendKind, L2Config, RedisConfig, RedisMode};
pub use crate::breaker::CircuitBreakerConfig;
use crate::error::{check_duration, config_err, seconds_allowed, Error, Result, MAX_SECONDS};
use crate::keys::redact_url;
pub use crate::keys::{self, validate_prefix, Secret};
use crate::serializer;

mod options;

pub use options::CacheOptions;

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
    /// their L1s coherent across instances over Redis pub/sub. Also set by
    /// `CACHE_INVALIDATION`.
    pub backplane_enabled: bool,
    /// Tracking (default true): Redis tells each instance about every change
    /// to its namespaces' keys, by any client, and the key leaves L1. Set by
    /// `CACHE_INVALIDATION` (`both` or `tracking`).
    pub tracking_enabled: bool,
}

/// Which sources keep a cache's L1 coherent with L2 (`CACHE_INVALIDATION`,
/// [`CacheOptions::invalidation`]): the backplane (this crate's instances
/// announce their writes, tags and clears over pub/sub), tracking (Redis
/// announces every change to the namespace's keys, by any writer), both
/// (the default), or none (L1 entries live out their L1 TTL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvalidationSources {
    /// The backplane and tracking (the default).
    #[default]
    Both,
    /// The backplane only: writes made by other clients are not seen.
    Backplane,
    /// Tracking only: every writer's key changes are seen, but tag and
    /// namespace markers reach other instances only through L2 (reloaded
    /// when more than a second old).
    Tracking,
    /// Neither.
    None,
}

impl InvalidationSources {
    /// Whether the backplane is among the sources.
    pub fn backplane(self) -> bool {
        matches!(self, Self::Both | Self::Backplane)
    }

    /// Whether tracking is among the sources.
    pub fn tracking(self) -> bool {
        matches!(self, Self::Both | Self::Tracking)
    }

    /// The sources of these two switches.
    pub fn of(backplane: bool, tracking: bool) -> Self {
        match (backplane, tracking) {
            (true, true) => Self::Both,
            (true, false) => Self::Backplane,
            (false, true) => Self::Tracking,
            (false, false) => Self::None,
        }
    }

    /// The name `CACHE_INVALIDATION` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Both => "both",
            Self::Backplane => "backplane",
            Self::Tracking => "tracking",
            Self::None => "none",
        }
    }
}

impl std::str::FromStr for InvalidationSources {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> Result<Self> {
        let all = [Self::Both, Self::Backplane, Self::Tracking, Self::None];
        all.into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                crate::error::config_err(keys::INVALIDATION, s, "one of: both, backplane, tracking, none")
            })
    }
}

pub use crate::keys::{DEFAULT_MAX_KEY_BYTES, DEFAULT_MAX_VALUE_BYTES};

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
            tracking_enabled: true,
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
        if let Some(v) = get(keys::INVALIDATION) {
            let sources: InvalidationSources = v.parse()?;
            c.backplane_enabled = sources.backplane();
            c.tracking_enabled = sources.tracking();
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

pub(super) fn feature_err(key: &str, value: &str, feature: &str) -> Error {
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
}
