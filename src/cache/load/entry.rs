//! What a loader is told ([`LoadContext`]) and what it answers
//! ([`Loaded`]): a value with the entry's own TTLs and tags, a value not to
//! cache, or "not modified" (the stale value it was shown is still right).

use std::sync::Arc;
use std::time::Duration;

/// What a loader produced, and how the cache keeps it. A plain value
/// converts into one (`Loaded::from(v)`, or `v.into()`), kept with the
/// load's [`LoadOptions`](super::LoadOptions).
///
/// ```
/// use std::time::Duration;
/// use resilient_cache::Loaded;
///
/// // A found product for an hour, a not-found for ten seconds.
/// fn keep(product: Option<String>) -> Loaded<Option<String>> {
///     let ttl = if product.is_some() { 3600 } else { 10 };
///     Loaded::new(product).ttl(Duration::from_secs(ttl))
/// }
/// assert_eq!(keep(None).value(), Some(&None));
/// ```
#[derive(Debug, Clone)]
pub struct Loaded<V> {
    pub(crate) value: Option<V>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) l1_ttl: Option<Duration>,
    pub(crate) tags: Option<Vec<String>>,
    pub(crate) cache: bool,
}

impl<V> Loaded<V> {
    /// `value`, kept with the load's options.
    pub fn new(value: V) -> Self {
        Self {
            value: Some(value),
            ttl: None,
            l1_ttl: None,
            tags: None,
            cache: true,
        }
    }

    /// "Nothing changed": the stale value the loader was shown
    /// ([`LoadContext::stale`]) becomes fresh again, with a new TTL, without
    /// being rebuilt (in L1 the same `Arc` stays). With no stale value at
    /// hand the load fails with [`LoadError::NotModified`](super::LoadError::NotModified).
    pub fn not_modified() -> Self {
        Self {
            value: None,
            ttl: None,
            l1_ttl: None,
            tags: None,
            cache: true,
        }
    }

    /// This entry's TTL (L2, and L1 up to the cache's L1 TTL), instead of
    /// the load's. At least 1 ms, like every per-call TTL; a shorter one is
    /// refused (counted in `invalid_ttl`) and the value is not cached.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long this entry stays in L1 (at most the cache's L1 TTL and the
    /// entry's TTL).
    pub fn l1_ttl(mut self, ttl: Duration) -> Self {
        self.l1_ttl = Some(ttl);
        self
    }

    /// This entry's tags, instead of the load's. Invalid tags (see
    /// [`TwoLevelCache::set_with_tags`](crate::TwoLevelCache::set_with_tags))
    /// are refused (counted in `invalid_tag`) and the value is not cached.
    pub fn tags<T: Into<String>>(mut self, tags: impl IntoIterator<Item = T>) -> Self {
        self.tags = Some(tags.into_iter().map(Into::into).collect());
        self
    }

    /// Returned to the callers of this load, stored in neither level.
    pub fn do_not_cache(mut self) -> Self {
        self.cache = false;
        self
    }

    /// The value produced (`None` for [`not_modified`](Self::not_modified)).
    pub fn value(&self) -> Option<&V> {
        self.value.as_ref()
    }
}

impl<V> From<V> for Loaded<V> {
    fn from(value: V) -> Self {
        Self::new(value)
    }
}

/// What a loader of [`get_or_load_entry`](crate::TwoLevelCache::get_or_load_entry)
/// is told: the key (owned) and the value the cache still holds for it, if
/// any — past its TTL (fail-safe), or fresh during an eager refresh — so
/// that it can ask its source "changed since?" and answer
/// [`Loaded::not_modified`].
#[derive(Debug)]
pub struct LoadContext<V> {
    pub(crate) key: String,
    pub(crate) stale: Option<Arc<V>>,
}

impl<V> LoadContext<V> {
    /// The key being loaded.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The key being loaded, owned.
    pub fn into_key(self) -> String {
        self.key
    }

    /// The value held for the key (stale, or fresh during an eager
    /// refresh); `None` on a miss. Keep a version or ETag inside the value
    /// to compare it with the source.
    pub fn stale(&self) -> Option<&Arc<V>> {
        self.stale.as_ref()
    }
}
