//! `resilient_cache.ResilientTwoLevelCache`: one namespace of the engine,
//! holding Python objects (see `value.rs` for how they are kept).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyTimeoutError, PyTypeError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyList, PyString};
use resilient_cache::cache::load::LoadError;
use resilient_cache::serializer::Serializer;
use resilient_cache::{blocking, CacheOptions};

use crate::errors::{from_engine, raise};
use crate::fork::PerFork;
use crate::service::Service;
use crate::value::{Encoded, PyValue};

type Built = blocking::Cache<PyValue>;

/// A two-level cache of Python objects. Made by `CacheService.create_cache`.
///
/// An L1 hit returns the stored object itself (no copy, no decoding), with
/// the GIL held; everything that may wait on L2 releases the GIL, and waits
/// no longer than the L2 operation timeout.
#[pyclass(frozen, module = "resilient_cache", name = "ResilientTwoLevelCache")]
pub struct Cache {
    service: Py<Service>,
    options: CacheOptions,
    built: PerFork<Built>,
    serializer: Py<PyAny>,
    serializer_name: String,
    /// Whether values are encoded on `set` (only caches with L2 need bytes).
    encodes: bool,
    decode_errors: AtomicU64,
}

/// `s` seconds, or `class` (an exception of the package) naming `name`.
fn seconds(py: Python<'_>, class: &str, name: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| {
        raise(
            py,
            class,
            format!("{name} = {s} is not allowed: a number of seconds >= 0"),
            &[],
        )
    })
}

/// A duration given to `create_cache`.
fn setting(py: Python<'_>, name: &str, s: f64) -> PyResult<Duration> {
    seconds(py, "CacheConfigurationError", name, s)
}

/// A duration given to one call.
fn argument(py: Python<'_>, name: &str, s: f64) -> PyResult<Duration> {
    seconds(py, "CacheInputError", name, s)
}

/// The engine's cache for `options` in `service` (which must not be
/// rebuilt meanwhile: see [`PerFork::current`]).
fn build(py: Python<'_>, service: &blocking::CacheService, options: &CacheOptions) -> PyResult<Arc<Built>> {
    service
        .create_cache::<PyValue>(options.clone())
        .map(Arc::new)
        .map_err(|e| from_engine(py, &e))
}

impl Cache {
    /// The engine cache of this fork generation, built again after a fork.
    #[inline]
    fn current(&self, py: Python<'_>) -> PyResult<Arc<Built>> {
        self.built.current(
            || self.service.get().current(py),
            |service| build(py, &service, &self.options),
        )
    }

