//! Bad data in Redis and values that cannot be encoded: counted misses, never
//! a panic, never an open breaker. And the plain-JSON layout shared with the
//! original package.

use resilient_cache_testkit as common;

use std::time::Duration;

use common::RedisServer;
use resilient_cache::{CacheOptions, CacheService, CircuitState};
use serde::{Deserialize, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

fn opts(prefix: &str) -> CacheOptions {
    CacheOptions::new(prefix)
        .l2_ttl(Duration::from_secs(300))
        .circuit_breaker_threshold(5)
}

#[tokio::test]
async fn garbage_bytes_read_as_a_counted_miss_for_every_serializer() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    for name in ["json", "msgpack", "postcard"] {
        let c = service.create_cache::<User>(opts(name).serializer(name)).unwrap();
        for (i, garbage) in [&b"\xff\xfe"[..], b"{\"id\":", b"\xdb\xff\xff\xff\xff", b""]
            .iter()
            .enumerate()
        {
            let key = format!("{name}:bad{i}");
            redis.set_raw(&key, garbage);
            assert_eq!(c.get(&format!("bad{i}")).await, None, "{name} {garbage:?}");
            assert_eq!(redis.get_raw(&key), None, "{name}: the bad key is dropped");
        }
        let s = c.get_stats().await;
        assert_eq!(s.errors.decode, 4, "{name}");
        assert_eq!(s.circuit_breaker.state, CircuitState::Closed);
        assert_eq!(s.circuit_breaker.failure_count, 0);
    }
}

#[tokio::test]
async fn five_reads_of_a_corrupt_key_do_not_open_the_breaker() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<User>(opts("corrupt")).unwrap();
    for _ in 0..5 {
        redis.set_raw("corrupt:k", b"\xc1 never valid msgpack");
        assert_eq!(c.get("k").await, None);
    }
    // A key of another Redis type is bad data too, not a sick server.
    let _: () = redis.cmd(&["RPUSH", "corrupt:list", "a"]);
    for _ in 0..5 {
        assert_eq!(c.get("list").await, None);
    }
    let s = c.get_stats().await;
    assert_eq!(s.errors.decode, 10);
    assert_eq!(s.circuit_breaker.state, CircuitState::Closed);
    c.set(
        "good",
        User {
            id: 1,
            name: "ok".into(),
        },
    )
    .await;
    assert!(redis.get_raw("corrupt:good").is_some(), "L2 still in use");
}

/// Serializes only when `ok`.
#[derive(Debug, Clone, Deserialize)]
struct Fragile {
    ok: bool,
}

impl Serialize for Fragile {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.ok {
            s.serialize_bool(true)
        } else {
            Err(serde::ser::Error::custom("this value refuses to be encoded"))
        }
    }
}

#[tokio::test]
async fn five_unencodable_values_do_not_open_the_breaker() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        .create_cache::<Fragile>(opts("enc").serializer("json"))
        .unwrap();
    redis.set_raw("enc:k", b"true");
    for _ in 0..5 {
        c.set("k", Fragile { ok: false }).await;
    }
    let s = c.get_stats().await;
    assert_eq!(s.errors.encode, 5);
    assert_eq!(s.circuit_breaker.state, CircuitState::Closed);
    assert_eq!(redis.get_raw("enc:k"), None, "the stale L2 value is dropped");
    assert!(
        c.get("k").await.is_none(),
        "a value that cannot be encoded reads as a miss"
    );
    let err = c.try_set("k", Fragile { ok: false }).await.unwrap_err();
    assert!(err.is_serialization(), "{err}");
}

#[tokio::test]
async fn json_layout_is_plain_json_shared_with_other_programs() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        .create_cache::<User>(opts("shared").serializer("json"))
        .unwrap();
    let ada = User {
        id: 1,
        name: "Ada".into(),
    };
    c.set("1", ada.clone()).await;
    let raw = redis.get_raw("shared:1").unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&raw).expect("plain JSON");
    assert_eq!(parsed, serde_json::json!({"id": 1, "name": "Ada"}));

    // What the original package's json serializer writes: json.dumps(...).encode().
    redis.set_raw("shared:2", br#"{"id": 2, "name": "Grace"}"#);
    let got = c.get("2").await.unwrap();
    assert_eq!(
        *got,
        User {
            id: 2,
            name: "Grace".into()
        }
    );
}

#[tokio::test]
async fn custom_serializer_instance_is_used_for_l2() {
    use resilient_cache::{CacheSerializer, Error};
    use std::sync::Arc;

    struct Reversed;
    impl CacheSerializer for Reversed {
        fn name(&self) -> &str {
            "reversed-json"
        }
        fn encode(&self, v: &serde_json::Value) -> Result<Vec<u8>, Error> {
            let mut b = serde_json::to_vec(v).map_err(|e| Error::Serialization(e.to_string()))?;
            b.reverse();
            Ok(b)
        }
        fn decode(&self, bytes: &[u8]) -> Result<serde_json::Value, Error> {
            let mut b = bytes.to_vec();
            b.reverse();
            serde_json::from_slice(&b).map_err(|e| Error::Serialization(e.to_string()))
        }
    }

    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        .create_cache::<Vec<u32>>(
            opts("custom")
                .serializer_instance(Arc::new(Reversed))
                .l1_enabled(false),
        )
        .unwrap();
    c.set("k", vec![1, 2]).await;
    assert_eq!(redis.get_raw("custom:k").unwrap(), b"]2,1[");
    assert_eq!(c.get("k").await.as_deref(), Some(&vec![1, 2]));
    assert_eq!(c.get_stats().await.l2.unwrap().serializer, "reversed-json");
}
