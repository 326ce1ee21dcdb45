//! What the backends are configured with: which L1 and L2 backends, the
//! settings of one cache's L1 and L2, and where Redis is.

use std::fmt;
use std::time::Duration;

use crate::keys::{redact_url, Secret};

/// A level's backend kind: its built-in variants by name, and the
/// registered ones. Generates the name, the feature, availability, `Display`,
/// `Serialize` and `FromStr` (built-in names first, then the registry).
macro_rules! backend_kind {
    ($kind:ident, feature = $feature:literal, registry = $registry:ident, [$($variant:ident => $name:literal),+]) => {
        impl $kind {
            /// The built-in names, lowercase.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            /// The stable, lowercase name.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                    Self::Registered(name) => name,
                }
            }

            /// The Cargo feature a built-in backend needs (none for a registered one).
            pub fn feature(self) -> &'static str {
                match self {
                    Self::Registered(_) => "",
                    _ => $feature,
                }
            }

            /// Whether this build has the backend: a built-in one compiled in, or a registered one.
            pub fn is_available(self) -> bool {
                matches!(self, Self::Registered(_)) || cfg!(feature = $feature)
            }
        }

        impl fmt::Display for $kind {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl serde::Serialize for $kind {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        /// A configuration value: trimmed and lower-cased, a built-in name
        /// or a registered one; otherwise an error listing every accepted name.
        impl std::str::FromStr for $kind {
            type Err = crate::error::Error;

            fn from_str(s: &str) -> crate::error::Result<Self> {
                let registry = &super::registry::$registry;
                match s.trim().to_ascii_lowercase().as_str() {
                    $($name => Ok(Self::$variant),)+
                    other => registry.name(other).map(Self::Registered).ok_or_else(|| registry.unknown(s)),
                }
            }
        }
    };
}

/// Which in-process backend L1 uses (`CACHE_L1_BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum L1BackendKind {
    /// `ttl`: bounded size, every entry expires after the L1 TTL (the default).
    #[default]
    Ttl,
    /// `lru`: bounded size, least-recently-used entries are evicted first; no expiry.
    Lru,
    /// A backend registered under this name with
    /// [`register_l1_backend`](super::registry::register_l1_backend).
    Registered(&'static str),
}

backend_kind!(L1BackendKind, feature = "l1", registry = L1, [Ttl => "ttl", Lru => "lru"]);

/// Which server L2 talks to (`CACHE_L2_BACKEND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum L2BackendKind {
    /// `redis`: Redis 6 or newer (the default).
    #[default]
    Redis,
    /// `valkey`: Valkey, the protocol-compatible Redis fork.
    Valkey,
    /// A backend registered under this name with
    /// [`register_l2_backend`](super::registry::register_l2_backend).
    Registered(&'static str),
}

backend_kind!(L2BackendKind, feature = "redis", registry = L2, [Redis => "redis", Valkey => "valkey"]);

impl L2BackendKind {
    /// Whether this is Redis or Valkey (the backplane is Redis pub/sub).
    pub fn is_redis(self) -> bool {
        !matches!(self, Self::Registered(_))
    }
}

