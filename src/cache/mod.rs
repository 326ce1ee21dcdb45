//! The two-level cache: one L1 backend and one L2 backend composed, with the
//! circuit breaker in front of L2.
//!
//! [`TwoLevelCache`] is one type whose methods are grouped by concern, one
//! file each:
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | the type, its settings and the one (validated) constructor |
//! | `lookup.rs` | reads: `get` (the hot path), the lookup steps every read shares, promotion into L1 |
//! | `write.rs` | `set`, `set_if_not_exist`, `delete`, `clear`; the one encoding rule for writes |
//! | `call.rs` | per-call choices (`CallOptions`): `get_with`, `set_with`, `delete_with` |
//! | `batch.rs` | `get_many`, `set_many`, `delete_many`: the single-key rules, L2 asked once per batch |
//! | `gate.rs` | the breaker permit and outcome of each L2 call, the error counters, read-through budgets |
//! | `guard.rs` | the promotion guard (no old value promoted over a newer write) |
//! | `coverage.rs` | a tracked cache's first moments: what L1 took in before tracking covered the namespace, checked against L2 |
//! | `ttl.rs` | logical and physical TTLs (fail-safe), the per-call TTL rule |
//! | `input.rs` | refused input (over-long keys) |
//! | `replay/` | the outage queue (`queue.rs`) and the task that replays it (`driver.rs`) |
//! | `invalidate.rs` | announcing writes on the backplane, evicting on others' announcements |
//! | `markers.rs` | the invalidation markers this process knows, the verdict on an entry, the L1 tag index |
//! | `tagging.rs` | tags on writes, `remove_by_tag`, `expire_by_tag`, `expire`, `invalidate_all`, `expire_all` |
//! | `load/` | `get_or_load`: single flight (`flight.rs`), options (`options.rs`), the store fence (`fence.rs`), what a loader is told and answers (`entry.rs`), `get_or_load_many` (`many.rs`) |
//! | `stats.rs` | what a cache reports |
//! | `events.rs` | what a cache tells its subscribers, as it happens |
//!
//! ## Performance notes
//!
//! The L1 hit is the path every other cost is measured against (tens of
//! nanoseconds), and its shape is deliberate:
//!
//! - `get` runs the lookup's two steps itself instead of awaiting one
//!   `lookup` future, and returns a hit from inside the `match` on the first
//!   step. Awaiting a combined future carries the hit through that future's
//!   state; binding the step to a variable first made the compiler copy it
//!   through the stack in odd-sized pieces (a few ns a hit).
//! - That first step (`get_now`) answers a hit of a cache without
//!   fail-safe as the value itself (`Ok(Arc<V>)`), not as a `Found` inside a
//!   `LookupStep`: the compiler wrote the step to the stack in 8-byte pieces
//!   and read it back 16 bytes at a time, a failed store-to-load forward
//!   that `perf annotate` put at ~45 % of `get`'s own samples. The `blocking`
//!   facade takes the same step.
//! - `lookup_now` is `#[inline(always)]`, `check_key` and `l1_verdict` are
//!   `#[inline]`, and the rare branches (`key_too_long`) are `#[cold]`: a hit
//!   never goes through `dyn` or an out-of-line helper.
//! - `get` carries no read-through budget (`NoBudget` is zero-sized), so its
//!   future is no larger than the L2 read needs.
//! - The rest of a lookup (`lookup_on`) is not boxed to shrink the caller's
//!   future: a 1.3 KB allocation per L2 read cost 8–10 % of L2 throughput at
//!   64 tasks.
//! - Events: a read tells subscribers what it found through `observe`, which
//!   reads one flag (a relaxed load) and builds the event out of line
//!   (`#[cold]`) only while a stream is subscribed.
//! - Invalidation markers never touch the L1 hit: an invalidation evicts (or
//!   makes stale) the L1 entries it covers instead, through an index that
//!   only tagged writes fill. An L2 read checks the first byte for the
//!   tagged layout and reads one flag while no marker is known; it loads the
//!   marker table before a cache's first L2 read (one `HGETALL`), and, for a
//!   cache without a backplane, when the table is more than a second old.
//! - Hit and miss counters are striped per thread (`counter.rs`), and the
//!   memory backends read a clock that a ticker thread keeps current
//!   (`clock.rs`): one atomic load instead of a clock call per hit.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::CacheBackend;
use crate::backplane::InvalidationBus;
use crate::breaker::{CircuitBreaker, CircuitState};
use crate::counter::{Counter, LogLimiter};
use crate::error::{check_duration, config_err, Result};
use crate::keys::{
    check_max_key_bytes, check_max_value_bytes, validate_prefix, DEFAULT_MAX_KEY_BYTES,
    DEFAULT_MAX_VALUE_BYTES,
};
use crate::serializer::Serializer;
use load::LoadOptions;

