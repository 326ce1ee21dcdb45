//! What the engine holds for Python: a value's encoded bytes (what L2
//! stores) and the Python object itself (what an L1 hit returns).
//!
//! The engine never calls Python. A `set` encodes on the calling thread with
//! the GIL held, so the engine gets both forms; a value read from L2 arrives
//! as bytes only, and the first Python reader decodes it, under the GIL, and
//! keeps the object in the same L1 entry, so later hits return it with no
//! decoding. Runtime threads therefore never wait for the GIL.

use std::fmt;
use std::sync::OnceLock;

use pyo3::prelude::*;
use serde::de::{self, Visitor};
use serde::{Deserializer, Serialize, Serializer};

/// One cached value. The engine stores it through
/// `Serializer::passthrough`, so its serde form is its bytes.
pub struct PyValue {
    /// The serializer's bytes; `None` for caches without L2, which never encode.
    bytes: Option<Vec<u8>>,
    object: OnceLock<Py<PyAny>>,
}

impl PyValue {
    /// A value written from Python: the object, and its bytes if L2 needs them.
    pub fn new(object: Py<PyAny>, bytes: Option<Vec<u8>>) -> Self {
        let cell = OnceLock::new();
        let _ = cell.set(object);
        Self { bytes, object: cell }
    }

    /// The object, if this value was written from Python or already decoded.
    pub fn object(&self) -> Option<&Py<PyAny>> {
        self.object.get()
    }

    /// The encoded bytes (present for every value read from L2).
    pub fn bytes(&self) -> Option<&[u8]> {
        self.bytes.as_deref()
    }

    /// Keeps the decoded object; when another thread decoded it first, theirs
    /// is kept and returned, so every reader shares one object.
    pub fn keep(&self, py: Python<'_>, object: Py<PyAny>) -> Py<PyAny> {
        match self.object.set(object) {
            Ok(()) => self.object.get().expect("just set").clone_ref(py),
            Err(_) => self.object.get().expect("set by another reader").clone_ref(py),
        }
    }
}

impl Serialize for PyValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.bytes {
            Some(bytes) => s.serialize_bytes(bytes),
            None => Err(serde::ser::Error::custom(
                "this value was written to a cache without L2 and has no encoded form",
            )),
        }
    }
}

impl<'de> serde::Deserialize<'de> for PyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = PyValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the encoded bytes of a Python value")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<PyValue, E> {
                Ok(PyValue {
                    bytes: Some(v.to_vec()),
                    object: OnceLock::new(),
                })
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<PyValue, E> {
                Ok(PyValue {
                    bytes: Some(v),
                    object: OnceLock::new(),
                })
            }
        }
        d.deserialize_bytes(Bytes)
    }
}
