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
//! Services and caches are rebuilt in a child after `fork`, on first use
//! (see [`fork`]).

use pyo3::prelude::*;

mod cache;
mod errors;
mod fork;
mod service;
mod value;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<service::Service>()?;
    m.add_class::<cache::Cache>()?;
    m.add_function(wrap_pyfunction!(fork::after_fork_in_child, m)?)?;
    Ok(())
}
