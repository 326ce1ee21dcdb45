//! Per-call choices: `get_with`, `set_with`, `delete_with` and the
//! [`CallOptions`] they take — skip a level for reading or writing, do not
//! tell other instances, a TTL for this call.

use std::sync::Arc;
use std::time::Duration;

use super::events::Level;
use super::gate::NoBudget;
use super::lookup::{Found, LookupStep};
use super::{CacheValue, TwoLevelCache};
use crate::backend::CacheBackend;
use crate::error::Error;

/// Choices for one call of [`get_with`](TwoLevelCache::get_with),
/// [`set_with`](TwoLevelCache::set_with) or
/// [`delete_with`](TwoLevelCache::delete_with). The default changes
/// nothing: the call behaves as `get`, `set` or `delete`.
///
/// ```
/// use std::time::Duration;
/// use resilient_cache::CallOptions;
///
/// // A value only this instance needs, for a minute: L1 only.
/// let local = CallOptions::new().skip_l2().ttl(Duration::from_secs(60));
/// // A read that must see the shared value, not this instance's copy.
/// let shared = CallOptions::new().skip_l1_read();
/// assert_ne!(local, shared);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallOptions {
    pub(crate) skip_l1_read: bool,
    pub(crate) skip_l1_write: bool,
    pub(crate) skip_l2_read: bool,
    pub(crate) skip_l2_write: bool,
    pub(crate) no_notify: bool,
    pub(crate) ttl: Option<Duration>,
}

impl CallOptions {
    /// No choice made: a call with these behaves as its plain form.
    pub fn new() -> Self {
        Self::default()
    }

    /// Neither read nor write L1.
    pub fn skip_l1(self) -> Self {
        self.skip_l1_read().skip_l1_write()
    }

    /// Read past L1 (straight to L2).
    pub fn skip_l1_read(mut self) -> Self {
        self.skip_l1_read = true;
        self
    }

    /// Do not keep the value in L1: a write or an L2 hit is not put there
    /// (a write still evicts the key's older L1 copy, which it makes out of
    /// date); a delete leaves L1 alone.
    pub fn skip_l1_write(mut self) -> Self {
        self.skip_l1_write = true;
        self
    }

    /// Neither read nor write L2: this instance's L1 only.
    pub fn skip_l2(self) -> Self {
        self.skip_l2_read().skip_l2_write()
    }

    /// Answer from L1 only (a miss there is a miss).
    pub fn skip_l2_read(mut self) -> Self {
        self.skip_l2_read = true;
        self
    }

    /// Write or delete in L1 only: L2, and so every other instance, keeps
    /// what it holds.
    pub fn skip_l2_write(mut self) -> Self {
        self.skip_l2_write = true;
        self
    }

    /// Write or delete in L2 without telling other instances on the
    /// backplane: their L1 copies stay until their TTL ends — except in
    /// instances that track (Redis announces every change to them, and
    /// cannot be asked not to).
    pub fn no_notify(mut self) -> Self {
        self.no_notify = true;
        self
    }

    /// This write's TTL (as [`set_with_ttl`](TwoLevelCache::set_with_ttl)).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    pub(crate) fn via(&self) -> Via {
        Via {
            l1: !self.skip_l1_write,
            l2: !self.skip_l2_write,
            notify: !self.no_notify,
        }
    }
}

/// Which levels a write goes to, and whether it is announced.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Via {
    pub(crate) l1: bool,
    pub(crate) l2: bool,
    pub(crate) notify: bool,
}

impl Via {
    /// Both levels, announced: every plain write.
    pub(crate) const ALL: Via = Via {
        l1: true,
        l2: true,
        notify: true,
    };
}

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// [`get`](Self::get) with per-call choices: skip L1 (read past it, or
    /// do not promote an L2 hit into it) or L2 (answer from L1 only).
    pub async fn get_with(&self, key: impl AsRef<str>, opts: &CallOptions) -> Option<Arc<V>> {
        let key = key.as_ref();
        let promote = !opts.skip_l1_write;
        let step = if opts.skip_l1_read {
            if self.check_key(key).is_err() || self.inner.l2.is_none() {
                LookupStep::Done(Found::Miss)
            } else {
                LookupStep::AskL2 {
                    want_ttl: self.inner.fail_safe.is_some(),
                    stale: None,
                }
            }
        } else {
            match self.lookup_now(key, false) {
                LookupStep::AwaitL1 { want_ttl } => self.await_l1(key, want_ttl).await,
                step => step,
            }
        };
        let found = match step {
            LookupStep::AskL2 { want_ttl, .. } if !opts.skip_l2_read => {
                self.lookup_l2(key, want_ttl, &mut NoBudget, promote).await
            }
            // Observed by the L1 step already (or no level was asked: an
            // invalid key, or L1 skipped with no L2).
            LookupStep::Done(found) => return found.fresh(),
            // L2 not to be read: L1's miss was told already.
            _ => return None,
        };
        self.observe(key, &found, Level::L2);
        found.fresh()
    }

    /// [`try_set_with_ttl`](Self::try_set_with_ttl) with per-call choices
    /// (`opts.ttl` is the TTL): skip L1 or L2, do not notify other instances.
    pub async fn set_with(&self, key: impl AsRef<str>, value: V, opts: &CallOptions) -> Result<(), Error> {
        self.store(key.as_ref(), Arc::new(value), opts.ttl, &[], opts.via())
            .await
    }

    /// [`delete`](Self::delete) with per-call choices: in L1 only, in L2 only
    /// (`skip_l1_write`), without notifying other instances.
    pub async fn delete_with(&self, key: impl AsRef<str>, opts: &CallOptions) -> bool {
        self.remove(key.as_ref(), opts.via()).await
    }
}
