//! The fence of a load: what a loaded value is stored against (the guard
//! snapshot taken before the loader ran and the lease held in L2), and the
//! store that honours it.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::CacheBackend;
use crate::cache::gate::L2Budget;
use crate::cache::guard::Snapshot;
use crate::cache::replay::PendingOp;
use crate::cache::tagging::WriteOf;
use crate::cache::{CacheValue, TwoLevelCache};
use crate::tags::EntryState;

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
    /// The value's stamp: when the load began (markers after it cover it).
    pub(crate) written_us: u64,
}

/// How a loaded entry is kept: its TTL and L1 TTL (`None`: the cache's)
/// and its tags, all checked.
#[derive(Clone, Copy)]
pub(crate) struct EntryShape<'a> {
    pub(crate) ttl: Option<Duration>,
    pub(crate) l1_ttl: Option<Duration>,
    pub(crate) tags: &'a [String],
}

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// Stores a loaded value only if nothing wrote or deleted `key` since
    /// `fence.before` was taken (before the loader started): on this
    /// instance (the promotion guard, which backplane invalidations move
    /// too) and in L2 (the load lease `fence.lease` held, which every L2
    /// write ends). Returns whether the value was stored.
    pub(crate) async fn store_loaded(
        &self,
        key: &str,
        value: &Arc<V>,
        shape: EntryShape<'_>,
        fence: LoadFence,
        budget: &mut L2Budget,
    ) -> bool {
        let LoadFence {
            before,
            lease,
            only_if_absent,
            written_us,
        } = fence;
        let EntryShape { ttl, l1_ttl, tags } = shape;
        if self.check_key(key).is_err() {
            return false;
        }
        // An invalidation marker made while loading covers the value: not stored.
        let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
        if self.inner.markers.judge(Some(written_us), &tag_refs) != EntryState::Live {
            return false;
        }
        let (l1_ttl, l2_ttl) = self.physical_ttls_of(ttl, l1_ttl);
        let write = WriteOf {
            value: &**value,
            tags,
            written_us: Some(written_us),
        };
        if lease == Lease::Unsupported && self.inner.l2.is_some() {
            if !self.inner.guard.may_promote(key, before) {
                return false;
            }
            if let Ok(bytes) = self.encode_write(&write) {
                let l2_ttl = self.l2_ttl_of(&bytes, l2_ttl.unwrap_or(self.inner.l2_ttl));
                self.write_l2(key, PendingOp::set(bytes, l2_ttl, false), Some(&write))
                    .await;
            }
        }
        if let (true, Lease::Held(token)) = (self.inner.l2.is_some(), lease) {
            let Ok(bytes) = self.encode_write(&write) else {
                return false;
            };
            let l2_ttl = self.l2_ttl_of(&bytes, l2_ttl.unwrap_or(self.inner.l2_ttl));
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
        self.l1_keep(l1, key, value.clone(), l1_ttl, Some(before.checks()))
            .await;
        if !tags.is_empty() {
            self.l1_tagged(key, tags, written_us).await;
        }
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
}
