//! The breaker's settings and the one rule that checks them.

use std::time::Duration;

use crate::error::{check_duration, config_err, Result};

/// Circuit breaker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitBreakerConfig {
    /// `CACHE_CIRCUIT_BREAKER_ENABLED` (default true).
    pub enabled: bool,
    /// `CACHE_CIRCUIT_BREAKER_THRESHOLD` (default 5): consecutive failures that open it.
    pub threshold: u32,
    /// `CACHE_CIRCUIT_BREAKER_TIMEOUT` (default 60 s): how long it stays open.
    pub timeout: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 5,
            timeout: Duration::from_secs(60),
        }
    }
}

impl CircuitBreakerConfig {
    /// Checks the settings: at least one failure to open, and an open time of
    /// at least a second. Errors name `threshold_key` or `timeout_key` (the
    /// `CACHE_*` key or the `CacheOptions` method the value came from).
    pub(crate) fn check(&self, threshold_key: &str, timeout_key: &str) -> Result<()> {
        if self.threshold == 0 {
            return Err(config_err(threshold_key, "0", "an integer >= 1"));
        }
        check_duration(timeout_key, self.timeout, 1.0)
    }
}
