//! The one error type of the crate.
//!
//! The kinds mirror the Python package's exceptions (`CacheConfigurationError`,
//! `CacheConnectionError`, `CacheSerializationError`, `CircuitBreakerOpenError`).
//! Only configuration errors ever reach the caller of the everyday operations:
//! connection and serialization problems are counted in the stats and turned
//! into misses (see the crate docs).

use std::fmt;
use std::time::Duration;

/// Result type of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `resilient-cache`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid (`CacheConfigurationError`).
    #[error("invalid cache configuration: {0}")]
    Configuration(#[from] ConfigError),
    /// L2 could not be reached or did not answer in time (`CacheConnectionError`).
    #[error("cache connection error: {0}")]
    Connection(ConnectionError),
    /// A value could not be encoded, or stored bytes could not be decoded
    /// (`CacheSerializationError`).
    #[error("cache serialization error: {0}")]
    Serialization(String),
    /// The circuit breaker refused a call, so L2 was not called
    /// (`CircuitBreakerOpenError`); see [`CircuitBreaker::permit`](crate::CircuitBreaker::permit).
    /// The cache itself never returns it: a skipped L2 is counted in
    /// `errors.l2_skipped` and the operation carries on with L1.
    #[error("circuit breaker is open: L2 skipped")]
    CircuitBreakerOpen,
    /// A key or value outside the accepted bounds (too long a key, too large a value).
    #[error("invalid cache input: {0}")]
    InvalidInput(String),
}

impl Error {
    /// `true` for errors that say L2 is unhealthy (and so count against the breaker).
    pub fn is_connection(&self) -> bool {
        matches!(self, Error::Connection(_))
    }

    /// `true` for data errors: bytes that cannot be decoded, values that cannot be encoded.
    pub fn is_serialization(&self) -> bool {
        matches!(self, Error::Serialization(_))
    }
}

/// Why L2 could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ConnectionErrorKind {
    /// The operation ran past its timeout (a frozen or overloaded server).
    Timeout,
    /// The server refused the connection (down, or wrong port).
    Refused,
    /// The connection broke, or another I/O failure.
    Io,
    /// Authentication failed (wrong password or user).
    Auth,
    /// The server answered with an error that says it cannot serve (loading, read-only, OOM…).
    Server,
}

/// An L2 connectivity failure: its kind, and a message with no secret in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionError {
    /// What went wrong.
    pub kind: ConnectionErrorKind,
    /// Details for logs.
    pub message: String,
}

impl fmt::Display for ConnectionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl Error {
    /// A connection error of `kind`.
    pub fn connection(kind: ConnectionErrorKind, message: impl Into<String>) -> Self {
        Error::Connection(ConnectionError {
            kind,
            message: message.into(),
        })
    }
}

/// An invalid configuration value: which key, what was given, what is allowed.
///
/// Displays as `CACHE_L1_BACKEND="lfu" is not one of: ttl, lru`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    key: String,
    /// `None`: the key is required and was not given.
    value: Option<String>,
    allowed: String,
}

impl ConfigError {
    /// A new error for `key` whose `value` is not `allowed` (a phrase such as
    /// `one of: ttl, lru` or `an integer from 1 to 65535`).
    pub fn new(key: impl Into<String>, value: impl Into<String>, allowed: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: Some(value.into()),
            allowed: allowed.into(),
        }
    }

    /// A required key that was not given; displays as `l2_ttl is required: {allowed}`.
    pub fn missing(key: impl Into<String>, allowed: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: None,
            allowed: allowed.into(),
        }
    }

    /// The same error under another key name (e.g. an option inside a group).
    pub(crate) fn with_key(mut self, key: String) -> Self {
        self.key = key;
        self
    }

    /// The configuration key (or option name) at fault.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value that was given (secrets are redacted before they get here);
    /// empty for a required key that was not given.
    pub fn value(&self) -> &str {
        self.value.as_deref().unwrap_or("")
    }

    /// What the key accepts.
    pub fn allowed(&self) -> &str {
        &self.allowed
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={value:?} is not {}", self.key, self.allowed),
            None => write!(f, "{} is required: {}", self.key, self.allowed),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Shorthand used by the config parsers.
pub(crate) fn config_err(key: &str, value: &str, allowed: impl Into<String>) -> Error {
    Error::Configuration(ConfigError::new(key, value, allowed))
}

/// `d` is at least `min` seconds and at most a year.
pub(crate) fn check_duration(key: &str, d: Duration, min: f64) -> Result<()> {
    let s = d.as_secs_f64();
    if s >= min && s <= MAX_SECONDS {
        Ok(())
    } else {
        Err(config_err(key, &format!("{s}"), seconds_allowed(min)))
    }
}

/// One year: a longer timeout is a mistake, and it keeps arithmetic far from overflow.
pub(crate) const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

pub(crate) fn seconds_allowed(min: f64) -> String {
    if min >= 1.0 {
        format!("a number of seconds >= {min} (fractions allowed)")
    } else {
        "a number of seconds > 0 (fractions allowed, e.g. 0.25)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_error_names_key_value_and_allowed() {
        let e = config_err("CACHE_L1_BACKEND", "lfu", "one of: ttl, lru");
        assert_eq!(
            e.to_string(),
            "invalid cache configuration: CACHE_L1_BACKEND=\"lfu\" is not one of: ttl, lru"
        );
        assert!(!e.is_connection());
    }
}
