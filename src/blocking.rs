//! The same API for programs without async: every method blocks the calling
//! thread until done (bounded, like the async one, by the operation timeout).
//!
//! The service owns a small Tokio runtime (one worker thread) that drives the
//! L2 connection. Do not call these methods from inside an async runtime (use
//! the async API there); Tokio panics if asked to block inside one. (An L1 hit
//! of `get` or `get_or_load` is answered on the calling thread without the
//! runtime, as fast as the async one, so that mistake shows only on a miss.)
//!
//! ```no_run
//! use std::time::Duration;
//! use resilient_cache::{blocking, CacheFactoryConfig, CacheOptions};
//!
//! let service = blocking::CacheService::new(CacheFactoryConfig::from_env()?)?;
//! let users = service.create_cache::<String>(CacheOptions::new("users").l2_ttl(Duration::from_secs(60)))?;
//! users.set("42", "Ada".to_string());
//! assert_eq!(users.get("42").as_deref().map(String::as_str), Some("Ada"));
//! # Ok::<(), resilient_cache::Error>(())
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::breaker::CircuitState;
use crate::cache::load::{LoadContext, LoadError, LoadOptions, Loaded, LoaderStats};
use crate::cache::CacheStats;
use crate::cache::{CacheValue, CallOptions, ClearReport, Invalidation, LookupStep, NoBudget};
use crate::config::{CacheFactoryConfig, CacheOptions};
use crate::error::{Error, Result};
use crate::service::ServiceStats;

/// Blocking [`crate::CacheService`].
#[derive(Clone, Debug)]
pub struct CacheService {
    inner: crate::CacheService,
    rt: Arc<tokio::runtime::Runtime>,
}

impl CacheService {
    /// Validates `config` and starts the service; fails only on invalid configuration.
    pub fn new(config: CacheFactoryConfig) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("resilient-cache")
            .enable_all()
            .build()
            .map_err(|e| {
                Error::connection(
                    crate::error::ConnectionErrorKind::Io,
                    format!("cannot start runtime: {e}"),
                )
            })?;
        let inner = rt.block_on(crate::CacheService::new(config))?;
        Ok(Self {
            inner,
            rt: Arc::new(rt),
        })
    }

    /// [`CacheService::new`] with [`CacheFactoryConfig::from_env`].
    pub fn from_env() -> Result<Self> {
        Self::new(CacheFactoryConfig::from_env()?)
    }

    /// A typed cache for one namespace.
    pub fn create_cache<V: CacheValue>(&self, options: CacheOptions) -> Result<Cache<V>> {
        let _guard = self.rt.enter();
        Ok(Cache {
            inner: self.inner.create_cache(options)?,
            rt: self.rt.clone(),
        })
    }

    /// Round-trip time to L2.
    pub fn ping(&self) -> Result<Duration> {
        self.rt.block_on(self.inner.ping())
    }

    /// Stats of every live cache.
    pub fn get_stats(&self) -> ServiceStats {
        self.rt.block_on(self.inner.get_stats())
    }

    /// See [`crate::CacheService::health`].
    pub fn health(&self) -> crate::Health {
        self.rt.block_on(self.inner.health())
    }

    /// The async service behind this one.
    pub fn as_async(&self) -> &crate::CacheService {
        &self.inner
    }
}

/// Blocking [`crate::Cache`]. Cheap to clone, `Send + Sync`.
#[derive(Clone, Debug)]
pub struct Cache<V> {
    inner: crate::Cache<V>,
    rt: Arc<tokio::runtime::Runtime>,
}

impl<V: CacheValue> Cache<V> {
    /// See [`crate::TwoLevelCache::get`]. An L1 hit is answered on the
    /// calling thread, without a trip through the runtime: the same two
    /// lookup steps as the async `get`, in the same order.
    pub fn get(&self, key: impl AsRef<str>) -> Option<Arc<V>> {
        let key = key.as_ref();
        match self.inner.get_now(key) {
            Ok(value) => Some(value),
            Err(LookupStep::Done(found)) => found.fresh(),
            Err(step) => self
                .rt
                .block_on(self.inner.lookup_on(key, step, &mut NoBudget))
                .fresh(),
        }
    }

    /// [`get`](Self::get) when it can answer without waiting: `Some(answer)`
    /// when L1 settles it on the calling thread (a hit, or a miss of a cache
    /// with nothing behind L1), `None` when `get` would have to go on to L2.
    ///
    /// For callers that hold something they must let go of before they block
    /// and would rather keep on a hit: a Python extension releases the GIL
    /// only when the answer is not at hand.
    pub fn try_get_now(&self, key: impl AsRef<str>) -> Option<Option<Arc<V>>> {
        match self.inner.get_now(key.as_ref()) {
            Ok(value) => Some(Some(value)),
            Err(LookupStep::Done(found)) => Some(found.fresh()),
            Err(_) => None,
        }
    }

