//! In-process L1 backends.
//!
//! - [`TtlBackend`] (`ttl`, the default): `quick_cache`, a sharded concurrent
//!   cache, bounded by entry count. `quick_cache` has no TTL,
//!   so each entry carries its expiry time, checked on read (`get`) against
//!   the ticker-kept clock (one atomic load; may lag real time by a tick or
//!   more, see the `clock` module) and elsewhere against a coarse monotonic
//!   clock; an expired entry reads as a miss and is removed.
//! - [`LruBackend`] (`lru`): `moka` with its strict LRU eviction policy,
//!   bounded by entry count, without expiry.
//!
//! Both hold `T` as given (the two-level cache gives `Arc<V>`), so a read
//! clones an `Arc`, never the value. Both count the entries they drop to
//! make room and tell each one to the [`EvictionHook`] a cache installs
//! (its `Evicted` event); a read never touches either.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::backend::config::L1Config;
use crate::backend::L1Stats;
use crate::backend::{CacheBackend, EvictionHook};
use crate::clock::{now_ms, recent_ms};
use crate::counter::{Counter, HotCounter};
use crate::error::Result;

/// Where capacity evictions go: a count, and the hook a cache installed.
#[derive(Default)]
struct Evictions {
    count: Counter,
    /// Set once: evictions happen under the map's lock, so the hook is read
    /// with one load, not a lock.
    hook: OnceLock<EvictionHook>,
}

impl Evictions {
    fn evicted(&self, key: String) {
        self.count.incr();
        if let Some(hook) = self.hook.get() {
            hook(key);
        }
    }

    fn install(&self, hook: EvictionHook) -> bool {
        self.hook.set(hook).is_ok()
    }
}

/// `quick_cache`'s eviction callbacks for [`TtlBackend`], called under the
/// shard's lock. `quick_cache` hands `on_evict` both the entries it drops to
/// make room and the values an insert replaces; only the former went
/// through `before_evict` first, so the request state counts those and
/// `on_evict` tells only them (an overwrite is not an eviction).
#[derive(Clone, Default)]
struct OnEvict(Arc<Evictions>);

impl<T> quick_cache::Lifecycle<String, Entry<T>> for OnEvict {
    /// Evictions announced by `before_evict` in this request, not yet told.
    type RequestState = u32;

    fn before_evict(&self, announced: &mut u32, _: &String, _: &mut Entry<T>) {
        *announced += 1;
    }

    fn on_evict(&self, announced: &mut u32, key: String, _: Entry<T>) {
        if *announced > 0 {
            *announced -= 1;
            self.0.evicted(key);
        }
    }
}

type TtlMap<T> = quick_cache::sync::Cache<
    String,
    Entry<T>,
    quick_cache::UnitWeighter,
    quick_cache::DefaultHashBuilder,
    OnEvict,
>;

#[derive(Clone)]
struct Entry<T> {
    value: T,
    expires_at_ms: u64,
}

/// `ttl` backend: bounded size, per-entry expiry.
pub struct TtlBackend<T> {
    cache: TtlMap<T>,
    evictions: OnEvict,
    maxsize: usize,
    /// The longest an entry is kept: its TTL plus the fail-safe time.
    ttl: Duration,
    /// The configured TTL, as reported in stats.
    logical_ttl: Duration,
    hits: HotCounter,
    misses: HotCounter,
}

