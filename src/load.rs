//! `get_or_load`: read-through with one loader per key, fail-safe, timeouts,
//! eager refresh and a fence against stale writes.
//!
//! A load runs in its own task, so it outlives the callers that started or
//! joined it: a caller that stops waiting (timeout, cancellation) does not
//! abandon the load, which still refreshes the cache. Concurrent callers of
//! one key in one process share that task (single-flight). A loader that
//! panics wakes its waiters, and the next of them loads again.
//!
//! Stale writes are fenced twice. In this process, the promotion guard of
//! [`two_level`](crate::two_level) (moved by every write, delete, clear and
//! backplane invalidation) is checked around the L1 store. In L2, the load
//! holds a *lease* on the key, which every L2 write or delete ends; the loaded
//! value is stored by a script only while the lease is still held.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use crate::backend::CacheBackend;
use crate::clock::now_ms;
use crate::error::ConfigError;
use crate::two_level::{CacheValue, Found, L2Budget, Lease, LoadFence, LookupStep, TwoLevelCache};

/// How [`get_or_load_with`](TwoLevelCache::get_or_load_with) loads. A cache's
/// defaults come from [`CacheOptions::load`](crate::CacheOptions::load).
///
/// ```
/// use std::time::Duration;
/// use resilient_cache::LoadOptions;
///
/// let opts = LoadOptions::new()
///     .soft_timeout(Duration::from_millis(100)) // serve stale after 100 ms, finish in the background
///     .hard_timeout(Duration::from_secs(2))     // give up waiting after 2 s
///     .eager_refresh(0.8)                       // refresh in the background after 80 % of the TTL
///     .distributed_lock(true);                  // one loader across instances
/// assert!(opts.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    pub(crate) ttl: Option<Duration>,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Option<Duration>,
    pub(crate) fail_safe_throttle: Duration,
    pub(crate) eager_refresh: Option<f64>,
    pub(crate) distributed_lock: bool,
    pub(crate) lock_ttl: Duration,
    pub(crate) lock_wait: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ttl: None,
            soft_timeout: None,
            hard_timeout: None,
            fail_safe_throttle: Duration::from_secs(30),
            eager_refresh: None,
            distributed_lock: false,
            lock_ttl: Duration::from_secs(10),
            lock_wait: Duration::from_secs(2),
        }
    }
}

impl LoadOptions {
    /// The defaults: no timeouts, no eager refresh, in-process single-flight,
    /// a 30 s fail-safe throttle.
    pub fn new() -> Self {
        Self::default()
    }

    /// TTL of the loaded value (default: the cache's TTLs).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// When a stale value is at hand (fail-safe), how long a caller waits for
    /// the loader before taking the stale value; the load goes on in the
    /// background and refreshes the cache.
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// How long a caller waits for the loader at most: then it gets the stale
    /// value if there is one, else [`LoadError::Timeout`]. The load goes on in
    /// the background.
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = Some(timeout);
        self
    }

    /// After a loader failure served stale, how long the key is not loaded
    /// again (the stale value is served at once). Default 30 s.
    pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.fail_safe_throttle = throttle;
        self
    }

    /// Starts a background refresh when an entry is read after `threshold`
    /// (0 < threshold < 1) of its TTL, so hot keys never expire under traffic.
    pub fn eager_refresh(mut self, threshold: f64) -> Self {
        self.eager_refresh = Some(threshold);
        self
    }

    /// One loader across instances: a load takes an exclusive lease in L2
    /// (`SET NX PX` with a random token, ended only by its owner or by a
    /// write of the key); other instances wait for the value to appear in L2,
    /// for [`lock_wait`](Self::lock_wait) at most. Without L2, or when it is
    /// unavailable, loads are single-flight within each process.
    pub fn distributed_lock(mut self, enabled: bool) -> Self {
        self.distributed_lock = enabled;
        self
    }

    /// How long a lease lasts if its owner dies (default 10 s).
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// How long an instance waits for another instance's load before loading
    /// itself (default 2 s).
    pub fn lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Checks the options: the error names the option, its value and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(t) = self.eager_refresh {
            if !(t > 0.0 && t < 1.0) {
                return Err(ConfigError::new(
                    "eager_refresh",
                    t.to_string(),
                    "a fraction between 0 and 1, exclusive",
                ));
            }
        }
        if let (Some(soft), Some(hard)) = (self.soft_timeout, self.hard_timeout) {
            if soft > hard {
                return Err(ConfigError::new(
                    "soft_timeout",
                    format!("{soft:?}"),
                    format!("at most hard_timeout ({hard:?})"),
                ));
            }
        }
        for (name, d) in [
            ("lock_ttl", self.lock_ttl),
            ("ttl", self.ttl.unwrap_or(Duration::MAX)),
        ] {
            if d < Duration::from_millis(1) {
                return Err(ConfigError::new(name, format!("{d:?}"), "at least 1 ms"));
            }
        }
        Ok(())
    }
}

