//! `get_or_load_many`: read-through for many keys with one loader call.
//!
//! The keys go through L1, then L2 in one round trip
//! ([`lookup_many`](TwoLevelCache::lookup_many)); the keys still missing
//! join the same single-flight map as `get_or_load`, so a key already being
//! loaded (by a single or a batch call) is awaited, not loaded again, and a
//! single call arriving while a batch loads its key waits for the batch.
//! The keys this call is first to ask for go to **one** loader call, in one
//! task that outlives the callers (as a single load does). Per key, that
//! task does what a single load does: a lease in L2 (the distributed lock
//! and the store fence), a last look for a value another instance stored
//! meanwhile, and a fenced store of what the loader returned.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::flight::{bump, Flight, Waiter};
use super::{
    token, wait, FlightEnd, Lease, LoadEnd, LoadError, LoadFence, LoadOptions, Loaded, Start, Waited,
};
use crate::backend::CacheBackend;
use crate::cache::events::CacheEvent;
use crate::cache::gate::L2Budget;
use crate::cache::lookup::Found;
use crate::cache::{CacheValue, TwoLevelCache};

/// A flight's result when the batch loader did not return its key: a
/// single caller waiting on it loads the key itself; a batch caller reads
/// it as absent.
struct NotReturned;

/// One distinct key a batch call still needs.
struct Pending<V> {
    key: String,
    /// Where the key stands in the caller's list (it may be there twice).
    at: Vec<usize>,
    stale: Option<Arc<V>>,
    flight: Arc<Flight>,
    own: bool,
}

