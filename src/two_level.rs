//! The two-level cache: one L1 backend and one L2 backend composed, with the
//! circuit breaker in front of L2. Every behaviour of SPEC §2 lives here.
//!
//! L2 failures never reach the caller: a connection failure or timeout is a
//! breaker failure, counted, and the operation carries on with L1 alone. A
//! data failure (bytes that do not decode, a value that does not encode) is
//! counted too, but it proves L2 is healthy, so it is a breaker *success*: one
//! corrupt key must not switch L2 off for everyone.

use std::collections::BTreeSet;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::CacheBackend;
use crate::backplane::{Invalidate, InvalidationBus};
use crate::breaker::{CircuitBreaker, CircuitState, Permit};
use crate::clock::{now_ms, unix_now};
use crate::error::{ConnectionErrorKind, Error};
use crate::recovery::{Lookup, PendingOp, RecoveryQueue, Step};
use crate::serializer::Serializer;
use crate::stats::{CacheStats, Counter, ErrorStats, L1Stats, L2Stats, RecoveryStats};

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
    flights: crate::load::Flights,
    load: crate::load::LoadOptions,
    fail_safe: Option<Duration>,
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
    queue: RecoveryQueue,
    replay_timer_armed: std::sync::atomic::AtomicBool,
    guard: PromotionGuard,
    counters: Counters,
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
    oversize: Counter,
    log: LogLimiter,
}

/// Lets through about one warning per second per cache, so an outage does not
/// flood the log; the number of suppressed messages is reported with the next one.
#[derive(Default)]
struct LogLimiter {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// `Some(suppressed)` when this message may be logged.
    fn admit(&self) -> Option<u64> {
        let now = now_ms();
        let last = self.last_ms.load(Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .last_ms
                .compare_exchange(last, now.max(1), Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

/// Keeps an L2 read from promoting a value into L1 after a write or delete of
/// the same key has started: otherwise `get` could read the old value from L2,
/// then put it into L1 *after* a concurrent `set` wrote the new one there.
///
/// Keys are spread over striped words; each holds (writes started) in its high
/// half and (writes in progress) in its low half. A reader snapshots the word
/// before reading L2 and promotes only if no write was in progress then and
/// the word is unchanged afterwards. `clear` moves a cache-wide epoch.
struct PromotionGuard {
    stripes: Box<[AtomicU64]>,
    epoch: AtomicU64,
}

const STRIPES: usize = 256;
const WRITE_STARTED: u64 = 1 << 32;

#[derive(Clone, Copy)]
pub(crate) struct Snapshot {
    word: u64,
    epoch: u64,
}

struct WriteGuard<'a>(&'a AtomicU64);

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        // Ends the write: +1 generation, -1 in progress (a borrow from the low half).
        self.0.fetch_add(WRITE_STARTED - 1, Relaxed);
    }
}

impl PromotionGuard {
    fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
        }
    }

    fn stripe(&self, key: &str) -> &AtomicU64 {
        // FNV-1a: cheap, and good enough to spread keys over stripes.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.as_bytes() {
            h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
        }
        &self.stripes[(h as usize) & (STRIPES - 1)]
    }

    fn write(&self, key: &str) -> WriteGuard<'_> {
        let s = self.stripe(key);
        s.fetch_add(WRITE_STARTED + 1, Relaxed);
        WriteGuard(s)
    }

    fn snapshot(&self, key: &str) -> Snapshot {
        Snapshot {
            word: self.stripe(key).load(Relaxed),
            epoch: self.epoch.load(Relaxed),
        }
    }

    fn may_promote(&self, key: &str, before: Snapshot) -> bool {
        before.word & (WRITE_STARTED - 1) == 0
            && self.stripe(key).load(Relaxed) == before.word
            && self.epoch.load(Relaxed) == before.epoch
    }

    fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Relaxed);
    }
}

/// A load's lease on its key in L2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lease {
    /// Held with this token: the loaded value is stored only while it holds.
    Held(u64),
    /// Another load holds it (distributed lock).
    Busy,
    /// The L2 backend has no leases: the loaded value is written like a `set`.
    Unsupported,
    /// No L2, or it is unavailable: the loaded value stays in L1.
    Unavailable,
}

/// What a loaded value is stored against: the guard snapshot taken before
/// the loader ran, the lease the load holds in L2, and whether the value may
/// only fill an absent key (a load that started from a miss).
#[derive(Clone, Copy)]
pub(crate) struct LoadFence {
    pub(crate) before: Snapshot,
    pub(crate) lease: Lease,
    pub(crate) only_if_absent: bool,
}

/// Which level answered a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    L1,
    L2,
}

/// What a lookup found.
pub(crate) enum Found<V> {
    /// A live entry, with its logical TTL left when asked for and known.
    Fresh {
        value: Arc<V>,
        remaining: Option<Duration>,
        level: Level,
    },
    /// Past its TTL, kept for fail-safe.
    Stale(Arc<V>),
    Miss,
}

impl<V> Found<V> {
    /// The value, if fresh.
    #[inline]
    pub(crate) fn fresh(self) -> Option<Arc<V>> {
        match self {
            Found::Fresh { value, .. } => Some(value),
            _ => None,
        }
    }
}

/// Where a lookup stands after its first, non-awaiting step.
pub(crate) enum LookupStep<V> {
    Done(Found<V>),
    /// L1 must be awaited.
    AwaitL1 {
        want_ttl: bool,
    },
    /// L1 had no fresh entry (maybe a stale one): ask L2.
    AskL2 {
        want_ttl: bool,
        stale: Option<Arc<V>>,
    },
}

/// How long the L2 calls of one operation may wait, all together.
pub(crate) trait CallBudget: Send {
    /// Nothing is left: the operation skips L2.
    fn is_spent(&self) -> bool;
    /// Runs one L2 call within what is left.
    fn bound<T: Send, F>(&mut self, call: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: Future<Output = Result<T, Error>> + Send;
}

/// The budget of a plain operation: each L2 call is bounded by the backend
/// itself, and nothing is added around it (so `get`'s future, on the L1 hit
/// path, stays as small as it was).
pub(crate) struct NoBudget;

impl CallBudget for NoBudget {
    #[inline(always)]
    fn is_spent(&self) -> bool {
        false
    }