    /// See [`crate::TwoLevelCache::set`].
    pub fn set(&self, key: impl AsRef<str>, value: V) {
        let key = key.as_ref();
        self.rt.block_on(self.inner.set(key, value))
    }

    /// See [`crate::TwoLevelCache::set_with_ttl`].
    pub fn set_with_ttl(&self, key: impl AsRef<str>, value: V, ttl: Option<Duration>) {
        let key = key.as_ref();
        self.rt.block_on(self.inner.set_with_ttl(key, value, ttl))
    }

    /// See [`crate::TwoLevelCache::try_set`].
    pub fn try_set(&self, key: impl AsRef<str>, value: V) -> Result<()> {
        let key = key.as_ref();
        self.rt.block_on(self.inner.try_set(key, value))
    }

    /// See [`crate::TwoLevelCache::try_set_with_ttl`].
    pub fn try_set_with_ttl(&self, key: impl AsRef<str>, value: V, ttl: Option<Duration>) -> Result<()> {
        let key = key.as_ref();
        self.rt.block_on(self.inner.try_set_with_ttl(key, value, ttl))
    }

    /// See [`crate::TwoLevelCache::get_or_load`]; `loader` runs on a thread
    /// of the service's blocking pool (it may outlive this call, see the
    /// timeouts of [`LoadOptions`]).
    pub fn get_or_load<E, F>(
        &self,
        key: impl AsRef<str>,
        loader: F,
    ) -> std::result::Result<Arc<V>, LoadError<E>>
    where
        E: Send + Sync + 'static,
        F: FnOnce() -> std::result::Result<V, E> + Send + 'static,
    {
        let key = key.as_ref();
        let opts = self.inner.load_defaults().clone();
        self.get_or_load_with(key, &opts, loader)
    }

    /// See [`crate::TwoLevelCache::get_or_load_with`].
    pub fn get_or_load_with<E, F>(
        &self,
        key: impl AsRef<str>,
        opts: &LoadOptions,
        loader: F,
    ) -> std::result::Result<Arc<V>, LoadError<E>>
    where
        E: Send + Sync + 'static,
        F: FnOnce() -> std::result::Result<V, E> + Send + 'static,
    {
        let key = key.as_ref();
        self.get_or_load_entry(key, opts, move |_| loader().map(Loaded::new))
    }

