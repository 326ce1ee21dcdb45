//! L2 backends registered by name at run time: `CACHE_L2_BACKEND=<name>`
//! selects one without a change to this crate.
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
//! A registered backend gets what a built-in one gets from the cache: the
//! breaker, the outage replay, the load path (with leases if it offers them)
//! and stats. The backplane is Redis pub/sub, so caches over a registered L2
//! have none (their L1 copies expire with `l1_ttl`). Only L2 backends can be
//! registered: an L1 backend holds typed values (`Arc<V>`) and sits on the
//! hot path, where a type-erased backend would cost every hit.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::{CacheBackend, L2BackendKind, L2Config, L2Stats};
use crate::error::{config_err, Error, Result};
use crate::keys;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A value with its remaining TTL, as `get_with_ttl` answers.
type WithTtl = super::WithTtl<Vec<u8>>;

/// What makes a registered backend for one cache, from that cache's L2 settings.
type Factory = dyn Fn(&L2Config) -> Result<RegisteredL2> + Send + Sync;

static REGISTRY: RwLock<BTreeMap<&'static str, Arc<Factory>>> = RwLock::new(BTreeMap::new());

/// The L2 names built into this crate (whether or not their feature is compiled in).
const BUILT_IN_L2: &[&str] = &["redis", "valkey"];
/// The L1 names built into this crate.
const BUILT_IN_L1: &[&str] = &["ttl", "lru"];

/// Registers an L2 backend under `name`: `factory` makes one for each cache
/// that selects it (`CACHE_L2_BACKEND=name`), from that cache's
/// [`L2Config`] (its namespace, default TTL, whether writes end leases).
///
/// Names are lowercase ASCII letters, digits, `_` and `-` (at most 64),
/// neither a built-in name nor one registered already: a configuration
/// error names the problem.
pub fn register_l2_backend<B, F>(name: &str, factory: F) -> Result<()>
where
    B: CacheBackend<Value = Vec<u8>, Stats = L2Stats>,
    F: Fn(&L2Config) -> Result<B> + Send + Sync + 'static,
{
    const ALLOWED: &str = "a new name: lowercase ASCII letters, digits, '_' or '-', at most 64, \
                           not a built-in backend's name nor one registered already";
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    let mut registry = REGISTRY.write().unwrap_or_else(|p| p.into_inner());
    if !valid || BUILT_IN_L2.contains(&name) || BUILT_IN_L1.contains(&name) || registry.contains_key(name) {
        return Err(config_err(keys::L2_BACKEND, name, ALLOWED));
    }
    let name: &'static str = Box::leak(name.to_string().into_boxed_str());
    registry.insert(
        name,
        Arc::new(move |config: &L2Config| factory(config).map(RegisteredL2::new)),
    );
    Ok(())
}

/// The registered L2 name equal to `name`, if any.
pub(crate) fn registered_l2(name: &str) -> Option<&'static str> {
    let registry = REGISTRY.read().unwrap_or_else(|p| p.into_inner());
    registry.get_key_value(name).map(|(k, _)| *k)
}

/// Builds the registered backend `name` for one cache.
pub(crate) fn build_l2(name: &str, config: &L2Config) -> Result<RegisteredL2> {
    let factory = REGISTRY
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
        .cloned();
    match factory {
        Some(factory) => factory(config),
        None => Err(config_err(keys::L2_BACKEND, name, "a registered backend")),
    }
}

/// The backend names a configuration may use in this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendNames {
    /// `CACHE_L1_BACKEND` values (the built-in ones compiled in).
    pub l1: Vec<&'static str>,
    /// `CACHE_L2_BACKEND` values: the built-in ones compiled in, then the registered ones.
    pub l2: Vec<&'static str>,
}

/// Every backend name usable now.
pub fn list_backends() -> BackendNames {
    let l1 = if cfg!(feature = "l1") {
        BUILT_IN_L1.to_vec()
    } else {
        Vec::new()
    };
    let mut l2 = if cfg!(feature = "redis") {
        BUILT_IN_L2.to_vec()
    } else {
        Vec::new()
    };
    l2.extend(REGISTRY.read().unwrap_or_else(|p| p.into_inner()).keys());
    BackendNames { l1, l2 }
}

/// A `CACHE_L2_BACKEND` value: trimmed and lower-cased, a built-in name or a
/// registered one; otherwise an error listing every accepted name.
impl FromStr for L2BackendKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "redis" => Ok(Self::Redis),
            "valkey" => Ok(Self::Valkey),
            other => registered_l2(other).map(Self::Registered).ok_or_else(|| {
                let mut names = BUILT_IN_L2.to_vec();
                names.extend(REGISTRY.read().unwrap_or_else(|p| p.into_inner()).keys());
                config_err(keys::L2_BACKEND, s, format!("one of: {}", names.join(", ")))
            }),
        }
    }
}

