//! The promotion guard: keeps an L2 read from putting an old value into L1
//! after a write, delete, clear or invalidation of the same key has started.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Keeps an L2 read from promoting a value into L1 after a write or delete of
/// the same key has started: otherwise `get` could read the old value from L2,
/// then put it into L1 *after* a concurrent `set` wrote the new one there.
///
/// Keys are spread over striped words; each holds (writes started) in its high
/// half and (writes in progress) in its low half. A reader snapshots the word
/// before reading L2 and promotes only if no write was in progress then and
/// the word is unchanged afterwards. `clear` moves a cache-wide epoch.
pub(super) struct PromotionGuard {
    stripes: Box<[AtomicU64]>,
    epoch: AtomicU64,
    /// Moved only by the check of what L1 took in before tracking covered
    /// the namespace (`coverage.rs`), which must know whether an operation
    /// began before it; promotion does not depend on it.
    checks: AtomicU64,
}

const STRIPES: usize = 256;

const WRITE_STARTED: u64 = 1 << 32;

#[derive(Clone, Copy)]
pub(crate) struct Snapshot {
    word: u64,
    epoch: u64,
    checks: u64,
}

impl Snapshot {
    /// The coverage checks run when the snapshot was taken.
    pub(super) fn checks(self) -> u64 {
        self.checks
    }
}

pub(super) struct WriteGuard<'a>(&'a AtomicU64);

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        // Ends the write: +1 generation, -1 in progress (a borrow from the low half).
        self.0.fetch_add(WRITE_STARTED - 1, Relaxed);
    }
}

impl PromotionGuard {
    pub(super) fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
            checks: AtomicU64::new(0),
        }
    }

    fn stripe(&self, key: &str) -> &AtomicU64 {
        // FNV-1a: cheap, and good enough to spread keys over stripes.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.as_bytes() {
            h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
        }
        &self.stripes[(h as usize) & (STRIPES - 1)]
    }

    pub(super) fn write(&self, key: &str) -> WriteGuard<'_> {
        let s = self.stripe(key);
        s.fetch_add(WRITE_STARTED + 1, Relaxed);
        WriteGuard(s)
    }

    pub(super) fn snapshot(&self, key: &str) -> Snapshot {
        Snapshot {
            word: self.stripe(key).load(Relaxed),
            epoch: self.epoch.load(Relaxed),
            checks: self.checks.load(Relaxed),
        }
    }

    pub(super) fn may_promote(&self, key: &str, before: Snapshot) -> bool {
        before.word & (WRITE_STARTED - 1) == 0
            && self.stripe(key).load(Relaxed) == before.word
            && self.epoch.load(Relaxed) == before.epoch
    }

    /// The coverage checks run so far (see [`Snapshot::checks`]).
    pub(super) fn checks(&self) -> u64 {
        self.checks.load(Relaxed)
    }

    /// Counts a coverage check, before it takes its notes.
    pub(super) fn bump_checks(&self) {
        self.checks.fetch_add(1, Relaxed);
    }

    pub(super) fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Relaxed);
    }
}
