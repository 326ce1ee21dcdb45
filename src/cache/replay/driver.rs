//! Runs the replay for one cache: queues writes while L2 is unavailable,
//! starts the replay when the breaker lets a call through (or a timer, when
//! no traffic comes), and applies each queued step to L2.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use super::queue::{Lookup, PendingOp, Step};
use crate::backend::CacheBackend;
use crate::breaker::CircuitState;
use crate::cache::events::CacheEvent;
use crate::cache::gate::Outcome;
use crate::cache::{CacheValue, TwoLevelCache};
use crate::error::Error;

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// One write, direct or replayed, as L2 calls: a set while its deadline
    /// is ahead (else a delete: the value expired while it waited), a claim
    /// (`SET NX`: if another instance claimed the key meanwhile, L2 wins and
    /// the local L1 claim is dropped), or a delete. `Ok(true)`: L2 stored or
    /// removed something.
    pub(in crate::cache) async fn send_write(&self, l2: &B, key: &str, op: PendingOp) -> Result<bool, Error> {
        match op {
            PendingOp::Set { bytes, deadline_ms } => match PendingOp::remaining(deadline_ms) {
                Some(ttl) => l2.set(key, bytes, Some(ttl)).await.map(|_| true),
                None => l2.delete(key).await,
            },
            PendingOp::SetNx { bytes, deadline_ms } => {
                let ttl = PendingOp::remaining(deadline_ms).unwrap_or(Duration::from_millis(1));
                let stored = l2.set_if_not_exist(key, bytes, Some(ttl)).await?;
                if !stored {
                    if let Some(l1) = &self.inner.l1 {
                        let _ = l1.delete(key).await;
                    }
                }
                Ok(stored)
            }
            PendingOp::Delete => l2.delete(key).await,
            PendingOp::Expire(keep) => l2.expire_in(key, keep).await,
        }
    }

    pub(in crate::cache) fn enqueue(&self, key: &str, op: PendingOp) {
        if !self.inner.queue.push(key, op) {
            if let Some(suppressed) = self.inner.counters.log.admit() {
                tracing::warn!(
                    cache = %self.inner.prefix, suppressed,
                    "outage replay queue full: L2 namespace will be cleared on recovery"
                );
            }
        }
        self.maybe_kick_replay();
    }

    /// Starts the replay unless the breaker says L2 is still down: while
    /// anything is queued, the replay is what probes a recovering L2.
    pub(in crate::cache) fn maybe_kick_replay(&self) {
        if self.inner.breaker.state() != CircuitState::Open {
            self.kick_replay();
        } else {
            self.arm_replay_timer();
        }
    }

    /// While L2 is down and writes wait, one timer per cache wakes up when
    /// the breaker allows a probe, so the replay needs no traffic to start.
    pub(in crate::cache) fn arm_replay_timer(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.replay_timer_armed.swap(true, Relaxed) {
            return;
        }
        let this = self.clone();
        rt.spawn(async move {
            tokio::time::sleep(this.inner.breaker.time_until_probe()).await;
            this.inner.replay_timer_armed.store(false, Relaxed);
            if this.inner.queue.is_active() {
                this.maybe_kick_replay();
            }
        });
    }

    /// Starts the replay of queued writes in the background, if none is running.
    pub(in crate::cache) fn kick_replay(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.queue.begin_drain() {
            let this = self.clone();
            rt.spawn(async move { this.replay().await });
        }
    }

    pub(in crate::cache) async fn replay(&self) {
        let queue = &self.inner.queue;
        let Some(l2) = self.inner.l2.as_ref() else { return };
        let mut replayed = 0u64;
        while let Some(step) = queue.next() {
            let Some(permit) = self.inner.breaker.try_acquire() else {
                queue.finish(matches!(step, Step::Clear), false);
                break;
            };
            let (is_clear, outcome) = match step {
                Step::Clear => {
                    let outcome = self.settle(permit, "replay", l2.clear().await.map(|_| ()));
                    if matches!(outcome, Outcome::Done(_)) {
                        self.announce(None);
                    }
                    (true, outcome)
                }
                Step::Mark(mark) => {
                    let r = self.send_mark(l2, &mark).await.map(|_| ());
                    (false, self.settle(permit, "replay", r))
                }
                Step::Op(key, op) => {
                    let r = self.send_write(l2, &key, op).await.map(|_| ());
                    let outcome = self.settle(permit, "replay", r);
                    if matches!(outcome, Outcome::Done(_)) {
                        self.announce(Some(&key));
                    }
                    (false, outcome)
                }
            };
            let ok = !matches!(outcome, Outcome::Unavailable);
            queue.finish(is_clear, ok);
            if !ok {
                break;
            }
            replayed += 1;
        }
        if queue.is_active() {
            // Stopped by a failure (or a new write arrived after the last step).
            self.maybe_kick_replay();
        }
        if replayed > 0 {
            tracing::info!(cache = %self.inner.prefix, replayed, pending = queue.depth(), "outage writes replayed into L2");
            self.inner
                .events
                .emit(|| CacheEvent::Replayed { count: replayed });
        }
    }

    /// `Some(present)` when the recovery queue decides for `key`.
    pub(in crate::cache) fn pending(&self, key: &str) -> Option<bool> {
        if !self.inner.queue.is_active() {
            return None;
        }
        self.maybe_kick_replay();
        match self.inner.queue.lookup(key) {
            Lookup::NotPending => None,
            Lookup::Absent => Some(false),
            Lookup::Value(_) => Some(true),
        }
    }
}
