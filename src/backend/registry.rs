//! Backends registered by name at run time: `CACHE_L1_BACKEND=<name>` and
//! `CACHE_L2_BACKEND=<name>` select one without a change to this crate.
//!
//! Register before the configuration is read (the name is checked then):
//!
//! ```
//! use std::sync::Arc;
//! use resilient_cache::backend::registry::{list_backends, register_l2_backend};
//! use resilient_cache::testing::MemoryL2;
//! use resilient_cache::CacheFactoryConfig;
//!
//! register_l2_backend("in_memory_doc", |_l2| Ok(MemoryL2::new())).unwrap();
//! let config = CacheFactoryConfig::from_map([("CACHE_L2_BACKEND", "in_memory_doc")]).unwrap();
//! assert_eq!(config.l2_backend.name(), "in_memory_doc");
//! assert!(list_backends().l2.contains(&"in_memory_doc"));
//! ```
//!
//! A registered L2 gets what a built-in one gets from the cache: the
//! breaker, the outage replay, the load path (with leases if it offers them)
//! and stats. The backplane is Redis pub/sub, so caches over a registered L2
//! have none (their L1 copies expire with `l1_ttl`).
//!
//! A registered L1 holds values of any type, as [`AnyValue`]
//! (`Arc<dyn Any + Send + Sync>`): one registration serves every cache,
//! whatever its value type. The cache hands it the same allocation its
//! callers get (no copy, no encoding) and checks the type on the way out (a
//! value of another type reads as a miss). The price, against the built-in
//! `ttl` and `lru`, is one call through a pointer per L1 read and a boxed
//! future when the backend cannot answer at once
//! ([`get_with_ttl_now`](CacheBackend::get_with_ttl_now) answers without one).
//! It gets fail-safe, the promotion guard, invalidation from the backplane
//! and tracking, and stats like a built-in one.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::{CacheBackend, L1BackendKind, L1Config, L1Stats, L2BackendKind, L2Config, L2Stats};
use crate::error::{config_err, Error, Result};
use crate::keys;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A value with its remaining TTL, as `get_with_ttl` answers.
type WithTtl<T> = super::WithTtl<T>;

/// A value as a registered L1 backend holds it: any cache's `Arc<V>`, its
/// type erased (the same allocation).
pub type AnyValue = Arc<dyn Any + Send + Sync>;

/// What makes a registered L2 backend for one cache, from that cache's L2 settings.
type L2Factory = dyn Fn(&L2Config) -> Result<RegisteredL2> + Send + Sync;
/// What makes a registered L1 backend for one cache, from that cache's L1 settings.
type L1Factory = dyn Fn(&L1Config) -> Result<Registered<AnyValue, L1Stats>> + Send + Sync;

/// The registered L2 backends (`CACHE_L2_BACKEND`).
pub(crate) static L2: Registry<L2Factory> =
    Registry::new(L2BackendKind::NAMES, keys::L2_BACKEND, cfg!(feature = "redis"));
/// The registered L1 backends (`CACHE_L1_BACKEND`).
pub(crate) static L1: Registry<L1Factory> =
    Registry::new(L1BackendKind::NAMES, keys::L1_BACKEND, cfg!(feature = "l1"));

/// One level's backends registered by name, beside its built-in ones.
pub(crate) struct Registry<F: ?Sized> {
    factories: RwLock<BTreeMap<&'static str, Arc<F>>>,
    built_in: &'static [&'static str],
    /// The configuration key that names a backend of this level.
    key: &'static str,
    /// Whether the built-in ones are compiled in.
    compiled: bool,
}

impl<F: ?Sized> Registry<F> {
    const fn new(built_in: &'static [&'static str], key: &'static str, compiled: bool) -> Self {
        Self {
            factories: RwLock::new(BTreeMap::new()),
            built_in,
            key,
            compiled,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<&'static str, Arc<F>>> {
        self.factories.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The registered name equal to `name`, if any.
    pub fn name(&self, name: &str) -> Option<&'static str> {
        self.read().get_key_value(name).map(|(k, _)| *k)
    }

