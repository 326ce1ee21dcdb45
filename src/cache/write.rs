//! Writes: `set` and its `try_`/TTL forms, `set_if_not_exist`, `delete` and
//! `clear`, the one encoding rule for every write, and how a write reaches L2
//! (now, or queued for the replay when L2 is unavailable).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::call::Via;
use super::gate::{DataOp, Outcome};
use super::replay::PendingOp;
use super::tagging::WriteOf;
use super::{CacheValue, TwoLevelCache};
use crate::backend::CacheBackend;
use crate::clock::{stamp_us, unix_now};
use crate::error::Error;

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

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// Stores `value` in L1 and L2 (write-through) with the cache's TTLs.
    /// Never fails: problems are counted in stats (see [`try_set`](Self::try_set)).
    pub async fn set(&self, key: impl AsRef<str>, value: V) {
        let key = key.as_ref();
        let _ = self.try_set_with_ttl(key, value, None).await;
    }

    /// Stores `value` with a per-call TTL (L2 uses it; L1 never keeps an entry
    /// longer than its own TTL). When L2 is unavailable, L1 keeps the value and
    /// the write is replayed into L2 when it is back.
    pub async fn set_with_ttl(&self, key: impl AsRef<str>, value: V, ttl: Option<Duration>) {
        let key = key.as_ref();
        let _ = self.try_set_with_ttl(key, value, ttl).await;
    }

    /// [`set`](Self::set) that reports what the caller can fix: a key longer
    /// than the maximum, a value whose encoding is larger than the maximum or
    /// cannot be encoded. Nothing is stored then, in either level, and any
    /// previous value of the key is removed. L2 being unavailable is *not* an
    /// error: the value is in L1 and queued for L2.
    pub async fn try_set(&self, key: impl AsRef<str>, value: V) -> Result<(), Error> {
        let key = key.as_ref();
        self.try_set_with_ttl(key, value, None).await
    }

    /// [`try_set`](Self::try_set) with a per-call TTL.
    pub async fn try_set_with_ttl(
        &self,
        key: impl AsRef<str>,
        value: V,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        let key = key.as_ref();
        self.store(key, Arc::new(value), ttl, &[], Via::ALL).await
    }

    /// Write-through of a shared value with its (checked) tags: what every
    /// `set` form does.
    pub(crate) async fn store(
        &self,
        key: &str,
        value: Arc<V>,
        ttl: Option<Duration>,
        tags: &[String],
        via: Via,
    ) -> Result<(), Error> {
        self.check_key(key)?;
        self.check_ttl(ttl)?;
        let _write = self.inner.guard.write(key);
        let since = self.early_since();
        let (l1_ttl, l2_ttl) = self.physical_ttls(ttl);
        // Tagged writes are stamped before they reach either level.
        let written_us = (!tags.is_empty()).then(stamp_us);
        if self.inner.l2.is_some() && via.l2 {
            let write = WriteOf {
                value: &*value,
                tags,
                written_us,
            };
            match self.encode_write(&write) {
                Ok(bytes) => {
                    let ttl = self.l2_ttl_of(&bytes, l2_ttl.unwrap_or(self.inner.l2_ttl));
                    self.write_l2_as(key, PendingOp::set(bytes, ttl, false), Some(&write), via.notify)
                        .await;
                }
                Err(e) => {
                    // Neither level may keep serving the previous value for this key.
                    self.write_l2_as(key, PendingOp::Delete, None, via.notify).await;
                    if let Some(l1) = &self.inner.l1 {
                        let _ = l1.delete(key).await;
                    }
                    return Err(e);
                }
            }
        }
        if let Some(l1) = &self.inner.l1 {
            if !via.l1 {
                // Not kept in L1, and the copy there would now be out of date.
                let _ = l1.delete(key).await;
                return Ok(());
            }
            self.l1_keep(l1, key, value, l1_ttl, since).await;
            if let Some(at) = written_us {
                self.l1_tagged(key, tags, at).await;
            }
        }
        Ok(())
    }

    /// `value` encoded for L2. The one rule for every write: a value that
    /// cannot be encoded (counted in `encode`) or whose encoding is larger
    /// than the maximum (counted in `oversize`) is an error, logged, and the
    /// write stores it in neither level.
    pub(super) fn encode_bounded(&self, value: &V) -> Result<Vec<u8>, Error> {
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

    /// Applies one write to L2 now, or queues it when L2 is unavailable or an
    /// outage replay is still in progress. Returns what L2 said, if it was asked.
    pub(super) async fn write_l2(
        &self,
        key: &str,
        op: PendingOp,
        value: Option<&WriteOf<'_, V>>,
    ) -> Option<bool> {
        self.write_l2_as(key, op, value, true).await
    }

    /// [`write_l2`](Self::write_l2), announcing the write to other
    /// instances only with `notify`.
    pub(super) async fn write_l2_as(
        &self,
        key: &str,
        op: PendingOp,
        value: Option<&WriteOf<'_, V>>,
        notify: bool,
    ) -> Option<bool> {
        let queue = &self.inner.queue;
        if !queue.is_active() || queue.admits_direct(key) {
            if let Some((l2, permit)) = self.l2() {
                // The bytes go to the command, with no copy kept for the
                // replay: if L2 turns out to be unavailable, the value is
                // encoded again.
                let deadline = match &op {
                    PendingOp::Set { deadline_ms, .. } => {
                        PendingOp::remaining(*deadline_ms).map(|_| *deadline_ms)
                    }
                    _ => None,
                };
                let r = self.send_write(l2, key, op).await;
                match self.settle(permit, "write", r) {
                    Outcome::Done(v) => {
                        if notify {
                            self.announce(Some(key));
                        }
                        return Some(v);
                    }
                    Outcome::BadData => return None,
                    Outcome::Unavailable => {
                        let op = match (deadline, value.map(|w| self.encode_write(w))) {
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

    /// Stores `value` only if `key` is absent; `true` if it was stored. L2 is
    /// the source of truth (an atomic `SET NX`): L1 takes the value only if L2
    /// accepted it. Without a usable L2, the same rule applies to L1 alone, and
    /// the winner claims the key in L2 (again with `SET NX`) on recovery.
    pub async fn set_if_not_exist(&self, key: impl AsRef<str>, value: V, ttl: Option<Duration>) -> bool {
        let key = key.as_ref();
        if self.check_key(key).is_err() || self.check_ttl(ttl).is_err() {
            return false;
        }
        let _write = self.inner.guard.write(key);
        let since = self.early_since();
        let value = Arc::new(value);
        let (l1_ttl, ttl) = self.physical_ttls(ttl);
        let mut encoded = None;
        let write = WriteOf {
            value: &*value,
            tags: &[],
            written_us: None,
        };
        if self.inner.l2.is_some() {
            match self.encode_write(&write) {
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
                                        self.l1_keep(l1, key, value, l1_ttl, since).await;
                                    }
                                }
                                return stored;
                            }
                            encoded = self.encode_write(&write).ok();
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
    pub async fn delete(&self, key: impl AsRef<str>) -> bool {
        self.remove(key.as_ref(), Via::ALL).await
    }

    /// `delete` through the levels `via` allows.
    pub(super) async fn remove(&self, key: &str, via: Via) -> bool {
        if self.check_key(key).is_err() {
            return false;
        }
        let _write = self.inner.guard.write(key);
        let mut removed = false;
        if self.inner.l2.is_some() && via.l2 {
            removed |= self
                .write_l2_as(key, PendingOp::Delete, None, via.notify)
                .await
                .unwrap_or(false);
        }
        if let (Some(l1), true) = (&self.inner.l1, via.l1) {
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
}
