//! Engine errors as the package's exception classes (defined in Python, in
//! `resilient_cache.exceptions`).

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use resilient_cache::Error;

/// An instance of `resilient_cache.exceptions.<class>(message, **kwargs)`.
pub fn raise(py: Python<'_>, class: &str, message: String, kwargs: &[(&str, &str)]) -> PyErr {
    let made = (|| -> PyResult<PyErr> {
        let cls = py.import("resilient_cache.exceptions")?.getattr(class)?;
        let kw = PyDict::new(py);
        for (k, v) in kwargs {
            kw.set_item(k, v)?;
        }
        Ok(PyErr::from_value(cls.call((message.clone(),), Some(&kw))?))
    })();
    made.unwrap_or_else(|e| PyRuntimeError::new_err(format!("{message} ({e})")))
}

/// The exception class for an engine error.
pub fn from_engine(py: Python<'_>, e: &Error) -> PyErr {
    let class = match e {
        Error::Configuration(_) => "CacheConfigurationError",
        Error::Serialization(_) => "CacheSerializationError",
        Error::InvalidInput(_) => "CacheInputError",
        Error::Connection(_) => "CacheConnectionError",
        Error::CircuitBreakerOpen => "CircuitBreakerOpenError",
        _ => "CacheError",
    };
    raise(py, class, e.to_string(), &[])
}
