//! The [`CacheBackend`] trait and the built-in backends.
//!
//! A backend is one level of the cache. L1 backends ([`memory`]) hold typed
//! values (`Arc<V>`, so a hit never deep-copies); L2 backends ([`redis`]) hold
//! encoded bytes. The two-level logic ([`crate::cache`]) composes one of
//! each and never looks inside them. See `BACKEND_GUIDE.md` for adding one.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;

use crate::error::Result;

pub mod config;
#[cfg(feature = "l1")]
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
pub mod registry;
mod stats;

pub use config::{L1BackendKind, L1Config, L2BackendKind, L2Config, RedisConfig, RedisMode};
pub use stats::{L1Stats, L2Stats};

/// The invalidation markers a backend keeps, as stored: each marker's
/// field and stamp (see [`crate::tags`]).
pub type MarkerFields = Vec<(String, u64)>;

/// A value as [`CacheBackend::get_with_ttl`] finds it: with its remaining
/// TTL (`None`: no expiry, or not asked), or `None` when absent.
pub type WithTtl<V> = Option<(V, Option<Duration>)>;

/// What an L1 backend calls with each key it drops to make room (a
/// capacity eviction; not an expiry, a delete or a replacement). See
/// [`CacheBackend::on_evict`].
pub type EvictionHook = std::sync::Arc<dyn Fn(String) + Send + Sync>;

