//! Recovery without resurrection: the writes and deletes a cache could not
//! make in L2, kept until L2 is back and then replayed.
//!
//! - **Per key, last write wins**: a key has at most one pending operation.
//! - **A key with a pending operation is written through the queue** (one
//!   replayer per cache applies it), so an old queued value can never land
//!   after a newer direct write; keys with nothing pending are written to L2
//!   directly as usual. Reads look at the queue before L2, so a key deleted
//!   during an outage cannot come back from L2.
//! - **A `clear` during an outage** drops the queue and clears L2's namespace
//!   first thing on recovery; until then L2 is not read for this cache.
//! - **Overflow** (more distinct keys than the capacity): the new operation is
//!   dropped, counted and logged, and the cache falls back to clearing its L2
//!   namespace on recovery. Nothing stale can come back; the keys beyond
//!   capacity are simply absent from L2 (a miss, never an old value).
//! - Queued values keep their deadline: a value whose TTL ran out while queued
//!   is replayed as a delete.
//! - **Invalidation markers** (tags, the namespace) made during an outage are
//!   applied locally at once and recorded in L2 first thing on recovery,
//!   after a pending clear and before the writes; none is ever dropped (each
//!   replaces its elder of the same field).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::now_ms;
use crate::counter::Counter;
use crate::tags::Mark;

/// Default number of distinct keys a cache queues during an outage.
pub const DEFAULT_REPLAY_CAPACITY: usize = 10_000;

#[derive(Debug, Clone)]
pub(crate) enum PendingOp {
    /// `SET` with an absolute deadline (coarse monotonic ms).
    Set {
        bytes: Vec<u8>,
        deadline_ms: u64,
    },
    /// `SET NX`: the L1-only winner of an outage claims the key in L2 too.
    SetNx {
        bytes: Vec<u8>,
        deadline_ms: u64,
    },
    Delete,
    /// Make the entry stale, kept as a fail-safe fallback for this long.
    /// Sent directly only: queued, it becomes a [`Delete`](Self::Delete)
    /// (stronger, so nothing old comes back).
    Expire(Duration),
}

impl PendingOp {
    pub fn set(bytes: Vec<u8>, ttl: Duration, nx: bool) -> Self {
        let deadline_ms = now_ms().saturating_add(ttl.as_millis() as u64);
        if nx {
            Self::SetNx { bytes, deadline_ms }
        } else {
            Self::Set { bytes, deadline_ms }
        }
    }

    /// Remaining TTL, or `None` when the value has expired while queued.
    pub fn remaining(deadline_ms: u64) -> Option<Duration> {
        let now = now_ms();
        (deadline_ms > now).then(|| Duration::from_millis(deadline_ms - now))
    }
}

/// What a reader must believe about a key while recovery is pending.
pub(crate) enum Lookup {
    /// Nothing pending for the key: L2 may be read.
    NotPending,
    /// Deleted (or the namespace cleared): a miss, whatever L2 says.
    Absent,
    /// Written: this is its latest value.
    Value(Vec<u8>),
}

/// One step of a replay.
pub(crate) enum Step {
    Clear,
    Mark(Mark),
    Op(String, PendingOp),
}

#[derive(Default)]
struct State {
    order: VecDeque<String>,
    ops: HashMap<String, (u64, PendingOp)>,
    clear_pending: bool,
    draining: bool,
    in_flight: Option<(String, u64, PendingOp)>,
    /// The operation in flight must be applied again after the pending clear
    /// (the clear comes from an overflow, not from a later `clear` call).
    reapply_in_flight: bool,
    seq: u64,
    /// Markers waiting for L2, and the one being recorded.
    marks: VecDeque<Mark>,
    mark_in_flight: Option<Mark>,
}

impl State {
    fn is_active(&self) -> bool {
        !self.ops.is_empty() || !self.marks.is_empty() || self.clear_pending || self.draining
    }
}