impl<T: Clone + Send + Sync + 'static> TtlBackend<T> {
    /// A backend holding up to `config.maxsize` entries for `config.ttl` each
    /// (plus `config.fail_safe`, the time a fail-safe cache keeps them stale).
    pub fn new(config: &L1Config) -> Self {
        let evictions = OnEvict::default();
        let n = config.maxsize;
        Self {
            cache: TtlMap::with(
                n,
                n as u64,
                Default::default(),
                Default::default(),
                evictions.clone(),
            ),
            evictions,
            maxsize: config.maxsize,
            ttl: config.ttl + config.fail_safe,
            logical_ttl: config.ttl,
            hits: HotCounter::default(),
            misses: HotCounter::default(),
        }
    }

    /// An entry never outlives the configured L1 TTL (plus the fail-safe
    /// time), even when the caller asks for a longer one (that TTL is meant for L2).
    fn expiry(&self, ttl: Option<Duration>) -> u64 {
        let ttl = ttl.map_or(self.ttl, |t| t.min(self.ttl));
        now_ms().saturating_add(ttl.as_millis().min(u64::MAX as u128) as u64)
    }

    /// The live entry under `key` at time `now`, without touching the hit counters.
    #[inline(always)]
    fn live(&self, key: &str, now: u64) -> Option<Entry<T>> {
        let entry = self.cache.get(key)?;
        if entry.expires_at_ms > now {
            Some(entry)
        } else {
            // Remove only the expired entry we saw, not a fresh one set meanwhile.
            self.cache.remove_if(key, |e| e.expires_at_ms <= now_ms());
            None
        }
    }

    /// Synchronous get (what the async method does).
    #[inline]
    pub fn get_sync(&self, key: &str) -> Option<T> {
        self.get_sync_entry(key, recent_ms()).map(|e| e.value)
    }

    #[inline(always)]
    fn get_sync_entry(&self, key: &str, now: u64) -> Option<Entry<T>> {
        match self.live(key, now) {
            Some(e) => {
                self.hits.incr();
                Some(e)
            }
            None => {
                self.misses.incr();
                None
            }
        }
    }

    /// A counted read at time `now`, with the time left measured from `now`.
    #[inline(always)]
    fn read_with_ttl(&self, key: &str, now: u64) -> Option<(T, Option<Duration>)> {
        self.get_sync_entry(key, now).map(|e| {
            let ttl = Duration::from_millis(e.expires_at_ms.saturating_sub(now));
            (e.value, Some(ttl))
        })
    }

    /// Stores `entry` under `key`. A key already held has its entry
    /// replaced in place: `insert` would build the key's `String` again and
    /// free the one held (an allocation and a free per overwrite, about a
    /// fifth of an overwrite's time). A key not held is inserted: asking
    /// `entry` for it would make a placeholder first, which costs more than
    /// the look that sends it here.
    fn put(&self, key: &str, entry: Entry<T>) {
        use quick_cache::sync::{EntryAction, EntryResult};
        let mut entry = Some(entry);
        if self.cache.contains_key(key) {
            let replace = |_: &String, held: &mut Entry<T>| {
                EntryAction::Retain(entry.take().map(|new| std::mem::replace(held, new)))
            };
            match self.cache.entry(key, None, replace) {
                // The replaced entry is dropped here, outside the shard's lock.
                EntryResult::Retained(_replaced) => return,
                // Removed since the look: inserted through the placeholder
                // (a write or delete that takes it over first wins).
                EntryResult::Vacant(guard) => {
                    if let Some(new) = entry.take() {
                        let _ = guard.insert(new);
                    }
                    return;
                }
                _ => {}
            }
        }
        if let Some(new) = entry {
            self.cache.insert(key.to_string(), new);
        }
    }

    fn stats(&self) -> L1Stats {
        L1Stats {
            backend: "ttl",
            size: self.cache.len() as u64,
            maxsize: self.maxsize as u64,
            ttl: Some(self.logical_ttl.as_secs_f64()),
            hits: self.hits.get(),
            misses: self.misses.get(),
            evictions: self.evictions.0.count.get(),
            hit_rate: 0.0,
            usage_percent: 0.0,
        }
        .compute_rates()
    }
}

