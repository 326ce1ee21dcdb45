//! TTL arithmetic in one place: the logical TTL a caller sees, the physical
//! TTL a level keeps (longer by the fail-safe duration), and the per-call TTL rule.

use std::sync::Arc;
use std::time::Duration;

use super::events::Level;
use super::{CacheValue, TwoLevelCache};
use crate::backend::CacheBackend;
use crate::error::Error;

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// The TTLs to hand to L1 and L2 for a write with `ttl`: as given, or,
    /// for a fail-safe cache, the logical TTL plus the fail-safe duration
    /// (entries then stay that much longer, readable as stale).
    pub(super) fn physical_ttls(&self, ttl: Option<Duration>) -> (Option<Duration>, Option<Duration>) {
        self.physical_ttls_of(ttl, None)
    }

    /// [`physical_ttls`](Self::physical_ttls) for an entry that asks to stay
    /// in L1 at most `l1_ttl`.
    pub(super) fn physical_ttls_of(
        &self,
        ttl: Option<Duration>,
        l1_ttl: Option<Duration>,
    ) -> (Option<Duration>, Option<Duration>) {
        let ttl = self.jittered(ttl);
        let l1 = match (ttl, l1_ttl) {
            (t, None) => t,
            (Some(t), Some(l1)) => Some(t.min(l1)),
            (None, Some(l1)) => Some(l1.min(self.inner.l1_ttl)),
        };
        match self.inner.fail_safe {
            None => (l1, ttl),
            Some(extra) => (
                Some(l1.unwrap_or(self.inner.l1_ttl).min(self.inner.l1_ttl) + extra),
                Some(ttl.unwrap_or(self.inner.l2_ttl) + extra),
            ),
        }
    }

    /// `ttl` (or the cache's L2 TTL) plus a random extra of up to the
    /// cache's jitter; as given when the cache has none.
    fn jittered(&self, ttl: Option<Duration>) -> Option<Duration> {
        let jitter = self.inner.ttl_jitter;
        if jitter.is_zero() {
            return ttl;
        }
        let extra = jitter.mul_f64(crate::clock::unit_random());
        Some(ttl.unwrap_or(self.inner.l2_ttl) + extra)
    }

    /// The logical TTL left of an entry with `physical` left: `Err` when only
    /// its fail-safe time remains (stale).
    pub(super) fn logical(&self, physical: Option<Duration>) -> Result<Option<Duration>, ()> {
        match (self.inner.fail_safe, physical) {
            (Some(extra), Some(p)) if p <= extra => Err(()),
            (Some(extra), Some(p)) => Ok(Some(p - extra)),
            (_, p) => Ok(p),
        }
    }

    /// The full logical TTL of an entry written with `ttl` into `level`.
    pub(crate) fn full_ttl(&self, ttl: Option<Duration>, level: Level) -> Duration {
        match level {
            Level::L1 => ttl.unwrap_or(self.inner.l1_ttl).min(self.inner.l1_ttl),
            Level::L2 => ttl.unwrap_or(self.inner.l2_ttl),
        }
    }

    /// `Err` (counted, logged) for a per-call TTL under a millisecond: Redis
    /// cannot keep an entry for less, and a zero TTL would store nothing
    /// while reporting success. `None` (the cache's TTL) is always fine.
    pub(super) fn check_ttl(&self, ttl: Option<Duration>) -> Result<(), Error> {
        match ttl {
            Some(t) if t < Duration::from_millis(1) => {
                self.inner.counters.invalid_ttl.incr();
                let e = Error::InvalidInput(format!("ttl={t:?} is not allowed: at least 1 ms"));
                self.refused(&e);
                Err(e)
            }
            _ => Ok(()),
        }
    }
}