    #[inline(always)]
    fn bound<T: Send, F>(&mut self, call: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: Future<Output = Result<T, Error>> + Send,
    {
        call
    }
}

/// What one read-through may still spend waiting for L2, all of its L2
/// calls together (the read, the lease, the fenced store of the loaded
/// value).
#[derive(Clone, Copy, Debug)]
pub(crate) struct L2Budget {
    /// Time left; `None`: no bound beyond the backend's own.
    left: Option<Duration>,
    /// An L2 call of this read-through failed or ran out of time: the rest
    /// of it skips L2 instead of waiting for it again.
    spent: bool,
}

impl L2Budget {
    /// At most `total` for every L2 call together (`None`: unbounded).
    pub(crate) fn new(total: Option<Duration>) -> Self {
        Self {
            left: total,
            spent: false,
        }
    }

    /// Lowers what is left to `at_most`.
    pub(crate) fn cap(&mut self, at_most: Duration) {
        self.left = Some(self.left.map_or(at_most, |l| l.min(at_most)));
    }
}

impl CallBudget for L2Budget {
    fn is_spent(&self) -> bool {
        self.spent || self.left.is_some_and(|l| l.is_zero())
    }

    /// Running out is a timeout (a breaker failure, as the backend's own
    /// timeout would be); any connection failure spends the budget.
    async fn bound<T: Send, F>(&mut self, call: F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>> + Send,
    {
        let r = match self.left {
            None => call.await,
            Some(left) => {
                let started = tokio::time::Instant::now();
                let r = match tokio::time::timeout(left, call).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::connection(
                        ConnectionErrorKind::Timeout,
                        format!("no answer within the read-through's L2 budget ({left:?})"),
                    )),
                };
                self.left = Some(left.saturating_sub(started.elapsed()));
                r
            }
        };
        self.spent |= r.as_ref().is_err_and(Error::is_connection);
        r
    }
}

/// Which way a value failed to cross the serializer.
#[derive(Clone, Copy)]
enum DataOp {
    Encode,
    Decode,
}

/// How an L2 call went, once the breaker has been told.
enum Outcome<T> {
    Done(T),
    /// Connection failure, timeout, or skipped because the breaker is open.
    Unavailable,
    /// L2 answered, the data was bad (counted).
    BadData,
}

impl<T> Outcome<T> {
    fn ok(self) -> Option<T> {
        match self {
            Outcome::Done(v) => Some(v),
            _ => None,
        }
    }
}

/// What `clear` did with L2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum L2ClearStatus {
    /// Every key of the namespace was removed.
    Cleared,
    /// The breaker was open: L2 was not touched; it will be cleared on recovery.
    SkippedBreakerOpen,
    /// L2 failed during the clear; it will be cleared on recovery.
    Failed,
    /// An outage replay is in progress: the clear is queued behind it.
    Deferred,
    /// This cache has no L2.
    Disabled,
}

