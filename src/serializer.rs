//! Named value formats and their registry.
//!
//! Built in: `msgpack` (the default: compact, cross-language), `json` (plain
//! UTF-8 JSON, no envelope, readable by the Python package's `json`
//! serializer) and `postcard` (the most compact; not self-describing, so only
//! for Rust readers of the same type).
//!
//! A custom format implements [`CacheSerializer`] over the `serde_json::Value`
//! data model and is either registered by name ([`register_serializer`]) or
//! handed to one cache as an instance
//! ([`CacheOptions::serializer_instance`](crate::CacheOptions::serializer_instance)).
//! Built-in formats encode typed values directly, with no intermediate tree.
//!
//! Decoding never panics: bytes that are not valid for the format give
//! [`Error::Serialization`]. All three built-in decoders bound their work by
//! the input: length prefixes are checked against the bytes actually present
//! before anything is allocated, nesting depth is limited, and bytes left over
//! after the value are an error.
//!
//! # Stored format
//!
//! A value is never read in a format other than the one it was written in:
//!
//! - `json` writes plain UTF-8 JSON, byte for byte what `serde_json` produces,
//!   with no envelope (the Python package reads and writes the same
//!   bytes in a shared namespace).
//! - The binary formats put a three-byte header in front of the payload:
//!   [`FORMAT_MARK`] (`0xC1`: a byte that no JSON text and no MessagePack value
//!   starts with, and that is not valid UTF-8), a format id (`b'm'` for
//!   `msgpack`, `b'p'` for `postcard`) and a format version (`1`).
//!
//! So bytes written as `json` fail to decode as `msgpack` and the other way
//! round; the cache counts that as a decode error and reads a miss. A reader
//! that does not know a namespace's format can ask [`detect_format`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, LazyLock, RwLock};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{config_err, Error, Result};

/// The serializer used when `CACHE_SERIALIZER` is not set.
pub const DEFAULT_SERIALIZER: &str = "msgpack";

/// A custom value format.
///
/// It works on `serde_json::Value`, the data model every serde type maps to;
/// the cache converts typed values to and from it.
///
/// ```
/// use resilient_cache::serializer::{register_serializer, get_serializer, CacheSerializer};
/// use resilient_cache::Error;
///
/// /// JSON with a one-byte version tag in front.
/// struct TaggedJson;
///
/// impl CacheSerializer for TaggedJson {
///     fn name(&self) -> &str { "tagged-json" }
///     fn encode(&self, value: &serde_json::Value) -> Result<Vec<u8>, Error> {
///         let mut out = vec![1u8];
///         serde_json::to_writer(&mut out, value).map_err(|e| Error::Serialization(e.to_string()))?;
///         Ok(out)
///     }
///     fn decode(&self, bytes: &[u8]) -> Result<serde_json::Value, Error> {
///         match bytes.split_first() {
///             Some((1, rest)) => serde_json::from_slice(rest).map_err(|e| Error::Serialization(e.to_string())),
///             _ => Err(Error::Serialization("missing version tag".into())),
///         }
///     }
/// }
///
/// register_serializer(std::sync::Arc::new(TaggedJson)).unwrap();
/// let s = get_serializer("tagged-json").unwrap();
/// let bytes = s.encode(&vec![1, 2, 3]).unwrap();
/// assert_eq!(bytes[0], 1);
/// assert_eq!(s.decode::<Vec<i32>>(&bytes).unwrap(), vec![1, 2, 3]);
/// ```
pub trait CacheSerializer: Send + Sync + 'static {
    /// The registry name: lowercase and stable, it becomes configuration.
    fn name(&self) -> &str;
    /// Encodes a value.
    fn encode(&self, value: &serde_json::Value) -> Result<Vec<u8>>;
    /// Decodes bytes; invalid bytes are an `Err`, never a panic.
    fn decode(&self, bytes: &[u8]) -> Result<serde_json::Value>;
}

/// A serializer handle: one of the built-in formats or a custom one. Cheap to clone.
#[derive(Clone)]
pub struct Serializer(Kind);