    /// `value` as the engine keeps it: with its bytes when there is an L2,
    /// or the serializer's refusal, which the engine treats as it treats
    /// any value it cannot encode.
    fn value(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyValue {
        let encoded = if !self.encodes {
            Encoded::Unneeded
        } else {
            match encode(py, &self.serializer, value) {
                Ok(bytes) => Encoded::Bytes(bytes),
                Err(e) => Encoded::Refused(e.to_string()),
            }
        };
        PyValue::new(value.clone().unbind(), encoded)
    }

    /// An engine error of a write of `key`, raised; an encoding error names
    /// the key and the serializer.
    fn write_error(&self, py: Python<'_>, key: &str, e: &resilient_cache::Error) -> PyErr {
        match e {
            resilient_cache::Error::Serialization(message) => raise(
                py,
                "CacheSerializationError",
                format!("cannot encode the value of {key:?}: {message}"),
                &[("key", key), ("serializer", &self.serializer_name)],
            ),
            e => from_engine(py, e),
        }
    }

    /// The Python object of a value: kept in the entry, or decoded once from
    /// its bytes. Bytes the serializer cannot read are a miss: counted,
    /// logged, and the key removed.
    fn object(&self, py: Python<'_>, built: &Built, key: &str, value: &PyValue) -> PyResult<Py<PyAny>> {
        if let Some(object) = value.object() {
            return Ok(object.clone_ref(py));
        }
        let bytes = value.bytes().unwrap_or_default();
        let decoded = self
            .serializer
            .bind(py)
            .call_method1("deserialize", (PyBytes::new(py, bytes),));
        match decoded {
            Ok(object) => Ok(value.keep(py, object.unbind())),
            Err(e) => {
                self.decode_errors.fetch_add(1, Relaxed);
                warn(py, &format!(
                    "cache {:?}: the stored value of {key:?} cannot be decoded with {:?} ({e}); read as a miss and removed",
                    self.options.key_prefix(),
                    self.serializer_name
                ));
                py.detach(|| built.delete(key));
                Ok(py.None())
            }
        }
    }

    fn optional_object(
        &self,
        py: Python<'_>,
        built: &Built,
        key: &str,
        found: Option<Arc<PyValue>>,
    ) -> PyResult<Py<PyAny>> {
        match found {
            Some(v) => self.object(py, built, key, &v),
            None => Ok(py.None()),
        }
    }
}

/// The serializer's bytes for `value`.
fn encode(py: Python<'_>, serializer: &Py<PyAny>, value: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let out = serializer.bind(py).call_method1("serialize", (value,))?;
    let bytes: PyBackedBytes = out.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "serialize() must return bytes, not {}",
            out.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    })?;
    Ok(bytes.to_vec())
}

fn warn(py: Python<'_>, message: &str) {
    let _ = py
        .import("logging")
        .and_then(|m| m.call_method1("getLogger", ("resilient_cache",)))
        .and_then(|l| l.call_method1("warning", (message,)));
}

/// A report of the engine as Python data (dicts, lists, numbers, strings).
fn to_py<T: serde::Serialize>(py: Python<'_>, value: &T) -> PyResult<Py<PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

/// A key as the original took it: a `str`, or anything `str()` turns into
/// one (`42` is the key `"42"` in both levels).
#[inline]
fn key_of<'a>(key: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, str>> {
    match key.cast::<PyString>() {
        Ok(s) => s.to_cow(),
        Err(_) => Ok(Cow::Owned(key.str()?.to_cow()?.into_owned())),
    }
}

fn ttl_arg(py: Python<'_>, ttl: Option<f64>) -> PyResult<Option<Duration>> {
    ttl.map(|t| argument(py, "ttl", t)).transpose()
}