/// The result of `clear`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClearReport {
    /// Entries removed from L1.
    pub l1_items_removed: u64,
    /// Keys removed from L2.
    pub l2_items_removed: u64,
    /// Whether L2 was actually cleared.
    pub l2_cleared: bool,
    /// Why or why not.
    pub l2_status: L2ClearStatus,
    /// Unix time of the clear.
    pub timestamp: f64,
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
    /// L1's TTL (the L1 backend must keep entries for this plus the fail-safe duration).
    pub l1_ttl: Duration,
    /// How long entries stay past their TTL as fail-safe fallbacks; `None`: no fail-safe.
    pub fail_safe_max_duration: Option<Duration>,
    /// Defaults of [`get_or_load`](TwoLevelCache::get_or_load).
    pub load: crate::load::LoadOptions,
}

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// Composes two levels (either may be absent) under one breaker.
    pub fn new(l1: Option<A>, l2: Option<B>, settings: TwoLevelSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                flights: Default::default(),
                load: settings.load,
                fail_safe: settings.fail_safe_max_duration.filter(|d| !d.is_zero()),
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
                queue: RecoveryQueue::new(settings.replay_capacity),
                replay_timer_armed: Default::default(),
                guard: PromotionGuard::new(),
                counters: Counters::default(),
                _value: PhantomData,
            }),
        }
    }

    pub(crate) fn flights(&self) -> &crate::load::Flights {
        &self.inner.flights
    }

    /// This cache's default [`LoadOptions`](crate::LoadOptions).
    pub fn load_defaults(&self) -> &crate::load::LoadOptions {
        &self.inner.load
    }

    /// The TTLs to hand to L1 and L2 for a write with `ttl`: as given, or,
    /// for a fail-safe cache, the logical TTL plus the fail-safe duration
    /// (entries then stay that much longer, readable as stale).
    fn physical_ttls(&self, ttl: Option<Duration>) -> (Option<Duration>, Option<Duration>) {
        match self.inner.fail_safe {
            None => (ttl, ttl),
            Some(extra) => (
                Some(ttl.unwrap_or(self.inner.l1_ttl).min(self.inner.l1_ttl) + extra),
                Some(ttl.unwrap_or(self.inner.l2_ttl) + extra),
            ),
        }
    }

    /// The logical TTL left of an entry with `physical` left: `Err` when only
    /// its fail-safe time remains (stale).
    fn logical(&self, physical: Option<Duration>) -> Result<Option<Duration>, ()> {
        match (self.inner.fail_safe, physical) {
            (Some(extra), Some(p)) if p <= extra => Err(()),
            (Some(extra), Some(p)) => Ok(Some(p - extra)),
            (_, p) => Ok(p),
        }
    }

    /// The full logical TTL of an entry written with `ttl` into `level`.
    pub(crate) fn full_ttl(&self, ttl: Option<Duration>, level: Level) -> Duration {
        match level {
            Level::L1 => ttl.unwrap_or(self.inner.l1_ttl).min(self.inner.l1_ttl),
            Level::L2 => ttl.unwrap_or(self.inner.l2_ttl),
        }
    }

    /// The namespace.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The breaker guarding L2.
    pub fn circuit_breaker(&self) -> &CircuitBreaker {
        &self.inner.breaker
    }

    /// The serializer used for L2.
    pub fn serializer(&self) -> &Serializer {
        &self.inner.serializer
    }

    /// L2 and a permit to call it, or `None` (no L2, or breaker open: counted).
    fn l2(&self) -> Option<(&B, Permit<'_>)> {
        let l2 = self.inner.l2.as_ref()?;
        match self.inner.breaker.try_acquire() {
            Some(p) => Some((l2, p)),
            None => {
                self.inner.counters.l2_skipped.incr();
                None
            }
        }
    }

    /// Tells the breaker how an L2 call went, counts and logs failures.
    fn settle<T>(&self, permit: Permit<'_>, op: &'static str, r: Result<T, Error>) -> Outcome<T> {
        match r {
            Ok(v) => {
                permit.success();
                tracing::trace!(cache = %self.inner.prefix, op, "L2 call done");
                if self.inner.queue.is_active() {
                    self.kick_replay();
                }
                Outcome::Done(v)
            }
            Err(Error::Connection(c)) => {
                permit.failure();
                let errs = &self.inner.counters;
                match c.kind {
                    ConnectionErrorKind::Timeout => errs.l2_timeout.incr(),
                    ConnectionErrorKind::Refused => errs.l2_refused.incr(),
                    ConnectionErrorKind::Auth => errs.l2_auth.incr(),
                    _ => errs.l2_connection.incr(),
                }
                tracing::trace!(cache = %self.inner.prefix, op, error = %c, "L2 call failed");
                if let Some(suppressed) = errs.log.admit() {
                    tracing::warn!(cache = %self.inner.prefix, op, error = %c, suppressed, "L2 unavailable; serving from L1");
                }
                Outcome::Unavailable
            }
            Err(e) => {
                // L2 answered; the data was bad. Healthy for the breaker.
                permit.success();
                self.data_error(DataOp::Decode, &e);
                Outcome::BadData
            }
        }
    }

    fn data_error(&self, op: DataOp, e: &Error) {
        let errs = &self.inner.counters;
        let op = match op {
            DataOp::Encode => {
                errs.encode.incr();
                "encode"
            }
            DataOp::Decode => {
                errs.decode.incr();
                "decode"
            }
        };
        if let Some(suppressed) = errs.log.admit() {
            tracing::warn!(cache = %self.inner.prefix, op, error = %e, suppressed, "bad cache data ignored");
        }
    }

    /// Tells other instances that `key` (or, with `None`, the namespace) changed in L2.
    fn announce(&self, key: Option<&str>) {
        if let Some(bus) = &self.inner.bus {
            bus.publish(&self.inner.prefix, key);
        }
    }

    /// `Err` for a key longer than the maximum (counted): never truncated.
    #[inline]
    fn check_key(&self, key: &str) -> Result<(), Error> {
        if key.len() <= self.inner.max_key_bytes {
            return Ok(());
        }
        self.key_too_long(key)
    }

    #[cold]
    fn key_too_long(&self, key: &str) -> Result<(), Error> {
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
    fn refused(&self, e: &Error) {
        if let Some(suppressed) = self.inner.counters.log.admit() {
            tracing::warn!(cache = %self.inner.prefix, error = %e, suppressed, "cache input refused");
        }
    }

    /// `Err` (counted, logged) for a per-call TTL under a millisecond: Redis
    /// cannot keep an entry for less, and a zero TTL would store nothing
    /// while reporting success. `None` (the cache's TTL) is always fine.
    fn check_ttl(&self, ttl: Option<Duration>) -> Result<(), Error> {
        match ttl {
            Some(t) if t < Duration::from_millis(1) => {
                self.inner.counters.invalid_ttl.incr();
                let e = Error::InvalidInput(format!("ttl={t:?} is not allowed: at least 1 ms"));
                self.refused(&e);
                Err(e)
            }
            _ => Ok(()),
        }
    }

    /// The value under `key`: L1, then L2 (promoting a hit into L1). Misses,
    /// L2 failures and undecodable bytes all read as `None`. An L1 hit hands
    /// out the stored `Arc`, never a copy.
    pub async fn get(&self, key: &str) -> Option<Arc<V>> {
        // `lookup`'s two steps, spelled out: awaiting `lookup` would carry a
        // hit's result through that future's state. A hit returns from inside
        // the match: binding the step first made the compiler copy it through
        // the stack in odd-sized pieces, and the re-read stalled (~6 ns a hit).
        let step = match self.lookup_now(key, false) {
            LookupStep::Done(found) => return found.fresh(),
            step => step,
        };
        self.lookup_on(key, step, &mut NoBudget).await.fresh()
    }

    /// What the cache holds for `key`: fresh, stale (fail-safe caches only),
    /// or nothing. With `want_ttl`, a fresh entry comes with its logical TTL left.
    /// L2's part, if asked, is spent from `budget`.
    pub(crate) async fn lookup(&self, key: &str, want_ttl: bool, budget: &mut impl CallBudget) -> Found<V> {
        match self.lookup_now(key, want_ttl) {
            LookupStep::Done(found) => found,
            step => self.lookup_on(key, step, budget).await,
        }
    }

    /// The first step of a lookup, without awaiting: L1, when it answers at
    /// once (the memory backends do). An L1 hit, the hot path, is then a
    /// plain call, its result never copied through a future's state. (The
    /// rest, [`lookup_on`](Self::lookup_on), is not boxed to shrink the
    /// caller's future: a 1.3 KB allocation per L2 read cost 8–10 % of L2
    /// throughput at 64 tasks.)
    #[inline(always)]
    pub(crate) fn lookup_now(&self, key: &str, want_ttl: bool) -> LookupStep<V> {
        if self.check_key(key).is_err() {
            return LookupStep::Done(Found::Miss);
        }
        let want_ttl = want_ttl || self.inner.fail_safe.is_some();
        let stale = match self.inner.l1.as_ref().map(|l1| l1.get_with_ttl_now(key)) {
            Some(Some(read)) => match self.l1_verdict(read, want_ttl) {
                Ok(found) => return LookupStep::Done(found),
                Err(stale) => stale,
            },
            Some(None) => return LookupStep::AwaitL1 { want_ttl },
            None => None,
        };
        if self.inner.l2.is_none() {
            return LookupStep::Done(stale.map_or(Found::Miss, Found::Stale));
        }
        LookupStep::AskL2 { want_ttl, stale }
    }

    /// The rest of a lookup after [`lookup_now`](Self::lookup_now); L2's
    /// part, if asked, is spent from `budget`.
    pub(crate) async fn lookup_on(
        &self,
        key: &str,
        step: LookupStep<V>,
        budget: &mut impl CallBudget,
    ) -> Found<V> {
        let (want_ttl, stale) = match step {
            LookupStep::Done(found) => return found,
            LookupStep::AskL2 { want_ttl, stale } => (want_ttl, stale),
            LookupStep::AwaitL1 { want_ttl } => {
                let Some(l1) = &self.inner.l1 else {
                    return Found::Miss;
                };
                let read = if want_ttl {
                    l1.get_with_ttl(key).await
                } else {
                    l1.get(key).await.map(|v| v.map(|v| (v, None)))
                };
                match self.l1_verdict(read.ok().flatten(), want_ttl) {
                    Ok(found) => return found,
                    Err(stale) => (want_ttl, stale),
                }
            }
        };
        match (self.lookup_l2(key, want_ttl, budget).await, stale) {
            (Found::Miss, Some(v)) => Found::Stale(v),
            (found, _) => found,
        }
    }

    /// What an L1 read means: `Ok` is the answer (a fresh entry), `Err` says
    /// to ask L2, carrying the stale entry (fail-safe) found in L1, if any.
    #[inline]
    fn l1_verdict(
        &self,
        read: Option<(Arc<V>, Option<Duration>)>,
        want_ttl: bool,
    ) -> Result<Found<V>, Option<Arc<V>>> {
        let Some((value, ttl)) = read else {
            return Err(None);
        };
        let remaining = if want_ttl { self.logical(ttl) } else { Ok(None) };
        match remaining {
            Ok(remaining) => Ok(Found::Fresh {
                value,
                remaining,
                level: Level::L1,
            }),
            Err(()) => Err(Some(value)),
        }
    }

    async fn lookup_l2(&self, key: &str, want_ttl: bool, budget: &mut impl CallBudget) -> Found<V> {
        let fresh = |value, remaining| Found::Fresh {
            value,
            remaining,
            level: Level::L2,
        };
        if self.inner.l2.is_none() {
            return Found::Miss;
        }
        if self.inner.queue.is_active() {
            self.maybe_kick_replay();
            match self.inner.queue.lookup(key) {
                Lookup::Absent => return Found::Miss,
                Lookup::Value(bytes) => {
                    return match self.decode(key, &bytes, None).await {
                        Some(v) => fresh(v, None),
                        None => Found::Miss,
                    }
                }
                Lookup::NotPending => {}
            }
        }
        let before = self.inner.guard.snapshot(key);
        if budget.is_spent() {
            return Found::Miss;
        }
        let Some((l2, permit)) = self.l2() else {
            return Found::Miss;
        };
        let read = if want_ttl {
            let r = budget.bound(l2.get_with_ttl(key)).await;
            self.settle(permit, "get", r).ok()
        } else {
            let r = budget.bound(l2.get(key)).await;
            self.settle(permit, "get", r).ok().map(|b| b.map(|b| (b, None)))
        };
        let (bytes, physical) = match read {
            Some(Some(found)) => {
                self.inner.counters.l2_hits.incr();
                found
            }
            Some(None) => {
                self.inner.counters.l2_misses.incr();
                return Found::Miss;
            }
            None => return Found::Miss,
        };
        match self.logical(physical) {
            Ok(remaining) => {
                // A fail-safe entry promoted into L1 keeps L2's deadline, not a fresh one.
                let promote_ttl = match (self.inner.fail_safe, physical) {
                    (Some(_), Some(p)) => self.physical_ttls(None).0.map(|t| t.min(p)),
                    _ => None,
                };
                match self.decode(key, &bytes, Some((before, promote_ttl))).await {
                    Some(v) => fresh(v, remaining),
                    None => Found::Miss,
                }
            }
            Err(()) => match self.decode(key, &bytes, None).await {
                Some(v) => Found::Stale(v),
                None => Found::Miss,
            },
        }
    }

    /// Decodes L2 bytes; promotes into L1 (with the given TTL) when `promote`
    /// says no write raced the read.
    async fn decode(
        &self,
        key: &str,
        bytes: &[u8],
        promote: Option<(Snapshot, Option<Duration>)>,
    ) -> Option<Arc<V>> {
        let decoded = if bytes.len() > self.inner.max_value_bytes {
            Err(Error::Serialization(format!(
                "{} bytes stored, more than the maximum of {} (CACHE_MAX_VALUE_BYTES)",
                bytes.len(),
                self.inner.max_value_bytes
            )))
        } else {
            self.inner.serializer.decode::<V>(bytes)
        };
        match decoded {
            Ok(v) => {
                let v = Arc::new(v);
                if let (Some(l1), Some((before, ttl))) = (&self.inner.l1, promote) {
                    if self.inner.guard.may_promote(key, before) {
                        let _ = l1.set(key, v.clone(), ttl).await;
                    }
                }
                Some(v)
            }
            Err(e) => {
                self.data_error(DataOp::Decode, &e);
                // Drop the bad key so the next read does not pay for it again.
                if promote.is_some() {
                    if let Some(l2) = &self.inner.l2 {
                        let _ = l2.delete(key).await;
                    }
                }
                None
            }
        }
    }

    /// Stores `value` in L1 and L2 (write-through) with the cache's TTLs.
    /// Never fails: problems are counted in stats (see [`try_set`](Self::try_set)).
    pub async fn set(&self, key: &str, value: V) {
        let _ = self.try_set_with_ttl(key, value, None).await;
    }

    /// Stores `value` with a per-call TTL (L2 uses it; L1 never keeps an entry
    /// longer than its own TTL). When L2 is unavailable, L1 keeps the value and
    /// the write is replayed into L2 when it is back.
    pub async fn set_with_ttl(&self, key: &str, value: V, ttl: Option<Duration>) {
        let _ = self.try_set_with_ttl(key, value, ttl).await;
    }

    /// [`set`](Self::set) that reports what the caller can fix: a key longer
    /// than the maximum, a value whose encoding is larger than the maximum or
    /// cannot be encoded. Nothing is stored then, in either level, and any
    /// previous value of the key is removed. L2 being unavailable is *not* an
    /// error: the value is in L1 and queued for L2.
    pub async fn try_set(&self, key: &str, value: V) -> Result<(), Error> {
        self.try_set_with_ttl(key, value, None).await
    }

    /// [`try_set`](Self::try_set) with a per-call TTL.
    pub async fn try_set_with_ttl(&self, key: &str, value: V, ttl: Option<Duration>) -> Result<(), Error> {
        self.store(key, Arc::new(value), ttl).await
    }

    /// Write-through of a shared value (what `try_set_with_ttl` does).
    pub(crate) async fn store(&self, key: &str, value: Arc<V>, ttl: Option<Duration>) -> Result<(), Error> {
        self.check_key(key)?;
        self.check_ttl(ttl)?;
        let _write = self.inner.guard.write(key);
        let (l1_ttl, l2_ttl) = self.physical_ttls(ttl);
        if self.inner.l2.is_some() {
            match self.encode_bounded(&value) {
                Ok(bytes) => {
                    let op = PendingOp::set(bytes, l2_ttl.unwrap_or(self.inner.l2_ttl), false);
                    self.write_l2(key, op, Some(&*value)).await;
                }
                Err(e) => {
                    // Neither level may keep serving the previous value for this key.
                    self.write_l2(key, PendingOp::Delete, None).await;
                    if let Some(l1) = &self.inner.l1 {
                        let _ = l1.delete(key).await;
                    }
                    return Err(e);
                }
            }
        }
        if let Some(l1) = &self.inner.l1 {
            let _ = l1.set(key, value, l1_ttl).await;
        }
        Ok(())
    }

    /// `value` encoded for L2. The one rule for every write: a value that
    /// cannot be encoded (counted in `encode`) or whose encoding is larger
    /// than the maximum (counted in `oversize`) is an error, logged, and the
    /// write stores it in neither level.
    fn encode_bounded(&self, value: &V) -> Result<Vec<u8>, Error> {
        let bytes = match self.inner.serializer.encode(value) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.data_error(DataOp::Encode, &e);
                return Err(e);
            }
        };
        if bytes.len() > self.inner.max_value_bytes {
            self.inner.counters.oversize.incr();
            let e = Error::InvalidInput(format!(
                "value of {} bytes encoded is larger than the maximum of {} bytes (CACHE_MAX_VALUE_BYTES)",
                bytes.len(),
                self.inner.max_value_bytes
            ));
            self.refused(&e);
            return Err(e);
        }
        Ok(bytes)
    }

    /// Stores a loaded value only if nothing wrote or deleted `key` since
    /// `fence.before` was taken (before the loader started): on this
    /// instance (the promotion guard, which backplane invalidations move
    /// too) and in L2 (the load lease `fence.lease` held, which every L2
    /// write ends). Returns whether the value was stored.
    pub(crate) async fn store_loaded(
        &self,
        key: &str,
        value: &Arc<V>,
        ttl: Option<Duration>,
        fence: LoadFence,
        budget: &mut L2Budget,
    ) -> bool {
        let LoadFence {
            before,
            lease,
            only_if_absent,
        } = fence;
        if self.check_key(key).is_err() {
            return false;
        }
        let (l1_ttl, l2_ttl) = self.physical_ttls(ttl);
        if lease == Lease::Unsupported && self.inner.l2.is_some() {
            if !self.inner.guard.may_promote(key, before) {
                return false;
            }
            let l2_ttl = l2_ttl.unwrap_or(self.inner.l2_ttl);
            if let Ok(bytes) = self.encode_bounded(value) {
                self.write_l2(key, PendingOp::set(bytes, l2_ttl, false), Some(&**value))
                    .await;
            }
        }
        if let (true, Lease::Held(token)) = (self.inner.l2.is_some(), lease) {
            let Ok(bytes) = self.encode_bounded(value) else {
                return false;
            };
            let l2_ttl = l2_ttl.unwrap_or(self.inner.l2_ttl);
            let stored = self
                .with_l2_within("write", budget, |l2| {
                    l2.store_if_leased(key, token, bytes, Some(l2_ttl), only_if_absent)
                })
                .await;
            match stored {
                Some(Some(true)) => self.announce(Some(key)),
                Some(Some(false)) => return false,
                // L2 failed (or dropped its leases meanwhile): the value stays in L1 only.
                _ => {}
            }
        }
        let Some(l1) = &self.inner.l1 else {
            return true;
        };
        if !self.inner.guard.may_promote(key, before) {
            return false;
        }
        let _ = l1.set(key, value.clone(), l1_ttl).await;
        // A write that started while we stored wins: undo ours (a miss is never wrong).
        if !self.inner.guard.may_promote(key, before) {
            let _ = l1.delete(key).await;
            return false;
        }
        true
    }

    pub(crate) fn snapshot(&self, key: &str) -> Snapshot {
        self.inner.guard.snapshot(key)
    }

    /// Runs one L2 call under the breaker; `None` when there is no L2, or it
    /// is skipped or unavailable.
    pub(crate) async fn with_l2<'a, T, Fut>(
        &'a self,
        op: &'static str,
        call: impl FnOnce(&'a B) -> Fut,
    ) -> Option<T>
    where
        T: Send,
        Fut: Future<Output = Result<T, Error>> + Send,
    {
        self.with_l2_within(op, &mut NoBudget, call).await
    }

    /// [`with_l2`](Self::with_l2) within a read-through's `budget` (skipped,
    /// as `None`, once it is spent).
    pub(crate) async fn with_l2_within<'a, T, Fut>(
        &'a self,
        op: &'static str,
        budget: &mut impl CallBudget,
        call: impl FnOnce(&'a B) -> Fut,
    ) -> Option<T>
    where
        T: Send,
        Fut: Future<Output = Result<T, Error>> + Send,
    {
        if budget.is_spent() {
            return None;
        }
        let (l2, permit) = self.l2()?;
        let r = budget.bound(call(l2)).await;
        self.settle(permit, op, r).ok()
    }

    /// The most a read-through waits for L2, all its calls together: the
    /// backend's operation timeout.
    pub(crate) fn l2_budget(&self) -> L2Budget {
        L2Budget::new(self.inner.l2.as_ref().and_then(|l2| l2.operation_timeout()))
    }

    /// Applies one write to L2 now, or queues it when L2 is unavailable or an
    /// outage replay is still in progress. Returns what L2 said, if it was asked.
    async fn write_l2(&self, key: &str, op: PendingOp, value: Option<&V>) -> Option<bool> {
        let queue = &self.inner.queue;
        if !queue.is_active() || queue.admits_direct(key) {
            if let Some((l2, permit)) = self.l2() {
                // The bytes move into the command (no copy on the hot path); if
                // L2 turns out to be unavailable, the value is encoded again.
                let deadline = match &op {
                    PendingOp::Set { deadline_ms, .. } => {
                        PendingOp::remaining(*deadline_ms).map(|_| *deadline_ms)
                    }
                    _ => None,
                };
                let r = self.send_write(l2, key, op).await;
                match self.settle(permit, "write", r) {
                    Outcome::Done(v) => {
                        self.announce(Some(key));
                        return Some(v);
                    }
                    Outcome::BadData => return None,
                    Outcome::Unavailable => {
                        let op = match (deadline, value.map(|v| self.inner.serializer.encode(v))) {
                            (Some(deadline_ms), Some(Ok(bytes))) => PendingOp::Set { bytes, deadline_ms },
                            _ => PendingOp::Delete,
                        };
                        self.enqueue(key, op);
                        return None;
                    }
                }
            }
        }
        self.enqueue(key, op);
        None
    }

    /// One write, direct or replayed, as L2 calls: a set while its deadline
    /// is ahead (else a delete: the value expired while it waited), a claim
    /// (`SET NX`: if another instance claimed the key meanwhile, L2 wins and
    /// the local L1 claim is dropped), or a delete. `Ok(true)`: L2 stored or
    /// removed something.
    async fn send_write(&self, l2: &B, key: &str, op: PendingOp) -> Result<bool, Error> {
        match op {
            PendingOp::Set { bytes, deadline_ms } => match PendingOp::remaining(deadline_ms) {
                Some(ttl) => l2.set(key, bytes, Some(ttl)).await.map(|_| true),
                None => l2.delete(key).await,
            },
            PendingOp::SetNx { bytes, deadline_ms } => {
                let ttl = PendingOp::remaining(deadline_ms).unwrap_or(Duration::from_millis(1));
                let stored = l2.set_if_not_exist(key, bytes, Some(ttl)).await?;
                if !stored {
                    if let Some(l1) = &self.inner.l1 {
                        let _ = l1.delete(key).await;
                    }
                }
                Ok(stored)
            }
            PendingOp::Delete => l2.delete(key).await,
        }
    }

    fn enqueue(&self, key: &str, op: PendingOp) {
        if !self.inner.queue.push(key, op) {
            if let Some(suppressed) = self.inner.counters.log.admit() {
                tracing::warn!(
                    cache = %self.inner.prefix, suppressed,
                    "outage replay queue full: L2 namespace will be cleared on recovery"
                );
            }
        }
        self.maybe_kick_replay();
    }

    /// Starts the replay unless the breaker says L2 is still down: while
    /// anything is queued, the replay is what probes a recovering L2.
    fn maybe_kick_replay(&self) {
        if self.inner.breaker.state() != CircuitState::Open {
            self.kick_replay();
        } else {
            self.arm_replay_timer();
        }
    }

    /// While L2 is down and writes wait, one timer per cache wakes up when
    /// the breaker allows a probe, so the replay needs no traffic to start.
    fn arm_replay_timer(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.replay_timer_armed.swap(true, Relaxed) {
            return;
        }
        let this = self.clone();
        rt.spawn(async move {
            tokio::time::sleep(this.inner.breaker.time_until_probe()).await;
            this.inner.replay_timer_armed.store(false, Relaxed);
            if this.inner.queue.is_active() {
                this.maybe_kick_replay();
            }
        });
    }

    /// Starts the replay of queued writes in the background, if none is running.
    fn kick_replay(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.queue.begin_drain() {
            let this = self.clone();
            rt.spawn(async move { this.replay().await });
        }
    }

    async fn replay(&self) {
        let queue = &self.inner.queue;
        let Some(l2) = self.inner.l2.as_ref() else { return };
        let mut replayed = 0u64;
        while let Some(step) = queue.next() {
            let Some(permit) = self.inner.breaker.try_acquire() else {
                queue.finish(matches!(step, Step::Clear), false);
                break;
            };
            let (is_clear, outcome) = match step {
                Step::Clear => {
                    let outcome = self.settle(permit, "replay", l2.clear().await.map(|_| ()));
                    if matches!(outcome, Outcome::Done(_)) {
                        self.announce(None);
                    }
                    (true, outcome)
                }
                Step::Op(key, op) => {
                    let r = self.send_write(l2, &key, op).await.map(|_| ());
                    let outcome = self.settle(permit, "replay", r);
                    if matches!(outcome, Outcome::Done(_)) {
                        self.announce(Some(&key));
                    }
                    (false, outcome)
                }
            };
            let ok = !matches!(outcome, Outcome::Unavailable);
            queue.finish(is_clear, ok);
            if !ok {
                break;
            }
            replayed += 1;
        }
        if queue.is_active() {
            // Stopped by a failure (or a new write arrived after the last step).
            self.maybe_kick_replay();
        }
        if replayed > 0 {
            tracing::info!(cache = %self.inner.prefix, replayed, pending = queue.depth(), "outage writes replayed into L2");
        }
    }

    /// Stores `value` only if `key` is absent; `true` if it was stored. L2 is
    /// the source of truth (an atomic `SET NX`): L1 takes the value only if L2
    /// accepted it. Without a usable L2, the same rule applies to L1 alone, and
    /// the winner claims the key in L2 (again with `SET NX`) on recovery.
    pub async fn set_if_not_exist(&self, key: &str, value: V, ttl: Option<Duration>) -> bool {
        if self.check_key(key).is_err() || self.check_ttl(ttl).is_err() {
            return false;
        }
        let _write = self.inner.guard.write(key);
        let value = Arc::new(value);
        let (l1_ttl, ttl) = self.physical_ttls(ttl);
        let mut encoded = None;
        if self.inner.l2.is_some() {
            match self.encode_bounded(&value) {
                // Stored nowhere, as `set` does; the key's current value, if
                // any, stays (nothing was to replace it).
                Err(_) => return false,
                Ok(bytes) if !self.inner.queue.is_active() || self.inner.queue.admits_direct(key) => {
                    match self.l2() {
                        Some((l2, permit)) => {
                            // The bytes move into the command, as in `set`: encoded
                            // again only if L2 fails and the write must be queued.
                            let r = l2.set_if_not_exist(key, bytes, ttl).await;
                            if let Outcome::Done(stored) = self.settle(permit, "set_if_not_exist", r) {
                                if stored {
                                    self.announce(Some(key));
                                    if let Some(l1) = &self.inner.l1 {
                                        let _ = l1.set(key, value, l1_ttl).await;
                                    }
                                }
                                return stored;
                            }
                            encoded = self.inner.serializer.encode(&*value).ok();
                        }
                        None => encoded = Some(bytes),
                    }
                }
                Ok(bytes) => encoded = Some(bytes),
            }
        }
        let stored = match &self.inner.l1 {
            Some(l1) => l1.set_if_not_exist(key, value, l1_ttl).await.unwrap_or(false),
            None => false,
        };
        if let (true, Some(bytes)) = (stored, encoded) {
            self.enqueue(key, PendingOp::set(bytes, ttl.unwrap_or(self.inner.l2_ttl), true));
        }
        stored
    }

    /// Removes `key`: L2 first, then L1 (always, even when L2 fails; the L2
    /// delete is then replayed on recovery). `true` if either level held it.
    pub async fn delete(&self, key: &str) -> bool {
        if self.check_key(key).is_err() {
            return false;
        }
        let _write = self.inner.guard.write(key);
        let mut removed = false;
        if self.inner.l2.is_some() {
            removed |= self.write_l2(key, PendingOp::Delete, None).await.unwrap_or(false);
        }
        if let Some(l1) = &self.inner.l1 {
            removed |= l1.delete(key).await.unwrap_or(false);
        }
        removed
    }

    /// Removes this cache's namespace only: all of L1, and every L2 key under
    /// `"{prefix}:"`. The report says whether L2 was actually cleared; when it
    /// was not, L2 is cleared on recovery and not read for this cache until then.
    pub async fn clear(&self) -> ClearReport {
        self.clear_with_progress(&|_| {}).await
    }

    /// [`clear`](Self::clear), calling `progress` with the number of L2 keys
    /// removed so far after each batch (the `rcache clear` progress bar).
    pub async fn clear_with_progress(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> ClearReport {
        self.inner.guard.bump_epoch();
        let queue = &self.inner.queue;
        let (l2_items_removed, l2_status) = if self.inner.l2.is_none() {
            (0, L2ClearStatus::Disabled)
        } else if queue.is_active() {
            queue.push_clear();
            self.kick_replay();
            (0, L2ClearStatus::Deferred)
        } else if let Some((l2, permit)) = self.l2() {
            let r = l2.clear_with_progress(progress).await;
            match self.settle(permit, "clear", r) {
                Outcome::Done(n) => {
                    self.announce(None);
                    (n, L2ClearStatus::Cleared)
                }
                _ => {
                    queue.push_clear();
                    (0, L2ClearStatus::Failed)
                }
            }
        } else {
            queue.push_clear();
            (0, L2ClearStatus::SkippedBreakerOpen)
        };
        let l1_items_removed = match &self.inner.l1 {
            Some(l1) => l1.clear().await.unwrap_or(0),
            None => 0,
        };
        self.inner.guard.bump_epoch();
        ClearReport {
            l1_items_removed,
            l2_items_removed,
            l2_cleared: l2_status == L2ClearStatus::Cleared,
            l2_status,
            timestamp: unix_now(),
        }
    }

    /// Whether `key` is in L1 or L2.
    pub async fn is_on_cache(&self, key: &str) -> bool {
        if self.check_key(key).is_err() {
            return false;
        }
        if let Some(l1) = &self.inner.l1 {
            if l1.exists(key).await.unwrap_or(false) {
                return true;
            }
        }
        self.inner.l2.as_ref().is_some() && {
            match self.pending(key) {
                Some(present) => present,
                None => self.with_l2("exists", |l2| l2.exists(key)).await.unwrap_or(false),
            }
        }
    }

    /// `Some(present)` when the recovery queue decides for `key`.
    fn pending(&self, key: &str) -> Option<bool> {
        if !self.inner.queue.is_active() {
            return None;
        }
        self.maybe_kick_replay();
        match self.inner.queue.lookup(key) {
            Lookup::NotPending => None,
            Lookup::Absent => Some(false),
            Lookup::Value(_) => Some(true),
        }
    }

    /// How long the entry under `key` stays fresh: the shared entry's
    /// remaining TTL in L2 when L2 answers and holds it (that is how long
    /// every instance can read it), else this instance's L1 copy's real
    /// remaining TTL (L2 unavailable, the key's write still queued for L2, or
    /// a cache without L2). `None` when absent, stale (fail-safe time only)
    /// or without expiry. Asks L2 even when L1 holds the key.
    pub async fn get_ttl(&self, key: &str) -> Option<Duration> {
        self.check_key(key).ok()?;
        if self.inner.l2.is_some() && self.pending(key).is_none() {
            if let Some(Some(t)) = self.with_l2("get_ttl", |l2| l2.get_ttl(key)).await {
                return self.logical(Some(t)).ok().flatten();
            }
        }
        let l1 = self.inner.l1.as_ref()?;
        let t = l1.get_ttl(key).await.ok().flatten()?;
        self.logical(Some(t)).ok().flatten()
    }

    /// Keys (without the namespace) in L1 or L2 that start with `prefix`
    /// literally; sorted, without duplicates.
    pub async fn list_keys(&self, prefix: Option<&str>) -> Vec<String> {
        if prefix.is_some_and(|p| self.check_key(p).is_err()) {
            return Vec::new();
        }
        let mut keys = BTreeSet::new();
        if let Some(l1) = &self.inner.l1 {
            keys.extend(l1.list_keys(prefix).await.unwrap_or_default());
        }
        keys.extend(
            self.with_l2("list_keys", |l2| l2.list_keys(prefix))
                .await
                .unwrap_or_default(),
        );
        keys.into_iter().collect()
    }

    /// Figures for both levels, the breaker, the error counters and the
    /// recovery queue. L2 is asked only while the breaker is closed (bounded by
    /// the operation timeout).
    pub async fn get_stats(&self) -> CacheStats<A::Stats, B::Stats> {
        self.stats_asking_l2(true).await
    }

    /// Stats; with `ask_l2` false, L2's part is what is known without I/O
    /// (health checks and metrics scrapes must not scan namespaces).
    pub(crate) async fn stats_asking_l2(&self, ask_l2: bool) -> CacheStats<A::Stats, B::Stats> {
        let l1 = match &self.inner.l1 {
            Some(l1) => l1.get_stats().await.ok(),
            None => None,
        };
        let l2 = match &self.inner.l2 {
            None => None,
            // Only a closed breaker lets stats reach L2: stats must not spend
            // the single half-open probe meant for real traffic.
            Some(l2) if !ask_l2 => Some(l2.describe()),
            Some(l2) => Some(match self.inner.breaker.try_acquire().filter(|p| !p.is_probe()) {
                Some(permit) => {
                    let r = l2.get_stats().await;
                    self.settle(permit, "stats", r)
                        .ok()
                        .unwrap_or_else(|| l2.describe())
                }
                None => l2.describe(),
            }),
        };
        let e = &self.inner.counters;
        let q = &self.inner.queue;
        CacheStats {
            key_prefix: self.inner.prefix.clone(),
            l1,
            l2,
            circuit_breaker: self.inner.breaker.get_stats(),
            errors: ErrorStats {
                l2_timeout: e.l2_timeout.get(),
                l2_refused: e.l2_refused.get(),
                l2_connection: e.l2_connection.get(),
                l2_auth: e.l2_auth.get(),
                decode: e.decode.get(),
                encode: e.encode.get(),
                l2_skipped: e.l2_skipped.get(),
                invalid_key: e.invalid_key.get(),
                invalid_ttl: e.invalid_ttl.get(),
                oversize: e.oversize.get(),
            },
            recovery: RecoveryStats {
                queue_depth: q.depth() as u64,
                queue_capacity: q.capacity() as u64,
                clear_pending: q.clear_pending(),
                overflow: q.overflow.get(),
                replayed: q.replayed.get(),
            },
            backplane: self.inner.bus.as_ref().map(|b| b.stats()),
            loader: self.inner.flights.stats(),
            l2_hits: e.l2_hits.get(),
            l2_misses: e.l2_misses.get(),
        }
    }

    /// The breaker's state right now.
    pub fn breaker_state(&self) -> CircuitState {
        self.inner.breaker.state()
    }
}

