//! The engine's service for Python: its configuration, and the blocking
//! service built from it for the current fork generation.

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::prelude::*;
use resilient_cache::{blocking, CacheFactoryConfig};

use crate::errors::from_engine;

/// The service built in one fork generation.
pub struct Built {
    pub generation: u64,
    pub service: blocking::CacheService,
}

/// `Service(config)`: `config` maps `CACHE_*` keys to strings, as the
/// engine's `CacheFactoryConfig::from_map` reads them.
#[pyclass(frozen, module = "resilient_cache._native")]
pub struct Service {
    config: CacheFactoryConfig,
    // Locked only with the GIL held and never across a wait, so no thread
    // can hold it when another forks.
    built: ManuallyDrop<Mutex<Arc<Built>>>,
}

fn build(py: Python<'_>, config: &CacheFactoryConfig) -> PyResult<Arc<Built>> {
    let config = config.clone();
    let generation = crate::generation();
    py.detach(move || blocking::CacheService::new(config))
        .map(|service| Arc::new(Built { generation, service }))
        .map_err(|e| from_engine(py, &e))
}

impl Service {
    /// The service of this fork generation, built again after a fork.
    pub fn current(&self, py: Python<'_>) -> PyResult<Arc<Built>> {
        let mut built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
        if built.generation != crate::generation() {
            let fresh = build(py, &self.config)?;
            std::mem::forget(std::mem::replace(&mut *built, fresh));
        }
        Ok(built.clone())
    }
}

#[pymethods]
impl Service {
    #[new]
    fn new(py: Python<'_>, config: HashMap<String, String>) -> PyResult<Self> {
        let config = CacheFactoryConfig::from_map(config).map_err(|e| from_engine(py, &e))?;
        let built = build(py, &config)?;
        Ok(Self {
            config,
            built: ManuallyDrop::new(Mutex::new(built)),
        })
    }

    /// Round trip time to L2 in seconds, or `None` when L2 does not answer.
    fn ping(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        let built = self.current(py)?;
        Ok(py.detach(|| built.service.ping()).ok().map(|d| d.as_secs_f64()))
    }

    /// Whether L2 answers and no breaker is open.
    fn is_healthy(&self, py: Python<'_>) -> PyResult<bool> {
        let built = self.current(py)?;
        Ok(py.detach(|| built.service.health().is_healthy()))
    }

    /// The service's stats (every cache, the backplane, the L2 server) as JSON text.
    fn stats_json(&self, py: Python<'_>) -> PyResult<String> {
        let built = self.current(py)?;
        let stats = py.detach(|| built.service.get_stats());
        serde_json::to_string(&stats).map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let built = self.built.get_mut().unwrap_or_else(PoisonError::into_inner);
        if built.generation != crate::generation() {
            // Built before a fork: its runtime's threads are not in this process.
            return;
        }
        // SAFETY: dropped once, here, and never used again.
        let built = unsafe { ManuallyDrop::take(&mut self.built) };
        // A runtime waits for its threads as it drops: without the GIL, so
        // that a thread waiting for the GIL can finish.
        Python::attach(|py| py.detach(move || drop(built)));
    }
}