pub(crate) struct RecoveryQueue {
    state: Mutex<State>,
    /// Mirrors `State::is_active` so the healthy path never takes the lock.
    active: AtomicBool,
    capacity: usize,
    pub overflow: Counter,
    pub replayed: Counter,
}

impl RecoveryQueue {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::default(),
            active: AtomicBool::new(false),
            capacity,
            overflow: Counter::default(),
            replayed: Counter::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sync_flag(&self, s: &State) {
        self.active.store(s.is_active(), Ordering::Release);
    }

    /// `true` while anything is pending or being replayed.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn depth(&self) -> usize {
        let s = self.lock();
        s.ops.len() + s.in_flight.is_some() as usize
    }

    pub fn clear_pending(&self) -> bool {
        self.lock().clear_pending
    }

    /// Queues `op` for `key`, replacing any older one. Returns `false` on overflow.
    pub fn push(&self, key: &str, op: PendingOp) -> bool {
        let op = match op {
            PendingOp::Expire(_) => PendingOp::Delete,
            op => op,
        };
        let mut s = self.lock();
        s.seq += 1;
        let seq = s.seq;
        if let Some(slot) = s.ops.get_mut(key) {
            *slot = (seq, op);
        } else if s.ops.len() + s.in_flight.is_some() as usize >= self.capacity {
            s.clear_pending = true;
            s.reapply_in_flight = s.in_flight.is_some();
            self.overflow.incr();
            self.sync_flag(&s);
            return false;
        } else {
            s.order.push_back(key.to_string());
            s.ops.insert(key.to_string(), (seq, op));
        }
        self.sync_flag(&s);
        true
    }

    /// A marker that L2 could not take; replaces a queued one of the same field.
    pub fn push_mark(&self, mark: Mark) {
        let mut s = self.lock();
        let field = mark.field();
        match s.marks.iter_mut().find(|m| m.field() == field) {
            Some(m) => m.at_us = m.at_us.max(mark.at_us),
            None => s.marks.push_back(mark),
        }
        self.sync_flag(&s);
    }

    /// Markers waiting for L2.
    pub fn marks_pending(&self) -> usize {
        let s = self.lock();
        s.marks.len() + s.mark_in_flight.is_some() as usize
    }

    /// A `clear` that L2 could not take: drop the queue, clear L2 first on recovery.
    pub fn push_clear(&self) {
        let mut s = self.lock();
        s.ops.clear();
        s.order.clear();
        s.clear_pending = true;
        // Whatever is in flight predates this clear: the clear may wipe it.
        s.reapply_in_flight = false;
        self.sync_flag(&s);
    }

    pub fn lookup(&self, key: &str) -> Lookup {
        let s = self.lock();
        let op = s.ops.get(key).map(|(_, op)| op).or(s
            .in_flight
            .as_ref()
            .filter(|(k, ..)| k == key)
            .map(|(_, _, op)| op));
        match op {
            Some(PendingOp::Set { bytes, deadline_ms } | PendingOp::SetNx { bytes, deadline_ms }) => {
                if PendingOp::remaining(*deadline_ms).is_some() {
                    Lookup::Value(bytes.clone())
                } else {
                    Lookup::Absent
                }
            }
            Some(PendingOp::Delete | PendingOp::Expire(_)) => Lookup::Absent,
            None if s.clear_pending => Lookup::Absent,
            None => Lookup::NotPending,
        }
    }

    /// Whether a live write of `key` may go straight to L2 during a replay:
    /// nothing is pending or in flight for it, and no namespace clear is due
    /// (which would wipe it). Other keys' pending writes cannot be overtaken.
    pub fn admits_direct(&self, key: &str) -> bool {
        let s = self.lock();
        !s.clear_pending && !s.ops.contains_key(key) && s.in_flight.as_ref().is_none_or(|(k, ..)| k != key)
    }

    /// Claims the replay; `false` if another task is already replaying or nothing is pending.
    pub fn begin_drain(&self) -> bool {
        let mut s = self.lock();
        if s.draining || !s.is_active() {
            return false;
        }
        s.draining = true;
        self.sync_flag(&s);
        true
    }

    /// The next step, or `None` when the queue is empty (the replay is then over).
    pub fn next(&self) -> Option<Step> {
        let mut s = self.lock();
        if s.clear_pending {
            return Some(Step::Clear);
        }
        if let Some(mark) = s.marks.pop_front() {
            s.mark_in_flight = Some(mark.clone());
            return Some(Step::Mark(mark));
        }
        while let Some(key) = s.order.pop_front() {
            if let Some((seq, op)) = s.ops.remove(&key) {
                s.in_flight = Some((key.clone(), seq, op.clone()));
                return Some(Step::Op(key, op));
            }
        }
        s.draining = false;
        self.sync_flag(&s);
        None
    }

    /// The current step was applied (`ok`) or L2 failed again (the step goes
    /// back unless a newer operation for the key arrived, and the replay stops).
    pub fn finish(&self, step_was_clear: bool, ok: bool) {
        let mut s = self.lock();
        if let Some(mark) = s.mark_in_flight.take() {
            if ok {
                self.replayed.incr();
            } else {
                s.marks.push_front(mark);
                s.draining = false;
            }
            self.sync_flag(&s);
            return;
        }
        if ok {
            if step_was_clear {
                s.clear_pending = false;
            }
            let done = s.in_flight.take();
            if let Some((key, seq, op)) = done.filter(|_| s.reapply_in_flight && s.clear_pending) {
                // Applied just before an overflow-triggered clear that will wipe it: again after.
                if !s.ops.contains_key(&key) {
                    s.ops.insert(key.clone(), (seq, op));
                    s.order.push_back(key);
                }
            }
            if !step_was_clear {
                s.reapply_in_flight = false;
            }
            self.replayed.incr();
        } else {
            if let Some((key, seq, op)) = s.in_flight.take() {
                if !s.ops.contains_key(&key) {
                    s.ops.insert(key.clone(), (seq, op));
                    s.order.push_front(key);
                }
            }
            s.draining = false;
        }
        self.sync_flag(&s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(b: &[u8]) -> PendingOp {
        PendingOp::set(b.to_vec(), Duration::from_secs(60), false)
    }

    #[test]
    fn last_write_wins_per_key_and_lookup_sees_it() {
        let q = RecoveryQueue::new(10);
        assert!(!q.is_active());
        assert!(matches!(q.lookup("a"), Lookup::NotPending));
        q.push("a", set(b"1"));
        q.push("b", set(b"2"));
        q.push("a", PendingOp::Delete);
        assert!(q.is_active());
        assert_eq!(q.depth(), 2);
        assert!(matches!(q.lookup("a"), Lookup::Absent));
        assert!(matches!(q.lookup("b"), Lookup::Value(ref v) if v == b"2"));
        assert!(q.begin_drain());
        assert!(!q.begin_drain(), "one replayer at a time");
        let mut keys = vec![];
        while let Some(step) = q.next() {
            if let Step::Op(k, _) = step {
                keys.push(k);
            }
            q.finish(false, true);
        }
        assert_eq!(keys, vec!["a", "b"]);
        assert!(!q.is_active());
        assert_eq!(q.replayed.get(), 2);
    }

    #[test]
    fn failed_step_goes_back_unless_superseded() {
        let q = RecoveryQueue::new(10);
        q.push("a", set(b"1"));
        q.begin_drain();
        assert!(matches!(q.next(), Some(Step::Op(..))));
        assert!(
            matches!(q.lookup("a"), Lookup::Value(_)),
            "in-flight op still visible"
        );
        q.finish(false, false);
        assert_eq!(q.depth(), 1);
        q.begin_drain();
        assert!(matches!(q.next(), Some(Step::Op(..))));
        q.push("a", PendingOp::Delete); // newer op while the old one is in flight
        q.finish(false, false);
        assert!(matches!(q.lookup("a"), Lookup::Absent));
        assert_eq!(q.depth(), 1);
    }

    #[test]
    fn overflow_falls_back_to_clear() {
        let q = RecoveryQueue::new(2);
        assert!(q.push("a", set(b"1")));
        assert!(q.push("b", set(b"1")));
        assert!(q.push("a", set(b"2")), "an existing key never overflows");
        assert!(!q.push("c", set(b"1")));
        assert_eq!(q.overflow.get(), 1);
        assert!(q.clear_pending());
        assert!(
            matches!(q.lookup("zzz"), Lookup::Absent),
            "L2 is not trusted until cleared"
        );
        q.begin_drain();
        assert!(matches!(q.next(), Some(Step::Clear)));
        q.finish(true, true);
        assert!(matches!(q.next(), Some(Step::Op(..))));
    }

    #[test]
    fn op_in_flight_during_an_overflow_is_applied_again_after_the_clear() {
        let q = RecoveryQueue::new(1);
        q.push("a", set(b"1"));
        q.begin_drain();
        assert!(matches!(q.next(), Some(Step::Op(..)))); // "a" in flight
        assert!(!q.push("b", set(b"2")), "overflow: a clear is now due");
        q.finish(false, true); // "a" landed in L2 just before the clear...
        assert!(matches!(q.next(), Some(Step::Clear)));
        q.finish(true, true);
        match q.next() {
            Some(Step::Op(k, _)) => assert_eq!(k, "a", "...so it is written again after it"),
            _ => panic!("a must be re-applied"),
        }
    }

    #[test]
    fn op_in_flight_during_an_explicit_clear_is_not_applied_again() {
        let q = RecoveryQueue::new(10);
        q.push("a", set(b"1"));
        q.begin_drain();
        assert!(matches!(q.next(), Some(Step::Op(..))));
        q.push_clear(); // the application cleared after writing "a"
        q.finish(false, true);
        assert!(matches!(q.next(), Some(Step::Clear)));
        q.finish(true, true);
        assert!(q.next().is_none());
    }

    #[test]
    fn markers_replay_after_a_clear_and_before_writes_and_are_kept_on_failure() {
        use crate::tags::{MarkKind, Scope};
        let mark = |tag: &str, at_us| Mark {
            scope: Scope::Tag(tag.into()),
            kind: MarkKind::Remove,
            at_us,
        };
        let q = RecoveryQueue::new(10);
        q.push("a", set(b"1"));
        q.push_mark(mark("t", 5));
        q.push_mark(mark("t", 3));
        q.push_mark(mark("u", 4));
        q.push_clear();
        assert_eq!(q.marks_pending(), 2, "one per field, and a clear keeps them");
        assert!(q.begin_drain());
        assert!(matches!(q.next(), Some(Step::Clear)));
        q.finish(true, true);
        assert!(
            matches!(q.next(), Some(Step::Mark(m)) if m == mark("t", 5)),
            "the latest stamp"
        );
        q.finish(false, false);
        assert_eq!(q.marks_pending(), 1 + 1, "a failed marker goes back");
        assert!(q.is_active());
        assert!(q.begin_drain());
        assert!(matches!(q.next(), Some(Step::Mark(m)) if m == mark("t", 5)));
        q.finish(false, true);
        assert!(matches!(q.next(), Some(Step::Mark(m)) if m == mark("u", 4)));
        q.finish(false, true);
        assert!(q.next().is_none());
        assert!(!q.is_active());
    }

    #[test]
    fn expired_values_read_as_absent() {
        let q = RecoveryQueue::new(2);
        q.push("a", PendingOp::set(b"1".to_vec(), Duration::ZERO, false));
        assert!(matches!(q.lookup("a"), Lookup::Absent));
    }
}
