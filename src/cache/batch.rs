//! Many keys at once: `get_many`, `set_many`, `delete_many`.
//!
//! Each does per key what its single-key twin does (the same lookup steps,
//! the same encoding rule, the same promotion guard, the same outage queue),
//! with L2 asked once for the whole batch: the L1 misses in one `MGET` (one
//! pipeline per node on a cluster), the writes and deletes pipelined, and
//! other instances told in one backplane message. Results keep the caller's
//! key order.

use std::sync::Arc;
use std::time::Duration;

use super::events::Level;
use super::gate::Outcome;
use super::guard::Snapshot;
use super::lookup::{with_stale, Found, LookupStep};
use super::replay::PendingOp;
use super::tagging::WriteOf;
use super::{CacheValue, TwoLevelCache};
use crate::backend::CacheBackend;

/// An entry's L1 and L2 TTLs, as written.
type Ttls = (Option<Duration>, Option<Duration>);

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// The values under `keys`, in their order (`None` where
    /// [`get`](Self::get) would answer `None`): L1 first, then the L1
    /// misses from L2 in one round trip (`MGET`; on a Redis Cluster one
    /// pipeline per node, sent concurrently), L2 hits promoted into L1.
    /// Keys may be any `AsRef<str>` (`&str`, `String`, `&String`, …).
    ///
    /// ```no_run
    /// # async fn demo(products: resilient_cache::Cache<String>) {
    /// let ids: Vec<String> = (1..=50).map(|i| format!("product:{i}")).collect();
    /// let found = products.get_many(&ids).await;
    /// assert_eq!(found.len(), ids.len());
    /// # }
    /// ```
    pub async fn get_many<K: AsRef<str>>(&self, keys: impl IntoIterator<Item = K>) -> Vec<Option<Arc<V>>> {
        let keys: Vec<K> = keys.into_iter().collect();
        let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
        self.lookup_many(&keys)
            .await
            .into_iter()
            .map(Found::fresh)
            .collect()
    }

    /// What the cache holds for each of `keys` (fresh, stale or nothing),
    /// in their order: [`lookup`](Self::lookup) for many keys, with one L2
    /// call for all the keys L1 does not answer.
    pub(crate) async fn lookup_many(&self, keys: &[&str]) -> Vec<Found<V>> {
        let mut found: Vec<Option<Found<V>>> = Vec::with_capacity(keys.len());
        // Keys for L2: (index, stale value from L1, guard before the read).
        let mut ask: Vec<(usize, Option<Arc<V>>, Snapshot)> = Vec::new();
        let mut want_ttl = false;
        for (i, &key) in keys.iter().enumerate() {
            let step = match self.lookup_now(key, false) {
                LookupStep::AwaitL1 { want_ttl } => self.await_l1(key, want_ttl).await,
                step => step,
            };
            match step {
                LookupStep::AskL2 { want_ttl: w, stale } => {
                    want_ttl |= w;
                    match self.found_pending(key).await {
                        Some(f) => {
                            let f = with_stale(f, stale);
                            self.observe(key, &f, Level::L2);
                            found.push(Some(f));
                        }
                        None => {
                            ask.push((i, stale, self.inner.guard.snapshot(key)));
                            found.push(None);
                        }
                    }
                }
                LookupStep::Done(f) => found.push(Some(f)),
                LookupStep::AwaitL1 { .. } => found.push(Some(Found::Miss)),
            }
        }
        if !ask.is_empty() {
            let asked: Vec<&str> = ask.iter().map(|(i, ..)| keys[*i]).collect();
            let mut read = match self.l2() {
                Some((l2, permit)) => {
                    let r = l2.get_many(&asked, want_ttl).await;
                    match self.settle(permit, "get_many", r).ok() {
                        Some(values) if values.len() == asked.len() => values.into_iter().map(Some).collect(),
                        _ => Vec::new(),
                    }
                }
                None => Vec::new(),
            };
            read.resize_with(asked.len(), || None);
            for ((i, stale, before), read) in ask.into_iter().zip(read) {
                let key = keys[i];
                let f = with_stale(self.found_in_l2(key, before, read, true).await, stale);
                self.observe(key, &f, Level::L2);
                found[i] = Some(f);
            }
        }
        found.into_iter().map(|f| f.unwrap_or(Found::Miss)).collect()
    }

    /// Stores each `(key, value)` as [`set`](Self::set) does, with the
    /// cache's TTLs: L1 at once, L2 in one pipelined round trip (one per
    /// node on a cluster), other instances told in one backplane message,
    /// each key queued for the outage replay when L2 is unavailable. A key
    /// refused (too long) or a value that cannot be stored (see
    /// [`try_set`](Self::try_set)) is counted and skipped; the others are stored.
    pub async fn set_many<K: AsRef<str>>(&self, entries: impl IntoIterator<Item = (K, V)>) {
        self.set_many_with_ttl(entries, None).await
    }

    /// [`set_many`](Self::set_many) with a per-call TTL for every entry.
    pub async fn set_many_with_ttl<K: AsRef<str>>(
        &self,
        entries: impl IntoIterator<Item = (K, V)>,
        ttl: Option<Duration>,
    ) {
        if self.check_ttl(ttl).is_err() {
            return;
        }
        let owned: Vec<(K, Arc<V>)> = entries.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        // Each entry with its own TTLs (they differ when the cache spreads
        // expiries with a jitter). Sized once: the filter's unknown count
        // would make the vector grow (and copy itself) a few times.
        let mut entries: Vec<(&str, Arc<V>, Ttls)> = Vec::with_capacity(owned.len());
        entries.extend(
            owned
                .iter()
                .filter(|(k, _)| self.check_key(k.as_ref()).is_ok())
                .map(|(k, v)| (k.as_ref(), v.clone(), self.physical_ttls(ttl))),
        );
        let _writes: Vec<_> = entries.iter().map(|(k, ..)| self.inner.guard.write(k)).collect();
        let since = self.early_since();
        // The entries that cannot be stored (their value does not encode).
        let mut refused: Vec<&str> = Vec::new();
        if self.inner.l2.is_some() {
            let mut ops = Vec::with_capacity(entries.len());
            for (key, value, (_, l2_ttl)) in &entries {
                let write = WriteOf {
                    value: &**value,
                    tags: &[],
                    written_us: None,
                };
                match self.encode_write(&write) {
                    Ok(bytes) => {
                        let ttl = self.l2_ttl_of(&bytes, l2_ttl.unwrap_or(self.inner.l2_ttl));
                        ops.push((*key, PendingOp::set(bytes, ttl, false)));
                    }
                    // As `set`: neither level keeps the key's previous value.
                    Err(_) => {
                        ops.push((*key, PendingOp::Delete));
                        refused.push(key);
                    }
                }
            }
            // Looked up only when L2 fails and the writes must be queued.
            let values = std::sync::OnceLock::<std::collections::HashMap<&str, &Arc<V>>>::new();
            self.write_l2_many(ops, &|key| {
                let values = values.get_or_init(|| entries.iter().map(|(k, v, _)| (*k, v)).collect());
                let value = values.get(key)?;
                self.encode_write(&WriteOf {
                    value: &***value,
                    tags: &[],
                    written_us: None,
                })
                .ok()
            })
            .await;
        }
        if let Some(l1) = &self.inner.l1 {
            let mut late = Vec::new();
            for (key, value, (l1_ttl, _)) in entries {
                if refused.contains(&key) {
                    let _ = l1.delete(key).await;
                } else {
                    late.extend(self.l1_put(l1, key, value, l1_ttl, since).await);
                }
            }
            self.check_late(l1, late).await;
        }
    }

    /// Removes `keys` as [`delete`](Self::delete) does: L2 in one pipelined
    /// round trip (queued for the replay when L2 is unavailable), then L1,
    /// other instances told in one message. Returns how many keys either
    /// level held.
    pub async fn delete_many<K: AsRef<str>>(&self, keys: impl IntoIterator<Item = K>) -> u64 {
        let keys: Vec<K> = keys.into_iter().collect();
        let keys: Vec<&str> = keys
            .iter()
            .map(AsRef::as_ref)
            .filter(|k| self.check_key(k).is_ok())
            .collect();
        let _writes: Vec<_> = keys.iter().map(|k| self.inner.guard.write(k)).collect();
        let mut removed = 0;
        if self.inner.l2.is_some() {
            let ops = keys.iter().map(|k| (*k, PendingOp::Delete)).collect();
            removed = self.write_l2_many(ops, &|_| None).await.unwrap_or(0);
        }
        if let Some(l1) = &self.inner.l1 {
            let mut in_l1 = 0;
            for key in &keys {
                in_l1 += u64::from(l1.delete(key).await.unwrap_or(false));
            }
            removed = removed.max(in_l1);
        }
        removed
    }

    /// [`write_l2`](Self::write_l2) for many keys: the writes L2 may take
    /// now go in one call (`set_many`, then `delete_many`), announced in one
    /// message; the rest, and all of them if L2 is unavailable, are queued
    /// for the replay (a set encoded again by `encode_again`, or queued as a
    /// delete when it cannot be). Returns how many keys the deletes removed,
    /// if L2 was asked.
    pub(super) async fn write_l2_many(
        &self,
        ops: Vec<(&str, PendingOp)>,
        encode_again: &(dyn Fn(&str) -> Option<Vec<u8>> + Sync),
    ) -> Option<u64> {
        let queue = &self.inner.queue;
        let (direct, queued): (Vec<_>, Vec<_>) = ops
            .into_iter()
            .partition(|(key, _)| !queue.is_active() || queue.admits_direct(key));
        for (key, op) in queued {
            self.enqueue(key, op);
        }
        if direct.is_empty() {
            return None;
        }
        let Some((l2, permit)) = self.l2() else {
            for (key, op) in direct {
                self.enqueue(key, op);
            }
            return None;
        };
        let keys: Vec<&str> = direct.iter().map(|(k, _)| *k).collect();
        let mut sets = Vec::with_capacity(direct.len());
        let mut deadlines = Vec::with_capacity(direct.len());
        let mut deletes = Vec::new();
        for (key, op) in direct {
            match op {
                PendingOp::Set { bytes, deadline_ms } => match PendingOp::remaining(deadline_ms) {
                    Some(ttl) => {
                        sets.push((key, bytes, Some(ttl)));
                        deadlines.push((key, deadline_ms));
                    }
                    None => deletes.push(key),
                },
                _ => deletes.push(key),
            }
        }
        let r = async {
            l2.set_many(sets).await?;
            if deletes.is_empty() {
                Ok(0)
            } else {
                l2.delete_many(&deletes).await
            }
        }
        .await;
        match self.settle(permit, "write_many", r) {
            Outcome::Done(removed) => {
                self.announce_keys(&keys);
                Some(removed)
            }
            Outcome::BadData => None,
            Outcome::Unavailable => {
                // Queued in full: L2 may have taken some of them, which the
                // replay then writes again.
                for (key, deadline_ms) in &deadlines {
                    let op = match encode_again(key) {
                        Some(bytes) => PendingOp::Set {
                            bytes,
                            deadline_ms: *deadline_ms,
                        },
                        None => PendingOp::Delete,
                    };
                    self.enqueue(key, op);
                }
                for key in deletes {
                    self.enqueue(key, PendingOp::Delete);
                }
                None
            }
        }
    }
}
