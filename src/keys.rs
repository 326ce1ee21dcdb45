//! The names and rules every part shares about what users type: the `CACHE_*`
//! configuration keys, the namespace rule, and how secrets and URLs are shown
//! (never with a password).

use std::fmt;

use crate::error::{config_err, Result};

/// Redis host name or address.
pub const REDIS_HOST: &str = "CACHE_REDIS_HOST";
/// Redis TCP port.
pub const REDIS_PORT: &str = "CACHE_REDIS_PORT";
/// Redis database number.
pub const REDIS_DB: &str = "CACHE_REDIS_DB";
/// Redis password (never printed).
pub const REDIS_PASSWORD: &str = "CACHE_REDIS_PASSWORD";
/// Redis 6 ACL user name.
pub const REDIS_USERNAME: &str = "CACHE_REDIS_USERNAME";
/// `redis://` or `rediss://` URL; overrides host, port, db, user and password.
pub const REDIS_URL: &str = "CACHE_REDIS_URL";
/// Connection set-up bound, in seconds.
pub const REDIS_CONNECT_TIMEOUT: &str = "CACHE_REDIS_CONNECT_TIMEOUT";
/// Bound on one L2 operation, in seconds.
pub const REDIS_SOCKET_TIMEOUT: &str = "CACHE_REDIS_SOCKET_TIMEOUT";
/// Whether the circuit breaker guards L2.
pub const CIRCUIT_BREAKER_ENABLED: &str = "CACHE_CIRCUIT_BREAKER_ENABLED";
/// Consecutive failures that open the breaker.
pub const CIRCUIT_BREAKER_THRESHOLD: &str = "CACHE_CIRCUIT_BREAKER_THRESHOLD";
/// Seconds the breaker stays open before a probe.
pub const CIRCUIT_BREAKER_TIMEOUT: &str = "CACHE_CIRCUIT_BREAKER_TIMEOUT";
/// Registered serializer name.
pub const SERIALIZER: &str = "CACHE_SERIALIZER";
/// L1 backend name.
pub const L1_BACKEND: &str = "CACHE_L1_BACKEND";
/// L2 backend name.
pub const L2_BACKEND: &str = "CACHE_L2_BACKEND";
/// PEM file of the certificate authorities trusted for `rediss://`.
pub const REDIS_TLS_CA: &str = "CACHE_REDIS_TLS_CA";
/// Largest encoded value accepted by `set`, in bytes.
pub const MAX_VALUE_BYTES: &str = "CACHE_MAX_VALUE_BYTES";
/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: &str = "CACHE_MAX_KEY_BYTES";
/// Whether caches with both levels invalidate each other's L1 over pub/sub.
pub const BACKPLANE_ENABLED: &str = "CACHE_BACKPLANE_ENABLED";
/// Which sources keep L1 coherent with L2: `both` (default), `backplane`,
/// `tracking` or `none`.
pub const INVALIDATION: &str = "CACHE_INVALIDATION";
/// Redis Cluster seed nodes, `host:port,host:port,…` (selects cluster mode).
pub const REDIS_CLUSTER_NODES: &str = "CACHE_REDIS_CLUSTER_NODES";
/// Sentinel nodes, `host:port,host:port,…` (selects sentinel mode).
pub const REDIS_SENTINEL_NODES: &str = "CACHE_REDIS_SENTINEL_NODES";
/// The name of the primary the sentinels watch (sentinel mode).
pub const REDIS_SENTINEL_MASTER: &str = "CACHE_REDIS_SENTINEL_MASTER";

/// Every key this crate reads.
pub const ALL: &[&str] = &[
    REDIS_HOST,
    REDIS_PORT,
    REDIS_DB,
    REDIS_PASSWORD,
    REDIS_USERNAME,
    REDIS_URL,
    REDIS_CONNECT_TIMEOUT,
    REDIS_SOCKET_TIMEOUT,
    CIRCUIT_BREAKER_ENABLED,
    CIRCUIT_BREAKER_THRESHOLD,
    CIRCUIT_BREAKER_TIMEOUT,
    SERIALIZER,
    L1_BACKEND,
    L2_BACKEND,
    REDIS_TLS_CA,
    MAX_VALUE_BYTES,
    MAX_KEY_BYTES,
    BACKPLANE_ENABLED,
    INVALIDATION,
    REDIS_CLUSTER_NODES,
    REDIS_SENTINEL_NODES,
    REDIS_SENTINEL_MASTER,
];