    /// Registers `factory` under `name`, if the name is valid and free in
    /// this registry and in `other` (names are unique across levels); the
    /// name is leaked, to live as long as the registry.
    fn insert<G: ?Sized>(&self, name: &str, factory: Arc<F>, other: &Registry<G>) -> Result<()> {
        const ALLOWED: &str = "a new name: lowercase ASCII letters, digits, '_' or '-', at most 64, \
                               not a built-in backend's name nor one registered already";
        // Registrations one at a time, so that a name is checked against
        // the other level and inserted in this one without holding both
        // levels' locks at once (two registrations of opposite levels would
        // otherwise wait on each other).
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let in_other = other.name(name).is_some();
        let mut factories = self.factories.write().unwrap_or_else(|p| p.into_inner());
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        let taken = factories.contains_key(name)
            || in_other
            || self.built_in.contains(&name)
            || other.built_in.contains(&name);
        if !valid || taken {
            return Err(config_err(self.key, name, ALLOWED));
        }
        factories.insert(Box::leak(name.to_string().into_boxed_str()), factory);
        Ok(())
    }

    /// The factory registered as `name`, or a configuration error.
    fn factory(&self, name: &str) -> Result<Arc<F>> {
        self.read()
            .get(name)
            .cloned()
            .ok_or_else(|| config_err(self.key, name, "a registered backend"))
    }

    /// Every name usable now: the built-in ones compiled in, then the registered ones.
    fn usable(&self) -> Vec<&'static str> {
        let mut names = if self.compiled {
            self.built_in.to_vec()
        } else {
            Vec::new()
        };
        names.extend(self.read().keys());
        names
    }

    /// The error for a name no backend answers to: every accepted name listed.
    pub fn unknown(&self, given: &str) -> Error {
        let mut names = self.built_in.to_vec();
        names.extend(self.read().keys());
        config_err(self.key, given, format!("one of: {}", names.join(", ")))
    }
}

/// Registers an L2 backend under `name`: `factory` makes one for each cache
/// that selects it (`CACHE_L2_BACKEND=name`), from that cache's
/// [`L2Config`] (its namespace, default TTL, whether writes end leases).
///
/// Names are lowercase ASCII letters, digits, `_` and `-` (at most 64),
/// neither a built-in name nor one registered already (as L1 or L2): a
/// configuration error names the problem.
pub fn register_l2_backend<B, F>(name: &str, factory: F) -> Result<()>
where
    B: CacheBackend<Value = Vec<u8>, Stats = L2Stats>,
    F: Fn(&L2Config) -> Result<B> + Send + Sync + 'static,
{
    let factory = move |config: &L2Config| factory(config).map(RegisteredL2::new);
    L2.insert(name, Arc::new(factory), &L1)
}

/// Registers an L1 backend under `name`: `factory` makes one for each cache
/// that selects it (`CACHE_L1_BACKEND=name`), from that cache's
/// [`L1Config`] (its size bound, TTL and fail-safe extra). The backend
/// stores [`AnyValue`]s, so one registration serves caches of every value
/// type. Names follow the rules of [`register_l2_backend`].
///
/// ```
/// use resilient_cache::backend::memory::TtlBackend;
/// use resilient_cache::backend::registry::{register_l1_backend, AnyValue};
/// use resilient_cache::CacheFactoryConfig;
///
/// // Any `CacheBackend<Value = AnyValue, Stats = L1Stats>`; here the built-in map, for brevity.
/// register_l1_backend("my_l1_doc", |l1| Ok(TtlBackend::<AnyValue>::new(l1))).unwrap();
/// let config = CacheFactoryConfig::from_map([("CACHE_L1_BACKEND", "my_l1_doc")]).unwrap();
/// assert_eq!(config.l1_backend.name(), "my_l1_doc");
/// ```
pub fn register_l1_backend<B, F>(name: &str, factory: F) -> Result<()>
where
    B: CacheBackend<Value = AnyValue, Stats = L1Stats>,
    F: Fn(&L1Config) -> Result<B> + Send + Sync + 'static,
{
    let factory = move |config: &L1Config| factory(config).map(Registered::new);
    L1.insert(name, Arc::new(factory), &L2)
}