#[pymethods]
impl Cache {
    /// Used by `CacheService.create_cache`; see there for the arguments.
    #[new]
    #[pyo3(signature = (
        service, l2_key_prefix, l2_ttl, l2_enabled, l1_enabled, l1_maxsize, l1_ttl,
        serializer, serializer_name, circuit_breaker_enabled=None,
        circuit_breaker_threshold=None, circuit_breaker_timeout=None,
        backplane=None, fail_safe_max_duration=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        service: Py<Service>,
        l2_key_prefix: String,
        l2_ttl: f64,
        l2_enabled: bool,
        l1_enabled: bool,
        l1_maxsize: usize,
        l1_ttl: f64,
        serializer: Py<PyAny>,
        serializer_name: String,
        circuit_breaker_enabled: Option<bool>,
        circuit_breaker_threshold: Option<u32>,
        circuit_breaker_timeout: Option<f64>,
        backplane: Option<bool>,
        fail_safe_max_duration: Option<f64>,
    ) -> PyResult<Self> {
        let mut options = CacheOptions::new(l2_key_prefix)
            .l2_ttl(setting(py, "l2_ttl", l2_ttl)?)
            .l2_enabled(l2_enabled)
            .l1_enabled(l1_enabled)
            .l1_maxsize(l1_maxsize)
            .l1_ttl(setting(py, "l1_ttl", l1_ttl)?)
            .serializer_handle(Serializer::passthrough(serializer_name.as_str()));
        if let Some(on) = circuit_breaker_enabled {
            options = options.circuit_breaker_enabled(on);
        }
        if let Some(n) = circuit_breaker_threshold {
            options = options.circuit_breaker_threshold(n);
        }
        if let Some(t) = circuit_breaker_timeout {
            options = options.circuit_breaker_timeout(setting(py, "circuit_breaker_timeout", t)?);
        }
        if let Some(on) = backplane {
            options = options.backplane(on);
        }
        if let Some(t) = fail_safe_max_duration {
            options = options.fail_safe_max_duration(setting(py, "fail_safe_max_duration", t)?);
        }
        let built = build(py, &*service.get().current(py)?, &options)?;
        Ok(Self {
            service,
            options,
            built: PerFork::new(built),
            serializer,
            serializer_name,
            encodes: l2_enabled,
            decode_errors: AtomicU64::new(0),
        })
    }

    /// The value of `key`, or `None`: L1, then L2 (promoted into L1).
    fn get(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let key = &*key_of(key)?;
        let built = self.current(py)?;
        let found = match built.try_get_now(key) {
            Some(answer) => answer,
            None => py.detach(|| built.get(key)),
        };
        self.optional_object(py, &built, key, found)
    }

    /// Stores `value` in L1 and L2 (L2 with `ttl` seconds, or the cache's
    /// L2 TTL), with `tags` for `remove_by_tag` if given.
    #[pyo3(signature = (key, value, ttl=None, tags=None))]
    fn set(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<f64>,
        tags: Option<Vec<String>>,
    ) -> PyResult<()> {
        let key = &*key_of(key)?;
        let ttl = ttl_arg(py, ttl)?;
        let built = self.current(py)?;
        let value = self.value(py, value);
        let tags: Vec<&str> = tags.iter().flatten().map(String::as_str).collect();
        py.detach(|| built.try_set_with_tags(key, value, ttl, &tags))
            .map_err(|e| self.write_error(py, key, &e))
    }

    /// Stores `value` only if `key` is absent (L2 decides, atomically);
    /// returns whether it was stored. A value the serializer refuses is
    /// stored nowhere and raised; the key's current value stays.
    #[pyo3(signature = (key, value, ttl=None))]
    fn set_if_not_exist(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<f64>,
    ) -> PyResult<bool> {
        let key = &*key_of(key)?;
        let ttl = ttl_arg(py, ttl)?;
        let built = self.current(py)?;
        let value = self.value(py, value);
        let refused = value.refused().map(str::to_owned);
        let stored = py.detach(|| built.set_if_not_exist(key, value, ttl));
        match refused {
            Some(why) => Err(self.write_error(py, key, &resilient_cache::Error::Serialization(why))),
            None => Ok(stored),
        }
    }

    /// Removes `key` from L2, then L1; returns whether L2 had it.
    fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = &*key_of(key)?;
        let built = self.current(py)?;
        Ok(py.detach(|| built.delete(key)))
    }

    /// Empties this namespace in both levels:
    /// `{l1_items_removed, l2_items_removed, l2_cleared, l2_status, timestamp}`.
    fn clear(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let built = self.current(py)?;
        let report = py.detach(|| built.clear());
        to_py(py, &report)
    }

    /// Whether `key` is in L1 or L2.
    fn is_on_cache(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = &*key_of(key)?;
        let built = self.current(py)?;
        Ok(py.detach(|| built.is_on_cache(key)))
    }

    /// Seconds `key` has left (L1's own, else L2's), or `None`.
    fn get_ttl(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Option<u64>> {
        let key = &*key_of(key)?;
        let built = self.current(py)?;
        let left = py.detach(|| built.get_ttl(key));
        Ok(left.map(|d| (d.as_millis() as u64).div_ceil(1000)))
    }

    /// Keys of this namespace in L1 and L2 (without the prefix), optionally
    /// only those starting with `prefix`.
    #[pyo3(signature = (prefix=None))]
    fn list_keys(&self, py: Python<'_>, prefix: Option<&str>) -> PyResult<Vec<String>> {
        let built = self.current(py)?;
        Ok(py.detach(|| built.list_keys(prefix)))
    }

    /// What the cache reports: `enabled`, `l1`, `l2`, `circuit_breaker`,
    /// `errors`, and the engine's other counters.
    fn get_stats(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let built = self.current(py)?;
        let stats = py.detach(|| built.get_stats());
        let mut json = serde_json::to_value(&stats).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        if let Some(map) = json.as_object_mut() {
            map.insert("enabled".into(), true.into());
            for level in ["l1", "l2"] {
                match map.get_mut(level).and_then(|v| v.as_object_mut()) {
                    Some(level) => {
                        level.insert("enabled".into(), true.into());
                    }
                    None => {
                        map.insert(level.into(), serde_json::json!({ "enabled": false }));
                    }
                }
            }
            if let Some(errors) = map.get_mut("errors").and_then(|v| v.as_object_mut()) {
                // Values are decoded here, on first read, not by the engine.
                let engine = errors.get("decode").and_then(|v| v.as_u64()).unwrap_or(0);
                errors.insert(
                    "decode".into(),
                    (engine + self.decode_errors.load(Relaxed)).into(),
                );
            }
        }
        to_py(py, &json)
    }

    /// The value of `key`; on a miss, `loader()` is called once for all
    /// concurrent callers of this process (single flight) and its result
    /// stored. With fail-safe on, a failing or slow loader is answered with
    /// the last value. The loader's exception is raised when there is none.
    #[pyo3(signature = (key, loader, ttl=None, soft_timeout=None, hard_timeout=None))]
    fn get_or_load(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        loader: Py<PyAny>,
        ttl: Option<f64>,
        soft_timeout: Option<f64>,
        hard_timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        let key = &*key_of(key)?;
        let built = self.current(py)?;
        if let Some(Some(v)) = built.try_get_now(key) {
            return self.object(py, &built, key, &v);
        }
        let mut opts = built.as_async().load_defaults().clone();
        if let Some(t) = ttl_arg(py, ttl)? {
            opts = opts.ttl(t);
        }
        if let Some(t) = soft_timeout {
            opts = opts.soft_timeout(argument(py, "soft_timeout", t)?);
        }
        if let Some(t) = hard_timeout {
            opts = opts.hard_timeout(argument(py, "hard_timeout", t)?);
        }
        let serializer = self.serializer.clone_ref(py);
        let encodes = self.encodes;
        let load = move || {
            Python::attach(|py| {
                let object = loader.call0(py)?;
                let encoded = if encodes {
                    Encoded::Bytes(encode(py, &serializer, object.bind(py))?)
                } else {
                    Encoded::Unneeded
                };
                Ok::<_, PyErr>(PyValue::new(object, encoded))
            })
        };
        let loaded = py.detach(|| built.get_or_load_with(key, &opts, load));
        match loaded {
            Ok(v) => self.object(py, &built, key, &v),
            Err(LoadError::Loader(e)) => Err(e.clone_ref(py)),
            Err(LoadError::Timeout(d)) => Err(PyTimeoutError::new_err(format!(
                "the loader of {key:?} did not answer within {d:?} and no stale value was at hand"
            ))),
            Err(LoadError::Panicked) => Err(PyRuntimeError::new_err(format!("the loader of {key:?} failed"))),
            Err(LoadError::InvalidOptions(e)) => Err(from_engine(py, &e.into())),
            Err(LoadError::NotModified) => Err(PyRuntimeError::new_err(format!(
                "the loader of {key:?} answered 'not modified' but nothing was cached"
            ))),
        }
    }

    /// [`set`](Self::set) with tags.
    #[pyo3(signature = (key, value, tags, ttl=None))]
    fn set_with_tags(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        tags: Vec<String>,
        ttl: Option<f64>,
    ) -> PyResult<()> {
        self.set(py, key, value, ttl, Some(tags))
    }

    /// Removes every entry written with `tag`, in every instance and in L2
    /// (one marker); returns what was done
    /// (`{scope, tag, kind, l1_entries, l2, stamp_us}`).
    fn remove_by_tag(&self, py: Python<'_>, tag: &str) -> PyResult<Py<PyAny>> {
        let built = self.current(py)?;
        let done = py
            .detach(|| built.remove_by_tag(tag))
            .map_err(|e| from_engine(py, &e))?;
        to_py(py, &done)
    }

    /// Makes every entry written with `tag` stale: kept only as a fail-safe
    /// fallback; returns what was done.
    fn expire_by_tag(&self, py: Python<'_>, tag: &str) -> PyResult<Py<PyAny>> {
        let built = self.current(py)?;
        let done = py
            .detach(|| built.expire_by_tag(tag))
            .map_err(|e| from_engine(py, &e))?;
        to_py(py, &done)
    }

    /// Invalidates every entry of the namespace, in every instance, in
    /// constant time (one marker; `clear` deletes the keys instead).
    fn invalidate_all(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let built = self.current(py)?;
        let done = py.detach(|| built.invalidate_all());
        to_py(py, &done)
    }

    /// Makes every entry of the namespace stale, in constant time.
    fn expire_all(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let built = self.current(py)?;
        let done = py.detach(|| built.expire_all());
        to_py(py, &done)
    }

    /// Marks `key` stale (a fail-safe fallback stays) or, without fail-safe, removes it.
    fn expire(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = &*key_of(key)?;
        let built = self.current(py)?;
        Ok(py.detach(|| built.expire(key)))
    }

    /// The values of `keys` (`None` for each miss), L2 asked once for all misses of L1.
    fn get_many(&self, py: Python<'_>, keys: Vec<String>) -> PyResult<Py<PyList>> {
        let built = self.current(py)?;
        let found = py.detach(|| built.get_many(&keys));
        let out = PyList::empty(py);
        for (key, v) in keys.iter().zip(found) {
            out.append(self.optional_object(py, &built, key, v)?)?;
        }
        Ok(out.unbind())
    }

    /// Stores every `(key, value)` of `items` (a dict or pairs), L2 written
    /// once for all. A value the serializer refuses is counted and skipped,
    /// as a refused key is; the others are stored.
    fn set_many(&self, py: Python<'_>, items: &Bound<'_, PyAny>) -> PyResult<()> {
        let built = self.current(py)?;
        let pairs = match items.cast::<pyo3::types::PyDict>() {
            Ok(d) => d.items().into_any(),
            Err(_) => items.clone(),
        };
        let mut entries = Vec::new();
        for pair in pairs.try_iter()? {
            let (key, value): (String, Bound<'_, PyAny>) = pair?.extract()?;
            let v = self.value(py, &value);
            entries.push((key, v));
        }
        py.detach(|| built.set_many(entries));
        Ok(())
    }

    /// Removes `keys`; returns how many L2 had.
    fn delete_many(&self, py: Python<'_>, keys: Vec<String>) -> PyResult<u64> {
        let built = self.current(py)?;
        Ok(py.detach(|| built.delete_many(&keys)))
    }

    /// The namespace (`l2_key_prefix`).
    #[getter]
    fn key_prefix(&self) -> &str {
        self.options.key_prefix()
    }

    /// The serializer's name.
    #[getter]
    fn serializer_name(&self) -> &str {
        &self.serializer_name
    }

    /// `"closed"`, `"open"` or `"half_open"`.
    fn breaker_state(&self, py: Python<'_>) -> PyResult<&'static str> {
        let built = self.current(py)?;
        Ok(built.breaker_state().as_str())
    }

    fn __repr__(&self) -> String {
        format!(
            "<ResilientTwoLevelCache prefix={:?} serializer={:?}>",
            self.options.key_prefix(),
            self.serializer_name
        )
    }
}