/// One key of a batch load: its flight, what it starts from, and its lease.
struct KeyLoad<V> {
    key: String,
    start: Start,
    held: Option<Arc<V>>,
    fence: Option<LoadFence>,
}

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// The values under `keys`, in their order: L1, then L2 in one round
    /// trip, then **one** call of `loader` with exactly the keys still
    /// missing (owned, each once), whose answer — `(key, value)` pairs, in
    /// any order — is stored as [`get_or_load`](Self::get_or_load) stores.
    /// A key the loader does not return is `None` (to remember an absence
    /// for a while, make the value an `Option` and return `None` with a
    /// short [`Loaded::ttl`]). Values may be plain or [`Loaded`] (their own
    /// TTL, tags, or not cached).
    ///
    /// A key already being loaded by a concurrent `get_or_load` or
    /// `get_or_load_many` is awaited, not loaded twice. Fail-safe, timeouts
    /// and the distributed lock apply per key (see
    /// [`get_or_load_with`](Self::get_or_load_with)): a key whose load
    /// fails or times out gets its stale value when there is one; otherwise
    /// the call returns the error. Eager refresh is for single-key loads.
    ///
    /// ```no_run
    /// # use std::collections::HashMap;
    /// # async fn demo(products: resilient_cache::Cache<String>) {
    /// let ids: Vec<String> = (1..=50).map(|i| format!("p:{i}")).collect();
    /// let page = products
    ///     .get_or_load_many(&ids, |missing: Vec<String>| async move {
    ///         // One query for every id not cached, e.g. `WHERE id = ANY($1)`.
    ///         let rows: HashMap<String, String> =
    ///             missing.into_iter().map(|id| (id.clone(), format!("product {id}"))).collect();
    ///         Ok::<_, std::io::Error>(rows)
    ///     })
    ///     .await
    ///     .expect("loader failed");
    /// assert_eq!(page.len(), ids.len());
    /// # }
    /// ```
    pub async fn get_or_load_many<K, F, Fut, E, R, L>(
        &self,
        keys: impl IntoIterator<Item = K>,
        loader: F,
    ) -> Result<Vec<Option<Arc<V>>>, LoadError<E>>
    where
        K: AsRef<str>,
        F: FnOnce(Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: IntoIterator<Item = (String, L)>,
        L: Into<Loaded<V>>,
        E: Send + Sync + 'static,
    {
        let opts = self.load_defaults().clone();
        self.get_or_load_many_with(keys, &opts, loader).await
    }

    /// [`get_or_load_many`](Self::get_or_load_many) with per-call options.
    pub async fn get_or_load_many_with<K, F, Fut, E, R, L>(
        &self,
        keys: impl IntoIterator<Item = K>,
        opts: &LoadOptions,
        loader: F,
    ) -> Result<Vec<Option<Arc<V>>>, LoadError<E>>
    where
        K: AsRef<str>,
        F: FnOnce(Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: IntoIterator<Item = (String, L)>,
        L: Into<Loaded<V>>,
        E: Send + Sync + 'static,
    {
        opts.validate().map_err(LoadError::InvalidOptions)?;
        let started = tokio::time::Instant::now();
        let keys: Vec<K> = keys.into_iter().collect();
        let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
        let mut out: Vec<Option<Arc<V>>> = vec![None; keys.len()];
        let mut pending: Vec<Pending<V>> = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, found) in self.lookup_many(&keys).await.into_iter().enumerate() {
            let stale = match found {
                Found::Fresh { value, .. } => {
                    out[i] = Some(value);
                    continue;
                }
                Found::Stale(v) => Some(v),
                Found::Miss => None,
            };
            if self.check_key(keys[i]).is_err() {
                continue;
            }
            match seen.get(keys[i]) {
                Some(&p) => pending[p].at.push(i),
                None => {
                    seen.insert(keys[i], pending.len());
                    pending.push(Pending {
                        key: keys[i].to_string(),
                        at: vec![i],
                        stale,
                        flight: Default::default(),
                        own: false,
                    });
                }
            }
        }
        // Throttled after a failure: the stale value, no load.
        pending.retain(|p| match &p.stale {
            Some(s) if self.flights().is_throttled(&p.key) => {
                let v = self.serve_stale(&p.key, s.clone(), "loader throttled");
                p.at.iter().for_each(|&i| out[i] = Some(v.clone()));
                false
            }
            _ => true,
        });
        if pending.is_empty() {
            return Ok(out);
        }
        let mut to_load = Vec::new();
        for p in &mut pending {
            let (flight, created) = self.flights().join(&p.key);
            p.flight = flight;
            p.own = created;
            if created {
                // One task serves every key: a caller who stops waiting for
                // one key must not cancel the others.
                p.flight.detached.store(true, Relaxed);
                let start = if p.stale.is_some() {
                    Start::Stale
                } else {
                    Start::Miss
                };
                let load = KeyLoad {
                    key: p.key.clone(),
                    start,
                    held: p.stale.clone(),
                    fence: None,
                };
                to_load.push((load, p.flight.clone()));
            }
        }
        if !to_load.is_empty() {
            self.launch_many(to_load, opts, loader);
        }
        let counters = &self.flights().counters;
        let limit = |stale: bool| match (opts.soft_timeout.filter(|_| stale), opts.hard_timeout) {
            (Some(s), Some(h)) => Some(s.min(h)),
            (s, h) => s.or(h),
        };
        let mut failure: Option<LoadError<E>> = None;
        for p in pending {
            bump(&counters.waits);
            let waiter = Waiter::new(&p.flight);
            let limit = limit(p.stale.is_some()).map(|l| l.saturating_sub(started.elapsed()));
            let value = match wait::<V, E>(&p.flight, limit).await {
                Waited::Done(Ok(v)) => Some(v),
                Waited::Done(Err(LoadEnd::NotModified)) => None,
                Waited::Done(Err(LoadEnd::Failed(e))) => match &p.stale {
                    Some(s) => Some(self.serve_stale(&p.key, s.clone(), "loader failed")),
                    None => {
                        failure.get_or_insert(LoadError::Loader(e));
                        None
                    }
                },
                Waited::TimedOut(after) => {
                    p.flight.detached.store(true, Relaxed);
                    drop(waiter);
                    bump(&counters.timeouts);
                    self.inner
                        .events
                        .emit(|| CacheEvent::LoaderTimeout { key: p.key.clone() });
                    match &p.stale {
                        Some(s) => Some(self.serve_stale(&p.key, s.clone(), "loader timed out")),
                        None => {
                            failure.get_or_insert(LoadError::Timeout(after));
                            None
                        }
                    }
                }
                Waited::Abandoned if p.flight.result.get().is_some_and(|r| r.is::<NotReturned>()) => None,
                // Our own load died (the loader panicked).
                Waited::Abandoned if p.own => match &p.stale {
                    Some(s) => Some(self.serve_stale(&p.key, s.clone(), "loader panicked")),
                    None => {
                        failure.get_or_insert(LoadError::Panicked);
                        None
                    }
                },
                // Another caller's load ended without a value of our type:
                // whatever it stored is read back.
                Waited::Abandoned => {
                    let mut budget = self.l2_budget();
                    self.lookup(&p.key, false, &mut budget).await.fresh()
                }
            };
            p.at.iter().for_each(|&i| out[i] = value.clone());
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Starts the one task that loads `keys` (each with its flight) with
    /// one call of `loader`.
    fn launch_many<F, Fut, E, R, L>(
        &self,
        keys: Vec<(KeyLoad<V>, Arc<Flight>)>,
        opts: &LoadOptions,
        loader: F,
    ) where
        F: FnOnce(Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: IntoIterator<Item = (String, L)>,
        L: Into<Loaded<V>>,
        E: Send + Sync + 'static,
    {
        let mut ends = Vec::with_capacity(keys.len());
        let mut loads = Vec::with_capacity(keys.len());
        for (load, flight) in keys {
            ends.push(FlightEnd {
                cache: self.clone(),
                key: load.key.clone(),
                flight,
            });
            loads.push(load);
        }
        let this = self.clone();
        let opts = opts.clone();
        let flights: Vec<Arc<Flight>> = ends.iter().map(|e| e.flight.clone()).collect();
        let span = self.load_span(loads.len());
        let batch = async move {
            let settled = this.load_batch(loads, &opts, loader).await;
            for (end, result) in ends.iter().zip(settled) {
                let _ = end.flight.result.set(result);
            }
            // Dropping the ends wakes every waiter.
            drop(ends);
        };
        let task = tokio::spawn(tracing::Instrument::instrument(batch, span));
        for flight in flights {
            let _ = flight.abort.set(task.abort_handle());
        }
    }

    /// The body of a batch load: leases (waiting out other instances'
    /// loads), a last look in L2, one loader call, fenced stores. Returns
    /// each key's flight result, in order.
    async fn load_batch<F, Fut, E, R, L>(
        &self,
        mut loads: Vec<KeyLoad<V>>,
        opts: &LoadOptions,
        loader: F,
    ) -> Vec<Box<dyn std::any::Any + Send + Sync>>
    where
        F: FnOnce(Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        R: IntoIterator<Item = (String, L)>,
        L: Into<Loaded<V>>,
        E: Send + Sync + 'static,
    {
        type Answer = Box<dyn std::any::Any + Send + Sync>;
        let counters = &self.flights().counters;
        let mut results: Vec<Option<Answer>> = (0..loads.len()).map(|_| None).collect();
        // Taken before the loader reads its source (as in a single load).
        let written_us = crate::clock::stamp_us();
        let befores: Vec<_> = loads.iter().map(|l| self.snapshot(&l.key)).collect();
        // Leases, concurrently; a key another instance is loading waits
        // for its value (or takes the lease over after `lock_wait`).
        let leases = in_order(loads.iter().map(|l| {
            let (this, key, opts) = (self.clone(), l.key.clone(), opts.clone());
            async move { this.lease_or_value(&key, &opts, &mut this.l2_budget()).await }
        }))
        .await;
        let mut last_look = Vec::new();
        for (i, lease) in leases.into_iter().enumerate() {
            match lease {
                Err(value) => results[i] = Some(Box::new(Ok::<_, Arc<E>>(value))),
                Ok(lease) => {
                    let load = &mut loads[i];
                    load.fence = Some(LoadFence {
                        before: befores[i],
                        lease,
                        only_if_absent: load.start == Start::Miss,
                        written_us,
                    });
                    if matches!(lease, Lease::Held(_)) {
                        last_look.push(i);
                    }
                }
            }
        }
        // Another instance may have stored a value and ended its lease just
        // before we took ours: one look for all of them.
        if !last_look.is_empty() {
            let keys: Vec<&str> = last_look.iter().map(|&i| loads[i].key.as_str()).collect();
            let found = self.lookup_many(&keys).await;
            let mut budget = self.l2_budget();
            for (&i, found) in last_look.iter().zip(found) {
                if let Some(value) = found.fresh() {
                    let lease = loads[i].fence.map_or(Lease::Unavailable, |f| f.lease);
                    self.release(&loads[i].key, lease, &mut budget).await;
                    results[i] = Some(Box::new(Ok::<_, Arc<E>>(value)));
                }
            }
        }
        let todo: Vec<usize> = (0..loads.len()).filter(|&i| results[i].is_none()).collect();
        if !todo.is_empty() {
            bump(&counters.loads);
            let keys: Vec<String> = todo.iter().map(|&i| loads[i].key.clone()).collect();
            // What the loader found, in our own types before anything else is awaited.
            let answer: Result<HashMap<String, Loaded<V>>, E> = loader(keys)
                .await
                .map(|found| found.into_iter().map(|(k, l)| (k, l.into())).collect());
            match answer {
                Ok(mut found) => {
                    let kept = in_order(todo.iter().map(|&i| {
                        let (this, opts) = (self.clone(), opts.clone());
                        let KeyLoad { key, held, fence, .. } = &loads[i];
                        let (key, held, fence) = (key.clone(), held.clone(), fence.expect("leased"));
                        let loaded = found.remove(&key);
                        async move {
                            let mut budget = this.l2_budget();
                            let Some(loaded) = loaded else {
                                this.release(&key, fence.lease, &mut budget).await;
                                return Box::new(NotReturned) as Answer;
                            };
                            match this
                                .keep_loaded(&key, loaded, held, &opts, fence, &mut budget)
                                .await
                            {
                                Some(v) => Box::new(Ok::<_, Arc<E>>(v)),
                                None => Box::new(super::NotModified),
                            }
                        }
                    }))
                    .await;
                    for (&i, answer) in todo.iter().zip(kept) {
                        results[i] = Some(answer);
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    let mut budget = self.l2_budget();
                    for &i in &todo {
                        let token = match loads[i].fence.map(|f| f.lease) {
                            Some(Lease::Held(t)) => Some(t),
                            _ => None,
                        };
                        self.loader_failed(&loads[i].key, opts, token, &mut budget).await;
                        results[i] = Some(Box::new(Err::<Arc<V>, _>(e.clone())));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Box::new(NotReturned)))
            .collect()
    }

    /// The load lease of `key` (`Ok`), or the value another instance loaded
    /// while we waited for its lease (`Err`): the distributed lock of one key.
    pub(super) async fn lease_or_value(
        &self,
        key: &str,
        opts: &LoadOptions,
        budget: &mut L2Budget,
    ) -> Result<Lease, Arc<V>> {
        let lease = token();
        let mut leased = self.take_lease(key, lease, opts, budget).await;
        if leased != Lease::Busy {
            return Ok(leased);
        }
        bump(&self.flights().counters.lock_waits);
        let deadline = tokio::time::Instant::now() + opts.lock_wait;
        let mut pause = Duration::from_millis(2);
        loop {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
            if let Found::Fresh { value, .. } = self.lookup(key, false, budget).await {
                return Err(value);
            }
            leased = self.take_lease(key, lease, opts, budget).await;
            if leased != Lease::Busy {
                return Ok(leased);
            }
            if tokio::time::Instant::now() >= deadline {
                // The owner may be dead: take the lease over.
                let takeover = LoadOptions {
                    distributed_lock: false,
                    ..opts.clone()
                };
                return Ok(self.take_lease(key, lease, &takeover, budget).await);
            }
        }
    }
}

/// Runs `futures` concurrently (a task each) and returns their outputs in
/// order; a panic in one is resumed here.
async fn in_order<T, Fut>(futures: impl IntoIterator<Item = Fut>) -> Vec<T>
where
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let mut n = 0;
    for (i, f) in futures.into_iter().enumerate() {
        set.spawn(async move { (i, f.await) });
        n += 1;
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    while let Some(done) = set.join_next().await {
        match done {
            Ok((i, v)) => out[i] = Some(v),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a batch step was cancelled: {e}"),
        }
    }
    out.into_iter().map(|v| v.expect("every step answers")).collect()
}