/// Builds the registered L2 backend `name` for one cache.
pub(crate) fn build_l2(name: &str, config: &L2Config) -> Result<RegisteredL2> {
    L2.factory(name)?(config)
}

/// Builds the registered L1 backend `name` for one cache of `V` values.
pub(crate) fn build_l1<V: Send + Sync + 'static>(name: &str, config: &L1Config) -> Result<RegisteredL1<V>> {
    let inner = L1.factory(name)?(config)?;
    Ok(RegisteredL1 {
        inner,
        values: PhantomData,
    })
}

/// The backend names a configuration may use in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendNames {
    /// `CACHE_L1_BACKEND` values: the built-in ones compiled in, then the registered ones.
    pub l1: Vec<&'static str>,
    /// `CACHE_L2_BACKEND` values: the built-in ones compiled in, then the registered ones.
    pub l2: Vec<&'static str>,
}

/// Every backend name usable now.
pub fn list_backends() -> BackendNames {
    BackendNames {
        l1: L1.usable(),
        l2: L2.usable(),
    }
}

/// A registered L1 backend as a cache of `V` values holds it: values go in
/// as [`AnyValue`] (the same allocation) and come out as `Arc<V>`; a value
/// of another type (a backend shared by caches of several types, by
/// mistake) reads as a miss.
pub struct RegisteredL1<V> {
    inner: Registered<AnyValue, L1Stats>,
    values: PhantomData<fn() -> V>,
}

impl<V> RegisteredL1<V> {
    /// Wraps `backend` for a cache of `V` values (the registry does this
    /// for every cache that selects a registered name).
    pub fn new(backend: impl CacheBackend<Value = AnyValue, Stats = L1Stats>) -> Self {
        Self {
            inner: Registered::new(backend),
            values: PhantomData,
        }
    }
}

fn typed<V: Send + Sync + 'static>(value: AnyValue) -> Option<Arc<V>> {
    value.downcast::<V>().ok()
}

fn typed_with_ttl<V: Send + Sync + 'static>(found: WithTtl<AnyValue>) -> WithTtl<Arc<V>> {
    let (value, ttl) = found?;
    Some((typed(value)?, ttl))
}