/// How to reach Redis/Valkey.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// `CACHE_REDIS_HOST` (default `localhost`).
    pub host: String,
    /// `CACHE_REDIS_PORT` (default 6379).
    pub port: u16,
    /// `CACHE_REDIS_DB` (default 0).
    pub db: i64,
    /// `CACHE_REDIS_PASSWORD` (default none).
    pub password: Option<Secret>,
    /// `CACHE_REDIS_USERNAME` (default none; Redis 6 ACL user).
    pub username: Option<Secret>,
    /// `CACHE_REDIS_URL`: when set, overrides host, port, db, username and password.
    /// Its password is never printed: `Debug` shows the URL redacted.
    pub url: Option<Secret>,
    /// `CACHE_REDIS_CONNECT_TIMEOUT` (default 5 s).
    pub connect_timeout: Duration,
    /// `CACHE_REDIS_SOCKET_TIMEOUT` (default 5 s): the bound on one L2 operation.
    pub socket_timeout: Duration,
    /// `CACHE_REDIS_TLS_CA`: PEM file of the authorities trusted for `rediss://`
    /// (default: the system's roots).
    pub tls_ca: Option<std::path::PathBuf>,
    /// `CACHE_REDIS_CLUSTER_NODES`: seed nodes of a Redis Cluster (`host:port`,
    /// or `rediss://host:port` for TLS). Non-empty selects cluster mode.
    pub cluster_nodes: Vec<String>,
    /// `CACHE_REDIS_SENTINEL_NODES`: Sentinel nodes (`host:port`). Non-empty
    /// selects sentinel mode, with [`sentinel_master`](Self::sentinel_master).
    pub sentinel_nodes: Vec<String>,
    /// `CACHE_REDIS_SENTINEL_MASTER`: the name of the watched primary.
    pub sentinel_master: Option<String>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: 6379,
            db: 0,
            password: None,
            username: None,
            url: None,
            connect_timeout: Duration::from_secs(5),
            socket_timeout: Duration::from_secs(5),
            tls_ca: None,
            cluster_nodes: Vec::new(),
            sentinel_nodes: Vec::new(),
            sentinel_master: None,
        }
    }
}

impl RedisConfig {
    /// Where L2 lives, without any credential: `host:port/db`, or the URL with
    /// its user info removed.
    pub fn endpoint(&self) -> String {
        if !self.cluster_nodes.is_empty() {
            let nodes: Vec<String> = self.cluster_nodes.iter().map(|n| redact_url(n)).collect();
            return format!("cluster[{}]", nodes.join(","));
        }
        if !self.sentinel_nodes.is_empty() {
            let master = self.sentinel_master.as_deref().unwrap_or("");
            return format!("sentinel[{master}@{}]/{}", self.sentinel_nodes.join(","), self.db);
        }
        match &self.url {
            Some(url) => redact_url(url.expose()),
            None => format!("{}:{}/{}", self.host, self.port, self.db),
        }
    }

    /// Which kind of deployment L2 is.
    pub fn mode(&self) -> RedisMode {
        if !self.cluster_nodes.is_empty() {
            RedisMode::Cluster
        } else if !self.sentinel_nodes.is_empty() {
            RedisMode::Sentinel
        } else {
            RedisMode::Standalone
        }
    }
}

/// The kinds of Redis deployment L2 can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisMode {
    /// One server (`CACHE_REDIS_URL` or host/port).
    Standalone,
    /// Redis Cluster (`CACHE_REDIS_CLUSTER_NODES`): keys sharded over primaries.
    Cluster,
    /// A Sentinel-managed primary (`CACHE_REDIS_SENTINEL_NODES` + `_MASTER`).
    Sentinel,
}

/// The L1 settings of one cache.
#[derive(Debug, Clone, PartialEq)]
pub struct L1Config {
    /// Which backend.
    pub backend: L1BackendKind,
    /// Maximum number of entries.
    pub maxsize: usize,
    /// Time to live (the `ttl` backend only).
    pub ttl: Duration,
    /// How much longer than `ttl` entries are kept, readable as stale, for
    /// fail-safe (`CacheOptions::fail_safe_max_duration`); zero without it.
    pub fail_safe: Duration,
}

/// The L2 settings of one cache.
#[derive(Debug, Clone, PartialEq)]
pub struct L2Config {
    /// Which server kind.
    pub backend: L2BackendKind,
    /// Namespace: keys are `"{key_prefix}:{key}"`.
    pub key_prefix: String,
    /// Default time to live.
    pub ttl: Duration,
    /// Whether writes end load leases (see [`CacheOptions::lease_fence`](crate::CacheOptions::lease_fence)).
    pub lease_fence: bool,
}