/// Why [`get_or_load`](TwoLevelCache::get_or_load) has no value for the caller.
#[derive(Debug)]
pub enum LoadError<E> {
    /// The loader failed and no stale value was at hand; every waiter gets the same error.
    Loader(Arc<E>),
    /// The loader did not answer within the hard timeout and no stale value was at hand.
    Timeout(Duration),
    /// This caller's loader panicked (the key is not wedged: the next caller loads again).
    Panicked,
    /// The per-call [`LoadOptions`] are invalid.
    InvalidOptions(ConfigError),
}

impl<E> Clone for LoadError<E> {
    fn clone(&self) -> Self {
        match self {
            LoadError::Loader(e) => LoadError::Loader(e.clone()),
            LoadError::Timeout(d) => LoadError::Timeout(*d),
            LoadError::Panicked => LoadError::Panicked,
            LoadError::InvalidOptions(m) => LoadError::InvalidOptions(m.clone()),
        }
    }
}

impl<E> LoadError<E> {
    /// The loader's error, if that is what this is.
    pub fn loader_error(&self) -> Option<&E> {
        match self {
            LoadError::Loader(e) => Some(e),
            _ => None,
        }
    }
}

impl<E: std::fmt::Display> std::fmt::Display for LoadError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Loader(e) => write!(f, "loader failed: {e}"),
            LoadError::Timeout(d) => write!(f, "loader did not answer within {d:?}"),
            LoadError::Panicked => f.write_str("loader panicked"),
            LoadError::InvalidOptions(m) => write!(f, "invalid load options: {m}"),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for LoadError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Loader(e) => Some(&**e),
            _ => None,
        }
    }
}

/// Loader figures of one cache.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LoaderStats {
    /// Loader runs started.
    pub loads: u64,
    /// Loader runs that failed (or panicked).
    pub loader_errors: u64,
    /// Calls that waited for a load (hits served at once are not counted).
    pub waits: u64,
    /// Calls answered with a stale value (fail-safe: loader failed, timed out or throttled).
    pub stale_served: u64,
    /// Calls that stopped waiting at a soft or hard timeout.
    pub timeouts: u64,
    /// Background refreshes started by eager refresh.
    pub eager_refreshes: u64,
    /// Loads that found another instance's lease and waited for its value.
    pub lock_waits: u64,
    /// Loaded values not stored because the key was written or deleted while loading.
    pub stale_writes_prevented: u64,
}

#[derive(Default)]
struct LoaderCounters {
    loads: AtomicU64,
    loader_errors: AtomicU64,
    waits: AtomicU64,
    stale_served: AtomicU64,
    timeouts: AtomicU64,
    eager_refreshes: AtomicU64,
    lock_waits: AtomicU64,
    stale_writes_prevented: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// The loads in flight of one cache, by key, and the keys whose loader failed recently.
#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, Arc<Flight>>>,
    /// Key → time (ms) until which a failed key is not loaded again.
    throttled: Mutex<HashMap<String, u64>>,
    counters: LoaderCounters,
}

