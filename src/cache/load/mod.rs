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
//! [`cache`](crate::cache) (moved by every write, delete, clear and
//! backplane invalidation) is checked around the L1 store. In L2, the load
//! holds a *lease* on the key, which every L2 write or delete ends; the loaded
//! value is stored by a script only while the lease is still held.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use super::events::CacheEvent;
use super::gate::L2Budget;
use super::lookup::{Found, LookupStep};
use super::{CacheValue, TwoLevelCache};

mod entry;
mod fence;
mod flight;
mod many;
mod options;

pub use entry::{LoadContext, Loaded};
pub(crate) use fence::{EntryShape, Lease, LoadFence};
pub(crate) use flight::Flights;
pub use flight::LoaderStats;
use flight::{bump, Flight, Waiter};
pub use options::{LoadError, LoadOptions};

use crate::backend::CacheBackend;

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
            let key = &self.key;
            self.cache
                .inner
                .events
                .emit(|| CacheEvent::LoaderError { key: key.clone() });
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

/// A flight's result when the loader answered "not modified" with no value
/// held (neither a value nor an error of the loader's type).
pub(super) struct NotModified;

/// Why a finished load has no value.
pub(super) enum LoadEnd<E> {
    Failed(Arc<E>),
    NotModified,
}

enum Waited<V, E> {
    Done(Result<Arc<V>, LoadEnd<E>>),
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
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: impl AsRef<str>,
        loader: F,
    ) -> Result<Arc<V>, LoadError<E>>
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
        key: impl AsRef<str>,
        opts: &LoadOptions,
        loader: F,
    ) -> Result<Arc<V>, LoadError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        let key = key.as_ref();
        let loader = move |_| async move { loader().await.map(Loaded::new) };
        self.get_or_load_entry(key, opts, loader).await
    }

    /// [`get_or_load_with`](Self::get_or_load_with) for a loader that
    /// decides how its value is kept and may keep the value held: it is
    /// given a [`LoadContext`] (the key, owned, and the stale value when
    /// refreshing) and answers a [`Loaded`] — the value with its own TTL, L1
    /// TTL or tags, a value not to cache, or "not modified" (the stale value
    /// becomes fresh again).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use resilient_cache::{Cache, LoadContext, Loaded};
    /// # async fn fetch(id: &str) -> Result<Option<String>, std::io::Error> { Ok(None) }
    /// # async fn demo(products: Cache<Option<String>>) {
    /// let opts = products.load_defaults().clone();
    /// let product = products
    ///     .get_or_load_entry("p:42", &opts, |ctx: LoadContext<Option<String>>| async move {
    ///         let found = fetch(ctx.key()).await?;
    ///         // Not found: keep that for 10 s only; found: the cache's TTL.
    ///         Ok::<_, std::io::Error>(match found {
    ///             None => Loaded::new(None).ttl(Duration::from_secs(10)),
    ///             Some(p) => Loaded::new(Some(p)),
    ///         })
    ///     })
    ///     .await;
    /// # }
    /// ```
    pub async fn get_or_load_entry<F, Fut, E>(
        &self,
        key: impl AsRef<str>,
        opts: &LoadOptions,
        loader: F,
    ) -> Result<Arc<V>, LoadError<E>>
    where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Loaded<V>, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        let key = key.as_ref();
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
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Loaded<V>, E>> + Send + 'static,
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
                                    let held = Some(value.clone());
                                    self.launch(
                                        key,
                                        flight,
                                        opts,
                                        l,
                                        (Start::Refresh, held),
                                        self.l2_budget(),
                                    );
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
                    tracing::debug!(cache = %self.key_prefix(), "loader throttled after a failure: served stale");
                    return Ok(self.serve_stale(key, s.clone(), "loader throttled"));
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
                self.launch(key, flight.clone(), opts, l, (start, stale.clone()), budget);
            }
            bump(&counters.waits);
            let waiter = Waiter::new(&flight);
            // The limits count from the start of the call, L2's part included.
            let limit = limit(stale.is_some()).map(|l| l.saturating_sub(started.elapsed()));
            match wait::<V, E>(&flight, limit).await {
                Waited::Done(Ok(v)) => return Ok(v),
                Waited::Done(Err(LoadEnd::NotModified)) => return Err(LoadError::NotModified),
                Waited::Done(Err(LoadEnd::Failed(e))) => match stale {
                    Some(s) => return Ok(self.serve_stale(key, s, "loader failed")),
                    None => return Err(LoadError::Loader(e)),
                },
                Waited::TimedOut(after) => {
                    // The load goes on without us and refreshes the cache.
                    flight.detached.store(true, Relaxed);
                    drop(waiter);
                    bump(&counters.timeouts);
                    self.inner
                        .events
                        .emit(|| CacheEvent::LoaderTimeout { key: key.to_string() });
                    match stale {
                        Some(s) => return Ok(self.serve_stale(key, s, "loader timed out")),
                        None => return Err(LoadError::Timeout(after)),
                    }
                }
                Waited::Abandoned if loader.is_none() => {
                    return match stale {
                        Some(s) => Ok(self.serve_stale(key, s, "loader panicked")),
                        None => Err(LoadError::Panicked),
                    }
                }
                // Someone else's load died: try again, maybe as the loader.
                Waited::Abandoned => {}
            }
        }
    }

    fn serve_stale(&self, key: &str, v: Arc<V>, why: &'static str) -> Arc<V> {
        bump(&self.flights().counters.stale_served);
        self.inner.events.emit(|| CacheEvent::StaleServed {
            key: key.to_string(),
            why,
        });
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
        (start, held_value): (Start, Option<Arc<V>>),
        mut budget: L2Budget,
    ) where
        F: FnOnce(LoadContext<V>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Loaded<V>, E>> + Send + 'static,
        E: Send + Sync + 'static,
    {
        let end = FlightEnd {
            cache: self.clone(),
            key: key.to_string(),
            flight,
        };
        let opts = opts.clone();
        let flight = end.flight.clone();
        let span = self.load_span(1);
        let load = async move {
            let this = &end.cache;
            let key = end.key.as_str();
            let counters = &this.flights().counters;
            // Taken before the loader reads its source: any write (or
            // invalidation marker) after them wins.
            let before = this.snapshot(key);
            let written_us = crate::clock::stamp_us();
            let budget = &mut budget;
            let leased = match this.lease_or_value(key, &opts, budget).await {
                Ok(lease) => lease,
                Err(value) => {
                    let _ = end.flight.result.set(Box::new(Ok::<_, Arc<E>>(value)));
                    return;
                }
            };
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
            let ctx = LoadContext {
                key: key.to_string(),
                stale: held_value.clone(),
            };
            let fence = LoadFence {
                before,
                lease: leased,
                only_if_absent: start == Start::Miss,
                written_us,
            };
            let result = match loader(ctx).await {
                Ok(loaded) => match this
                    .keep_loaded(key, loaded, held_value, &opts, fence, budget)
                    .await
                {
                    Some(v) => Ok(v),
                    None => {
                        // Not modified, with nothing to keep: the callers are told.
                        let _ = end.flight.result.set(Box::new(NotModified));
                        return;
                    }
                },
                Err(e) => {
                    this.loader_failed(key, &opts, held, budget).await;
                    Err(Arc::new(e))
                }
            };
            let _ = end.flight.result.set(Box::new(result));
        };
        let task = tokio::spawn(tracing::Instrument::instrument(load, span));
        let _ = flight.abort.set(task.abort_handle());
    }

    /// The span of one load of `keys` keys, with OpenTelemetry's field names
    /// (no key: keys may be personal data). Made before the load's task is
    /// spawned, so that it is a child of the caller's span, and instrumenting
    /// the whole task: lease, loader, store.
    pub(super) fn load_span(&self, keys: usize) -> tracing::Span {
        tracing::info_span!(
            "resilient_cache.load",
            otel.kind = "internal",
            cache.namespace = %self.inner.prefix,
            cache.keys = keys,
        )
    }

    /// Keeps what a loader produced for `key` as it asks (its own TTLs and
    /// tags, not cached at all, or the held value made fresh again), behind
    /// `fence`. The value for the callers; `None` for "not modified" with no
    /// value held.
    pub(super) async fn keep_loaded(
        &self,
        key: &str,
        loaded: Loaded<V>,
        held: Option<Arc<V>>,
        opts: &LoadOptions,
        fence: LoadFence,
        budget: &mut L2Budget,
    ) -> Option<Arc<V>> {
        let counters = &self.flights().counters;
        self.flights().unthrottle(key);
        let Loaded {
            value,
            ttl,
            l1_ttl,
            tags,
            cache,
        } = loaded;
        let value = match (value, held) {
            (Some(v), _) => Arc::new(v),
            (None, Some(held)) => held,
            (None, None) => {
                self.release(key, fence.lease, budget).await;
                return None;
            }
        };
        let shape = match (tags, ttl.or(opts.ttl)) {
            (_, Some(t)) if self.check_ttl(Some(t)).is_err() => None,
            (Some(tags), ttl) => self.checked_tags(&tags).ok().map(|tags| (ttl, tags)),
            (None, ttl) => Some((ttl, opts.tags.clone())),
        };
        let Some((ttl, tags)) = shape.filter(|_| cache) else {
            self.release(key, fence.lease, budget).await;
            return Some(value);
        };
        let shape = EntryShape {
            ttl,
            l1_ttl,
            tags: &tags,
        };
        if !self.store_loaded(key, &value, shape, fence, budget).await {
            bump(&counters.stale_writes_prevented);
            tracing::debug!(cache = %self.key_prefix(), "loaded value not stored: the key changed while loading");
        }
        Some(value)
    }

    /// After a loader error for `key`: counted, told, the key throttled
    /// (fail-safe), the lease (if `held`) released.
    pub(super) async fn loader_failed(
        &self,
        key: &str,
        opts: &LoadOptions,
        held: Option<u64>,
        budget: &mut L2Budget,
    ) {
        bump(&self.flights().counters.loader_errors);
        self.inner
            .events
            .emit(|| CacheEvent::LoaderError { key: key.to_string() });
        self.flights().throttle(key, opts.fail_safe_throttle);
        if let Some(token) = held {
            self.with_l2_within("release_lease", budget, |l2| l2.release_lease(key, token))
                .await;
        }
    }

    /// Ends the load lease of `key`, if the load holds it.
    async fn release(&self, key: &str, lease: Lease, budget: &mut L2Budget) {
        if let Lease::Held(token) = lease {
            self.with_l2_within("release_lease", budget, |l2| l2.release_lease(key, token))
                .await;
        }
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
    let result = flight.result.get();
    if result.is_some_and(|r| r.is::<NotModified>()) {
        return Waited::Done(Err(LoadEnd::NotModified));
    }
    match result.and_then(|r| r.downcast_ref::<Result<Arc<V>, Arc<E>>>()) {
        Some(Ok(v)) => Waited::Done(Ok(v.clone())),
        Some(Err(e)) => Waited::Done(Err(LoadEnd::Failed(e.clone()))),
        None => Waited::Abandoned,
    }
}
