//! What happens inside a cache, for code that watches it: a bounded
//! broadcast of [`CacheEvent`]s to every [`EventStream`] subscribed.
//!
//! Nothing is built or sent while no one subscribes: each emission point
//! first reads one flag (a relaxed atomic load), and the event itself is
//! made out of line. A subscriber that falls behind loses the oldest events
//! and is told how many ([`EventStream::lagged`]); the cache never waits for it.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;

use tokio::sync::broadcast;

pub use crate::backplane::InvalidatedBy;
use crate::error::ConnectionErrorKind;

/// Events a subscriber can hold before the oldest are dropped (and counted).
const CAPACITY: usize = 4096;

/// Which level answered a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// The in-process level.
    L1,
    /// The shared level (Redis, or another L2 backend).
    L2,
}

/// One thing that happened in a cache.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheEvent {
    /// A read found a fresh value at `level`.
    Hit {
        /// The key read.
        key: String,
        /// Which level answered.
        level: Level,
    },
    /// A level had no fresh value (absent, expired, or only a stale one).
    /// A read that misses L1 and asks L2 tells two events: this one for
    /// L1, then L2's hit or miss.
    Miss {
        /// The key read.
        key: String,
        /// Which level had nothing fresh.
        level: Level,
    },
    /// L1 dropped `key` to make room for another entry (its capacity,
    /// `l1_maxsize`, was reached). Expiries, deletes and overwrites are not evictions.
    /// Sent by the built-in L1 backends and by registered ones that
    /// implement [`CacheBackend::on_evict`](crate::CacheBackend::on_evict).
    Evicted {
        /// The key dropped.
        key: String,
    },
    /// `get_or_load` answered with a stale value (fail-safe).
    StaleServed {
        /// The key read.
        key: String,
        /// Why: `loader failed`, `loader timed out`, `loader panicked`, `loader throttled`.
        why: &'static str,
    },
    /// A loader returned an error or panicked.
    LoaderError {
        /// The key being loaded.
        key: String,
    },
    /// A `get_or_load` caller stopped waiting at its soft or hard timeout.
    LoaderTimeout {
        /// The key being loaded.
        key: String,
    },
    /// An L2 call failed in a way that counts against the breaker.
    L2Failure {
        /// The operation (`get`, `write`, `clear`, `replay`, …).
        op: &'static str,
        /// How it failed.
        kind: ConnectionErrorKind,
    },
    /// This cache's failure opened the breaker: L2 is skipped until a probe succeeds.
    BreakerOpened,
    /// A probe by this cache succeeded: the breaker is closed, L2 is used again.
    BreakerClosed,
    /// A key changed elsewhere — another instance announced a write, or
    /// Redis announced a change (tracking) — and `key` (or, with `None`,
    /// the whole L1: a lost channel, a flush) was evicted from this
    /// instance's L1.
    Invalidated {
        /// The key evicted, or `None` for all of them.
        key: Option<String>,
        /// Who told.
        by: InvalidatedBy,
    },
    /// Another instance invalidated a tag (or, with `None`, the namespace):
    /// its entries have been removed from this instance's L1, or made stale
    /// (sent once done).
    Marked {
        /// The tag, or `None` for the whole namespace.
        tag: Option<String>,
        /// Removed or expired.
        kind: crate::tags::MarkKind,
    },
    /// Writes queued during an L2 outage were replayed into L2.
    Replayed {
        /// Steps replayed in this run.
        count: u64,
    },
}

/// The cache's side: the sender, and whether anyone listens.
pub(super) struct Events {
    /// Read at every emission point; true while a stream may be subscribed.
    on: AtomicBool,
    tx: broadcast::Sender<CacheEvent>,
    /// Subscribing and switching off happen under this lock, so the flag
    /// never stays off while a stream is subscribed.
    switch: Mutex<()>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            on: AtomicBool::new(false),
            tx: broadcast::channel(CAPACITY).0,
            switch: Mutex::new(()),
        }
    }
}

impl Events {
    /// Whether an event may have a reader (one relaxed load).
    #[inline(always)]
    pub(super) fn on(&self) -> bool {
        self.on.load(Relaxed)
    }

    /// Sends `event`; with no reader left, switches emission off.
    #[cold]
    #[inline(never)]
    pub(super) fn send(&self, event: CacheEvent) {
        if self.tx.send(event).is_err() {
            let _switch = self.switch.lock().unwrap_or_else(|p| p.into_inner());
            if self.tx.receiver_count() == 0 {
                self.on.store(false, Relaxed);
            }
        }
    }

    /// Sends the event `make` builds, if anyone listens. Building it is
    /// out of line, so a read's code holds one load and one branch.
    #[inline(always)]
    pub(super) fn emit(&self, make: impl FnOnce() -> CacheEvent) {
        if self.on() {
            self.build_and_send(make);
        }
    }

    #[cold]
    #[inline(never)]
    fn build_and_send(&self, make: impl FnOnce() -> CacheEvent) {
        self.send(make());
    }

    pub(super) fn subscribe(&self) -> EventStream {
        let _switch = self.switch.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        self.on.store(true, Relaxed);
        EventStream { rx, lagged: 0 }
    }
}

/// A subscription to one cache's events, from
/// [`TwoLevelCache::subscribe`](super::TwoLevelCache::subscribe). Dropping
/// it unsubscribes.
#[derive(Debug)]
pub struct EventStream {
    rx: broadcast::Receiver<CacheEvent>,
    lagged: u64,
}

impl EventStream {
    /// The next event; waits for one. `None` once the cache is gone.
    pub async fn recv(&mut self) -> Option<CacheEvent> {
        loop {
            match self.rx.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(n)) => self.lagged += n,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<CacheEvent> {
        loop {
            match self.rx.try_recv() {
                Ok(event) => return Some(event),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.lagged += n,
                Err(_) => return None,
            }
        }
    }

    /// Events this stream lost by falling more than 4096 behind.
    pub fn lagged(&self) -> u64 {
        self.lagged
    }
}