impl<V: Send + Sync + 'static> CacheBackend for RegisteredL1<V> {
    type Value = Arc<V>;
    type Stats = L1Stats;

    async fn get(&self, key: &str) -> Result<Option<Arc<V>>> {
        Ok(self.inner.0.get(key).await?.and_then(typed))
    }
    async fn set(&self, key: &str, value: Arc<V>, ttl: Option<Duration>) -> Result<()> {
        self.inner.0.set(key, value, ttl).await
    }
    async fn set_if_not_exist(&self, key: &str, value: Arc<V>, ttl: Option<Duration>) -> Result<bool> {
        self.inner.0.set_if_not_exist(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.inner.0.delete(key).await
    }
    async fn clear(&self) -> Result<u64> {
        self.inner.0.clear().await
    }
    async fn exists(&self, key: &str) -> Result<bool> {
        self.inner.0.exists(key).await
    }
    async fn get_ttl(&self, key: &str) -> Result<Option<Duration>> {
        self.inner.0.get_ttl(key).await
    }
    async fn list_keys(&self, prefix: Option<&str>) -> Result<Vec<String>> {
        self.inner.0.list_keys(prefix).await
    }
    async fn get_size(&self) -> Result<u64> {
        self.inner.0.get_size().await
    }
    async fn get_stats(&self) -> Result<L1Stats> {
        self.inner.0.get_stats().await
    }
    fn describe(&self) -> L1Stats {
        self.inner.0.describe()
    }
    async fn get_with_ttl(&self, key: &str) -> Result<WithTtl<Arc<V>>> {
        Ok(typed_with_ttl(self.inner.0.get_with_ttl(key).await?))
    }
    fn get_with_ttl_now(&self, key: &str) -> Option<WithTtl<Arc<V>>> {
        self.inner.0.get_with_ttl_now(key).map(typed_with_ttl)
    }
    async fn clear_with_progress(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<u64> {
        self.inner.0.clear_with_progress(progress).await
    }
    async fn expire_in(&self, key: &str, ttl: Duration) -> Result<bool> {
        self.inner.0.expire_in(key, ttl).await
    }
    fn on_evict(&self, hook: super::EvictionHook) -> bool {
        self.inner.0.on_evict(hook)
    }
    async fn get_many(&self, keys: &[&str], with_ttl: bool) -> Result<Vec<WithTtl<Arc<V>>>> {
        let found = self.inner.0.get_many(keys, with_ttl).await?;
        Ok(found.into_iter().map(typed_with_ttl).collect())
    }
    async fn set_many(&self, entries: Vec<(&str, Arc<V>, Option<Duration>)>) -> Result<()> {
        let entries = entries
            .into_iter()
            .map(|(k, v, ttl)| (k, v as AnyValue, ttl))
            .collect();
        self.inner.0.set_many(entries).await
    }
    async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        self.inner.0.delete_many(keys).await
    }
}

/// [`CacheBackend`] callable through a pointer (boxed futures).
trait DynBackend<T, S>: Send + Sync {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<T>>>;
    fn set<'a>(&'a self, key: &'a str, value: T, ttl: Option<Duration>) -> BoxFuture<'a, Result<()>>;
    fn set_if_not_exist<'a>(
        &'a self,
        key: &'a str,
        value: T,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool>>;
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>>;
    fn clear(&self) -> BoxFuture<'_, Result<u64>>;
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>>;
    fn get_ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Duration>>>;
    fn list_keys<'a>(&'a self, prefix: Option<&'a str>) -> BoxFuture<'a, Result<Vec<String>>>;
    fn get_size(&self) -> BoxFuture<'_, Result<u64>>;
    fn get_stats(&self) -> BoxFuture<'_, Result<S>>;
    fn describe(&self) -> S;
    fn get_with_ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<WithTtl<T>>>;
    fn get_with_ttl_now(&self, key: &str) -> Option<WithTtl<T>>;
    fn lease<'a>(
        &'a self,
        key: &'a str,
        token: u64,
        ttl: Duration,
        exclusive: bool,
    ) -> BoxFuture<'a, Result<Option<bool>>>;
    fn store_if_leased<'a>(
        &'a self,
        key: &'a str,
        token: u64,
        value: T,
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> BoxFuture<'a, Result<Option<bool>>>;
    fn clear_with_progress<'a>(
        &'a self,
        progress: &'a (dyn Fn(u64) + Send + Sync),
    ) -> BoxFuture<'a, Result<u64>>;
    fn operation_timeout(&self) -> Option<Duration>;
    fn on_evict(&self, hook: super::EvictionHook) -> bool;
    fn release_lease<'a>(&'a self, key: &'a str, token: u64) -> BoxFuture<'a, Result<()>>;
    fn load_markers(&self) -> BoxFuture<'_, Result<Option<crate::backend::MarkerFields>>>;
    fn put_marker<'a>(&'a self, field: &'a str, at_us: u64, keep: Duration) -> BoxFuture<'a, Result<bool>>;
    fn expire_in<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool>>;
    fn get_many<'a>(&'a self, keys: &'a [&'a str], with_ttl: bool) -> BoxFuture<'a, Result<Vec<WithTtl<T>>>>;
    fn set_many<'a>(&'a self, entries: Vec<(&'a str, T, Option<Duration>)>) -> BoxFuture<'a, Result<()>>;
    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>>;
}

