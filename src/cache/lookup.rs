//! Reads: `get` (the hot path), the lookup steps shared by the async and
//! blocking APIs and by `get_or_load`, L2 reads with promotion into L1, and
//! the other read operations (`is_on_cache`, `get_ttl`, `list_keys`).
//!
//! A lookup has a first step that does not await ([`lookup_now`]): L1, when
//! it answers at once (the memory backends do), so an L1 hit is a plain call.
//! The rest ([`lookup_on`]) asks L1 asynchronously or L2. Every caller —
//! `get`, `get_or_load`, the blocking API — runs these two steps, so their
//! order is written once.
//!
//! [`lookup_now`]: TwoLevelCache::lookup_now
//! [`lookup_on`]: TwoLevelCache::lookup_on

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::events::{CacheEvent, Level};
use super::gate::{CallBudget, DataOp, NoBudget};
use super::guard::Snapshot;
use super::replay::Lookup;
use super::{CacheValue, TwoLevelCache};
use crate::backend::CacheBackend;
use crate::error::Error;
use crate::tags::EntryState;

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

/// A lookup's answer, with L1's stale entry standing in for a miss.
pub(super) fn with_stale<V>(found: Found<V>, stale: Option<Arc<V>>) -> Found<V> {
    match (found, stale) {
        (Found::Miss, Some(v)) => Found::Stale(v),
        (found, _) => found,
    }
}

/// What stored bytes hold, judged against the invalidation markers.
pub(super) enum Decoded<V> {
    Live(Arc<V>),
    /// Covered by an expiry marker.
    Stale(Arc<V>),
    /// Covered by a removal marker, or not a value.
    Gone,
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

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// The value under `key`: L1, then L2 (promoting a hit into L1). Misses,
    /// L2 failures and undecodable bytes all read as `None`. An L1 hit hands
    /// out the stored `Arc`, never a copy.
    pub async fn get(&self, key: impl AsRef<str>) -> Option<Arc<V>> {
        let key = key.as_ref();
        // `lookup`'s two steps, spelled out, and a hit returned from inside
        // the match: see "Performance notes" in the module docs of `cache`.
        let step = match self.get_now(key) {
            Ok(value) => return Some(value),
            Err(LookupStep::Done(found)) => return found.fresh(),
            Err(step) => step,
        };
        self.lookup_on(key, step, &mut NoBudget).await.fresh()
    }

