//! The engine's service for Python: its configuration, and the blocking
//! service built from it for the current fork generation.

use std::collections::HashMap;
use std::sync::Arc;

use pyo3::prelude::*;
use resilient_cache::{blocking, CacheFactoryConfig};

use crate::errors::from_engine;
use crate::fork::PerFork;

/// `Service(config)`: `config` maps `CACHE_*` keys to strings, as the
/// engine's `CacheFactoryConfig::from_map` reads them.
#[pyclass(frozen, module = "resilient_cache._native")]
pub struct Service {
    config: CacheFactoryConfig,
    built: PerFork<blocking::CacheService>,
}

fn build(py: Python<'_>, config: &CacheFactoryConfig) -> PyResult<Arc<blocking::CacheService>> {
    let config = config.clone();
    py.detach(move || blocking::CacheService::new(config))
        .map(Arc::new)
        .map_err(|e| from_engine(py, &e))
}

impl Service {
    /// The service of this fork generation, built again after a fork.
    pub fn current(&self, py: Python<'_>) -> PyResult<Arc<blocking::CacheService>> {
        self.built.current(|| build(py, &self.config), Ok)
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
            built: PerFork::new(built),
        })
    }

    /// Round trip time to L2 in seconds, or `None` when L2 does not answer.
    fn ping(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        let built = self.current(py)?;
        Ok(py.detach(|| built.ping()).ok().map(|d| d.as_secs_f64()))
    }

    /// Whether L2 answers and no breaker is open.
    fn is_healthy(&self, py: Python<'_>) -> PyResult<bool> {
        let built = self.current(py)?;
        Ok(py.detach(|| built.health().is_healthy()))
    }
}