/// [`CacheBackend`] for bytes, callable through a pointer (boxed futures).
trait DynL2: Send + Sync {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>>;
    fn set<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Option<Duration>) -> BoxFuture<'a, Result<()>>;
    fn set_if_not_exist<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool>>;
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>>;
    fn clear(&self) -> BoxFuture<'_, Result<u64>>;
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>>;
    fn get_ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Duration>>>;
    fn list_keys<'a>(&'a self, prefix: Option<&'a str>) -> BoxFuture<'a, Result<Vec<String>>>;
    fn get_size(&self) -> BoxFuture<'_, Result<u64>>;
    fn get_stats(&self) -> BoxFuture<'_, Result<L2Stats>>;
    fn describe(&self) -> L2Stats;
    fn get_with_ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<WithTtl>>;
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
        value: Vec<u8>,
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> BoxFuture<'a, Result<Option<bool>>>;
    fn clear_with_progress<'a>(
        &'a self,
        progress: &'a (dyn Fn(u64) + Send + Sync),
    ) -> BoxFuture<'a, Result<u64>>;
    fn operation_timeout(&self) -> Option<Duration>;
    fn release_lease<'a>(&'a self, key: &'a str, token: u64) -> BoxFuture<'a, Result<()>>;
    fn load_markers(&self) -> BoxFuture<'_, Result<Option<crate::backend::MarkerFields>>>;
    fn put_marker<'a>(&'a self, field: &'a str, at_us: u64, keep: Duration) -> BoxFuture<'a, Result<bool>>;
    fn expire_in<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool>>;
    fn get_many<'a>(&'a self, keys: &'a [&'a str], with_ttl: bool) -> BoxFuture<'a, Result<Vec<WithTtl>>>;
    fn set_many<'a>(
        &'a self,
        entries: Vec<(&'a str, Vec<u8>, Option<Duration>)>,
    ) -> BoxFuture<'a, Result<()>>;
    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>>;
}

impl<B: CacheBackend<Value = Vec<u8>, Stats = L2Stats>> DynL2 for B {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>>> {
        Box::pin(CacheBackend::get(self, key))
    }
    fn set<'a>(&'a self, key: &'a str, value: Vec<u8>, ttl: Option<Duration>) -> BoxFuture<'a, Result<()>> {
        Box::pin(CacheBackend::set(self, key, value, ttl))
    }
    fn set_if_not_exist<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
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
    fn get_stats(&self) -> BoxFuture<'_, Result<L2Stats>> {
        Box::pin(CacheBackend::get_stats(self))
    }
    fn describe(&self) -> L2Stats {
        CacheBackend::describe(self)
    }
    fn get_with_ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<WithTtl>> {
        Box::pin(CacheBackend::get_with_ttl(self, key))
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
        value: Vec<u8>,
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
    fn get_many<'a>(&'a self, keys: &'a [&'a str], with_ttl: bool) -> BoxFuture<'a, Result<Vec<WithTtl>>> {
        Box::pin(CacheBackend::get_many(self, keys, with_ttl))
    }
    fn set_many<'a>(
        &'a self,
        entries: Vec<(&'a str, Vec<u8>, Option<Duration>)>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(CacheBackend::set_many(self, entries))
    }
    fn delete_many<'a>(&'a self, keys: &'a [&'a str]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(CacheBackend::delete_many(self, keys))
    }
}

/// A registered L2 backend, as a cache holds it: any byte backend behind one
/// pointer, every method (the optional ones too) forwarded.
pub struct RegisteredL2(Box<dyn DynL2>);

impl RegisteredL2 {
    /// Wraps `backend`.
    pub fn new(backend: impl CacheBackend<Value = Vec<u8>, Stats = L2Stats>) -> Self {
        Self(Box::new(backend))
    }
}

impl CacheBackend for RegisteredL2 {
    type Value = Vec<u8>;
    type Stats = L2Stats;

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.0.get(key).await
    }
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<()> {
        self.0.set(key, value, ttl).await
    }
    async fn set_if_not_exist(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<bool> {
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
    async fn get_stats(&self) -> Result<L2Stats> {
        self.0.get_stats().await
    }
    fn describe(&self) -> L2Stats {
        self.0.describe()
    }
    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Vec<u8>, Option<Duration>)>> {
        self.0.get_with_ttl(key).await
    }
    async fn lease(&self, key: &str, token: u64, ttl: Duration, exclusive: bool) -> Result<Option<bool>> {
        self.0.lease(key, token, ttl, exclusive).await
    }
    async fn store_if_leased(
        &self,
        key: &str,
        token: u64,
        value: Vec<u8>,
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
    async fn get_many(&self, keys: &[&str], with_ttl: bool) -> Result<Vec<WithTtl>> {
        self.0.get_many(keys, with_ttl).await
    }
    async fn set_many(&self, entries: Vec<(&str, Vec<u8>, Option<Duration>)>) -> Result<()> {
        self.0.set_many(entries).await
    }
    async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        self.0.delete_many(keys).await
    }
}
