//! What a process built for itself, rebuilt in a child after `fork`.
//!
//! A child made by `fork` has none of its parent's threads, so the parent's
//! runtime and connections are unusable there. The package registers
//! [`after_fork_in_child`] with `os.register_at_fork`; it moves the fork
//! generation on, and a [`PerFork`] built in an older generation is rebuilt
//! on its next use. The old value is leaked, never dropped: dropping a
//! runtime would wait for threads that do not exist.

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::prelude::*;

/// Moved on in a child after each `fork`.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Called by `os.register_at_fork(after_in_child=...)`.
#[pyfunction]
pub fn after_fork_in_child() {
    GENERATION.fetch_add(1, Relaxed);
}

/// A value of this process: the one built in the current fork generation.
pub struct PerFork<T: Send + Sync> {
    // Locked only with the GIL held and never across a wait or a GIL
    // release, so no thread can hold it when another forks.
    slot: ManuallyDrop<Mutex<(u64, Arc<T>)>>,
}

impl<T: Send + Sync> PerFork<T> {
    /// `value`, built in this generation.
    pub fn new(value: Arc<T>) -> Self {
        Self {
            slot: ManuallyDrop::new(Mutex::new((GENERATION.load(Relaxed), value))),
        }
    }

    /// The value of this generation: the one held, or, after a fork, one
    /// made by `build` from what `prepare` gives (the old one is leaked).
    ///
    /// `prepare` runs without the lock: it may release the GIL (a service
    /// connects), and a thread that held the GIL while waiting for this lock
    /// would then never let it finish. `build` runs under the lock and must
    /// not release the GIL: one value per generation is ever built (a
    /// service refuses a second cache of the same namespace). What
    /// `prepare` made for nothing, when another thread built first, is
    /// dropped after the lock is let go, without the GIL.
    #[inline]
    pub fn current<P: Send>(
        &self,
        prepare: impl FnOnce() -> PyResult<P>,
        build: impl FnOnce(P) -> PyResult<Arc<T>>,
    ) -> PyResult<Arc<T>> {
        let now = GENERATION.load(Relaxed);
        {
            let slot = self.lock();
            if slot.0 == now {
                return Ok(slot.1.clone());
            }
        }
        let prepared = prepare()?;
        let (current, unused) = {
            let mut slot = self.lock();
            if slot.0 == now {
                (Ok(slot.1.clone()), Some(prepared))
            } else {
                let current = build(prepared).map(|fresh| {
                    std::mem::forget(std::mem::replace(&mut *slot, (now, fresh)));
                    slot.1.clone()
                });
                (current, None)
            }
        };
        if let Some(unused) = unused {
            drop_without_gil(unused);
        }
        current
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Arc<T>)> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Drops `value` with the GIL released: a runtime waits for its threads as
/// it drops, and one of them may be waiting for the GIL.
fn drop_without_gil<T: Send>(value: T) {
    Python::attach(|py| py.detach(move || drop(value)));
}

impl<T: Send + Sync> Drop for PerFork<T> {
    fn drop(&mut self) {
        let slot = self.slot.get_mut().unwrap_or_else(PoisonError::into_inner);
        if slot.0 != GENERATION.load(Relaxed) {
            // Built before a fork: its runtime's threads are not in this process.
            return;
        }
        // SAFETY: taken once, here, and never used again.
        drop_without_gil(unsafe { ManuallyDrop::take(&mut self.slot) });
    }
}