mod batch;
mod call;
mod coverage;
mod events;
mod gate;
mod guard;
mod input;
mod invalidate;
pub mod load;
mod lookup;
mod markers;
mod replay;
mod stats;
mod tagging;
mod ttl;
mod write;

pub use call::CallOptions;
pub use events::{CacheEvent, EventStream, InvalidatedBy, Level};
pub(crate) use gate::NoBudget;
use guard::PromotionGuard;
pub(crate) use lookup::LookupStep;
use replay::RecoveryQueue;
pub use replay::DEFAULT_REPLAY_CAPACITY;
pub(crate) use stats::StatsSource;
pub use stats::{CacheStats, ErrorStats, InvalidationStats, RecoveryStats};
pub use tagging::{Invalidation, MarkerStatus};
pub use write::{ClearReport, L2ClearStatus};

/// What a cache value must be: serde both ways, shareable across tasks.
pub trait CacheValue: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> CacheValue for T {}

/// A two-level cache over any L1 backend holding `Arc<V>` and any L2 backend
/// holding bytes. Cheap to clone (one `Arc`), `Send + Sync`.
///
/// Most code uses the alias [`Cache<V>`](crate::Cache), built by
/// [`CacheService::create_cache`](crate::CacheService::create_cache).
pub struct TwoLevelCache<V, A, B> {
    inner: Arc<Inner<V, A, B>>,
}

impl<V, A, B> Clone for TwoLevelCache<V, A, B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<V, A, B> {
    flights: load::Flights,
    load: LoadOptions,
    fail_safe: Option<Duration>,
    ttl_jitter: Duration,
    l1_ttl: Duration,
    prefix: String,
    l1: Option<A>,
    l2: Option<B>,
    serializer: Serializer,
    breaker: Arc<CircuitBreaker>,
    l2_ttl: Duration,
    max_key_bytes: usize,
    max_value_bytes: usize,
    bus: Option<Arc<dyn InvalidationBus>>,
    tracking: Option<Arc<dyn crate::backplane::TrackingSource>>,
    queue: RecoveryQueue,
    replay_timer_armed: std::sync::atomic::AtomicBool,
    guard: PromotionGuard,
    /// The keys L1 took in before tracking covered the namespace.
    journal: coverage::Journal,
    markers: markers::Markers,
    tag_index: markers::TagIndex,
    counters: Counters,
    events: events::Events,
    _value: PhantomData<fn() -> V>,
}

/// The cache's own counters (L2 hits and misses, failures by kind, refused
/// input) and the limiter of its warnings.
#[derive(Default)]
struct Counters {
    l2_hits: Counter,
    l2_misses: Counter,
    l2_timeout: Counter,
    l2_refused: Counter,
    l2_connection: Counter,
    l2_auth: Counter,
    decode: Counter,
    encode: Counter,
    l2_skipped: Counter,
    invalid_key: Counter,
    invalid_ttl: Counter,
    invalid_tag: Counter,
    oversize: Counter,
    /// L2 entries read as absent or stale because a marker covers them.
    marker_removed: Counter,
    marker_stale: Counter,
    /// Times L1 and the tag index were cleared because the index was full.
    tag_index_clears: Counter,
    log: LogLimiter,
}

/// How a [`TwoLevelCache`] is put together, besides its two backends.
#[derive(Debug, Clone)]
pub struct TwoLevelSettings {
    /// Namespace (used in stats and logs; the L2 backend applies it to keys).
    pub key_prefix: String,
    /// Serializer for L2.
    pub serializer: Serializer,
    /// The breaker guarding L2; caches of one service may share one.
    pub breaker: Arc<CircuitBreaker>,
    /// L2's default TTL (so that writes queued during an outage keep their deadline).
    pub l2_ttl: Duration,
    /// Distinct keys the outage replay queue holds.
    pub replay_capacity: usize,
    /// Longest key accepted, in bytes.
    pub max_key_bytes: usize,
    /// Largest encoded value accepted (by `set`) or decoded (from L2), in bytes.
    pub max_value_bytes: usize,
    /// Where to announce successful L2 writes so other instances evict their
    /// L1 copies (the backplane); `None` for no cross-instance invalidation.
    pub bus: Option<Arc<dyn InvalidationBus>>,
    /// Where this cache's tracking figures come from, when Redis tells it
    /// about other writers' changes (the factory sets it); `None` otherwise.
    pub tracking: Option<Arc<dyn crate::backplane::TrackingSource>>,
    /// L1's TTL (the L1 backend must keep entries for this plus the fail-safe duration).
    pub l1_ttl: Duration,
    /// How long entries stay past their TTL as fail-safe fallbacks; `None`: no fail-safe.
    pub fail_safe_max_duration: Option<Duration>,
    /// Defaults of [`get_or_load`](TwoLevelCache::get_or_load).
    pub load: LoadOptions,
    /// The random extra of up to this much added to each write's TTL
    /// (see [`CacheOptions::ttl_jitter`](crate::CacheOptions::ttl_jitter)).
    pub ttl_jitter: Duration,
}

