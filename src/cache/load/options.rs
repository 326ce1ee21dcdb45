//! How `get_or_load` loads ([`LoadOptions`]) and how it fails ([`LoadError`]).

use std::sync::Arc;
use std::time::Duration;

use crate::error::ConfigError;

/// How [`get_or_load_with`](crate::TwoLevelCache::get_or_load_with) loads. A cache's
/// defaults come from [`CacheOptions::load`](crate::CacheOptions::load).
///
/// ```
/// use std::time::Duration;
/// use resilient_cache::LoadOptions;
///
/// let opts = LoadOptions::new()
///     .soft_timeout(Duration::from_millis(100)) // serve stale after 100 ms, finish in the background
///     .hard_timeout(Duration::from_secs(2))     // give up waiting after 2 s
///     .eager_refresh(0.8)                       // refresh in the background after 80 % of the TTL
///     .distributed_lock(true);                  // one loader across instances
/// assert!(opts.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    pub(crate) ttl: Option<Duration>,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Option<Duration>,
    pub(crate) fail_safe_throttle: Duration,
    pub(crate) eager_refresh: Option<f64>,
    pub(crate) distributed_lock: bool,
    pub(crate) lock_ttl: Duration,
    pub(crate) lock_wait: Duration,
    pub(crate) tags: Vec<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ttl: None,
            soft_timeout: None,
            hard_timeout: None,
            fail_safe_throttle: Duration::from_secs(30),
            eager_refresh: None,
            distributed_lock: false,
            lock_ttl: Duration::from_secs(10),
            lock_wait: Duration::from_secs(2),
            tags: Vec::new(),
        }
    }
}

impl LoadOptions {
    /// The defaults: no timeouts, no eager refresh, in-process single-flight,
    /// a 30 s fail-safe throttle.
    pub fn new() -> Self {
        Self::default()
    }

    /// TTL of the loaded value (default: the cache's TTLs).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// When a stale value is at hand (fail-safe), how long a caller waits for
    /// the loader before taking the stale value; the load goes on in the
    /// background and refreshes the cache.
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// How long a caller waits for the loader at most: then it gets the stale
    /// value if there is one, else [`LoadError::Timeout`]. The load goes on in
    /// the background.
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = Some(timeout);
        self
    }

    /// After a loader failure served stale, how long the key is not loaded
    /// again (the stale value is served at once). Default 30 s.
    pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.fail_safe_throttle = throttle;
        self
    }

    /// Starts a background refresh when an entry is read after `threshold`
    /// (0 < threshold < 1) of its TTL, so hot keys never expire under traffic.
    pub fn eager_refresh(mut self, threshold: f64) -> Self {
        self.eager_refresh = Some(threshold);
        self
    }

    /// One loader across instances: a load takes an exclusive lease in L2
    /// (`SET NX PX` with a random token, ended only by its owner or by a
    /// write of the key); other instances wait for the value to appear in L2,
    /// for [`lock_wait`](Self::lock_wait) at most. Without L2, or when it is
    /// unavailable, loads are single-flight within each process.
    pub fn distributed_lock(mut self, enabled: bool) -> Self {
        self.distributed_lock = enabled;
        self
    }

    /// How long a lease lasts if its owner dies (default 10 s).
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// How long an instance waits for another instance's load before loading
    /// itself (default 2 s).
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Tags of the loaded value (see [`crate::tags`]): the entry is removed
    /// by [`remove_by_tag`](crate::TwoLevelCache::remove_by_tag) of any of
    /// them. A value whose load began before such a removal is returned to
    /// its callers but not stored (the removal covers it).
    pub fn tags<S: AsRef<str>>(mut self, tags: impl IntoIterator<Item = S>) -> Self {
        self.tags = tags.into_iter().map(|t| t.as_ref().to_string()).collect();
        self
    }

    /// Checks the options: the error names the option, its value and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Err(e) = crate::tags::check_tags(&self.tags) {
            return Err(ConfigError::new(
                "tags",
                format!("{:?}", self.tags),
                e.to_string(),
            ));
        }
        if let Some(t) = self.eager_refresh {
            if !(t > 0.0 && t < 1.0) {
                return Err(ConfigError::new(
                    "eager_refresh",
                    t.to_string(),
                    "a fraction between 0 and 1, exclusive",
                ));
            }
        }
        if let (Some(soft), Some(hard)) = (self.soft_timeout, self.hard_timeout) {
            if soft > hard {
                return Err(ConfigError::new(
                    "soft_timeout",
                    format!("{soft:?}"),
                    format!("at most hard_timeout ({hard:?})"),
                ));
            }
        }
        for (name, d) in [
            ("lock_ttl", self.lock_ttl),
            ("ttl", self.ttl.unwrap_or(Duration::MAX)),
        ] {
            if d < Duration::from_millis(1) {
                return Err(ConfigError::new(name, format!("{d:?}"), "at least 1 ms"));
            }
        }
        Ok(())
    }
}

/// Why [`get_or_load`](crate::TwoLevelCache::get_or_load) has no value for the caller.
#[derive(Debug)]
pub enum LoadError<E> {
    /// The loader failed and no stale value was at hand; every waiter gets the same error.
    Loader(Arc<E>),
    /// The loader did not answer within the hard timeout and no stale value was at hand.
    Timeout(Duration),
    /// This caller's loader panicked (the key is not wedged: the next caller loads again).
    Panicked,
    /// The per-call [`LoadOptions`] are invalid.
    InvalidOptions(ConfigError),
    /// The loader answered [`Loaded::not_modified`](super::Loaded::not_modified)
    /// but the cache held no value for the key to keep.
    NotModified,
}

impl<E> Clone for LoadError<E> {
    fn clone(&self) -> Self {
        match self {
            LoadError::Loader(e) => LoadError::Loader(e.clone()),
            LoadError::Timeout(d) => LoadError::Timeout(*d),
            LoadError::Panicked => LoadError::Panicked,
            LoadError::InvalidOptions(m) => LoadError::InvalidOptions(m.clone()),
            LoadError::NotModified => LoadError::NotModified,
        }
    }
}

impl<E> LoadError<E> {
    /// The loader's error, if that is what this is.
    pub fn loader_error(&self) -> Option<&E> {
        match self {
            LoadError::Loader(e) => Some(e),
            _ => None,
        }
    }
}

impl<E: std::fmt::Display> std::fmt::Display for LoadError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Loader(e) => write!(f, "loader failed: {e}"),
            LoadError::Timeout(d) => write!(f, "loader did not answer within {d:?}"),
            LoadError::Panicked => f.write_str("loader panicked"),
            LoadError::InvalidOptions(m) => write!(f, "invalid load options: {m}"),
            LoadError::NotModified => f.write_str("loader answered not-modified, but no value was cached"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for LoadError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Loader(e) => Some(&**e),
            _ => None,
        }
    }
}