#[derive(Clone)]
enum Kind {
    Json,
    MessagePack,
    Postcard,
    Custom(Arc<dyn CacheSerializer>),
    Passthrough(Arc<str>),
}

impl fmt::Debug for Serializer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serializer({})", self.name())
    }
}

impl Serializer {
    /// Plain UTF-8 JSON.
    pub fn json() -> Self {
        Self(Kind::Json)
    }

    /// MessagePack with field names (maps), like Python's `msgpack` of a dict.
    pub fn msgpack() -> Self {
        Self(Kind::MessagePack)
    }

    /// Postcard: compact, positional, Rust-only.
    pub fn postcard() -> Self {
        Self(Kind::Postcard)
    }

    /// Wraps a custom format.
    pub fn custom(inner: Arc<dyn CacheSerializer>) -> Self {
        Self(Kind::Custom(inner))
    }

    /// Values that arrive encoded: a value's serde form is one byte string
    /// (it calls `serialize_bytes`), stored in L2 as it is and handed back as
    /// it is (its `Deserialize` is given the bytes through `visit_bytes`).
    /// `name` is what stats report as the format.
    ///
    /// For front ends that encode values in their own language, with their
    /// own serializers (the Python front stores what its `json` or `pickle`
    /// serializer produced, byte for byte). A value of any other serde shape
    /// is an encoding error.
    ///
    /// ```
    /// use resilient_cache::serializer::Serializer;
    ///
    /// #[derive(Debug, PartialEq)]
    /// struct Encoded(Vec<u8>);
    /// impl serde::Serialize for Encoded {
    ///     fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
    ///         s.serialize_bytes(&self.0)
    ///     }
    /// }
    /// impl<'de> serde::Deserialize<'de> for Encoded {
    ///     fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
    ///         serde_bytes_visit(d)
    ///     }
    /// }
    /// # fn serde_bytes_visit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Encoded, D::Error> {
    /// #     struct V;
    /// #     impl<'de> serde::de::Visitor<'de> for V {
    /// #         type Value = Encoded;
    /// #         fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result { f.write_str("bytes") }
    /// #         fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<Encoded, E> { Ok(Encoded(b.to_vec())) }
    /// #     }
    /// #     d.deserialize_bytes(V)
    /// # }
    ///
    /// let s = Serializer::passthrough("json");
    /// assert_eq!(s.name(), "json");
    /// let bytes = s.encode(&Encoded(b"[1, 2]".to_vec())).unwrap();
    /// assert_eq!(bytes, b"[1, 2]");
    /// assert_eq!(s.decode::<Encoded>(&bytes).unwrap(), Encoded(b"[1, 2]".to_vec()));
    /// assert!(s.encode(&42).is_err());
    /// ```
    pub fn passthrough(name: impl Into<Arc<str>>) -> Self {
        Self(Kind::Passthrough(name.into()))
    }

    /// The format's name.
    pub fn name(&self) -> &str {
        match &self.0 {
            Kind::Json => "json",
            Kind::MessagePack => "msgpack",
            Kind::Postcard => "postcard",
            Kind::Custom(c) => c.name(),
            Kind::Passthrough(name) => name,
        }
    }

    /// Encodes a typed value (the binary formats with their header; see
    /// [the module docs](self#stored-format)).
    pub fn encode<V: Serialize + ?Sized>(&self, value: &V) -> Result<Vec<u8>> {
        let r = match &self.0 {
            Kind::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
            Kind::MessagePack => {
                let mut out = header(MSGPACK_ID);
                rmp_serde::encode::write_named(&mut out, value)
                    .map(|()| out)
                    .map_err(|e| e.to_string())
            }
            Kind::Postcard => postcard::to_extend(value, header(POSTCARD_ID)).map_err(|e| e.to_string()),
            Kind::Custom(c) => {
                let tree = serde_json::to_value(value).map_err(|e| ser_err(c.name(), "encode", e))?;
                return c.encode(&tree);
            }
            Kind::Passthrough(_) => value.serialize(passthrough::Bytes).map_err(|e| e.to_string()),
        };
        r.map_err(|e| ser_err(self.name(), "encode", e))
    }