/// One level of a cache. Keys are the caller's keys, without any namespace:
/// a backend that shares a server with others adds its own prefix.
///
/// `ttl: None` means the backend's configured default. Every method reports
/// failures as [`Error`](crate::Error) values; a backend never panics on bad
/// data, and a networked backend bounds every call by its operation timeout.
pub trait CacheBackend: Send + Sync + 'static {
    /// What the backend stores: `Arc<V>` in memory, `Vec<u8>` on a server.
    type Value: Clone + Send + Sync + 'static;
    /// The backend's statistics.
    type Stats: Serialize + Clone + Send + Sync + 'static;

    /// The value under `key`, if present and not expired.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Self::Value>>> + Send;

    /// Stores `value` under `key`, replacing any previous value.
    fn set(
        &self,
        key: &str,
        value: Self::Value,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Stores `value` only if `key` is absent, atomically; `true` if stored.
    fn set_if_not_exist(
        &self,
        key: &str,
        value: Self::Value,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Removes `key`; `true` if it was present.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Removes every key of this backend's namespace; returns how many.
    fn clear(&self) -> impl Future<Output = Result<u64>> + Send;

    /// Whether `key` is present and not expired.
    fn exists(&self, key: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Remaining time to live of `key`; `None` when absent or without expiry.
    fn get_ttl(&self, key: &str) -> impl Future<Output = Result<Option<Duration>>> + Send;

    /// Keys (without namespace) that start with `prefix` literally, or all keys.
    fn list_keys(&self, prefix: Option<&str>) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// Number of entries.
    fn get_size(&self) -> impl Future<Output = Result<u64>> + Send;

    /// Statistics, possibly asking the server (bounded by the operation timeout).
    fn get_stats(&self) -> impl Future<Output = Result<Self::Stats>> + Send;

    /// Statistics known without any I/O (used while L2 is skipped).
    fn describe(&self) -> Self::Stats;

    /// The value under `key` with its remaining TTL, in one call where the
    /// backend can (fail-safe caches and eager refresh need both). The default
    /// asks [`get`](Self::get), then [`get_ttl`](Self::get_ttl).
    fn get_with_ttl(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<(Self::Value, Option<Duration>)>>> + Send {
        async move {
            match self.get(key).await? {
                Some(v) => Ok(Some((v, self.get_ttl(key).await?))),
                None => Ok(None),
            }
        }
    }

    /// [`get_with_ttl`](Self::get_with_ttl) answered at once, for backends
    /// that need no I/O: `Some(answer)` (counting the hit or miss as `get`
    /// does), or `None` when the backend must be awaited (the default, right
    /// for networked backends). The two-level cache asks L1 this way first,
    /// so an L1 hit is a plain function call, not a future.
    fn get_with_ttl_now(&self, key: &str) -> Option<Option<(Self::Value, Option<Duration>)>> {
        let _ = key;
        None
    }

    /// Takes the load lease of `key` for `token` (see the README, "Loading"):
    /// with `exclusive`, only if no one holds it. `Ok(None)` means the backend
    /// has no leases (the default), so loads are coordinated in-process only.
    ///
    /// A backend with leases ends the lease of a key on every
    /// [`set`](Self::set), [`delete`](Self::delete) and [`clear`](Self::clear),
    /// so that [`store_if_leased`](Self::store_if_leased) cannot write a value
    /// loaded before them.
    fn lease(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
        exclusive: bool,
    ) -> impl Future<Output = Result<Option<bool>>> + Send {
        let _ = (key, token, ttl, exclusive);
        async { Ok(None) }
    }

    /// Stores `value`, atomically, only if `token` still holds the lease of
    /// `key` (and, with `only_if_absent`, only if `key` is absent), ending the
    /// lease. `Ok(Some(false))`: someone wrote or deleted `key` meanwhile.
    /// `Ok(None)`: no leases here (the default).
    fn store_if_leased(
        &self,
        key: &str,
        token: u64,
        value: Self::Value,
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> impl Future<Output = Result<Option<bool>>> + Send {
        let _ = (key, token, value, ttl, only_if_absent);
        async { Ok(None) }
    }

    /// [`clear`](Self::clear), calling `progress` with the number of keys
    /// removed so far after each batch (for progress bars). The default
    /// reports once, at the end.
    fn clear_with_progress(
        &self,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> impl Future<Output = Result<u64>> + Send {
        async move {
            let n = self.clear().await?;
            progress(n);
            Ok(n)
        }
    }

    /// The bound this backend puts on one call, if it has one (a networked
    /// backend's operation timeout). A read-through shares one such bound
    /// across all of its calls to this backend, so its caller never waits
    /// longer than one operation timeout for L2 in total. `None` (the
    /// default): no bound known.
    fn operation_timeout(&self) -> Option<Duration> {
        None
    }

    /// Asks an L1 backend to call `hook` with each key it drops to make
    /// room, from now on (the two-level cache installs one when it is
    /// built, to tell its event subscribers). `false` (the default): this
    /// backend does not report evictions, or already has a hook (the
    /// built-in ones keep the first: an L1 shared by two caches tells the
    /// first one's subscribers). A backend calls the hook at most once per
    /// evicted entry.
    fn on_evict(&self, hook: EvictionHook) -> bool {
        let _ = hook;
        false
    }

    /// Ends the lease of `key` if `token` holds it (a failed load).
    fn release_lease(&self, key: &str, token: u64) -> impl Future<Output = Result<()>> + Send {
        let _ = (key, token);
        async { Ok(()) }
    }

    /// The namespace's invalidation markers (see [`crate::tags`]): each
    /// marker's field and stamp. `Ok(None)`: this backend keeps no markers
    /// (the default), so markers live in each process (and travel on the
    /// backplane) only.
    fn load_markers(&self) -> impl Future<Output = Result<Option<MarkerFields>>> + Send {
        async { Ok(None) }
    }

    /// Records a marker: `field` takes the stamp `at_us` unless it holds a
    /// later one, and the markers are kept for at least `keep`. `Ok(false)`:
    /// this backend keeps no markers (the default).
    fn put_marker(
        &self,
        field: &str,
        at_us: u64,
        keep: Duration,
    ) -> impl Future<Output = Result<bool>> + Send {
        let _ = (field, at_us, keep);
        async { Ok(false) }
    }

    /// Shortens the life of `key` to `ttl` from now (how `expire` keeps an
    /// entry as a fail-safe fallback only); `true` if the key exists. The
    /// default reads the value and writes it back with `ttl`.
    fn expire_in(&self, key: &str, ttl: Duration) -> impl Future<Output = Result<bool>> + Send {
        async move {
            match self.get(key).await? {
                Some(v) => self.set(key, v, Some(ttl)).await.map(|_| true),
                None => Ok(false),
            }
        }
    }

    /// The values under `keys`, in their order, each with its remaining TTL
    /// when `with_ttl` (else `None`): what [`get_with_ttl`](Self::get_with_ttl)
    /// or [`get`](Self::get) answers for each, in as few round trips as the
    /// backend can (Redis: one `MGET`, or one pipeline per cluster node). The
    /// default asks key by key.
    fn get_many(
        &self,
        keys: &[&str],
        with_ttl: bool,
    ) -> impl Future<Output = Result<Vec<WithTtl<Self::Value>>>> + Send {
        async move {
            let mut found = Vec::with_capacity(keys.len());
            for key in keys {
                found.push(if with_ttl {
                    self.get_with_ttl(key).await?
                } else {
                    self.get(key).await?.map(|v| (v, None))
                });
            }
            Ok(found)
        }
    }

    /// Stores each `(key, value, ttl)` as [`set`](Self::set) does (ending
    /// each key's lease), in as few round trips as the backend can. The
    /// default writes key by key.
    fn set_many(
        &self,
        entries: Vec<(&str, Self::Value, Option<Duration>)>,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            for (key, value, ttl) in entries {
                self.set(key, value, ttl).await?;
            }
            Ok(())
        }
    }

    /// Removes `keys` as [`delete`](Self::delete) does; returns how many were
    /// present. The default removes key by key.
    fn delete_many(&self, keys: &[&str]) -> impl Future<Output = Result<u64>> + Send {
        async move {
            let mut removed = 0;
            for key in keys {
                removed += u64::from(self.delete(key).await?);
            }
            Ok(removed)
        }
    }
}

/// A shared backend is a backend: every method, the optional ones too, is
/// forwarded (so a test can keep a handle on the L2 it gave a cache).
impl<B: CacheBackend> CacheBackend for std::sync::Arc<B> {
    type Value = B::Value;
    type Stats = B::Stats;

    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Self::Value>>> + Send {
        (**self).get(key)
    }

    fn set(
        &self,
        key: &str,
        value: Self::Value,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send {
        (**self).set(key, value, ttl)
    }

    fn set_if_not_exist(
        &self,
        key: &str,
        value: Self::Value,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<bool>> + Send {
        (**self).set_if_not_exist(key, value, ttl)
    }

    fn delete(&self, key: &str) -> impl Future<Output = Result<bool>> + Send {
        (**self).delete(key)
    }

    fn clear(&self) -> impl Future<Output = Result<u64>> + Send {
        (**self).clear()
    }

    fn exists(&self, key: &str) -> impl Future<Output = Result<bool>> + Send {
        (**self).exists(key)
    }

    fn get_ttl(&self, key: &str) -> impl Future<Output = Result<Option<Duration>>> + Send {
        (**self).get_ttl(key)
    }

    fn list_keys(&self, prefix: Option<&str>) -> impl Future<Output = Result<Vec<String>>> + Send {
        (**self).list_keys(prefix)
    }

    fn get_size(&self) -> impl Future<Output = Result<u64>> + Send {
        (**self).get_size()
    }

    fn get_stats(&self) -> impl Future<Output = Result<Self::Stats>> + Send {
        (**self).get_stats()
    }

    fn describe(&self) -> Self::Stats {
        (**self).describe()
    }

    fn get_with_ttl(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<(Self::Value, Option<Duration>)>>> + Send {
        (**self).get_with_ttl(key)
    }

    #[inline]
    fn get_with_ttl_now(&self, key: &str) -> Option<Option<(Self::Value, Option<Duration>)>> {
        (**self).get_with_ttl_now(key)
    }

    fn lease(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
        exclusive: bool,
    ) -> impl Future<Output = Result<Option<bool>>> + Send {
        (**self).lease(key, token, ttl, exclusive)
    }

    fn store_if_leased(
        &self,
        key: &str,
        token: u64,
        value: Self::Value,
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> impl Future<Output = Result<Option<bool>>> + Send {
        (**self).store_if_leased(key, token, value, ttl, only_if_absent)
    }

    fn clear_with_progress(
        &self,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> impl Future<Output = Result<u64>> + Send {
        (**self).clear_with_progress(progress)
    }

    fn operation_timeout(&self) -> Option<Duration> {
        (**self).operation_timeout()
    }

    fn on_evict(&self, hook: EvictionHook) -> bool {
        (**self).on_evict(hook)
    }

    fn release_lease(&self, key: &str, token: u64) -> impl Future<Output = Result<()>> + Send {
        (**self).release_lease(key, token)
    }

    fn load_markers(&self) -> impl Future<Output = Result<Option<MarkerFields>>> + Send {
        (**self).load_markers()
    }

    fn put_marker(
        &self,
        field: &str,
        at_us: u64,
        keep: Duration,
    ) -> impl Future<Output = Result<bool>> + Send {
        (**self).put_marker(field, at_us, keep)
    }

    fn expire_in(&self, key: &str, ttl: Duration) -> impl Future<Output = Result<bool>> + Send {
        (**self).expire_in(key, ttl)
    }

    fn get_many(
        &self,
        keys: &[&str],
        with_ttl: bool,
    ) -> impl Future<Output = Result<Vec<WithTtl<Self::Value>>>> + Send {
        (**self).get_many(keys, with_ttl)
    }

    fn set_many(
        &self,
        entries: Vec<(&str, Self::Value, Option<Duration>)>,
    ) -> impl Future<Output = Result<()>> + Send {
        (**self).set_many(entries)
    }

    fn delete_many(&self, keys: &[&str]) -> impl Future<Output = Result<u64>> + Send {
        (**self).delete_many(keys)
    }
}