#[derive(Default)]
struct Flight {
    /// `Result<Arc<V>, Arc<E>>` of the load, type-erased (one map serves every `E`).
    result: OnceLock<Box<dyn Any + Send + Sync>>,
    finished: AtomicBool,
    done: Notify,
    /// Callers waiting now; when the last one is cancelled, the load is too.
    waiters: AtomicUsize,
    /// Set when the load must finish even with no one waiting (a caller
    /// stopped at a timeout, or an eager refresh).
    detached: AtomicBool,
    abort: OnceLock<tokio::task::AbortHandle>,
}

/// One caller waiting on a flight. Dropped without the flight finished nor
/// detached (the caller was cancelled), and last: the load is aborted, so a
/// loader whose callers are gone does not hold the key.
struct Waiter<'a>(&'a Flight);

impl<'a> Waiter<'a> {
    fn new(flight: &'a Flight) -> Self {
        flight.waiters.fetch_add(1, Relaxed);
        Self(flight)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let f = self.0;
        if f.waiters.fetch_sub(1, Relaxed) == 1
            && !f.detached.load(Relaxed)
            && !f.finished.load(std::sync::atomic::Ordering::Acquire)
        {
            if let Some(h) = f.abort.get() {
                h.abort();
            }
        }
    }
}

impl Flights {
    /// The flight of `key`, and whether this call created it (and must start it).
    fn join(&self, key: &str) -> (Arc<Flight>, bool) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some(f) => (f.clone(), false),
            None => {
                let f = Arc::new(Flight::default());
                map.insert(key.to_string(), f.clone());
                (f, true)
            }
        }
    }

    fn is_throttled(&self, key: &str) -> bool {
        let map = self.throttled.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).is_some_and(|until| *until > now_ms())
    }

    fn throttle(&self, key: &str, for_: Duration) {
        let mut map = self.throttled.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        if map.len() >= 10_000 {
            map.retain(|_, until| *until > now);
        }
        map.insert(key.to_string(), now + for_.as_millis() as u64);
    }

    fn unthrottle(&self, key: &str) {
        let mut map = self.throttled.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }

    pub(crate) fn stats(&self) -> LoaderStats {
        let c = &self.counters;
        LoaderStats {
            loads: c.loads.load(Relaxed),
            loader_errors: c.loader_errors.load(Relaxed),
            waits: c.waits.load(Relaxed),
            stale_served: c.stale_served.load(Relaxed),
            timeouts: c.timeouts.load(Relaxed),
            eager_refreshes: c.eager_refreshes.load(Relaxed),
            lock_waits: c.lock_waits.load(Relaxed),
            stale_writes_prevented: c.stale_writes_prevented.load(Relaxed),
        }
    }
}

/// Ends a flight when its task finishes, panics or is dropped: removes it
/// from the map, then wakes its waiters.
struct FlightEnd<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    cache: TwoLevelCache<V, A, B>,
    key: String,
    flight: Arc<Flight>,
}

impl<V, A, B> Drop for FlightEnd<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    fn drop(&mut self) {
        let flights = self.cache.flights();
        let mut map = flights.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
            map.remove(&self.key);
        }
        drop(map);
        // A panicking loader is a loader error; an aborted load (every caller gone) is not.
        if std::thread::panicking() {
            bump(&flights.counters.loader_errors);
        }
        self.flight
            .finished
            .store(true, std::sync::atomic::Ordering::Release);
        self.flight.done.notify_waiters();
    }
}

/// A random lease token (unique across instances with overwhelming probability).
fn token() -> u64 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(SEQ.fetch_add(1, Relaxed)) | 1
}

/// What a load started from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Nothing cached: the loaded value is stored only if the key is still absent.
    Miss,
    /// A stale (fail-safe) value.
    Stale,
    /// A fresh value, reloaded early (eager refresh).
    Refresh,
}