    /// Decodes bytes into a typed value; invalid bytes are an error, never a panic.
    pub fn decode<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V> {
        let r = match &self.0 {
            Kind::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Kind::MessagePack => payload(bytes, MSGPACK_ID).and_then(|mut rest| {
                // A reader over the remaining slice: what is left after the
                // value is then known (trailing bytes are refused).
                let mut de = rmp_serde::Deserializer::new(&mut rest);
                de.set_max_depth(MAX_DEPTH);
                let v = serde::Deserialize::deserialize(&mut de).map_err(|e| e.to_string())?;
                trailing(rest).map(|()| v)
            }),
            Kind::Postcard => {
                payload(bytes, POSTCARD_ID).and_then(|rest| match postcard::take_from_bytes(rest) {
                    Ok((v, rest)) => trailing(rest).map(|()| v),
                    Err(e) => Err(e.to_string()),
                })
            }
            Kind::Custom(c) => {
                let tree = c.decode(bytes)?;
                return serde_json::from_value(tree).map_err(|e| ser_err(c.name(), "decode", e));
            }
            Kind::Passthrough(_) => {
                let de = serde::de::value::BytesDeserializer::<serde::de::value::Error>::new(bytes);
                V::deserialize(de).map_err(|e| e.to_string())
            }
        };
        r.map_err(|e| ser_err(self.name(), "decode", e))
    }
}

/// The first byte of every value written by a binary built-in format (see
/// [the module docs](self#stored-format)). `0xC1` is the one byte MessagePack
/// never uses, no JSON text starts with it, and it is not valid UTF-8.
pub const FORMAT_MARK: u8 = 0xC1;
const MSGPACK_ID: u8 = b'm';
const POSTCARD_ID: u8 = b'p';
const FORMAT_VERSION: u8 = 1;

fn header(id: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[FORMAT_MARK, id, FORMAT_VERSION]);
    out
}

/// The payload after the header of format `id`, or why the bytes are not of it.
fn payload(bytes: &[u8], id: u8) -> std::result::Result<&[u8], String> {
    match bytes {
        [FORMAT_MARK, got, FORMAT_VERSION, rest @ ..] if *got == id => Ok(rest),
        [FORMAT_MARK, got, version, ..] if *got == id => Err(format!(
            "format version {version} is not supported (this build reads {FORMAT_VERSION})"
        )),
        _ => Err(format!(
            "bytes were not written in this format ({})",
            describe(bytes)
        )),
    }
}

fn trailing(rest: &[u8]) -> std::result::Result<(), String> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(format!("{} trailing bytes after the value", rest.len()))
    }
}

fn describe(bytes: &[u8]) -> String {
    match detect_format(bytes) {
        Some(name) => format!("they look like {name}"),
        None if bytes.is_empty() => "empty".to_string(),
        None => "unknown format".to_string(),
    }
}

/// The built-in format that wrote `bytes`, told from their first bytes:
/// `msgpack` or `postcard` by their header, `json` for bytes that start like
/// a JSON text, `None` otherwise. It only looks; it does not validate.
///
/// ```
/// use resilient_cache::serializer::{detect_format, Serializer};
///
/// assert_eq!(detect_format(&Serializer::msgpack().encode(&42).unwrap()), Some("msgpack"));
/// assert_eq!(detect_format(b"{\"id\": 42}"), Some("json"));
/// assert_eq!(detect_format(b"\xff\x00"), None);
/// ```
pub fn detect_format(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [FORMAT_MARK, MSGPACK_ID, ..] => Some("msgpack"),
        [FORMAT_MARK, POSTCARD_ID, ..] => Some("postcard"),
        _ => {
            let first = bytes.iter().find(|b| !b.is_ascii_whitespace())?;
            matches!(
                first,
                b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
            )
            .then_some("json")
        }
    }
}

/// Nesting limit for self-describing formats (serde_json's own limit is 128 too):
/// deep enough for real data, shallow enough for any thread's stack.
const MAX_DEPTH: usize = 128;

fn ser_err(name: &str, what: &str, e: impl fmt::Display) -> Error {
    Error::Serialization(format!("{name} {what}: {e}"))
}