impl<T, S, B: CacheBackend<Value = T, Stats = S>> DynBackend<T, S> for B {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<T>>> {
        Box::pin(CacheBackend::get(self, key))
    }
    fn set<'a>(&'a self, key: &'a str, value: T, ttl: Option<Duration>) -> BoxFuture<'a, Result<()>> {
        Box::pin(CacheBackend::set(self, key, value, ttl))
    }
    fn set_if_not_exist<'a>(
        &'a self,
        key: &'a str,
        value: T,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(CacheBackend::set_if_not_exist(self, key, value, ttl))
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(CacheBackend::delete(self, key))
    }
    fn clear(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(CacheBackend::clear(self))
    }
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(CacheBackend::exists(self, key))
    }
    fn get_ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Duration>>> {
        Box::pin(CacheBackend::get_ttl(self, key))
    }
    fn list_keys<'a>(&'a self, prefix: Option<&'a str>) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(CacheBackend::list_keys(self, prefix))
    }
    fn get_size(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(CacheBackend::get_size(self))
    }
    fn get_stats(&self) -> BoxFuture<'_, Result<S>> {
        Box::pin(CacheBackend::get_stats(self))
    }
    fn describe(&self) -> S {
        CacheBackend::describe(self)
    }
    fn get_with_ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<WithTtl<T>>> {
        Box::pin(CacheBackend::get_with_ttl(self, key))
    }
    fn get_with_ttl_now(&self, key: &str) -> Option<WithTtl<T>> {
        CacheBackend::get_with_ttl_now(self, key)
    }
    fn lease<'a>(
        &'a self,
        key: &'a str,
        token: u64,
        ttl: Duration,
        exclusive: bool,
    ) -> BoxFuture<'a, Result<Option<bool>>> {
        Box::pin(CacheBackend::lease(self, key, token, ttl, exclusive))
    }
    fn store_if_leased<'a>(
        &'a self,
        key: &'a str,
        token: u64,
        value: T,
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> BoxFuture<'a, Result<Option<bool>>> {
        Box::pin(CacheBackend::store_if_leased(
            self,
            key,
            token,
            value,
            ttl,
            only_if_absent,
        ))
    }
    fn clear_with_progress<'a>(
        &'a self,
        progress: &'a (dyn Fn(u64) + Send + Sync),
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(CacheBackend::clear_with_progress(self, progress))
    }
    fn operation_timeout(&self) -> Option<Duration> {
        CacheBackend::operation_timeout(self)
    }
    fn on_evict(&self, hook: super::EvictionHook) -> bool {
        CacheBackend::on_evict(self, hook)
    }
    fn release_lease<'a>(&'a self, key: &'a str, token: u64) -> BoxFuture<'a, Result<()>> {
        Box::pin(CacheBackend::release_lease(self, key, token))
    }
    fn load_markers(&self) -> BoxFuture<'_, Result<Option<crate::backend::MarkerFields>>> {
        Box::pin(CacheBackend::load_markers(self))
    }
    fn put_marker<'a>(&'a self, field: &'a str, at_us: u64, keep: Duration) -> BoxFuture<'a, Result<bool>> {
        Box::pin(CacheBackend::put_marker(self, field, at_us, keep))
    }
    fn expire_in<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool>> {
        Box::pin(CacheBackend::expire_in(self, key, ttl))
    }
    fn get_many<'a>(&'a self, keys: &'a [&'a str], with_ttl: bool) -> BoxFuture<'a, Result<Vec<WithTtl<T>>>> {
        Box::pin(CacheBackend::get_many(self, keys, with_ttl))
    }
    fn set_many<'a>(&'a self, entries: Vec<(&'a str, T, Option<Duration>)>) -> BoxFuture<'a, Result<()>> {
        Box::pin(CacheBackend::set_many(self, entries))
    }
    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(CacheBackend::delete_many(self, keys))
    }
}

