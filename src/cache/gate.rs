//! The gate in front of L2: a breaker permit for each call, what the breaker
//! is told afterwards (the outcome), the error counters, and the time budget
//! of a read-through's L2 calls.
//!
//! L2 failures never reach the caller: a connection failure or timeout is a
//! breaker failure, counted, and the operation carries on with L1 alone. A
//! data failure (bytes that do not decode, a value that does not encode) is
//! counted too, but it proves L2 is healthy, so it is a breaker *success*: one
//! corrupt key must not switch L2 off for everyone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::events::CacheEvent;
use super::{CacheValue, TwoLevelCache};
use crate::backend::CacheBackend;
use crate::breaker::{CircuitState, Permit};
use crate::error::{ConnectionErrorKind, Error};

/// How long the L2 calls of one operation may wait, all together.
pub(crate) trait CallBudget: Send {
    /// Nothing is left: the operation skips L2.
    fn is_spent(&self) -> bool;
    /// Runs one L2 call within what is left.
    fn bound<T: Send, F>(&mut self, call: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: Future<Output = Result<T, Error>> + Send;
}

/// The budget of a plain operation: each L2 call is bounded by the backend
/// itself, and nothing is added around it (so `get`'s future, on the L1 hit
/// path, stays as small as it was).
pub(crate) struct NoBudget;

impl CallBudget for NoBudget {
    #[inline(always)]
    fn is_spent(&self) -> bool {
        false
    }

    #[inline(always)]
    fn bound<T: Send, F>(&mut self, call: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: Future<Output = Result<T, Error>> + Send,
    {
        call
    }
}

/// What one read-through may still spend waiting for L2, all of its L2
/// calls together (the read, the lease, the fenced store of the loaded
/// value).
#[derive(Clone, Copy, Debug)]
pub(crate) struct L2Budget {
    /// Time left; `None`: no bound beyond the backend's own.
    left: Option<Duration>,
    /// An L2 call of this read-through failed or ran out of time: the rest
    /// of it skips L2 instead of waiting for it again.
    spent: bool,
}

impl L2Budget {
    /// At most `total` for every L2 call together (`None`: unbounded).
    pub(crate) fn new(total: Option<Duration>) -> Self {
        Self {
            left: total,
            spent: false,
        }
    }

    /// Lowers what is left to `at_most`.
    pub(crate) fn cap(&mut self, at_most: Duration) {
        self.left = Some(self.left.map_or(at_most, |l| l.min(at_most)));
    }
}

impl CallBudget for L2Budget {
    fn is_spent(&self) -> bool {
        self.spent || self.left.is_some_and(|l| l.is_zero())
    }

    /// Running out is a timeout (a breaker failure, as the backend's own
    /// timeout would be); any connection failure spends the budget.
    async fn bound<T: Send, F>(&mut self, call: F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>> + Send,
    {
        let r = match self.left {
            None => call.await,
            Some(left) => {
                let started = tokio::time::Instant::now();
                let r = match tokio::time::timeout(left, call).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::connection(
                        ConnectionErrorKind::Timeout,
                        format!("no answer within the read-through's L2 budget ({left:?})"),
                    )),
                };
                self.left = Some(left.saturating_sub(started.elapsed()));
                r
            }
        };
        self.spent |= r.as_ref().is_err_and(Error::is_connection);
        r
    }
}

/// Which way a value failed to cross the serializer.
#[derive(Clone, Copy)]
pub(super) enum DataOp {
    Encode,
    Decode,
}

/// How an L2 call went, once the breaker has been told.
pub(super) enum Outcome<T> {
    Done(T),
    /// Connection failure, timeout, or skipped because the breaker is open.
    Unavailable,
    /// L2 answered, the data was bad (counted).
    BadData,
}

impl<T> Outcome<T> {
    pub(super) fn ok(self) -> Option<T> {
        match self {
            Outcome::Done(v) => Some(v),
            _ => None,
        }
    }
}

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// L2 and a permit to call it, or `None` (no L2, or breaker open: counted).
    pub(super) fn l2(&self) -> Option<(&B, Permit<'_>)> {
        let l2 = self.inner.l2.as_ref()?;
        match self.inner.breaker.permit() {
            Ok(p) => Some((l2, p)),
            Err(_) => {
                self.inner.counters.l2_skipped.incr();
                None
            }
        }
    }