impl TwoLevelSettings {
    /// Settings for a cache named `key_prefix` with `serializer`, and the
    /// defaults `CacheOptions` has: a breaker of its own with the default
    /// settings, an L2 TTL of an hour, an L1 TTL of 60 s, a replay queue of
    /// [`DEFAULT_REPLAY_CAPACITY`] keys, the default key and value limits,
    /// no backplane, no fail-safe, default load options. Change any field
    /// with struct update syntax.
    ///
    /// ```
    /// use std::time::Duration;
    /// use resilient_cache::{Serializer, TwoLevelSettings};
    ///
    /// let settings = TwoLevelSettings {
    ///     l2_ttl: Duration::from_secs(600),
    ///     ..TwoLevelSettings::new("users", Serializer::json())
    /// };
    /// assert!(settings.validate().is_ok());
    /// ```
    pub fn new(key_prefix: impl Into<String>, serializer: Serializer) -> Self {
        Self {
            key_prefix: key_prefix.into(),
            serializer,
            breaker: Arc::new(CircuitBreaker::new(Default::default())),
            l2_ttl: Duration::from_secs(3600),
            replay_capacity: DEFAULT_REPLAY_CAPACITY,
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            bus: None,
            tracking: None,
            l1_ttl: Duration::from_secs(60),
            fail_safe_max_duration: None,
            load: LoadOptions::default(),
            ttl_jitter: Duration::ZERO,
        }
    }

    /// Checks every setting by the rules [`CacheOptions`](crate::CacheOptions)
    /// keeps; an error names the `CacheOptions` method that sets the value.
    pub fn validate(&self) -> Result<()> {
        check_settings(&SettingsToCheck {
            key_prefix: &self.key_prefix,
            l1_ttl: Some(self.l1_ttl),
            l2_ttl: Some(self.l2_ttl),
            fail_safe_max_duration: self.fail_safe_max_duration,
            replay_capacity: self.replay_capacity,
            max_value_bytes: self.max_value_bytes,
            max_key_bytes: self.max_key_bytes,
            load: &self.load,
            ttl_jitter: self.ttl_jitter,
        })
    }
}

/// What [`check_settings`] looks at: the settings of one cache, however it
/// is being built (from [`CacheOptions`](crate::CacheOptions) or from
/// [`TwoLevelSettings`]). A level that is off has no TTL to check.
pub(crate) struct SettingsToCheck<'a> {
    pub key_prefix: &'a str,
    pub l1_ttl: Option<Duration>,
    pub l2_ttl: Option<Duration>,
    pub fail_safe_max_duration: Option<Duration>,
    pub replay_capacity: usize,
    pub max_value_bytes: usize,
    pub max_key_bytes: usize,
    pub load: &'a LoadOptions,
    pub ttl_jitter: Duration,
}