impl<T: Clone + Send + Sync + 'static> CacheBackend for TtlBackend<T> {
    type Value = T;
    type Stats = L1Stats;

    async fn get(&self, key: &str) -> Result<Option<T>> {
        Ok(self.get_sync(key))
    }

    async fn set(&self, key: &str, value: T, ttl: Option<Duration>) -> Result<()> {
        self.put(
            key,
            Entry {
                value,
                expires_at_ms: self.expiry(ttl),
            },
        );
        Ok(())
    }

    async fn set_if_not_exist(&self, key: &str, value: T, ttl: Option<Duration>) -> Result<bool> {
        use quick_cache::sync::{EntryAction, EntryResult};
        let entry = Entry {
            value,
            expires_at_ms: self.expiry(ttl),
        };
        // Decided under the shard lock: two racing callers cannot both win.
        let result = self.cache.entry(key, None, |_, e| {
            if e.expires_at_ms > now_ms() {
                EntryAction::Retain(())
            } else {
                EntryAction::ReplaceWithGuard
            }
        });
        Ok(match result {
            EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => guard.insert(entry).is_ok(),
            _ => false,
        })
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self
            .cache
            .remove(key)
            .is_some_and(|(_, e)| e.expires_at_ms > now_ms()))
    }

    async fn clear(&self) -> Result<u64> {
        let n = self.cache.len() as u64;
        self.cache.clear();
        Ok(n)
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.live(key, now_ms()).is_some())
    }

    async fn get_ttl(&self, key: &str) -> Result<Option<Duration>> {
        let now = now_ms();
        Ok(self
            .live(key, now)
            .map(|e| Duration::from_millis(e.expires_at_ms.saturating_sub(now))))
    }

    async fn get_with_ttl(&self, key: &str) -> Result<Option<(T, Option<Duration>)>> {
        // The real clock: the ticker's lags, and would report more time left
        // than the entry was given.
        Ok(self.read_with_ttl(key, now_ms()))
    }

    /// The hot path: one clock load (the ticker's), so the time left may be
    /// up to a tick longer than the entry was given (see `clock`).
    #[inline(always)]
    fn get_with_ttl_now(&self, key: &str) -> Option<Option<(T, Option<Duration>)>> {
        Some(self.read_with_ttl(key, recent_ms()))
    }

    async fn list_keys(&self, prefix: Option<&str>) -> Result<Vec<String>> {
        let now = now_ms();
        Ok(self
            .cache
            .iter()
            .filter(|(k, e)| e.expires_at_ms > now && prefix.is_none_or(|p| k.starts_with(p)))
            .map(|(k, _)| k)
            .collect())
    }

    async fn get_size(&self) -> Result<u64> {
        Ok(self.cache.len() as u64)
    }

    async fn get_stats(&self) -> Result<L1Stats> {
        Ok(self.stats())
    }

    fn describe(&self) -> L1Stats {
        self.stats()
    }

    fn on_evict(&self, hook: EvictionHook) -> bool {
        self.evictions.0.install(hook)
    }
}

/// `lru` backend: bounded size, least-recently-used evicted first, no expiry.
pub struct LruBackend<T> {
    cache: moka::sync::Cache<String, T>,
    evictions: Arc<Evictions>,
    maxsize: usize,
    hits: HotCounter,
    misses: HotCounter,
}

impl<T: Clone + Send + Sync + 'static> LruBackend<T> {
    /// A backend holding up to `config.maxsize` entries (`config.ttl` is not used).
    pub fn new(config: &L1Config) -> Self {
        let evictions = Arc::<Evictions>::default();
        let sink = evictions.clone();
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(config.maxsize as u64)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .eviction_listener(move |key: Arc<String>, _, cause| {
                    if cause == moka::notification::RemovalCause::Size {
                        sink.evicted(Arc::unwrap_or_clone(key));
                    }
                })
                .build(),
            evictions,
            maxsize: config.maxsize,
            hits: HotCounter::default(),
            misses: HotCounter::default(),
        }
    }

    /// Synchronous get (what the async method does).
    #[inline]
    pub fn get_sync(&self, key: &str) -> Option<T> {
        let v = self.cache.get(key);
        if v.is_some() {
            self.hits.incr()
        } else {
            self.misses.incr()
        }
        v
    }

    fn run_pending(&self) {
        // moka applies evictions in batches; settle them before counting.
        self.cache.run_pending_tasks();
    }

    fn stats(&self) -> L1Stats {
        self.run_pending();
        L1Stats {
            backend: "lru",
            size: self.cache.entry_count(),
            maxsize: self.maxsize as u64,
            ttl: None,
            hits: self.hits.get(),
            misses: self.misses.get(),
            evictions: self.evictions.count.get(),
            hit_rate: 0.0,
            usage_percent: 0.0,
        }
        .compute_rates()
    }
}

