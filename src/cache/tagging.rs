//! Invalidation a service can express: tags on writes, and the operations
//! that invalidate many entries with one marker — [`remove_by_tag`],
//! [`expire_by_tag`], [`invalidate_all`], [`expire_all`] — plus [`expire`]
//! for one key.
//!
//! An invalidation is applied here at once (the marker table, then the L1
//! entries it covers), recorded in L2 (one command, whatever the number of
//! entries), and announced on the backplane; when L2 is unavailable the
//! marker waits in the outage replay queue and is recorded on recovery.
//! Entries are judged against the markers when read (`markers.rs`).
//!
//! The order that keeps a removed entry from coming back into L1: an
//! invalidation takes the marker first, then evicts the L1 keys the tag
//! index lists; a tagged write or promotion puts the value into L1, lists
//! the key, then judges it again (and undoes itself if covered). Either the
//! eviction sees the listing or the second judgement sees the marker.
//!
//! [`remove_by_tag`]: TwoLevelCache::remove_by_tag
//! [`expire_by_tag`]: TwoLevelCache::expire_by_tag
//! [`invalidate_all`]: TwoLevelCache::invalidate_all
//! [`expire_all`]: TwoLevelCache::expire_all
//! [`expire`]: TwoLevelCache::expire

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::gate::Outcome;
use super::replay::PendingOp;
use super::{CacheValue, Inner, TwoLevelCache};
use crate::backend::CacheBackend;
use crate::clock::stamp_us;
use crate::error::Error;
use crate::tags::EntryState;
use crate::tags::{check_tags, wrap, Mark, MarkKind, Scope, ENVELOPE};

/// How far a memory backend's clock may lag (see `clock.rs`), with room.
const L1_CLOCK_LAG: Duration = Duration::from_millis(50);

/// What happened to an invalidation's marker in L2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkerStatus {
    /// Recorded in L2 (every instance, and instances started later, see it).
    Recorded,
    /// L2 was unavailable: the marker is queued and recorded on recovery.
    Queued,
    /// The L2 backend keeps no markers: announced on the backplane only.
    NotKept,
    /// This cache has no L2.
    Disabled,
}

/// What an invalidation did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Invalidation {
    /// `"tag"` or `"namespace"`.
    pub scope: &'static str,
    /// The tag, for a tag's invalidation.
    pub tag: Option<String>,
    /// `"remove"` or `"expire"`.
    pub kind: &'static str,
    /// Entries of this instance's L1 removed (or made stale) at once.
    pub l1_entries: u64,
    /// The marker in L2.
    pub l2: MarkerStatus,
    /// The marker's stamp: entries written at or before it are covered
    /// (microseconds since the Unix epoch).
    pub stamp_us: u64,
}

