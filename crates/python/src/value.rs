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
    encoded: Encoded,
    object: OnceLock<Py<PyAny>>,
}

/// A value's L2 form, as the Python serializer gave it.
pub enum Encoded {
    /// The cache has no L2: nothing is ever encoded.
    Unneeded,
    /// The serializer's bytes.
    Bytes(Vec<u8>),
    /// Why the serializer refused the value. The engine meets it as an
    /// encoding error and applies its rule for one (counted, logged,
    /// stored in neither level).
    Refused(String),
}

impl PyValue {
    /// A value written from Python: the object, and its L2 form.
    pub fn new(object: Py<PyAny>, encoded: Encoded) -> Self {
        let cell = OnceLock::new();
        let _ = cell.set(object);
        Self {
            encoded,
            object: cell,
        }
    }

    /// Why the serializer refused this value, if it did.
    pub fn refused(&self) -> Option<&str> {
        match &self.encoded {
            Encoded::Refused(why) => Some(why),
            _ => None,
        }
    }

    /// The object, if this value was written from Python or already decoded.
    pub fn object(&self) -> Option<&Py<PyAny>> {
        self.object.get()
    }

    /// The encoded bytes (present for every value read from L2).
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.encoded {
            Encoded::Bytes(bytes) => Some(bytes),
            _ => None,
        }
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
        match &self.encoded {
            Encoded::Bytes(bytes) => s.serialize_bytes(bytes),
            Encoded::Refused(why) => Err(serde::ser::Error::custom(why)),
            Encoded::Unneeded => Err(serde::ser::Error::custom(
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
                    encoded: Encoded::Bytes(v.to_vec()),
                    object: OnceLock::new(),
                })
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<PyValue, E> {
                Ok(PyValue {
                    encoded: Encoded::Bytes(v),
                    object: OnceLock::new(),
                })
            }
        }
        d.deserialize_bytes(Bytes)
    }
}