/// A registered backend, as a cache holds it: any backend of `T` values
/// behind one pointer, every method (the optional ones too) forwarded.
pub struct Registered<T, S>(Box<dyn DynBackend<T, S>>);

/// A registered L2 backend, as a cache holds it.
pub type RegisteredL2 = Registered<Vec<u8>, L2Stats>;

impl<T, S> Registered<T, S> {
    /// Wraps `backend`.
    pub fn new(backend: impl CacheBackend<Value = T, Stats = S>) -> Self {
        Self(Box::new(backend))
    }
}

impl<T: Clone + Send + Sync + 'static, S: serde::Serialize + Clone + Send + Sync + 'static> CacheBackend
    for Registered<T, S>
{
    type Value = T;
    type Stats = S;

    async fn get(&self, key: &str) -> Result<Option<T>> {
        self.0.get(key).await
    }
    async fn set(&self, key: &str, value: T, ttl: Option<Duration>) -> Result<()> {
        self.0.set(key, value, ttl).await
    }
    async fn set_if_not_exist(&self, key: &str, value: T, ttl: Option<Duration>) -> Result<bool> {
        self.0.set_if_not_exist(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.0.delete(key).await
    }
    async fn clear(&self) -> Result<u64> {
        self.0.clear().await
    }
    async fn exists(&self, key: &str) -> Result<bool> {
        self.0.exists(key).await
    }
    async fn get_ttl(&self, key: &str) -> Result<Option<Duration>> {
        self.0.get_ttl(key).await
    }
    async fn list_keys(&self, prefix: Option<&str>) -> Result<Vec<String>> {
        self.0.list_keys(prefix).await
    }
    async fn get_size(&self) -> Result<u64> {
        self.0.get_size().await
    }
    async fn get_stats(&self) -> Result<S> {
        self.0.get_stats().await
    }
    fn describe(&self) -> S {
        self.0.describe()
    }
    async fn get_with_ttl(&self, key: &str) -> Result<Option<(T, Option<Duration>)>> {
        self.0.get_with_ttl(key).await
    }
    fn get_with_ttl_now(&self, key: &str) -> Option<WithTtl<T>> {
        self.0.get_with_ttl_now(key)
    }
    async fn lease(&self, key: &str, token: u64, ttl: Duration, exclusive: bool) -> Result<Option<bool>> {
        self.0.lease(key, token, ttl, exclusive).await
    }
    async fn store_if_leased(
        &self,
        key: &str,
        token: u64,
        value: T,
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> Result<Option<bool>> {
        self.0
            .store_if_leased(key, token, value, ttl, only_if_absent)
            .await
    }
    async fn clear_with_progress(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<u64> {
        self.0.clear_with_progress(progress).await
    }
    fn operation_timeout(&self) -> Option<Duration> {
        self.0.operation_timeout()
    }
    fn on_evict(&self, hook: super::EvictionHook) -> bool {
        self.0.on_evict(hook)
    }
    async fn release_lease(&self, key: &str, token: u64) -> Result<()> {
        self.0.release_lease(key, token).await
    }
    async fn load_markers(&self) -> Result<Option<crate::backend::MarkerFields>> {
        self.0.load_markers().await
    }
    async fn put_marker(&self, field: &str, at_us: u64, keep: Duration) -> Result<bool> {
        self.0.put_marker(field, at_us, keep).await
    }
    async fn expire_in(&self, key: &str, ttl: Duration) -> Result<bool> {
        self.0.expire_in(key, ttl).await
    }
    async fn get_many(&self, keys: &[&str], with_ttl: bool) -> Result<Vec<WithTtl<T>>> {
        self.0.get_many(keys, with_ttl).await
    }
    async fn set_many(&self, entries: Vec<(&str, T, Option<Duration>)>) -> Result<()> {
        self.0.set_many(entries).await
    }
    async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        self.0.delete_many(keys).await
    }
}