/// One write as L2 stores it: the value, its tags, and its stamp (when its
/// data was read: the start of a load; `None`: stamped when encoded).
pub(crate) struct WriteOf<'a, V> {
    pub(crate) value: &'a V,
    pub(crate) tags: &'a [String],
    pub(crate) written_us: Option<u64>,
}

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// [`set`](Self::set) with tags: the entry is removed by
    /// [`remove_by_tag`](Self::remove_by_tag) and made stale by
    /// [`expire_by_tag`](Self::expire_by_tag) of any of them. Never fails:
    /// invalid tags are counted (`errors.invalid_tag`) and nothing is stored.
    pub async fn set_with_tags(&self, key: impl AsRef<str>, value: V, tags: &[&str]) {
        let key = key.as_ref();
        let _ = self.try_set_with_tags(key, value, None, tags).await;
    }

    /// [`try_set_with_ttl`](Self::try_set_with_ttl) with tags (see
    /// [`crate::tags`] for what a tag may be). An invalid tag is an
    /// [`Error::InvalidInput`] and nothing is stored, in either level.
    pub async fn try_set_with_tags(
        &self,
        key: impl AsRef<str>,
        value: V,
        ttl: Option<Duration>,
        tags: &[&str],
    ) -> Result<(), Error> {
        let key = key.as_ref();
        let tags = self.checked_tags(tags)?;
        self.store(key, Arc::new(value), ttl, &tags, super::call::Via::ALL)
            .await
    }

    /// `tags`, checked; an invalid one is counted and logged.
    pub(crate) fn checked_tags<S: AsRef<str>>(&self, tags: &[S]) -> Result<Vec<String>, Error> {
        check_tags(tags).inspect_err(|e| {
            self.inner.counters.invalid_tag.incr();
            self.refused(e);
        })
    }

    /// Every entry carrying `tag` reads as absent, in both levels: on this
    /// instance at once, on the others when the backplane brings the marker
    /// (and on instances started later, from L2). Costs one L2 command and
    /// one message, whatever the number of entries.
    pub async fn remove_by_tag(&self, tag: &str) -> Result<Invalidation, Error> {
        self.invalidate_tag(tag, MarkKind::Remove).await
    }

    /// Every entry carrying `tag` becomes stale: `get` misses, `get_or_load`
    /// reloads, and a fail-safe cache may still serve the old value if the
    /// reload fails. Without fail-safe this is
    /// [`remove_by_tag`](Self::remove_by_tag).
    pub async fn expire_by_tag(&self, tag: &str) -> Result<Invalidation, Error> {
        self.invalidate_tag(tag, MarkKind::Expire).await
    }

    async fn invalidate_tag(&self, tag: &str, kind: MarkKind) -> Result<Invalidation, Error> {
        self.checked_tags(&[tag])?;
        Ok(self.invalidate_marked(Scope::Tag(tag.to_string()), kind).await)
    }

    /// Every entry of the namespace reads as absent, on every instance, in
    /// constant time (one marker; nothing is scanned). Unlike
    /// [`clear`](Self::clear), L2's keys stay until their TTL ends.
    pub async fn invalidate_all(&self) -> Invalidation {
        self.invalidate_marked(Scope::All, MarkKind::Remove).await
    }

    /// Every entry of the namespace becomes stale (see
    /// [`expire_by_tag`](Self::expire_by_tag)), on every instance, in constant time.
    pub async fn expire_all(&self) -> Invalidation {
        self.invalidate_marked(Scope::All, MarkKind::Expire).await
    }

    /// `key` becomes stale in both levels: `get` misses, `get_or_load`
    /// reloads, and a fail-safe cache keeps the old value as a fallback (in
    /// L2 for its fail-safe duration). Without fail-safe, the key is removed.
    /// `true` if either level held it. Other instances drop their L1 copy.
    pub async fn expire(&self, key: impl AsRef<str>) -> bool {
        let key = key.as_ref();
        if self.check_key(key).is_err() {
            return false;
        }
        let Some(extra) = self.inner.fail_safe else {
            return self.delete(key).await;
        };
        let _write = self.inner.guard.write(key);
        let mut found = false;
        if self.inner.l2.is_some() {
            found |= self
                .write_l2(key, PendingOp::Expire(extra), None)
                .await
                .unwrap_or(false);
        }
        if let Some(l1) = &self.inner.l1 {
            found |= self.inner.l1_invalidate(l1, key, MarkKind::Expire).await;
        }
        found
    }

    async fn invalidate_marked(&self, scope: Scope, kind: MarkKind) -> Invalidation {
        let mark = Mark {
            scope,
            kind,
            at_us: stamp_us(),
        };
        let l1_entries = self.inner.apply_mark(&mark).await;
        let l2 = self.record_mark(&mark).await;
        let (scope, tag) = match mark.scope {
            Scope::All => ("namespace", None),
            Scope::Tag(t) => ("tag", Some(t)),
        };
        Invalidation {
            scope,
            tag,
            kind: match kind {
                MarkKind::Remove => "remove",
                MarkKind::Expire => "expire",
            },
            l1_entries,
            l2,
            stamp_us: mark.at_us,
        }
    }

    /// Records `mark` in L2 and announces it, or queues it for the replay.
    async fn record_mark(&self, mark: &Mark) -> MarkerStatus {
        if self.inner.l2.is_none() {
            return MarkerStatus::Disabled;
        }
        let queued = || {
            self.inner.queue.push_mark(mark.clone());
            self.maybe_kick_replay();
            MarkerStatus::Queued
        };
        if self.inner.queue.is_active() {
            // Behind the writes already waiting: markers and writes reach L2 in order.
            return queued();
        }
        let Some((l2, permit)) = self.l2() else {
            return queued();
        };
        let r = self.send_mark(l2, mark).await;
        match self.settle(permit, "mark", r) {
            Outcome::Done(kept) => {
                if kept {
                    MarkerStatus::Recorded
                } else {
                    MarkerStatus::NotKept
                }
            }
            _ => queued(),
        }
    }

    /// One marker, direct or replayed, as L2 calls: recorded, then announced.
    pub(in crate::cache) async fn send_mark(&self, l2: &B, mark: &Mark) -> Result<bool, Error> {
        let kept = l2
            .put_marker(&mark.field(), mark.at_us, self.inner.markers.lifetime())
            .await?;
        if let Some(bus) = &self.inner.bus {
            bus.publish_mark(&self.inner.prefix, mark);
        }
        Ok(kept)
    }

    /// Loads the markers from L2 if the table is not (or no longer) known:
    /// before the first L2 read, after the backplane may have missed some,
    /// and (with no backplane) when it is older than a second.
    pub(super) async fn ensure_markers(&self) {
        let markers = &self.inner.markers;
        if self.inner.l2.is_none() || !markers.needs_load(self.inner.bus.is_some()) {
            return;
        }
        match self.with_l2("load_markers", |l2| l2.load_markers()).await {
            Some(Some(fields)) => markers.loaded(fields),
            Some(None) => markers.loaded([]),
            // Unavailable: judged by what is known here; loaded on a later read.
            None => {}
        }
    }

    /// What stored `bytes` are by the markers (`None`: a malformed envelope,
    /// which reads miss).
    fn state_of(&self, bytes: &[u8]) -> Option<EntryState> {
        match crate::tags::open(bytes) {
            Ok(Some(e)) => Some(self.inner.markers.judge(Some(e.written_us), &e.tags)),
            Ok(None) => Some(self.inner.markers.judge(None, &[])),
            Err(_) => None,
        }
    }

    /// Whether L2 holds an entry reads can see under `key` (a stale one
    /// counts for a fail-safe cache): one command, `EXISTS` while no marker
    /// is known, the entry itself, judged, otherwise.
    pub(super) async fn present_in_l2(&self, key: &str) -> bool {
        self.ensure_markers().await;
        if !self.inner.markers.any() {
            return self.with_l2("exists", |l2| l2.exists(key)).await.unwrap_or(false);
        }
        let Some(Some(bytes)) = self.with_l2("get", |l2| l2.get(key)).await else {
            return false;
        };
        match self.state_of(&bytes) {
            Some(EntryState::Live) => true,
            Some(EntryState::Stale) => self.inner.fail_safe.is_some(),
            _ => false,
        }
    }

    /// How long L2's entry under `key` stays fresh, if L2 answers and holds
    /// it with an expiry (`Some(None)`: held but covered by a marker or only
    /// stale). One call: the TTL alone while no marker is known, the entry
    /// and its TTL together otherwise.
    pub(super) async fn fresh_ttl_in_l2(&self, key: &str) -> Option<Option<Duration>> {
        self.ensure_markers().await;
        let ttl = if !self.inner.markers.any() {
            self.with_l2("get_ttl", |l2| l2.get_ttl(key)).await??
        } else {
            let (bytes, ttl) = self.with_l2("get_with_ttl", |l2| l2.get_with_ttl(key)).await??;
            let ttl = ttl?;
            if self.state_of(&bytes) != Some(EntryState::Live) {
                return Some(None);
            }
            ttl
        };
        Some(self.logical(Some(ttl)).ok().flatten())
    }

    /// `value` encoded for L2 by the one rule for writes (`encode_bounded`),
    /// in the tagged layout when it has tags or a namespace-wide marker is
    /// alive (so that readers can tell it from what the marker covers).
    pub(crate) fn encode_write(&self, w: &WriteOf<'_, V>) -> Result<Vec<u8>, Error> {
        let body = self.encode_bounded(w.value)?;
        if w.tags.is_empty() && !self.inner.markers.all_live() {
            return Ok(body);
        }
        Ok(wrap(w.written_us.unwrap_or_else(stamp_us), w.tags, &body))
    }

    /// The L2 TTL of stored `bytes`: a tagged entry lives no longer than
    /// the markers that may cover it.
    pub(crate) fn l2_ttl_of(&self, bytes: &[u8], ttl: Duration) -> Duration {
        match bytes.first() {
            Some(&ENVELOPE) => ttl.min(self.inner.markers.lifetime()),
            _ => ttl,
        }
    }

    /// Drops from the tag index the keys L1 no longer holds (evicted or
    /// expired there); `true` if that brought it back within bounds, or
    /// another prune is already at it.
    async fn prune_tag_index(&self, l1: &A) -> bool {
        let Some((listed, prune)) = self.inner.tag_index.begin_prune() else {
            return true;
        };
        let mut gone = std::collections::HashSet::new();
        for key in listed {
            if !l1.exists(&key).await.unwrap_or(true) {
                gone.insert(key);
            }
        }
        prune.end(&gone)
    }

    /// After a tagged value went into L1: lists it under its tags, then
    /// judges it again and takes it out if a marker arrived meanwhile (see
    /// the module docs for why this order).
    pub(crate) async fn l1_tagged<S: AsRef<str>>(&self, key: &str, tags: &[S], written_us: u64) {
        let Some(l1) = &self.inner.l1 else { return };
        if !self.inner.tag_index.add(key, tags) && !self.prune_tag_index(l1).await {
            self.inner.counters.tag_index_clears.incr();
            tracing::warn!(cache = %self.inner.prefix, "L1 tag index full: L1 cleared");
            self.inner.guard.bump_epoch();
            self.inner.tag_index.clear();
            let _ = l1.clear().await;
            return;
        }
        let tags: Vec<&str> = tags.iter().map(AsRef::as_ref).collect();
        if self.inner.markers.judge(Some(written_us), &tags) != EntryState::Live {
            let _ = l1.delete(key).await;
        }
    }
}

