//! `resilient_cache._native`: the engine, for the Python package around it.
//!
//! The Python package (`python/resilient_cache`) keeps the original
//! package's API: configuration, the serializer registry, the exceptions,
//! Flask. This module is what it drives: a [`service::Service`] (the
//! engine's blocking service: its runtime and L2 connections) and the cache
//! type, [`cache::Cache`], exposed as `resilient_cache.ResilientTwoLevelCache`.
//!
//! # The GIL
//!
//! Every call that may wait (an L2 round trip, a load) releases the GIL
//! first; an L1 hit does not, since it never waits. Runtime threads never
//! take the GIL, except to run a Python loader of `get_or_load`.
//!
//! # fork
//!
//! A child made by `fork` has none of its parent's threads, so the
//! parent's runtime and connections are unusable there. The package
//! registers [`after_fork_in_child`] with `os.register_at_fork`; it moves
//! the fork generation on, and every service and cache built in an older
//! generation is rebuilt on its next use. The old ones are leaked, never
//! dropped: dropping a runtime would wait for threads that do not exist.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use pyo3::prelude::*;

mod cache;
mod errors;
mod service;
mod value;

/// Moved on in a child after each `fork`.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

/// The current fork generation.
fn generation() -> u64 {
    FORK_GENERATION.load(Relaxed)
}

/// Called by `os.register_at_fork(after_in_child=...)`.
#[pyfunction]
fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Relaxed);
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<service::Service>()?;
    m.add_class::<cache::Cache>()?;
    m.add_function(wrap_pyfunction!(after_fork_in_child, m)?)?;
    Ok(())
}
