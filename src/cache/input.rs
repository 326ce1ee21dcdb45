//! What the cache refuses from callers (keys longer than the maximum), counted
//! and logged at a bounded rate.

use std::sync::Arc;

use super::{CacheValue, TwoLevelCache};
use crate::backend::CacheBackend;
use crate::error::Error;

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// `Err` for a key longer than the maximum (counted): never truncated.
    #[inline]
    pub(super) fn check_key(&self, key: &str) -> Result<(), Error> {
        if key.len() <= self.inner.max_key_bytes {
            return Ok(());
        }
        self.key_too_long(key)
    }

    #[cold]
    pub(super) fn key_too_long(&self, key: &str) -> Result<(), Error> {
        self.inner.counters.invalid_key.incr();
        let e = Error::InvalidInput(format!(
            "key of {} bytes is longer than the maximum of {} bytes (CACHE_MAX_KEY_BYTES)",
            key.len(),
            self.inner.max_key_bytes
        ));
        self.refused(&e);
        Err(e)
    }

    /// Logs (rate-limited) an input the cache refused; the counter is the caller's.
    #[cold]
    pub(super) fn refused(&self, e: &Error) {
        if let Some(suppressed) = self.inner.counters.log.admit() {
            tracing::warn!(cache = %self.inner.prefix, error = %e, suppressed, "cache input refused");
        }
    }
}