    /// `get`'s first step: an L1 hit as the value itself (`Ok`), else the
    /// lookup's next step. In a cache without fail-safe (no logical TTL to
    /// check), a hit never builds a `Found`, so what `get` reads back is one
    /// pointer.
    #[inline(always)]
    pub(crate) fn get_now(&self, key: &str) -> Result<Arc<V>, LookupStep<V>> {
        if self.inner.fail_safe.is_some() {
            return Err(self.lookup_now(key, false));
        }
        let (value, _) = self.l1_now(key, false)?;
        self.observe_l1_hit(key);
        Ok(value)
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
    /// plain call, its result never copied through a future's state. The
    /// rest is [`lookup_on`](Self::lookup_on).
    #[inline(always)]
    pub(crate) fn lookup_now(&self, key: &str, want_ttl: bool) -> LookupStep<V> {
        let want_ttl = want_ttl || self.inner.fail_safe.is_some();
        let read = match self.l1_now(key, want_ttl) {
            Ok(read) => read,
            Err(step) => return step,
        };
        match self.l1_verdict(Some(read), want_ttl) {
            Ok(found) => {
                self.observe_l1_hit(key);
                LookupStep::Done(found)
            }
            Err(stale) => self.after_l1(key, want_ttl, stale),
        }
    }

    /// The part of a first step both `lookup_now` and `get_now` take: the
    /// key checked (a refused key is a miss), then L1 asked at once. `Ok`:
    /// the entry L1 holds, before any logical-TTL verdict; `Err`: the next
    /// step (L1 has nothing, must be awaited, or there is no L1).
    #[inline(always)]
    fn l1_now(&self, key: &str, want_ttl: bool) -> Result<(Arc<V>, Option<Duration>), LookupStep<V>> {
        if self.check_key(key).is_err() {
            return Err(LookupStep::Done(Found::Miss));
        }
        match self.inner.l1.as_ref().map(|l1| l1.get_with_ttl_now(key)) {
            Some(Some(Some(read))) => Ok(read),
            Some(None) => Err(LookupStep::AwaitL1 { want_ttl }),
            Some(Some(None)) | None => Err(self.after_l1(key, want_ttl, None)),
        }
    }

    /// The step after L1 had no fresh entry for `key` (`stale` is its
    /// fail-safe entry, if any): the answer when there is no L2, else ask L2.
    #[inline]
    fn after_l1(&self, key: &str, want_ttl: bool, stale: Option<Arc<V>>) -> LookupStep<V> {
        if self.inner.l2.is_none() {
            let found = stale.map_or(Found::Miss, Found::Stale);
            self.observe(key, &found, Level::L1);
            return LookupStep::Done(found);
        }
        if self.inner.l1.is_some() {
            self.observe_l1_miss(key);
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
        let step = match step {
            LookupStep::AwaitL1 { want_ttl } => self.await_l1(key, want_ttl).await,
            step => step,
        };
        let (want_ttl, stale) = match step {
            LookupStep::AskL2 { want_ttl, stale } => (want_ttl, stale),
            LookupStep::Done(found) => return found,
            LookupStep::AwaitL1 { .. } => return Found::Miss,
        };
        let found = with_stale(self.lookup_l2(key, want_ttl, budget, true).await, stale);
        self.observe(key, &found, Level::L2);
        found
    }

    /// The L1 read a lookup must await (`AwaitL1`): `Done` with a fresh
    /// entry, else `AskL2` carrying L1's stale entry, if any.
    pub(super) async fn await_l1(&self, key: &str, want_ttl: bool) -> LookupStep<V> {
        let Some(l1) = &self.inner.l1 else {
            return LookupStep::AskL2 {
                want_ttl,
                stale: None,
            };
        };
        let read = if want_ttl {
            l1.get_with_ttl(key).await
        } else {
            l1.get(key).await.map(|v| v.map(|v| (v, None)))
        };
        match self.l1_verdict(read.ok().flatten(), want_ttl) {
            Ok(found) => {
                self.observe(key, &found, Level::L1);
                LookupStep::Done(found)
            }
            Err(stale) => {
                if self.inner.l2.is_some() {
                    self.observe_l1_miss(key);
                } else {
                    self.observe(key, &Found::Miss, Level::L1);
                }
                LookupStep::AskL2 { want_ttl, stale }
            }
        }
    }

    /// Tells subscribers what a read found, `asked` being the last level it
    /// asked (nothing is built without a subscriber). A read tells one event
    /// per level it asks: an L1 miss ([`observe_l1_miss`](Self::observe_l1_miss)),
    /// then L2's answer.
    #[inline(always)]
    pub(super) fn observe(&self, key: &str, found: &Found<V>, asked: Level) {
        self.inner.events.emit(|| match found {
            Found::Fresh { level, .. } => CacheEvent::Hit {
                key: key.to_string(),
                level: *level,
            },
            _ => CacheEvent::Miss {
                key: key.to_string(),
                level: asked,
            },
        });
    }

    /// Tells subscribers that L1 answered with a fresh entry.
    #[inline(always)]
    pub(super) fn observe_l1_hit(&self, key: &str) {
        self.inner.events.emit(|| CacheEvent::Hit {
            key: key.to_string(),
            level: Level::L1,
        });
    }

    /// Tells subscribers that L1 had no fresh entry and L2 is asked next.
    #[inline(always)]
    pub(super) fn observe_l1_miss(&self, key: &str) {
        self.inner.events.emit(|| CacheEvent::Miss {
            key: key.to_string(),
            level: Level::L1,
        });
    }

    /// What an L1 read means: `Ok` is the answer (a fresh entry), `Err` says
    /// to ask L2, carrying the stale entry (fail-safe) found in L1, if any.
    #[inline]
    pub(super) fn l1_verdict(
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

    pub(super) async fn lookup_l2(
        &self,
        key: &str,
        want_ttl: bool,
        budget: &mut impl CallBudget,
        promote: bool,
    ) -> Found<V> {
        if self.inner.l2.is_none() {
            return Found::Miss;
        }
        if let Some(found) = self.found_pending(key).await {
            return found;
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
        self.found_in_l2(key, before, read, promote).await
    }

    /// During an outage replay, what the write of `key` still queued for L2
    /// says (`None`: nothing queued, L2 may be read).
    pub(super) async fn found_pending(&self, key: &str) -> Option<Found<V>> {
        if !self.inner.queue.is_active() {
            return None;
        }
        self.maybe_kick_replay();
        match self.inner.queue.lookup(key) {
            Lookup::Absent => Some(Found::Miss),
            Lookup::Value(bytes) => Some(match self.decode(key, &bytes, None).await {
                Decoded::Live(value) => Found::Fresh {
                    value,
                    remaining: None,
                    level: Level::L2,
                },
                Decoded::Stale(v) => Found::Stale(v),
                Decoded::Gone => Found::Miss,
            }),
            Lookup::NotPending => None,
        }
    }

    /// What L2's answer for `key` means (`read`: `None` when L2 failed),
    /// the read having started after the guard's `before`: counted as an L2
    /// hit or miss, decoded, judged, promoted into L1 when live (and `promote`).
    pub(super) async fn found_in_l2(
        &self,
        key: &str,
        before: Snapshot,
        read: Option<Option<(Vec<u8>, Option<Duration>)>>,
        promote: bool,
    ) -> Found<V> {
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
                let promote = promote.then_some((before, promote_ttl));
                match self.decode(key, &bytes, promote).await {
                    Decoded::Live(value) => Found::Fresh {
                        value,
                        remaining,
                        level: Level::L2,
                    },
                    Decoded::Stale(v) => Found::Stale(v),
                    Decoded::Gone => Found::Miss,
                }
            }
            Err(()) => match self.decode(key, &bytes, None).await {
                Decoded::Live(v) | Decoded::Stale(v) => Found::Stale(v),
                Decoded::Gone => Found::Miss,
            },
        }
    }

    /// Decodes L2 bytes, judged against the invalidation markers (a tagged
    /// entry by its stamp and tags, see [`crate::tags`]); promotes a live
    /// value into L1 (with the given TTL) when `promote` says no write raced
    /// the read.
    pub(super) async fn decode(
        &self,
        key: &str,
        bytes: &[u8],
        promote: Option<(Snapshot, Option<Duration>)>,
    ) -> Decoded<V> {
        self.ensure_markers().await;
        let entry = match crate::tags::open(bytes) {
            Ok(entry) => entry,
            Err(e) => return self.undecodable(key, &e, promote.is_some()).await,
        };
        let (verdict, body, tags) = match &entry {
            None => (self.inner.markers.judge(None, &[]), bytes, &[][..]),
            Some(e) => (
                self.inner.markers.judge(Some(e.written_us), &e.tags),
                e.body,
                &e.tags[..],
            ),
        };
        // Without fail-safe there are no stale fallbacks: expired is removed.
        let verdict = match verdict {
            EntryState::Stale if self.inner.fail_safe.is_none() => EntryState::Removed,
            v => v,
        };
        if verdict == EntryState::Removed {
            self.inner.counters.marker_removed.incr();
            return Decoded::Gone;
        }
        let decoded = if bytes.len() > self.inner.max_value_bytes {
            Err(Error::Serialization(format!(
                "{} bytes stored, more than the maximum of {} (CACHE_MAX_VALUE_BYTES)",
                bytes.len(),
                self.inner.max_value_bytes
            )))
        } else {
            self.inner.serializer.decode::<V>(body)
        };
        let v = match decoded {
            Ok(v) => Arc::new(v),
            Err(e) => return self.undecodable(key, &e, promote.is_some()).await,
        };
        if verdict == EntryState::Stale {
            self.inner.counters.marker_stale.incr();
            return Decoded::Stale(v);
        }
        if let (Some(l1), Some((before, ttl))) = (&self.inner.l1, promote) {
            if self.inner.guard.may_promote(key, before) {
                self.l1_keep(l1, key, v.clone(), ttl, Some(before.checks())).await;
                if let Some(e) = entry.as_ref().filter(|_| !tags.is_empty()) {
                    self.l1_tagged(key, tags, e.written_us).await;
                }
            }
        }
        Decoded::Live(v)
    }

    /// Bytes that are no value: counted, a miss, and (after a real read)
    /// dropped from L2 so the next read does not pay for them again.
    async fn undecodable(&self, key: &str, e: &Error, drop_key: bool) -> Decoded<V> {
        self.data_error(DataOp::Decode, e);
        if drop_key {
            if let Some(l2) = &self.inner.l2 {
                let _ = l2.delete(key).await;
            }
        }
        Decoded::Gone
    }

    /// Whether `key` is in L1 or L2 (an entry an invalidation marker removed
    /// is not, though its key may stay in L2 until its TTL ends).
    pub async fn is_on_cache(&self, key: impl AsRef<str>) -> bool {
        let key = key.as_ref();
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
                None => self.present_in_l2(key).await,
            }
        }
    }

    /// How long the entry under `key` stays fresh: the shared entry's
    /// remaining TTL in L2 when L2 answers and holds it (that is how long
    /// every instance can read it), else this instance's L1 copy's real
    /// remaining TTL (L2 unavailable, the key's write still queued for L2, or
    /// a cache without L2). `None` when absent, stale (fail-safe time only)
    /// or without expiry. Asks L2 even when L1 holds the key.
    pub async fn get_ttl(&self, key: impl AsRef<str>) -> Option<Duration> {
        let key = key.as_ref();
        self.check_key(key).ok()?;
        if self.inner.l2.is_some() && self.pending(key).is_none() {
            if let Some(ttl) = self.fresh_ttl_in_l2(key).await {
                return ttl;
            }
        }
        let l1 = self.inner.l1.as_ref()?;
        let t = l1.get_ttl(key).await.ok().flatten()?;
        self.logical(Some(t)).ok().flatten()
    }

    /// Keys (without the namespace) in L1 or L2 that start with `prefix`
    /// literally; sorted, without duplicates. Keys of entries an
    /// invalidation marker covers are listed until their TTL ends (telling
    /// them apart would read every entry).
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
}