/// The rules every cache's settings keep, in one place: a valid namespace,
/// TTLs of at least 1 ms (L1, fail-safe) and 1 s (L2), a replay queue of at
/// least one key, value and key limits within bounds, valid load options.
pub(crate) fn check_settings(s: &SettingsToCheck<'_>) -> Result<()> {
    validate_prefix(s.key_prefix)?;
    if let Some(ttl) = s.l1_ttl {
        check_duration("l1_ttl", ttl, 0.001)?;
    }
    if let Some(ttl) = s.l2_ttl {
        check_duration("l2_ttl", ttl, 1.0)?;
    }
    if let Some(d) = s.fail_safe_max_duration {
        check_duration("fail_safe_max_duration", d, 0.001)?;
    }
    if s.replay_capacity == 0 {
        return Err(config_err("replay_queue_capacity", "0", "an integer >= 1"));
    }
    check_max_value_bytes("max_value_bytes", s.max_value_bytes)?;
    check_max_key_bytes("max_key_bytes", s.max_key_bytes)?;
    if let Some(ttl) = s.l2_ttl.filter(|t| s.ttl_jitter > *t) {
        return Err(config_err(
            "ttl_jitter",
            &format!("{:?}", s.ttl_jitter),
            format!("at most l2_ttl ({ttl:?})"),
        ));
    }
    s.load.validate().map_err(|e| {
        let key = format!("load.{}", e.key());
        e.with_key(key).into()
    })
}

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// Composes two levels (either may be absent) under one breaker, after
    /// checking `settings` ([`TwoLevelSettings::validate`]): an invalid
    /// setting is an [`Error::Configuration`](crate::Error::Configuration)
    /// naming it, the value and what is allowed.
    pub fn new(l1: Option<A>, l2: Option<B>, settings: TwoLevelSettings) -> Result<Self> {
        settings.validate()?;
        // Markers outlive every entry they may cover (tagged entries live no
        // longer than the markers: see `tagging.rs`).
        let longest =
            settings.l2_ttl.max(settings.l1_ttl) + settings.fail_safe_max_duration.unwrap_or_default();
        let marker_lifetime = longest.max(crate::tags::MIN_MARKER_LIFETIME);
        let inner = Arc::new_cyclic(|me: &std::sync::Weak<Inner<V, A, B>>| {
            if let Some(l1) = &l1 {
                // A weak handle: the L1 must not keep its own cache alive.
                let me = me.clone();
                l1.on_evict(Arc::new(move |key| {
                    if let Some(inner) = me.upgrade() {
                        inner.events.emit(|| CacheEvent::Evicted { key });
                    }
                }));
            }
            Inner {
                flights: Default::default(),
                load: settings.load,
                fail_safe: settings.fail_safe_max_duration.filter(|d| !d.is_zero()),
                ttl_jitter: settings.ttl_jitter,
                l1_ttl: settings.l1_ttl,
                prefix: settings.key_prefix,
                l1,
                l2,
                serializer: settings.serializer,
                breaker: settings.breaker,
                l2_ttl: settings.l2_ttl,
                max_key_bytes: settings.max_key_bytes,
                max_value_bytes: settings.max_value_bytes,
                bus: settings.bus,
                tracking: settings.tracking,
                queue: RecoveryQueue::new(settings.replay_capacity),
                replay_timer_armed: Default::default(),
                guard: PromotionGuard::new(),
                journal: coverage::Journal::new(),
                markers: markers::Markers::new(marker_lifetime),
                tag_index: markers::TagIndex::new(),
                counters: Counters::default(),
                events: Default::default(),
                _value: PhantomData,
            }
        });
        Ok(Self { inner })
    }

    pub(crate) fn flights(&self) -> &crate::cache::load::Flights {
        &self.inner.flights
    }

    /// This cache's default [`LoadOptions`].
    pub fn load_defaults(&self) -> &LoadOptions {
        &self.inner.load
    }

    /// Subscribes to this cache's [events](CacheEvent): reads and what
    /// they found, fail-safe and loader outcomes, L2 failures and breaker
    /// changes, invalidations from other instances, outage replays. While no
    /// stream is subscribed, none is built; a stream that falls behind loses
    /// the oldest and counts them ([`EventStream::lagged`]).
    pub fn subscribe(&self) -> EventStream {
        self.inner.events.subscribe()
    }

    /// The namespace.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Whether the cache has an L1 (and so announces its writes, and hears
    /// of other instances' writes, key by key).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn has_l1(&self) -> bool {
        self.inner.l1.is_some()
    }

    /// The breaker guarding L2.
    pub fn circuit_breaker(&self) -> &CircuitBreaker {
        &self.inner.breaker
    }

    /// The serializer used for L2.
    pub fn serializer(&self) -> &Serializer {
        &self.inner.serializer
    }

    /// The breaker's state right now.
    pub fn breaker_state(&self) -> CircuitState {
        self.inner.breaker.state()
    }
}

impl<V, A, B> std::fmt::Debug for TwoLevelCache<V, A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("key_prefix", &self.inner.prefix)
            .field("l1", &self.inner.l1.is_some())
            .field("l2", &self.inner.l2.is_some())
            .field("serializer", &self.inner.serializer.name())
            .field("breaker", &self.inner.breaker.state())
            .finish()
    }
}

#[cfg(all(test, feature = "l1"))]
mod tests {
    use super::*;
    use crate::backend::config::{L1BackendKind, L1Config};
    use crate::backend::memory::TtlBackend;