    /// Tells the breaker how an L2 call went, counts and logs failures.
    pub(super) fn settle<T>(&self, permit: Permit<'_>, op: &'static str, r: Result<T, Error>) -> Outcome<T> {
        match r {
            Ok(v) => {
                let probe = permit.is_probe();
                permit.success();
                if probe {
                    self.inner.events.emit(|| CacheEvent::BreakerClosed);
                }
                tracing::trace!(cache = %self.inner.prefix, op, "L2 call done");
                if self.inner.queue.is_active() {
                    self.kick_replay();
                }
                Outcome::Done(v)
            }
            Err(Error::Connection(c)) => {
                // The breaker's state is read only for a subscriber.
                let watched = self.inner.events.on();
                let was_open = watched && self.inner.breaker.state() == CircuitState::Open;
                permit.failure();
                if watched {
                    self.inner
                        .events
                        .emit(|| CacheEvent::L2Failure { op, kind: c.kind });
                    if !was_open && self.inner.breaker.state() == CircuitState::Open {
                        self.inner.events.emit(|| CacheEvent::BreakerOpened);
                    }
                }
                let errs = &self.inner.counters;
                match c.kind {
                    ConnectionErrorKind::Timeout => errs.l2_timeout.incr(),
                    ConnectionErrorKind::Refused => errs.l2_refused.incr(),
                    ConnectionErrorKind::Auth => errs.l2_auth.incr(),
                    _ => errs.l2_connection.incr(),
                }
                tracing::trace!(cache = %self.inner.prefix, op, error = %c, "L2 call failed");
                if let Some(suppressed) = errs.log.admit() {
                    tracing::warn!(cache = %self.inner.prefix, op, error = %c, suppressed, "L2 unavailable; serving from L1");
                }
                Outcome::Unavailable
            }
            Err(e) => {
                // L2 answered; the data was bad. Healthy for the breaker.
                permit.success();
                self.data_error(DataOp::Decode, &e);
                Outcome::BadData
            }
        }
    }

    pub(super) fn data_error(&self, op: DataOp, e: &Error) {
        let errs = &self.inner.counters;
        let op = match op {
            DataOp::Encode => {
                errs.encode.incr();
                "encode"
            }
            DataOp::Decode => {
                errs.decode.incr();
                "decode"
            }
        };
        if let Some(suppressed) = errs.log.admit() {
            tracing::warn!(cache = %self.inner.prefix, op, error = %e, suppressed, "bad cache data ignored");
        }
    }

    /// Runs one L2 call under the breaker; `None` when there is no L2, or it
    /// is skipped or unavailable.
    pub(crate) async fn with_l2<'a, T, Fut>(
        &'a self,
        op: &'static str,
        call: impl FnOnce(&'a B) -> Fut,
    ) -> Option<T>
    where
        T: Send,
        Fut: Future<Output = Result<T, Error>> + Send,
    {
        self.with_l2_within(op, &mut NoBudget, call).await
    }

    /// [`with_l2`](Self::with_l2) within a read-through's `budget` (skipped,
    /// as `None`, once it is spent).
    pub(crate) async fn with_l2_within<'a, T, Fut>(
        &'a self,
        op: &'static str,
        budget: &mut impl CallBudget,
        call: impl FnOnce(&'a B) -> Fut,
    ) -> Option<T>
    where
        T: Send,
        Fut: Future<Output = Result<T, Error>> + Send,
    {
        if budget.is_spent() {
            return None;
        }
        let (l2, permit) = self.l2()?;
        let r = budget.bound(call(l2)).await;
        self.settle(permit, op, r).ok()
    }

    /// The most a read-through waits for L2, all its calls together: the
    /// backend's operation timeout.
    pub(crate) fn l2_budget(&self) -> L2Budget {
        L2Budget::new(self.inner.l2.as_ref().and_then(|l2| l2.operation_timeout()))
    }
}
