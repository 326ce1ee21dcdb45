//! # resilient-cache
//!
//! A two-level cache for Rust services: **L1** is an in-process memory cache
//! (tens of nanoseconds per hit), **L2** is Redis or Valkey, shared by every
//! instance of a service. A **circuit breaker** guards L2, and every L2 failure
//! degrades to L1 instead of reaching the application: *the application never
//! fails, and never waits long, because the cache is sick.*
//!
//! ```no_run
//! use std::time::Duration;
//! use resilient_cache::{CacheFactoryConfig, CacheOptions, CacheService};
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct User { id: u64, name: String }
//!
//! # async fn demo() -> resilient_cache::Result<()> {
//! let service = CacheService::new(CacheFactoryConfig::from_env()?).await?;
//! let users = service.create_cache::<User>(
//!     CacheOptions::new("users").l2_ttl(Duration::from_secs(3600)).l1_ttl(Duration::from_secs(30)),
//! )?;
//! users.set("42", User { id: 42, name: "Ada".into() }).await;
//! if let Some(user) = users.get("42").await {
//!     println!("{}", user.name); // `user` is an Arc<User>: no copy on a hit
//! }
//! # Ok(()) }
//! ```
//!
//! ## How the two levels work together
//!
//! - **get**: L1 first. On an L1 miss, and unless the breaker is open, L2; an
//!   L2 hit is *promoted* into L1. Misses, L2 failures and undecodable bytes
//!   all read as `None`.
//! - **set** is write-through: L2 (with the cache's L2 TTL, or a per-call TTL),
//!   then L1. If L2 fails, L1 still holds the value.
//! - **set_if_not_exist**: L2 decides, atomically (`SET NX PX`); L1 takes the
//!   value only if L2 stored it. Without a usable L2, L1 alone decides.
//! - **delete**: L2 first, then L1, which is always cleaned.
//! - **clear**: this cache's namespace only (`"{prefix}:*"` in L2, by `SCAN`
//!   and `UNLINK`, never `KEYS`), and the report says whether L2 was cleared.
//!
//! L2 keys are `"{key_prefix}:{key}"`, the layout of the Python `resilient-cache`
//! package: with the `json` serializer, both can share a namespace.
//!
//! ## The circuit breaker
//!
//! CLOSED: L2 is used. After `threshold` consecutive L2 failures (connection
//! errors and timeouts — not bad data) it goes OPEN: L2 is skipped entirely, no
//! network call, no waiting, so a dead Redis costs an L1-only cache's price.
//! After `timeout`, HALF_OPEN: exactly one caller probes L2; success closes the
//! breaker, failure re-opens it. The breaker is a handful of atomics: no lock
//! on the hot path.
//!
//! Every L2 call is bounded by `CACHE_REDIS_SOCKET_TIMEOUT`, connection set-up
//! included, and a refused connection fails at once. The service connects
//! lazily and reconnects in the background, so starting with Redis down is
//! fine: caches serve from L1 and use L2 as soon as it answers.
//!
//! ## Consistency model
//!
//! L2 is the shared truth; each process's L1 is a short-lived copy of it. A
//! process always reads its own writes. With the backplane (the default for
//! caches with both levels, see [`backplane`]), every write announces itself
//! over Redis pub/sub and other instances evict their L1 copy within a few
//! milliseconds (a lone write in well under one; a stream of writes is
//! announced once per millisecond) — key by key only while some instance
//! that tracking does not cover asks for it, since tracking tells the
//! others already. With tracking (also the default, for
//! caches with L1 over Redis), Redis itself announces every change
//! to a namespace's keys — by any client, by expiry, by eviction, by
//! `FLUSHDB` — and the key leaves L1, while a process's own writes keep
//! theirs; whenever a notification may have been lost, every tracked L1 is
//! cleared ([`InvalidationSources`], `CACHE_INVALIDATION`). With neither,
//! another process may read a value that was since
//! changed or deleted elsewhere until its L1 entry expires: keep `l1_ttl`
//! short (it defaults to 60 s, and should be shorter than `l2_ttl`).
//! While L2 is unavailable each process works from its own L1; its writes and
//! deletes are queued (last write per key wins) and replayed into L2 when it
//! is back, before L2 values are promoted again, so nothing deleted during an
//! outage comes back. See the README, "Failure modes".
//!
//! L2 can be one server, a Redis Cluster (`CACHE_REDIS_CLUSTER_NODES`: keys
//! route by slot, namespace-wide operations scan every primary) or a
//! Sentinel-managed primary (`CACHE_REDIS_SENTINEL_NODES`: followed across
//! failovers); the rules above hold on all three.
//!
//! ## Invalidation
//!
//! Besides `delete` and `clear`, a cache invalidates by *marker*:
//! [`remove_by_tag`](TwoLevelCache::remove_by_tag),
//! [`expire_by_tag`](TwoLevelCache::expire_by_tag),
//! [`invalidate_all`](TwoLevelCache::invalidate_all) and
//! [`expire_all`](TwoLevelCache::expire_all) cost one L2 command whatever
//! the number of entries they cover, reach every instance (the backplane,
//! and L2 for instances started later) and survive outages (replayed).
//! Entries are judged against the markers as they are read; see [`tags`].
//!
//! ## Loading
//!
//! [`get_or_load`](TwoLevelCache::get_or_load) replaces "get; if missing,
//! load and set": one loader run per key per process (in its own task), and,
//! opt-in, one across instances (a lease in L2). With fail-safe on, entries
//! outlive their TTL as fallbacks for a failing loader; soft and hard
//! timeouts bound the wait; eager refresh reloads hot keys before they
//! expire. A value loaded while the key was written or deleted (here or on
//! another instance) is returned but never stored over that write: every L2
//! write ends the key's lease, and the loaded value is stored only while the
//! lease holds. See [`cache::load`].
//!
//! ## Where things are
//!
//! Imports point one way, down this table: leaves, then the parts (each with
//! its own config and stats), then the composition, then what is built on it.
//!
//! | layer | modules |
//! |---|---|
//! | leaves | [`error`] (one error type; config errors name key, value and what is allowed), `clock` (cheap monotonic time), [`serializer`] (named formats), `counter` (striped counters, log limiter), [`keys`] (`CACHE_*` names, the namespace rule, redaction), [`tags`] (what a tag may be, the tagged layout, invalidation markers) |
//! | parts | [`breaker`] (the breaker and its config); [`backend`] (the [`CacheBackend`] trait, backend config and stats, [`backend::memory`] for L1, [`backend::redis`] for L2: connection, topology, error mapping, the backplane worker; [`backend::registry`] for L2 backends registered by name); [`backplane`] (the invalidation contract the cache sees) |
//! | composition | [`cache`]: [`TwoLevelCache`], one file per concern (reads, writes, the L2 gate, the promotion guard, TTLs, the outage replay, invalidation by key and by marker, events, stats) and [`cache::load`] (`get_or_load`) |
//! | on top | [`config`] ([`CacheFactoryConfig`], [`CacheOptions`]), [`factory`], [`service`], [`blocking`] (the same API without async), and, behind features, `axum`, `metrics` and `testing` (the backend conformance suite, an in-memory L2 and backplane with fault injection, a clock tests move) |
//!
//! The 0.1 paths [`two_level`], [`load`] and [`stats`] remain as re-exports.
//! The test helpers and harnesses (real `redis-server` processes, chaos,
//! coherence, load and stampede runs) are the workspace crate
//! `resilient-cache-testkit` (`crates/testkit`).
//!
//! ## Cargo features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `l1` | yes | the `ttl` (quick_cache) and `lru` (moka) L1 backends |
//! | `redis` | yes | the `redis` and `valkey` L2 backends (the `redis` crate) |
//! | `tls` | no | `rediss://` for L2 (rustls, ring provider) |
//! | `axum` | no | stats/health handlers and `ResponseCacheLayer` for axum |
//! | `metrics` | no | metrics through the `metrics` facade |
//! | `testing` | no | `testing`: the backend conformance suite, `MemoryL2` and `MemoryBackplane` (fault injection), the test clock |
//! | `full` | no | everything above |

