//! Property tests over untrusted input: bytes for every serializer's decoder,
//! configuration for `from_map`, keys and prefixes. `PROPTEST_CASES` sets the
//! number of cases (CI runs the default below; see SECURITY.md for a long run).

use proptest::prelude::*;
use resilient_cache::config::{keys, validate_prefix};
use resilient_cache::{get_serializer, CacheFactoryConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq, Clone)]
struct Record {
    id: u64,
    name: String,
    tags: Vec<String>,
    score: Option<f64>,
    nested: Vec<Vec<u8>>,
}

fn cases() -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Bytes that look like each format's headers (length prefixes, containers) more often than random.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(
            prop_oneof![
                Just(0xdbu8),
                Just(0xdd),
                Just(0xdf),
                Just(0xc6),
                Just(0x91),
                Just(0xff),
                Just(b'['),
                Just(b'{'),
                any::<u8>()
            ],
            0..256
        ),
    ]
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn decoders_never_panic(bytes in hostile_bytes()) {
        for name in ["json", "msgpack", "postcard"] {
            let s = get_serializer(name).unwrap();
            let _ = s.decode::<Record>(&bytes);
            let _ = s.decode::<Vec<String>>(&bytes);
            let _ = s.decode::<serde_json::Value>(&bytes);
            let _ = s.decode::<String>(&bytes);
        }
    }

    #[test]
    fn encode_decode_round_trips(id in any::<u64>(), name in ".{0,40}", tags in proptest::collection::vec(".{0,8}", 0..5), score in proptest::option::of(-1e9f64..1e9), nested in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..8), 0..4)) {
        let r = Record { id, name, tags, score, nested };
        for name in ["json", "msgpack", "postcard"] {
            let s = get_serializer(name).unwrap();
            let back: Record = s.decode(&s.encode(&r).unwrap()).unwrap();
            prop_assert_eq!(&back, &r);
        }
    }

    #[test]
    fn config_parsing_never_panics_and_names_the_key(key_idx in 0..keys::ALL.len(), value in "\\PC{0,24}") {
        let key = keys::ALL[key_idx];
        if key == keys::REDIS_TLS_CA {
            return Ok(()); // a path: checked against the file system
        }
        match CacheFactoryConfig::from_map([(key, value.as_str())]) {
            Ok(_) => {}
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains(key), "{}", msg);
                if key == keys::REDIS_PASSWORD {
                    prop_assert!(!msg.contains(&value), "a password value was echoed: {}", msg);
                }
            }
        }
    }

    #[test]
    fn prefix_validation_matches_the_rules(prefix in "\\PC{0,12}|[a-z:*?\\[\\]\\\\\\n]{0,6}") {
        let ok = validate_prefix(&prefix).is_ok();
        let expected = !prefix.is_empty()
            && prefix != "rc"
            && prefix.len() <= 256
            && !prefix.chars().any(|c| c.is_control() || ":*?[]\\".contains(c));
        prop_assert_eq!(ok, expected, "{:?}", prefix);
    }
}