    /// See [`crate::TwoLevelCache::get_or_load_entry`]; `loader` runs on a
    /// thread of the service's blocking pool.
    pub fn get_or_load_entry<E, F>(
        &self,
        key: impl AsRef<str>,
        opts: &LoadOptions,
        loader: F,
    ) -> std::result::Result<Arc<V>, LoadError<E>>
    where
        E: Send + Sync + 'static,
        F: FnOnce(LoadContext<V>) -> std::result::Result<Loaded<V>, E> + Send + 'static,
    {
        let key = key.as_ref();
        opts.validate().map_err(LoadError::InvalidOptions)?;
        // As in `get`: an L1 hit is answered here, without the runtime.
        let first = match self.inner.read_through_hit(key, opts) {
            Ok(value) => return Ok(value),
            Err(step) => step,
        };
        let loader = |ctx| async move {
            match tokio::task::spawn_blocking(move || loader(ctx)).await {
                Ok(r) => r,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        };
        self.rt.block_on(self.inner.load_from(key, opts, loader, first))
    }

    /// See [`crate::TwoLevelCache::get_with`].
    pub fn get_with(&self, key: impl AsRef<str>, opts: &CallOptions) -> Option<Arc<V>> {
        self.rt.block_on(self.inner.get_with(key, opts))
    }

    /// See [`crate::TwoLevelCache::set_with`].
    pub fn set_with(&self, key: impl AsRef<str>, value: V, opts: &CallOptions) -> Result<()> {
        self.rt.block_on(self.inner.set_with(key, value, opts))
    }

    /// See [`crate::TwoLevelCache::delete_with`].
    pub fn delete_with(&self, key: impl AsRef<str>, opts: &CallOptions) -> bool {
        self.rt.block_on(self.inner.delete_with(key, opts))
    }

    /// See [`crate::TwoLevelCache::get_many`].
    pub fn get_many<K: AsRef<str>>(&self, keys: impl IntoIterator<Item = K>) -> Vec<Option<Arc<V>>> {
        self.rt.block_on(self.inner.get_many(keys))
    }

    /// See [`crate::TwoLevelCache::set_many`].
    pub fn set_many<K: AsRef<str>>(&self, entries: impl IntoIterator<Item = (K, V)>) {
        self.rt.block_on(self.inner.set_many(entries))
    }

    /// See [`crate::TwoLevelCache::set_many_with_ttl`].
    pub fn set_many_with_ttl<K: AsRef<str>>(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
        ttl: Option<Duration>,
    ) {
        self.rt.block_on(self.inner.set_many_with_ttl(entries, ttl))
    }

    /// See [`crate::TwoLevelCache::delete_many`].
    pub fn delete_many<K: AsRef<str>>(&self, keys: impl IntoIterator<Item = K>) -> u64 {
        self.rt.block_on(self.inner.delete_many(keys))
    }

    /// See [`crate::TwoLevelCache::get_or_load_many`]; `loader` runs on a
    /// thread of the service's blocking pool.
    pub fn get_or_load_many<K, E, F, R, L>(
        &self,
        keys: impl IntoIterator<Item = K>,
        loader: F,
    ) -> std::result::Result<Vec<Option<Arc<V>>>, LoadError<E>>
    where
        K: AsRef<str>,
        E: Send + Sync + 'static,
        F: FnOnce(Vec<String>) -> std::result::Result<R, E> + Send + 'static,
        R: IntoIterator<Item = (String, L)> + Send + 'static,
        L: Into<Loaded<V>>,
    {
        let loader = |keys| async move {
            match tokio::task::spawn_blocking(move || loader(keys)).await {
                Ok(r) => r,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        };
        self.rt.block_on(self.inner.get_or_load_many(keys, loader))
    }

    /// See [`crate::TwoLevelCache::loader_stats`].
    pub fn loader_stats(&self) -> LoaderStats {
        self.inner.loader_stats()
    }

    /// See [`crate::TwoLevelCache::set_if_not_exist`].
    pub fn set_if_not_exist(&self, key: impl AsRef<str>, value: V, ttl: Option<Duration>) -> bool {
        let key = key.as_ref();
        self.rt.block_on(self.inner.set_if_not_exist(key, value, ttl))
    }

    /// See [`crate::TwoLevelCache::delete`].
    pub fn delete(&self, key: impl AsRef<str>) -> bool {
        let key = key.as_ref();
        self.rt.block_on(self.inner.delete(key))
    }

    /// See [`crate::TwoLevelCache::set_with_tags`].
    pub fn set_with_tags(&self, key: impl AsRef<str>, value: V, tags: &[&str]) {
        let key = key.as_ref();
        self.rt.block_on(self.inner.set_with_tags(key, value, tags))
    }

    /// See [`crate::TwoLevelCache::try_set_with_tags`].
    pub fn try_set_with_tags(
        &self,
        key: impl AsRef<str>,
        value: V,
        ttl: Option<Duration>,
        tags: &[&str],
    ) -> Result<()> {
        let key = key.as_ref();
        self.rt
            .block_on(self.inner.try_set_with_tags(key, value, ttl, tags))
    }

    /// See [`crate::TwoLevelCache::remove_by_tag`].
    pub fn remove_by_tag(&self, tag: &str) -> Result<Invalidation> {
        self.rt.block_on(self.inner.remove_by_tag(tag))
    }

    /// See [`crate::TwoLevelCache::expire_by_tag`].
    pub fn expire_by_tag(&self, tag: &str) -> Result<Invalidation> {
        self.rt.block_on(self.inner.expire_by_tag(tag))
    }

    /// See [`crate::TwoLevelCache::expire`].
    pub fn expire(&self, key: impl AsRef<str>) -> bool {
        let key = key.as_ref();
        self.rt.block_on(self.inner.expire(key))
    }

    /// See [`crate::TwoLevelCache::invalidate_all`].
    pub fn invalidate_all(&self) -> Invalidation {
        self.rt.block_on(self.inner.invalidate_all())
    }

    /// See [`crate::TwoLevelCache::expire_all`].
    pub fn expire_all(&self) -> Invalidation {
        self.rt.block_on(self.inner.expire_all())
    }

    /// See [`crate::TwoLevelCache::clear`].
    pub fn clear(&self) -> ClearReport {
        self.rt.block_on(self.inner.clear())
    }

    /// See [`crate::TwoLevelCache::clear_with_progress`].
    pub fn clear_with_progress(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> ClearReport {
        self.rt.block_on(self.inner.clear_with_progress(progress))
    }

    /// See [`crate::TwoLevelCache::is_on_cache`].
    pub fn is_on_cache(&self, key: impl AsRef<str>) -> bool {
        let key = key.as_ref();
        self.rt.block_on(self.inner.is_on_cache(key))
    }

    /// See [`crate::TwoLevelCache::get_ttl`].
    pub fn get_ttl(&self, key: impl AsRef<str>) -> Option<Duration> {
        let key = key.as_ref();
        self.rt.block_on(self.inner.get_ttl(key))
    }

    /// See [`crate::TwoLevelCache::list_keys`].
    pub fn list_keys(&self, prefix: Option<&str>) -> Vec<String> {
        self.rt.block_on(self.inner.list_keys(prefix))
    }

    /// See [`crate::TwoLevelCache::get_stats`].
    pub fn get_stats(&self) -> CacheStats {
        self.rt.block_on(self.inner.get_stats())
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> CircuitState {
        self.inner.breaker_state()
    }

    /// The async cache behind this one.
    pub fn as_async(&self) -> &crate::Cache<V> {
        &self.inner
    }
}