impl<V, A, B> Inner<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// Applies `mark` here: the marker table first, then the L1 entries it
    /// covers. Returns how many L1 entries it removed or made stale.
    pub(super) async fn apply_mark(&self, mark: &Mark) -> u64 {
        self.markers.apply(mark);
        let Some(l1) = &self.l1 else { return 0 };
        let mut n = 0;
        match (&mark.scope, mark.kind) {
            (Scope::Tag(tag), kind) => {
                let keys = match kind {
                    MarkKind::Remove => self.tag_index.take(tag),
                    MarkKind::Expire => self.tag_index.keys(tag),
                };
                for key in keys {
                    let _write = self.guard.write(&key);
                    n += self.l1_invalidate(l1, &key, kind).await as u64;
                }
            }
            (Scope::All, MarkKind::Remove) => {
                self.guard.bump_epoch();
                self.tag_index.clear();
                n = l1.clear().await.unwrap_or(0);
                self.guard.bump_epoch();
            }
            (Scope::All, MarkKind::Expire) => {
                self.guard.bump_epoch();
                for key in l1.list_keys(None).await.unwrap_or_default() {
                    n += self.l1_invalidate(l1, &key, MarkKind::Expire).await as u64;
                }
                self.guard.bump_epoch();
            }
        }
        n
    }

    /// Removes `key` from L1, or (expiry, fail-safe cache) keeps it only as
    /// a stale fallback: its fail-safe time left, no logical TTL. `true` if
    /// L1 held it.
    pub(super) async fn l1_invalidate(&self, l1: &A, key: &str, kind: MarkKind) -> bool {
        match (kind, self.fail_safe) {
            (MarkKind::Expire, Some(extra)) => match l1.get_with_ttl(key).await {
                Ok(Some((v, ttl))) => {
                    // A little less than the fail-safe time: memory backends read
                    // a clock that may lag, and could otherwise see a few ms of
                    // logical TTL left (a fresh entry) on the next read.
                    let keep = extra.saturating_sub(L1_CLOCK_LAG).max(Duration::from_millis(1));
                    if ttl.is_none_or(|t| t > keep) {
                        let _ = l1.set(key, v, Some(keep)).await;
                    }
                    true
                }
                _ => false,
            },
            _ => l1.delete(key).await.unwrap_or(false),
        }
    }
}