#![warn(missing_docs)]

// Every Rust block of the README is compiled as a doctest, so the README
// cannot drift from the API. Its axum and metrics blocks need those features
// (the test command enables every feature).
#[cfg(all(doctest, feature = "axum", feature = "metrics"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(feature = "axum")]
pub mod axum;
pub mod backend;
pub mod backplane;
pub mod blocking;
pub mod breaker;
pub mod cache;
mod clock;
pub mod config;
mod counter;
pub mod error;
pub mod factory;
pub mod keys;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod serializer;
pub mod service;
pub mod tags;
#[cfg(feature = "testing")]
pub mod testing;

/// The composition under its 0.1 name: [`cache`] re-exported.
pub mod two_level {
    pub use crate::cache::{CacheValue, ClearReport, L2ClearStatus, TwoLevelCache, TwoLevelSettings};
}

/// `get_or_load` and its options under their 0.1 path: [`cache::load`] re-exported.
pub mod load {
    pub use crate::cache::load::*;
}

/// Every statistics structure under its 0.1 path.
pub mod stats {
    pub use crate::backend::{L1Stats, L2Stats};
    pub use crate::backplane::{BackplaneStats, TrackingStats};
    pub use crate::breaker::CircuitBreakerStats;
    pub use crate::cache::load::LoaderStats;
    pub use crate::cache::{CacheStats, ErrorStats, RecoveryStats};
    pub use crate::service::ServiceStats;
}

pub use backend::CacheBackend;
pub use breaker::{CircuitBreaker, CircuitState};
pub use cache::load::{LoadContext, LoadError, LoadOptions, Loaded, LoaderStats};
pub use cache::CacheStats;
pub use cache::{
    CacheEvent, CallOptions, ClearReport, EventStream, InvalidatedBy, L2ClearStatus, TwoLevelCache,
    TwoLevelSettings,
};
pub use config::{
    CacheFactoryConfig, CacheOptions, InvalidationSources, L1BackendKind, L1Config, L2BackendKind, L2Config,
    RedisMode, Secret,
};
pub use error::{ConfigError, Error, Result};
pub use factory::{Cache, CacheFactory};
pub use serializer::{get_serializer, list_serializers, register_serializer, CacheSerializer, Serializer};
pub use service::ServiceStats;
pub use service::{CacheService, Health};