/// The keys whose default is "none": for these alone an empty value
/// means "not set" (as it does for an empty `CACHE_REDIS_PASSWORD=` in a
/// container's environment). Every other key has a default of its own,
/// and an empty value for it is refused, never silently defaulted.
pub const OPTIONAL: &[&str] = &[
    REDIS_PASSWORD,
    REDIS_USERNAME,
    REDIS_URL,
    REDIS_TLS_CA,
    REDIS_CLUSTER_NODES,
    REDIS_SENTINEL_NODES,
    REDIS_SENTINEL_MASTER,
];

/// A string that never shows itself in `Debug` or `Display` (passwords).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for handing to the Redis client. Do not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(\"***\")")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Removes `user:password@` from a URL, for display.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// The namespace of the cache's own keys in L2: load leases, the lease
/// hash and invalidation markers are all named `rc:…`, so no cache may take
/// it as its namespace. A cache named `rc` would store its key `leases`
/// over the server's lease hash (every fenced write on the server would
/// then fail) and its `clear` would remove every namespace's markers.
pub const RESERVED_NAMESPACE: &str = "rc";

/// A namespace is non-empty, at most 256 bytes, and has no glob characters
/// (`*?[]\`), no control characters and no `:` (the separator: without it, no
/// namespace can nest inside another, so `clear` of one never reaches another).
/// It is not [`RESERVED_NAMESPACE`] (`rc`), which holds the cache's own keys.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    const ALLOWED: &str = "a non-empty string of at most 256 bytes without ':', '*', '?', '[', ']', '\\' or \
         control characters, other than \"rc\" (reserved for the cache's own keys)";
    let bad = prefix.is_empty()
        || prefix == RESERVED_NAMESPACE
        || prefix.len() > 256
        || prefix
            .chars()
            .any(|c| c.is_control() || matches!(c, ':' | '*' | '?' | '[' | ']' | '\\'));
    if bad {
        return Err(config_err("l2_key_prefix", prefix, ALLOWED));
    }
    Ok(())
}

/// Default `CACHE_MAX_VALUE_BYTES`: 16 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 16 << 20;
/// Default `CACHE_MAX_KEY_BYTES`: 1 KiB.
pub const DEFAULT_MAX_KEY_BYTES: usize = 1024;

/// The largest `max_value_bytes` allowed: Redis' own limit on a string (512 MiB).
pub const MAX_VALUE_BYTES_LIMIT: usize = 512 << 20;
/// The largest `max_key_bytes` allowed (1 MiB).
pub const MAX_KEY_BYTES_LIMIT: usize = 1 << 20;

/// `bytes` is a usable largest-value setting (1 to [`MAX_VALUE_BYTES_LIMIT`]);
/// the error names `key`.
pub(crate) fn check_max_value_bytes(key: &str, bytes: usize) -> Result<()> {
    check_limit(key, bytes, MAX_VALUE_BYTES_LIMIT, " (Redis' own limit)")
}

/// `bytes` is a usable longest-key setting (1 to [`MAX_KEY_BYTES_LIMIT`]);
/// the error names `key`.
pub(crate) fn check_max_key_bytes(key: &str, bytes: usize) -> Result<()> {
    check_limit(key, bytes, MAX_KEY_BYTES_LIMIT, "")
}

fn check_limit(key: &str, bytes: usize, max: usize, why: &str) -> Result<()> {
    if (1..=max).contains(&bytes) {
        return Ok(());
    }
    Err(config_err(
        key,
        &bytes.to_string(),
        format!("an integer from 1 to {max}{why}"),
    ))
}
