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
    // Locked only with the GIL held and never across a wait, so no thread
    // can hold it when another forks.
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
    /// made by `rebuild` (the old one is leaked).
    #[inline]
    pub fn current(&self, rebuild: impl FnOnce() -> PyResult<Arc<T>>) -> PyResult<Arc<T>> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        let now = GENERATION.load(Relaxed);
        if slot.0 != now {
            let fresh = rebuild()?;
            std::mem::forget(std::mem::replace(&mut *slot, (now, fresh)));
        }
        Ok(slot.1.clone())
    }
}

impl<T: Send + Sync> Drop for PerFork<T> {
    fn drop(&mut self) {
        let slot = self.slot.get_mut().unwrap_or_else(PoisonError::into_inner);
        if slot.0 != GENERATION.load(Relaxed) {
            // Built before a fork: its runtime's threads are not in this process.
            return;
        }
        // SAFETY: taken once, here, and never used again.
        let value = unsafe { ManuallyDrop::take(&mut self.slot) };
        // A runtime waits for its threads as it drops: without the GIL, so
        // that a thread waiting for the GIL can finish.
        Python::attach(|py| py.detach(move || drop(value)));
    }
}
