//! `MapL2`: an L2 backend as a user of this crate writes one, with its
//! public API only — a `HashMap` behind a mutex, with a configurable
//! latency on every call and a switch that makes every call fail (a lost
//! connection). Not shared between processes, so it is no replacement for
//! Redis: it shows what a backend must do, and gives tests a slow or broken
//! L2 on demand.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use resilient_cache::backend::{L2Config, L2Stats};
use resilient_cache::error::{ConnectionErrorKind, Error};
use resilient_cache::{CacheBackend, Result};

/// Each key's bytes and when they expire (`None`: never).
type Entries = HashMap<String, (Vec<u8>, Option<Instant>)>;

/// One cache's namespace in a map. Keys are the caller's keys: the map
/// belongs to one namespace, so it adds no prefix.
pub struct MapL2 {
    namespace: String,
    default_ttl: Duration,
    latency: Duration,
    down: Arc<AtomicBool>,
    entries: Mutex<Entries>,
}

impl MapL2 {
    /// A backend for the cache `config` describes (its namespace and default TTL).
    pub fn new(config: &L2Config, latency: Duration) -> Self {
        Self::with_namespace(&config.key_prefix, config.ttl, latency)
    }

    /// A backend for `namespace`, whose entries live `default_ttl` unless told.
    pub fn with_namespace(namespace: &str, default_ttl: Duration, latency: Duration) -> Self {
        Self {
            namespace: namespace.to_string(),
            default_ttl,
            latency,
            down: Arc::default(),
            entries: Mutex::default(),
        }
    }

    /// The switch: `true` makes every call fail as a refused connection.
    pub fn down_switch(&self) -> Arc<AtomicBool> {
        self.down.clone()
    }

    /// Every call: the latency, then the switch. A backend reports failures
    /// as errors (the cache counts them, opens its breaker and queues
    /// writes); it never panics.
    async fn call(&self) -> Result<()> {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if self.down.load(Relaxed) {
            return Err(Error::connection(ConnectionErrorKind::Refused, "map_l2 is down"));
        }
        Ok(())
    }

    fn map(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `ttl: None` means the cache's default TTL.
    fn deadline(&self, ttl: Option<Duration>) -> Option<Instant> {
        Some(Instant::now() + ttl.unwrap_or(self.default_ttl))
    }

    /// The live entry under `key` (an expired one is dropped on the way).
    fn live(&self, key: &str) -> Option<(Vec<u8>, Option<Instant>)> {
        let mut map = self.map();
        match map.get(key) {
            Some((_, Some(until))) if *until <= Instant::now() => {
                map.remove(key);
                None
            }
            found => found.cloned(),
        }
    }
}

impl CacheBackend for MapL2 {
    type Value = Vec<u8>;
    type Stats = L2Stats;

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.call().await?;
        Ok(self.live(key).map(|(v, _)| v))
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<()> {
        self.call().await?;
        let until = self.deadline(ttl);
        self.map().insert(key.to_string(), (value, until));
        Ok(())
    }

    async fn set_if_not_exist(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<bool> {
        self.call().await?;
        // Checked and stored under one lock: atomic, as the contract wants.
        let until = self.deadline(ttl);
        let mut map = self.map();
        let now = Instant::now();
        let taken = map
            .get(key)
            .is_some_and(|(_, until)| until.is_none_or(|u| u > now));
        if !taken {
            map.insert(key.to_string(), (value, until));
        }
        Ok(!taken)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.call().await?;
        let live = self.live(key).is_some();
        self.map().remove(key);
        Ok(live)
    }

    async fn clear(&self) -> Result<u64> {
        self.call().await?;
        let mut map = self.map();
        let n = map.len() as u64;
        map.clear();
        Ok(n)
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.call().await?;
        Ok(self.live(key).is_some())
    }

    async fn get_ttl(&self, key: &str) -> Result<Option<Duration>> {
        self.call().await?;
        let now = Instant::now();
        Ok(self.live(key).and_then(|(_, until)| until).map(|u| u - now))
    }

    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Vec<u8>, Option<Duration>)>> {
        // One call, not `get` then `get_ttl`: fail-safe reads need both.
        self.call().await?;
        let now = Instant::now();
        Ok(self.live(key).map(|(v, until)| (v, until.map(|u| u - now))))
    }

    async fn list_keys(&self, prefix: Option<&str>) -> Result<Vec<String>> {
        self.call().await?;
        let now = Instant::now();
        // `prefix` is literal: `*` or `?` in it match only themselves.
        Ok(self
            .map()
            .iter()
            .filter(|(k, (_, until))| {
                until.is_none_or(|u| u > now) && prefix.is_none_or(|p| k.starts_with(p))
            })
            .map(|(k, _)| k.clone())
            .collect())
    }

    async fn get_size(&self) -> Result<u64> {
        Ok(self.list_keys(None).await?.len() as u64)
    }

    async fn get_stats(&self) -> Result<L2Stats> {
        let size = self.get_size().await?;
        Ok(L2Stats {
            available: true,
            size: Some(size),
            ..self.describe()
        })
    }

    fn describe(&self) -> L2Stats {
        L2Stats {
            backend: "map_l2",
            endpoint: "in-process".into(),
            db: 0,
            key_prefix: self.namespace.clone(),
            ttl: self.default_ttl.as_secs_f64(),
            serializer: String::new(),
            available: !self.down.load(Relaxed),
            size: None,
            server: Default::default(),
        }
    }
}