    pub(super) type L1Only = TwoLevelCache<String, TtlBackend<Arc<String>>, TtlBackend<Vec<u8>>>;

    pub(super) fn l1(ttl_s: u64) -> TtlBackend<Arc<String>> {
        TtlBackend::new(&L1Config {
            backend: L1BackendKind::Ttl,
            maxsize: 100,
            ttl: Duration::from_secs(ttl_s),
            fail_safe: Duration::ZERO,
        })
    }

    /// A byte store standing in for L2 in unit tests of the composition
    /// (real-Redis behaviour is covered by the integration tests).
    pub(super) fn bytes_store() -> TtlBackend<Vec<u8>> {
        TtlBackend::new(&L1Config {
            backend: L1BackendKind::Ttl,
            maxsize: 100,
            ttl: Duration::from_secs(600),
            fail_safe: Duration::ZERO,
        })
    }

    pub(super) fn settings() -> TwoLevelSettings {
        TwoLevelSettings {
            l2_ttl: Duration::from_secs(600),
            replay_capacity: 100,
            ..TwoLevelSettings::new("t", Serializer::json())
        }
    }

    fn cache(l2: Option<TtlBackend<Vec<u8>>>) -> L1Only {
        TwoLevelCache::new(Some(l1(60)), l2, settings()).unwrap()
    }

    /// The low-level constructor keeps the rules `CacheOptions` keeps: each
    /// bad setting is refused, and the error names it.
    #[test]
    fn new_refuses_what_cache_options_refuse() {
        type Spoil = fn(&mut TwoLevelSettings);
        let bad: [(&str, Spoil); 8] = [
            ("replay_queue_capacity", |s| s.replay_capacity = 0),
            ("l2_key_prefix", |s| s.key_prefix = "a:b".into()),
            ("l2_key_prefix", |s| s.key_prefix = String::new()),
            ("max_value_bytes", |s| s.max_value_bytes = 0),
            ("max_key_bytes", |s| s.max_key_bytes = 0),
            ("l2_ttl", |s| s.l2_ttl = Duration::from_millis(10)),
            ("l1_ttl", |s| s.l1_ttl = Duration::ZERO),
            ("load.eager_refresh", |s| {
                s.load = LoadOptions::new().eager_refresh(2.0)
            }),
        ];
        for (key, spoil) in bad {
            let mut s = settings();
            spoil(&mut s);
            let e = match L1Only::new(Some(l1(60)), None, s) {
                Ok(_) => panic!("{key}: accepted"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(key), "{key}: {e}");
        }
        assert!(L1Only::new(Some(l1(60)), None, settings()).is_ok());
    }

    #[tokio::test]
    async fn l1_only_semantics() {
        let c = cache(None);
        assert_eq!(c.get("a").await, None);
        c.set("a", "1".into()).await;
        assert_eq!(c.get("a").await.as_deref().map(String::as_str), Some("1"));
        assert!(!c.set_if_not_exist("a", "2".into(), None).await);
        assert!(c.set_if_not_exist("b", "2".into(), None).await);
        assert!(c.is_on_cache("b").await);
        assert_eq!(c.list_keys(None).await, vec!["a", "b"]);
        assert!(c.delete("a").await);
        let r = c.clear().await;
        assert_eq!(
            (r.l1_items_removed, r.l2_cleared, r.l2_status),
            (1, false, L2ClearStatus::Disabled)
        );
    }

    #[tokio::test]
    async fn promotion_and_undecodable_bytes() {
        let c = cache(Some(bytes_store()));
        c.set("k", "v".into()).await;
        c.inner.l1.as_ref().unwrap().clear().await.unwrap();
        assert_eq!(c.get("k").await.as_deref().map(String::as_str), Some("v"));
        assert!(
            c.inner.l1.as_ref().unwrap().exists("k").await.unwrap(),
            "promoted"
        );

        let l2 = c.inner.l2.as_ref().unwrap();
        l2.set("bad", b"\xff not json".to_vec(), None).await.unwrap();
        for _ in 0..10 {
            l2.set("bad", b"\xff not json".to_vec(), None).await.unwrap();
            assert_eq!(c.get("bad").await, None);
        }
        let s = c.get_stats().await;
        assert_eq!(s.errors.decode, 10);
        assert_eq!(
            s.circuit_breaker.state,
            CircuitState::Closed,
            "data errors do not open the breaker"
        );
        assert!(!l2.exists("bad").await.unwrap(), "bad key dropped");
    }
}