static REGISTRY: LazyLock<RwLock<BTreeMap<String, Serializer>>> = LazyLock::new(|| {
    let mut m = BTreeMap::new();
    for s in [Serializer::json(), Serializer::msgpack(), Serializer::postcard()] {
        m.insert(s.name().to_string(), s);
    }
    RwLock::new(m)
});

fn registry_read() -> std::sync::RwLockReadGuard<'static, BTreeMap<String, Serializer>> {
    // A panic while holding the lock cannot leave the map half-written (inserts are atomic).
    REGISTRY.read().unwrap_or_else(|p| p.into_inner())
}

/// Registers a custom format under its [`CacheSerializer::name`] (trimmed,
/// lowercase, non-empty). Re-registering a custom name replaces it; the
/// built-in names cannot be replaced.
pub fn register_serializer(serializer: Arc<dyn CacheSerializer>) -> Result<()> {
    let name = serializer.name().trim().to_ascii_lowercase();
    if name.is_empty() || name != serializer.name() {
        return Err(config_err(
            "serializer name",
            serializer.name(),
            "a non-empty, trimmed, lowercase name",
        ));
    }
    if ["json", "msgpack", "postcard"].contains(&name.as_str()) {
        return Err(config_err(
            "serializer name",
            &name,
            "a name other than the built-ins json, msgpack, postcard",
        ));
    }
    let mut m = REGISTRY.write().unwrap_or_else(|p| p.into_inner());
    m.insert(name, Serializer::custom(serializer));
    Ok(())
}

/// Looks up a format by name (trimmed, case-insensitive).
pub fn get_serializer(name: &str) -> Result<Serializer> {
    let key = name.trim().to_ascii_lowercase();
    registry_read().get(&key).cloned().ok_or_else(|| {
        config_err(
            "serializer",
            name,
            format!("a registered serializer: {}", list_serializers().join(", ")),
        )
    })
}

/// Names of every registered format, sorted.
pub fn list_serializers() -> Vec<String> {
    registry_read().keys().cloned().collect()
}

/// The serde side of [`Serializer::passthrough`]: a serializer that takes
/// one byte string and refuses every other shape.
mod passthrough {
    use serde::ser::{self, Impossible};
    use std::fmt;

    pub(super) struct Bytes;

    #[derive(Debug)]
    pub(super) struct NotBytes(String);

    impl fmt::Display for NotBytes {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for NotBytes {}
    impl ser::Error for NotBytes {
        fn custom<T: fmt::Display>(msg: T) -> Self {
            Self(msg.to_string())
        }
    }

    fn refuse<T>(shape: &str) -> Result<T, NotBytes> {
        Err(NotBytes(format!(
            "a passthrough value must serialize as one byte string, not {shape}"
        )))
    }

    /// Every method but `serialize_bytes` refuses, naming the shape it was given.
    macro_rules! refuse {
        ($($name:ident($($arg:ty),*) -> $ret:ty: $shape:literal;)*) => {
            $(fn $name(self, $(_: $arg),*) -> Result<$ret, NotBytes> { refuse($shape) })*
        };
    }

    impl ser::Serializer for Bytes {
        type Ok = Vec<u8>;
        type Error = NotBytes;
        type SerializeSeq = Impossible<Vec<u8>, NotBytes>;
        type SerializeTuple = Impossible<Vec<u8>, NotBytes>;
        type SerializeTupleStruct = Impossible<Vec<u8>, NotBytes>;
        type SerializeTupleVariant = Impossible<Vec<u8>, NotBytes>;
        type SerializeMap = Impossible<Vec<u8>, NotBytes>;
        type SerializeStruct = Impossible<Vec<u8>, NotBytes>;
        type SerializeStructVariant = Impossible<Vec<u8>, NotBytes>;

        fn serialize_bytes(self, v: &[u8]) -> Result<Vec<u8>, NotBytes> {
            Ok(v.to_vec())
        }