impl<V, A, B> Invalidate for Inner<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    fn invalidate(self: Arc<Self>, key: Option<String>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let Some(l1) = &self.l1 else { return };
            match key {
                Some(key) => {
                    // Moving the guard stops an L2 read in flight from promoting the old value.
                    let _write = self.guard.write(&key);
                    let _ = l1.delete(&key).await;
                }
                None => {
                    self.guard.bump_epoch();
                    let _ = l1.clear().await;
                    self.guard.bump_epoch();
                }
            }
        })
    }
}

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn invalidation_target(&self) -> Weak<dyn Invalidate> {
        let weak: Weak<Inner<V, A, B>> = Arc::downgrade(&self.inner);
        weak
    }
}

/// What the service keeps of each cache to report its stats.
pub(crate) trait StatsSource: Send + Sync {
    /// See [`TwoLevelCache::stats_asking_l2`].
    fn stats(self: Arc<Self>, ask_l2: bool) -> Pin<Box<dyn Future<Output = CacheStats> + Send>>;
}

impl<V, A, B> StatsSource for Inner<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>, Stats = L1Stats>,
    B: CacheBackend<Value = Vec<u8>, Stats = L2Stats>,
{
    fn stats(self: Arc<Self>, ask_l2: bool) -> Pin<Box<dyn Future<Output = CacheStats> + Send>> {
        Box::pin(async move { TwoLevelCache { inner: self }.stats_asking_l2(ask_l2).await })
    }
}

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>, Stats = L1Stats>,
    B: CacheBackend<Value = Vec<u8>, Stats = L2Stats>,
{
    pub(crate) fn stats_source(&self) -> Weak<dyn StatsSource> {
        let weak: Weak<Inner<V, A, B>> = Arc::downgrade(&self.inner);
        weak
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
    use crate::backend::memory::TtlBackend;
    use crate::config::{L1BackendKind, L1Config};

    type L1Only = TwoLevelCache<String, TtlBackend<Arc<String>>, TtlBackend<Vec<u8>>>;

    fn l1(ttl_s: u64) -> TtlBackend<Arc<String>> {
        TtlBackend::new(&L1Config {
            backend: L1BackendKind::Ttl,
            maxsize: 100,
            ttl: Duration::from_secs(ttl_s),
            fail_safe: Duration::ZERO,
        })
    }

    /// A byte store standing in for L2 in unit tests of the composition
    /// (real-Redis behaviour is covered by the integration tests).
    fn bytes_store() -> TtlBackend<Vec<u8>> {
        TtlBackend::new(&L1Config {
            backend: L1BackendKind::Ttl,
            maxsize: 100,
            ttl: Duration::from_secs(600),
            fail_safe: Duration::ZERO,
        })
    }

    fn cache(l2: Option<TtlBackend<Vec<u8>>>) -> L1Only {
        let settings = TwoLevelSettings {
            key_prefix: "t".into(),
            serializer: Serializer::json(),
            breaker: Arc::new(CircuitBreaker::new(Default::default())),
            l2_ttl: Duration::from_secs(600),
            replay_capacity: 100,
            max_key_bytes: 1024,
            max_value_bytes: 1 << 20,
            bus: None,
            l1_ttl: Duration::from_secs(60),
            fail_safe_max_duration: None,
            load: Default::default(),
        };
        TwoLevelCache::new(Some(l1(60)), l2, settings)
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

    #[test]
    fn log_limiter_admits_about_once_a_second() {
        let l = LogLimiter::default();
        assert_eq!(l.admit(), Some(0));
        assert_eq!(l.admit(), None);
        assert_eq!(l.admit(), None);
        l.last_ms.store(now_ms().saturating_sub(2000).max(1), Relaxed);
        assert_eq!(l.admit(), Some(2));
    }
}