impl<T: Clone + Send + Sync + 'static> CacheBackend for LruBackend<T> {
    type Value = T;
    type Stats = L1Stats;

    async fn get(&self, key: &str) -> Result<Option<T>> {
        Ok(self.get_sync(key))
    }

    async fn set(&self, key: &str, value: T, _ttl: Option<Duration>) -> Result<()> {
        self.cache.insert(key.to_string(), value);
        Ok(())
    }

    async fn set_if_not_exist(&self, key: &str, value: T, _ttl: Option<Duration>) -> Result<bool> {
        // `or_insert_with`, not `or_insert`: only the former coalesces
        // concurrent calls on one absent key (`or_insert` looks, then inserts,
        // so two racing callers could both win).
        Ok(self.cache.entry_by_ref(key).or_insert_with(|| value).is_fresh())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        Ok(self.cache.remove(key).is_some())
    }

    async fn clear(&self) -> Result<u64> {
        self.run_pending();
        let n = self.cache.entry_count();
        self.cache.invalidate_all();
        self.run_pending();
        Ok(n)
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self.cache.contains_key(key))
    }

    async fn get_ttl(&self, _key: &str) -> Result<Option<Duration>> {
        Ok(None)
    }

    async fn get_with_ttl(&self, key: &str) -> Result<Option<(T, Option<Duration>)>> {
        Ok(self.get_with_ttl_now(key).flatten())
    }

    #[inline]
    fn get_with_ttl_now(&self, key: &str) -> Option<Option<(T, Option<Duration>)>> {
        Some(self.get_sync(key).map(|v| (v, None)))
    }

    async fn list_keys(&self, prefix: Option<&str>) -> Result<Vec<String>> {
        Ok(self
            .cache
            .iter()
            .filter(|(k, _)| prefix.is_none_or(|p| k.starts_with(p)))
            .map(|(k, _)| Arc::unwrap_or_clone(k))
            .collect())
    }

    async fn get_size(&self) -> Result<u64> {
        self.run_pending();
        Ok(self.cache.entry_count())
    }

    async fn get_stats(&self) -> Result<L1Stats> {
        Ok(self.stats())
    }

    fn describe(&self) -> L1Stats {
        self.stats()
    }

    fn on_evict(&self, hook: EvictionHook) -> bool {
        self.evictions.install(hook)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::config::L1BackendKind;

    fn config(backend: L1BackendKind, maxsize: usize, ttl_ms: u64) -> L1Config {
        L1Config {
            fail_safe: Duration::ZERO,
            backend,
            maxsize,
            ttl: Duration::from_millis(ttl_ms),
        }
    }

    #[tokio::test]
    async fn ttl_entries_expire_and_report_real_remaining_ttl() {
        let b = TtlBackend::<Arc<String>>::new(&config(L1BackendKind::Ttl, 100, 60_000));
        b.set("k", Arc::new("v".into()), None).await.unwrap();
        let t1 = b.get_ttl("k").await.unwrap().unwrap();
        assert!(t1 <= Duration::from_secs(60) && t1 > Duration::from_secs(50));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t2 = b.get_ttl("k").await.unwrap().unwrap();
        assert!(t2 < t1, "remaining TTL must decrease: {t1:?} then {t2:?}");

        b.set("short", Arc::new("x".into()), Some(Duration::from_millis(30)))
            .await
            .unwrap();
        assert!(b.exists("short").await.unwrap());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(b.get("short").await.unwrap(), None);
        assert!(!b.exists("short").await.unwrap());
        assert_eq!(b.get_ttl("short").await.unwrap(), None);
        assert_eq!(b.list_keys(None).await.unwrap(), vec!["k".to_string()]);
    }

    #[tokio::test]
    async fn ttl_hit_returns_the_same_allocation() {
        let b = TtlBackend::<Arc<Vec<u8>>>::new(&config(L1BackendKind::Ttl, 10, 60_000));
        let big = Arc::new(vec![7u8; 10 << 20]);
        b.set("big", big.clone(), None).await.unwrap();
        let got = b.get("big").await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&big, &got), "an L1 hit must not copy the value");
    }

    #[tokio::test]
    async fn ttl_is_bounded_and_counts() {
        let b = TtlBackend::<Arc<u32>>::new(&config(L1BackendKind::Ttl, 50, 60_000));
        for i in 0..500 {
            b.set(&format!("k{i}"), Arc::new(i), None).await.unwrap();
        }
        assert!(b.get_size().await.unwrap() <= 50);
        b.get("k499").await.unwrap();
        b.get("absent").await.unwrap();
        let s = b.get_stats().await.unwrap();
        assert_eq!((s.misses, s.maxsize, s.backend), (1, 50, "ttl"));
        assert_eq!(s.hits + s.misses, 2);
    }

    /// Writing a key the backend holds replaces its value: neither counted
    /// nor told as an eviction. Filling past the bound is, once per entry.
    #[tokio::test]
    async fn an_overwrite_is_not_an_eviction() {
        let b = TtlBackend::<Arc<u32>>::new(&config(L1BackendKind::Ttl, 20, 60_000));
        let told = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = told.clone();
        assert!(b.on_evict(Arc::new(move |key| sink.lock().unwrap().push(key))));
        for i in 0..50 {
            b.set("same", Arc::new(i), None).await.unwrap();
        }
        assert_eq!(b.get_stats().await.unwrap().evictions, 0);
        assert!(told.lock().unwrap().is_empty(), "{:?}", told.lock().unwrap());
        assert_eq!(*b.get("same").await.unwrap().unwrap(), 49);

        for i in 0..200 {
            b.set(&format!("k{i}"), Arc::new(i), None).await.unwrap();
        }
        let evicted = b.get_stats().await.unwrap().evictions;
        let told = told.lock().unwrap().clone();
        assert!(evicted >= 150, "{evicted} evictions for 201 keys in 20 places");
        assert_eq!(evicted, told.len() as u64);
        for key in told.iter() {
            assert!(
                !b.exists(key).await.unwrap(),
                "{key} was told evicted but is still held"
            );
        }
    }

    /// An overwrite, made in place, takes the new value and the new TTL;
    /// a key written again after a delete is inserted anew.
    #[tokio::test]
    async fn an_overwrite_takes_the_new_value_and_ttl() {
        let b = TtlBackend::<Arc<u32>>::new(&config(L1BackendKind::Ttl, 10, 60_000));
        b.set("k", Arc::new(1), None).await.unwrap();
        b.set("k", Arc::new(2), Some(Duration::from_millis(30)))
            .await
            .unwrap();
        assert_eq!(*b.get("k").await.unwrap().unwrap(), 2);
        assert!(b.get_ttl("k").await.unwrap().unwrap() <= Duration::from_millis(30));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(b.get("k").await.unwrap(), None, "the overwrite's TTL holds");

        b.set("k", Arc::new(3), None).await.unwrap();
        assert!(b.get_ttl("k").await.unwrap().unwrap() > Duration::from_secs(50));
        assert!(b.delete("k").await.unwrap());
        b.set("k", Arc::new(4), None).await.unwrap();
        assert_eq!(*b.get("k").await.unwrap().unwrap(), 4);
        assert_eq!(b.get_size().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn ttl_set_if_not_exist_and_delete() {
        let b = TtlBackend::<Arc<u32>>::new(&config(L1BackendKind::Ttl, 10, 60_000));
        assert!(b.set_if_not_exist("k", Arc::new(1), None).await.unwrap());
        assert!(!b.set_if_not_exist("k", Arc::new(2), None).await.unwrap());
        assert_eq!(*b.get("k").await.unwrap().unwrap(), 1);
        b.set("e", Arc::new(1), Some(Duration::from_millis(10)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            b.set_if_not_exist("e", Arc::new(3), None).await.unwrap(),
            "expired counts as absent"
        );
        assert!(b.delete("k").await.unwrap());
        assert!(!b.delete("k").await.unwrap());
        assert_eq!(b.clear().await.unwrap(), 1);
        assert_eq!(b.get_size().await.unwrap(), 0);
    }

    /// Overwrites and deletes of the same few keys from several threads at
    /// once (the overwrite's look-then-replace races the deletes): every
    /// call returns, each key holds at most one entry, and the last write
    /// of each key is what it holds.
    #[test]
    fn overwrites_racing_deletes_keep_one_entry_per_key() {
        const THREADS: u32 = 4;
        let b = TtlBackend::<Arc<u32>>::new(&config(L1BackendKind::Ttl, 100, 60_000));
        let barrier = std::sync::Barrier::new(THREADS as usize);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (b, barrier) = (&b, &barrier);
                s.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                    barrier.wait();
                    rt.block_on(async {
                        for i in 0..5_000u32 {
                            let key = format!("k{}", i % 4);
                            if t == 0 && i % 3 == 0 {
                                b.delete(&key).await.unwrap();
                            } else {
                                b.set(&key, Arc::new(t * 1_000_000 + i), None).await.unwrap();
                            }
                        }
                    });
                });
            }
        });
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            assert!(b.get_size().await.unwrap() <= 4);
            for k in 0..4 {
                let key = format!("k{k}");
                b.set(&key, Arc::new(k), None).await.unwrap();
                assert_eq!(*b.get(&key).await.unwrap().unwrap(), k);
            }
            assert_eq!(b.get_size().await.unwrap(), 4);
        });
    }

    /// Threads released together by a barrier, round after round on fresh
    /// keys, so the calls really overlap: exactly one winner per key.
    #[test]
    fn set_if_not_exist_race_has_one_winner() {
        const THREADS: usize = 4;
        const ROUNDS: usize = 500;
        for kind in [L1BackendKind::Ttl, L1BackendKind::Lru] {
            let ttl = TtlBackend::<Arc<usize>>::new(&config(kind, ROUNDS * 2, 60_000));
            let lru = LruBackend::<Arc<usize>>::new(&config(kind, ROUNDS * 2, 60_000));
            let barrier = std::sync::Barrier::new(THREADS);
            let wins: Vec<std::sync::atomic::AtomicUsize> = (0..ROUNDS).map(|_| Default::default()).collect();
            std::thread::scope(|s| {
                for t in 0..THREADS {
                    let (ttl, lru, barrier, wins) = (&ttl, &lru, &barrier, &wins);
                    s.spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                        for (round, won) in wins.iter().enumerate() {
                            let key = format!("race-{round}");
                            barrier.wait();
                            let stored = rt.block_on(async {
                                match kind {
                                    L1BackendKind::Ttl => ttl.set_if_not_exist(&key, Arc::new(t), None).await,
                                    L1BackendKind::Lru => lru.set_if_not_exist(&key, Arc::new(t), None).await,
                                    L1BackendKind::Registered(_) => {
                                        unreachable!("only the built-in kinds race here")
                                    }
                                }
                            });
                            won.fetch_add(stored.unwrap() as usize, std::sync::atomic::Ordering::Relaxed);
                        }
                    });
                }
            });
            for (round, won) in wins.iter().enumerate() {
                assert_eq!(
                    won.load(std::sync::atomic::Ordering::Relaxed),
                    1,
                    "{kind:?} round {round}"
                );
            }
        }
    }

    #[tokio::test]
    async fn lru_evicts_least_recently_used() {
        let b = LruBackend::<Arc<u32>>::new(&config(L1BackendKind::Lru, 3, 0));
        for k in ["a", "b", "c"] {
            b.set(k, Arc::new(0), None).await.unwrap();
        }
        b.run_pending();
        // Touch a and c: b becomes the least recently used.
        assert!(b.get("a").await.unwrap().is_some());
        assert!(b.get("c").await.unwrap().is_some());
        b.run_pending();
        b.set("d", Arc::new(0), None).await.unwrap();
        b.run_pending();
        let mut keys = b.list_keys(None).await.unwrap();
        keys.sort();
        assert_eq!(keys, vec!["a", "c", "d"]);
        assert_eq!(b.get_ttl("a").await.unwrap(), None, "lru entries have no expiry");
        assert!(b.set_if_not_exist("e", Arc::new(1), None).await.unwrap());
        assert!(!b.set_if_not_exist("e", Arc::new(2), None).await.unwrap());
        let s = b.get_stats().await.unwrap();
        assert_eq!((s.backend, s.maxsize, s.size), ("lru", 3, 3));
        assert_eq!(b.list_keys(Some("d")).await.unwrap(), vec!["d"]);
    }
}