        refuse! {
            serialize_bool(bool) -> Vec<u8>: "a bool";
            serialize_i8(i8) -> Vec<u8>: "a number";
            serialize_i16(i16) -> Vec<u8>: "a number";
            serialize_i32(i32) -> Vec<u8>: "a number";
            serialize_i64(i64) -> Vec<u8>: "a number";
            serialize_u8(u8) -> Vec<u8>: "a number";
            serialize_u16(u16) -> Vec<u8>: "a number";
            serialize_u32(u32) -> Vec<u8>: "a number";
            serialize_u64(u64) -> Vec<u8>: "a number";
            serialize_f32(f32) -> Vec<u8>: "a number";
            serialize_f64(f64) -> Vec<u8>: "a number";
            serialize_char(char) -> Vec<u8>: "a char";
            serialize_str(&str) -> Vec<u8>: "a string";
            serialize_none() -> Vec<u8>: "an option";
            serialize_unit() -> Vec<u8>: "a unit";
            serialize_unit_struct(&'static str) -> Vec<u8>: "a unit struct";
            serialize_unit_variant(&'static str, u32, &'static str) -> Vec<u8>: "an enum";
            serialize_seq(Option<usize>) -> Self::SerializeSeq: "a sequence";
            serialize_tuple(usize) -> Self::SerializeTuple: "a tuple";
            serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct: "a tuple struct";
            serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant: "an enum";
            serialize_map(Option<usize>) -> Self::SerializeMap: "a map";
            serialize_struct(&'static str, usize) -> Self::SerializeStruct: "a struct";
            serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant: "an enum";
        }

        fn serialize_some<T: ?Sized + serde::Serialize>(self, _: &T) -> Result<Vec<u8>, NotBytes> {
            refuse("an option")
        }
        fn serialize_newtype_struct<T: ?Sized + serde::Serialize>(
            self,
            _: &'static str,
            value: &T,
        ) -> Result<Vec<u8>, NotBytes> {
            value.serialize(self)
        }
        fn serialize_newtype_variant<T: ?Sized + serde::Serialize>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<Vec<u8>, NotBytes> {
            refuse("an enum")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct User {
        id: u64,
        name: String,
        tags: Vec<String>,
    }

    fn user() -> User {
        User {
            id: 7,
            name: "Ada".into(),
            tags: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn builtins_round_trip() {
        for name in ["json", "msgpack", "postcard"] {
            let s = get_serializer(name).unwrap();
            let bytes = s.encode(&user()).unwrap();
            assert_eq!(s.decode::<User>(&bytes).unwrap(), user(), "{name}");
        }
    }

    #[test]
    fn json_is_plain_json_without_envelope() {
        let bytes = Serializer::json().encode(&user()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["name"], "Ada");
        assert_eq!(v["id"], 7);
    }

    #[test]
    fn msgpack_writes_field_names() {
        let bytes = Serializer::msgpack().encode(&user()).unwrap();
        assert!(bytes.windows(4).any(|w| w == b"name"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let garbage: &[&[u8]] = &[
            b"",
            b"\xff\xfe\xfd",
            b"{not json",
            // msgpack str32 claiming 4 GiB
            b"\xdb\xff\xff\xff\xff",
            // msgpack array32 claiming 4 G elements
            b"\xdd\xff\xff\xff\xff",
            // postcard varint length of ~2^63
            b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f",
        ];
        for name in ["json", "msgpack", "postcard"] {
            let s = get_serializer(name).unwrap();
            // Behind a valid header too, so the payload decoder itself is tried.
            let id = name.as_bytes()[0];
            let headed = garbage.iter().map(|g| [&[FORMAT_MARK, id, 1][..], g].concat());
            for g in garbage.iter().map(|g| g.to_vec()).chain(headed) {
                let r = s.decode::<User>(&g);
                assert!(matches!(r, Err(Error::Serialization(_))), "{name} {g:?}");
                let r = s.decode::<Vec<String>>(&g);
                assert!(r.is_err(), "{name} vec {g:?}");
            }
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        for name in ["json", "msgpack", "postcard"] {
            let s = get_serializer(name).unwrap();
            let mut bytes = s.encode(&110u64).unwrap();
            bytes.extend_from_slice(b"x");
            let e = s.decode::<u64>(&bytes).unwrap_err();
            assert!(e.is_serialization(), "{name}: {e}");
        }
        // `redis-cli set k 'not msgpack'`: 'n' is msgpack's positive fixint 110.
        assert!(Serializer::msgpack().decode::<u64>(b"not msgpack").is_err());
    }

    #[test]
    fn no_format_reads_another_formats_bytes() {
        let formats = ["json", "msgpack", "postcard"].map(|n| get_serializer(n).unwrap());
        let samples: Vec<serde_json::Value> = vec![
            serde_json::json!(34),
            serde_json::json!("alice"),
            serde_json::json!([1, 2, 3]),
            serde_json::json!(true),
        ];
        for w in &formats {
            for v in &samples {
                let bytes = match w.encode(v) {
                    Ok(b) => b,
                    Err(_) => continue, // postcard cannot encode some dynamic values
                };
                for r in &formats {
                    if r.name() == w.name() {
                        continue;
                    }
                    assert!(
                        r.decode::<u64>(&bytes).is_err()
                            && r.decode::<String>(&bytes).is_err()
                            && r.decode::<Vec<u8>>(&bytes).is_err()
                            && r.decode::<bool>(&bytes).is_err(),
                        "{} bytes of {v} read as {}",
                        w.name(),
                        r.name()
                    );
                }
            }
        }
        // The typed values the cache stores, too.
        for w in &formats {
            let bytes = w.encode(&user()).unwrap();
            for r in &formats {
                assert_eq!(
                    r.decode::<User>(&bytes).is_ok(),
                    r.name() == w.name(),
                    "{} as {}",
                    w.name(),
                    r.name()
                );
            }
        }
    }

    #[test]
    fn binary_formats_carry_a_header_and_are_detected() {
        let m = Serializer::msgpack().encode(&user()).unwrap();
        assert_eq!(&m[..3], &[FORMAT_MARK, b'm', 1]);
        let p = Serializer::postcard().encode(&user()).unwrap();
        assert_eq!(&p[..3], &[FORMAT_MARK, b'p', 1]);
        assert_eq!(detect_format(&m), Some("msgpack"));
        assert_eq!(detect_format(&p), Some("postcard"));
        assert_eq!(
            detect_format(&Serializer::json().encode(&user()).unwrap()),
            Some("json")
        );
        assert_eq!(detect_format(b"  [1]"), Some("json"));
        assert_eq!(detect_format(b""), None);
        assert_eq!(detect_format(b"\x93\x01"), None);
        // A future version is refused by name, not misread.
        let mut future = m.clone();
        future[2] = 2;
        let e = Serializer::msgpack()
            .decode::<User>(&future)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 2"), "{e}");
        // Plain msgpack written by another program (no header) is not ours to guess at.
        let plain = rmp_serde::to_vec_named(&user()).unwrap();
        assert!(Serializer::msgpack().decode::<User>(&plain).is_err());
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let deep = "[".repeat(100_000);
        assert!(Serializer::json()
            .decode::<serde_json::Value>(deep.as_bytes())
            .is_err());
        let mut deep = vec![FORMAT_MARK, b'm', 1];
        deep.extend(vec![0x91u8; 100_000]); // msgpack fixarray of one element, nested
        assert!(Serializer::msgpack().decode::<serde_json::Value>(&deep).is_err());
    }

    #[test]
    fn registry_lists_and_rejects() {
        let names = list_serializers();
        for n in ["json", "msgpack", "postcard"] {
            assert!(names.contains(&n.to_string()));
        }
        assert_eq!(get_serializer(" JSON ").unwrap().name(), "json");
        let e = get_serializer("pickle").unwrap_err().to_string();
        assert!(e.contains("pickle") && e.contains("msgpack"), "{e}");

        struct Bad;
        impl CacheSerializer for Bad {
            fn name(&self) -> &str {
                "json"
            }
            fn encode(&self, _: &serde_json::Value) -> Result<Vec<u8>> {
                Ok(vec![])
            }
            fn decode(&self, _: &[u8]) -> Result<serde_json::Value> {
                Ok(serde_json::Value::Null)
            }
        }
        assert!(register_serializer(Arc::new(Bad)).is_err());
    }
}