enum Waited<V, E> {
    Done(Result<Arc<V>, Arc<E>>),
    TimedOut(Duration),
    /// The load ended without a result this caller can read (panic, or another error type).
    Abandoned,
}

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// The value under `key`, from L1, then L2, then `loader`, whose result is
    /// stored in both levels, with the cache's [`LoadOptions`]. Concurrent
    /// callers of one key in this process share one run of `loader` (in its
    /// own task) and all get its result; a loader error reaches each of them
    /// (shared, as `Arc<E>`) and nothing is stored. See
    /// [`get_or_load_with`](Self::get_or_load_with) for fail-safe, timeouts,
    /// eager refresh and the distributed lock.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use resilient_cache::{CacheOptions, CacheService, CacheFactoryConfig};
    /// # async fn demo(service: CacheService) -> resilient_cache::Result<()> {
    /// let users = service.create_cache::<String>(CacheOptions::new("users").l2_ttl(Duration::from_secs(60)))?;
    /// let name = users
    ///     .get_or_load("42", || async { Ok::<_, std::io::Error>("Ada".to_string()) })
    ///     .await
    ///     .expect("loader failed");
    /// assert_eq!(*name, "Ada");
    /// # Ok(()) }
    /// ```
    pub async fn get_or_load<F, Fut, E>(&self, key: &str, loader: F) -> Result<Arc<V>, LoadError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        let opts = self.load_defaults().clone();
        self.get_or_load_with(key, &opts, loader).await
    }

    /// [`get_or_load`](Self::get_or_load) with per-call options:
    ///
    /// - **fail-safe** (on caches built with
    ///   [`CacheOptions::fail_safe_max_duration`](crate::CacheOptions::fail_safe_max_duration)):
    ///   an entry past its TTL is *stale*; it is not returned by `get`, but when
    ///   the loader fails or times out it is returned instead of the error
    ///   (counted in `stale_served`), and the key is not loaded again for
    ///   [`fail_safe_throttle`](LoadOptions::fail_safe_throttle);
    /// - **soft / hard timeouts**: see [`LoadOptions::soft_timeout`] and
    ///   [`LoadOptions::hard_timeout`];
    /// - **eager refresh**: a read after the given fraction of the TTL starts
    ///   a background load and returns the current value at once;
    /// - **distributed lock**: see [`LoadOptions::distributed_lock`].
    ///
    /// A value loaded while the key was written or deleted (here, or on
    /// another instance) is returned to the callers of that load but not
    /// stored: the write or delete wins.
    pub async fn get_or_load_with<F, Fut, E>(
        &self,
        key: &str,
        opts: &LoadOptions,
        loader: F,
    ) -> Result<Arc<V>, LoadError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        opts.validate().map_err(LoadError::InvalidOptions)?;
        let first = match self.read_through_hit(key, opts) {
            Ok(value) => return Ok(value),
            Err(step) => step,
        };
        self.load_from(key, opts, loader, first).await
    }

    /// The first step of a read-through (`opts` checked): `Ok` is a fresh L1
    /// hit that needs nothing more (no eager refresh to consider), `Err` the
    /// step to go on from. Returned from inside the match, like `get`'s hit.
    #[inline(always)]
    pub(crate) fn read_through_hit(&self, key: &str, opts: &LoadOptions) -> Result<Arc<V>, LookupStep<V>> {
        match self.lookup_now(key, opts.eager_refresh.is_some()) {
            LookupStep::Done(Found::Fresh { value, .. }) if opts.eager_refresh.is_none() => Ok(value),
            step => Err(step),
        }
    }

    /// [`get_or_load_with`](Self::get_or_load_with) with `opts` checked, on
    /// from the lookup's `first` step (later rounds look up afresh).
    pub(crate) async fn load_from<F, Fut, E>(
        &self,
        key: &str,
        opts: &LoadOptions,
        loader: F,
        first: LookupStep<V>,
    ) -> Result<Arc<V>, LoadError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        let counters = &self.flights().counters;
        let started = tokio::time::Instant::now();
        // How long this caller waits in all, from now: the soft timeout when
        // a stale value is at hand, the hard timeout always.
        let limit = |stale: bool| match (opts.soft_timeout.filter(|_| stale), opts.hard_timeout) {
            (Some(s), Some(h)) => Some(s.min(h)),
            (s, h) => s.or(h),
        };
        // L2 gets at most one operation timeout for the whole call, and at
        // most half of the caller's limit: the loader keeps the other half.
        let mut budget = self.l2_budget();
        let stale_at_hand = matches!(&first, LookupStep::AskL2 { stale: Some(_), .. });
        if let Some(limit) = limit(stale_at_hand) {
            budget.cap(limit / 2);
        }
        let mut loader = Some(loader);
        let mut first = Some(first);
        loop {
            let found = match first.take() {
                Some(LookupStep::Done(found)) => found,
                Some(step) => self.lookup_on(key, step, &mut budget).await,
                None => self.lookup(key, opts.eager_refresh.is_some(), &mut budget).await,
            };
            let stale = match found {
                Found::Fresh {
                    value,
                    remaining,
                    level,
                } => {
                    if let (Some(threshold), Some(remaining)) = (opts.eager_refresh, remaining) {
                        let full = self.full_ttl(opts.ttl, level);
                        if remaining <= full.mul_f64(1.0 - threshold) {
                            if let Some(l) = loader.take() {
                                let (flight, created) = self.flights().join(key);
                                if created {
                                    bump(&counters.eager_refreshes);
                                    flight.detached.store(true, Relaxed);
                                    self.launch(key, flight, opts, l, Start::Refresh, self.l2_budget());
                                }
                            }
                        }
                    }
                    return Ok(value);
                }
                Found::Stale(v) => Some(v),
                Found::Miss => None,
            };
            if let Some(s) = &stale {
                if self.flights().is_throttled(key) {
                    bump(&counters.stale_served);
                    tracing::debug!(cache = %self.key_prefix(), "loader throttled after a failure: served stale");
                    return Ok(s.clone());
                }
            }
            let (flight, created) = self.flights().join(key);
            if created {
                let l = loader.take().expect("a caller starts at most one load");
                let start = if stale.is_none() {
                    Start::Miss
                } else {
                    Start::Stale
                };
                self.launch(key, flight.clone(), opts, l, start, budget);
            }
            bump(&counters.waits);
            let waiter = Waiter::new(&flight);
            // The limits count from the start of the call, L2's part included.
            let limit = limit(stale.is_some()).map(|l| l.saturating_sub(started.elapsed()));
            match wait::<V, E>(&flight, limit).await {
                Waited::Done(Ok(v)) => return Ok(v),
                Waited::Done(Err(e)) => match stale {
                    Some(s) => return Ok(self.serve_stale(s, "loader failed")),
                    None => return Err(LoadError::Loader(e)),
                },
                Waited::TimedOut(after) => {
                    // The load goes on without us and refreshes the cache.
                    flight.detached.store(true, Relaxed);
                    drop(waiter);
                    bump(&counters.timeouts);
                    match stale {
                        Some(s) => return Ok(self.serve_stale(s, "loader timed out")),
                        None => return Err(LoadError::Timeout(after)),
                    }
                }
                Waited::Abandoned if loader.is_none() => {
                    return match stale {
                        Some(s) => Ok(self.serve_stale(s, "loader panicked")),
                        None => Err(LoadError::Panicked),
                    }
                }
                // Someone else's load died: try again, maybe as the loader.
                Waited::Abandoned => {}
            }
        }
    }

    fn serve_stale(&self, v: Arc<V>, why: &'static str) -> Arc<V> {
        bump(&self.flights().counters.stale_served);
        tracing::info!(cache = %self.key_prefix(), why, "fail-safe: served a stale value");
        v
    }

    /// Starts the load task of `flight`; its L2 calls (lease, store) spend
    /// what is left of `budget`.
    fn launch<F, Fut, E>(
        &self,
        key: &str,
        flight: Arc<Flight>,
        opts: &LoadOptions,
        loader: F,
        start: Start,
        mut budget: L2Budget,
    ) where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        let end = FlightEnd {
            cache: self.clone(),
            key: key.to_string(),
            flight,
        };
        let opts = opts.clone();
        let flight = end.flight.clone();
        let task = tokio::spawn(async move {
            let this = &end.cache;
            let key = end.key.as_str();
            let counters = &this.flights().counters;
            // Taken before the loader reads its source: any write after it wins.
            let before = this.snapshot(key);
            let lease = token();
            let budget = &mut budget;
            let mut leased = this.take_lease(key, lease, &opts, budget).await;
            if leased == Lease::Busy {
                // Another instance is loading: wait for its value, or its lease to end.
                bump(&counters.lock_waits);
                let deadline = tokio::time::Instant::now() + opts.lock_wait;
                let mut pause = Duration::from_millis(2);
                loop {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                    if let Found::Fresh { value, .. } = this.lookup(key, false, budget).await {
                        let _ = end.flight.result.set(Box::new(Ok::<_, Arc<E>>(value)));
                        return;
                    }
                    leased = this.take_lease(key, lease, &opts, budget).await;
                    if leased != Lease::Busy {
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        // The owner may be dead: take the lease over.
                        let takeover = LoadOptions {
                            distributed_lock: false,
                            ..opts.clone()
                        };
                        leased = this.take_lease(key, lease, &takeover, budget).await;
                        break;
                    }
                }
            }
            let held = match leased {
                Lease::Held(token) => Some(token),
                _ => None,
            };
            if let (Some(token), false) = (held, start == Start::Refresh) {
                // Another instance may have stored the value and ended its
                // lease just before we took ours: look once more (a refresh
                // starts from a fresh value, so it does not).
                if let Found::Fresh { value, .. } = this.lookup(key, false, budget).await {
                    this.with_l2_within("release_lease", budget, |l2| l2.release_lease(key, token))
                        .await;
                    let _ = end.flight.result.set(Box::new(Ok::<_, Arc<E>>(value)));
                    return;
                }
            }
            bump(&counters.loads);
            let result = match loader().await {
                Ok(v) => {
                    let v = Arc::new(v);
                    this.flights().unthrottle(key);
                    if !this
                        .store_loaded(
                            key,
                            &v,
                            opts.ttl,
                            LoadFence {
                                before,
                                lease: leased,
                                only_if_absent: start == Start::Miss,
                            },
                            budget,
                        )
                        .await
                    {
                        bump(&counters.stale_writes_prevented);
                        tracing::debug!(cache = %this.key_prefix(), "loaded value not stored: the key changed while loading");
                    }
                    Ok(v)
                }
                Err(e) => {
                    bump(&counters.loader_errors);
                    this.flights().throttle(key, opts.fail_safe_throttle);
                    if let Some(token) = held {
                        this.with_l2_within("release_lease", budget, |l2| l2.release_lease(key, token))
                            .await;
                    }
                    Err(Arc::new(e))
                }
            };
            let _ = end.flight.result.set(Box::new(result));
        });
        let _ = flight.abort.set(task.abort_handle());
    }

    /// Takes the load lease of `key` in L2 (exclusively with the distributed
    /// lock), within `budget`: once it is spent, L2 is unavailable to this load.
    async fn take_lease(&self, key: &str, token: u64, opts: &LoadOptions, budget: &mut L2Budget) -> Lease {
        match self
            .with_l2_within("lease", budget, |l2| {
                l2.lease(key, token, opts.lock_ttl, opts.distributed_lock)
            })
            .await
        {
            None => Lease::Unavailable,
            Some(None) => Lease::Unsupported,
            Some(Some(true)) => Lease::Held(token),
            Some(Some(false)) => Lease::Busy,
        }
    }

    /// Loader figures of this cache.
    pub fn loader_stats(&self) -> LoaderStats {
        self.flights().stats()
    }
}

async fn wait<V: 'static, E: 'static>(flight: &Flight, limit: Option<Duration>) -> Waited<V, E> {
    let notified = flight.done.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    if !flight.finished.load(std::sync::atomic::Ordering::Acquire) {
        match limit {
            Some(limit) => {
                if tokio::time::timeout(limit, notified).await.is_err() {
                    return Waited::TimedOut(limit);
                }
            }
            None => notified.await,
        }
    }
    match flight
        .result
        .get()
        .and_then(|r| r.downcast_ref::<Result<Arc<V>, Arc<E>>>())
    {
        Some(r) => Waited::Done(r.clone()),
        None => Waited::Abandoned,
    }
}
