//! The hardened boundary: key and value bounds, namespace isolation, secrets
//! that never show, ACL auth and TLS, against real redis-server processes.

use resilient_cache_testkit as common;

use std::time::Duration;

use common::RedisServer;
use resilient_cache::{CacheFactoryConfig, CacheOptions, CacheService, Error, Secret};

fn opts(prefix: &str) -> CacheOptions {
    CacheOptions::new(prefix).l2_ttl(Duration::from_secs(300))
}

#[tokio::test]
async fn keys_longer_than_the_maximum_are_refused_not_truncated() {
    let redis = RedisServer::start();
    let mut config = redis.config();
    config.max_key_bytes = 16;
    let service = CacheService::new(config).await.unwrap();
    let c = service.create_cache::<u32>(opts("keys")).unwrap();
    let ok = "k".repeat(16);
    let long = "k".repeat(17);
    c.set(&ok, 1).await;
    assert_eq!(c.get(&ok).await.as_deref(), Some(&1));
    let err = c.try_set(&long, 2).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)));
    assert!(
        err.to_string().contains("17 bytes") && err.to_string().contains("16"),
        "{err}"
    );
    c.set(&long, 2).await;
    assert_eq!(c.get(&long).await, None);
    assert!(!c.set_if_not_exist(&long, 3, None).await);
    assert!(!c.delete(&long).await);
    assert!(!c.is_on_cache(&long).await);
    assert_eq!(
        redis.keys(),
        vec![format!("keys:{ok}")],
        "nothing stored under a truncated key"
    );
    assert!(c.get_stats().await.errors.invalid_key >= 6);

    // The default is 1 KiB; any UTF-8 is fine.
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service.create_cache::<u32>(opts("utf")).unwrap();
    let unicode = "ключ-🔑-".repeat(40); // < 1 KiB
    c.set(&unicode, 5).await;
    assert!(redis.get_raw(&format!("utf:{unicode}")).is_some());
    assert!(c.try_set(&"x".repeat(1025), 1).await.is_err());
}

#[tokio::test]
async fn oversize_values_are_stored_in_neither_level() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let c = service
        .create_cache::<String>(opts("big").max_value_bytes(100))
        .unwrap();
    c.set("k", "small".into()).await;
    let err = c.try_set("k", "x".repeat(500)).await.unwrap_err();
    assert!(
        err.to_string().contains("larger than the maximum of 100 bytes"),
        "{err}"
    );
    assert_eq!(c.get("k").await, None, "the old value is gone too, from L1");
    assert_eq!(redis.get_raw("big:k"), None, "and from L2");
    c.set("k2", "y".repeat(500)).await; // the infallible variant: counted
    assert_eq!(c.get("k2").await, None);
    assert!(!c.set_if_not_exist("k3", "z".repeat(500), None).await);
    assert_eq!(c.get_stats().await.errors.oversize, 3);

    // Bytes larger than the limit written by someone else are not decoded.
    redis.set_raw(
        "big:planted",
        &resilient_cache::Serializer::msgpack()
            .encode(&"p".repeat(1000))
            .unwrap(),
    );
    assert_eq!(c.get("planted").await, None);
    assert_eq!(c.get_stats().await.errors.decode, 1);

    // CACHE_MAX_VALUE_BYTES sets the default for every cache.
    let config = CacheFactoryConfig::from_map([
        ("CACHE_REDIS_URL", redis.url().as_str()),
        ("CACHE_MAX_VALUE_BYTES", "64"),
    ])
    .unwrap();
    let service = CacheService::new(config).await.unwrap();
    let c = service.create_cache::<String>(opts("env")).unwrap();
    assert!(c.try_set("k", "q".repeat(100)).await.is_err());
    assert!(c.try_set("k", "q".repeat(10)).await.is_ok());
}

#[tokio::test]
async fn namespaces_that_are_prefixes_of_each_other_stay_apart() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    let users = service
        .create_cache::<u32>(opts("users").l1_enabled(false))
        .unwrap();
    let users2 = service
        .create_cache::<u32>(opts("users2").l1_enabled(false))
        .unwrap();
    let usersx = service
        .create_cache::<u32>(opts("usersx").l1_enabled(false))
        .unwrap();
    for k in ["*", "a*", "a*b", "ab", "?", "[x]", "\\", "x:y"] {
        users.set(k, 1).await;
        users2.set(k, 2).await;
        usersx.set(k, 3).await;
    }
    assert_eq!(users.list_keys(Some("*")).await, vec!["*"]);
    assert_eq!(users.list_keys(Some("a*")).await, vec!["a*", "a*b"]);
    assert_eq!(users.list_keys(Some("[")).await, vec!["[x]"]);
    assert_eq!(users.list_keys(Some("\\")).await, vec!["\\"]);
    assert_eq!(users.list_keys(None).await.len(), 8);
    let report = users.clear().await;
    assert_eq!(report.l2_items_removed, 8);
    assert_eq!(users2.list_keys(None).await.len(), 8);
    assert_eq!(usersx.list_keys(None).await.len(), 8);
    assert_eq!(redis.keys().iter().filter(|k| k.starts_with("users:")).count(), 0);

    // A prefix that would nest or match as a pattern is refused.
    for bad in ["users:admin", "users*", "use?s", "u[s]ers", ""] {
        let err = service.create_cache::<u32>(opts(bad)).unwrap_err().to_string();
        assert!(err.contains("l2_key_prefix"), "{bad}: {err}");
    }
}

#[tokio::test]
async fn the_namespace_of_the_cache_own_keys_is_refused() {
    let redis = RedisServer::start();
    let service = CacheService::new(redis.config()).await.unwrap();
    // `rc:leases` and `rc:marks:{…}` would be this cache's keys `leases` and
    // `marks:{…}`, and its `clear` would remove them.
    let err = service.create_cache::<u32>(opts("rc")).unwrap_err().to_string();
    assert!(
        err.contains("l2_key_prefix=\"rc\"") && err.contains("reserved"),
        "{err}"
    );
    // Keys are case-sensitive: `RC` is a namespace like any other.
    let upper = service.create_cache::<u32>(opts("RC")).unwrap();
    upper.set("leases", 1).await;
    assert_eq!(upper.get("leases").await.as_deref(), Some(&1));
    assert!(redis.keys().contains(&"RC:leases".to_string()));
}

#[tokio::test]
async fn password_and_username_never_show() {
    const PASSWORD: &str = "pw-Zx81-never-print";
    const USER: &str = "acl-user-never-print";
    let redis =
        RedisServer::start_with(&["--user", USER, "on", &format!(">{PASSWORD}"), "~*", "&*", "+@all"]);

    let (logs, _guard) = common::logs::capture();

    let mut seen = Vec::new();
    for password in ["wrong-password", PASSWORD] {
        let user = USER;
        let config = CacheFactoryConfig::from_map([
            ("CACHE_REDIS_HOST", "127.0.0.1"),
            ("CACHE_REDIS_PORT", redis.port.to_string().as_str()),
            ("CACHE_REDIS_USERNAME", user),
            ("CACHE_REDIS_PASSWORD", password),
            ("CACHE_REDIS_SOCKET_TIMEOUT", "0.5"),
        ])
        .unwrap();
        seen.push(format!("{config:?}"));
        seen.push(format!("{:?}", config.redis));
        let service = CacheService::new(config.clone()).await.unwrap();
        seen.push(format!("{service:?}"));
        let c = service.create_cache::<u32>(opts("sec")).unwrap();
        c.set("k", 1).await;
        c.get("other").await;
        seen.push(format!("{c:?}"));
        match service.ping().await {
            Ok(_) => {}
            Err(e) => {
                seen.push(e.to_string());
                seen.push(format!("{e:?}"));
            }
        }
        seen.push(serde_json::to_string(&service.get_stats().await).unwrap());
        seen.push(serde_json::to_string(&c.get_stats().await).unwrap());
    }
    // The wrong password was a clear auth error, and the right one reached L2.
    assert!(seen.iter().any(|s| s.contains("Auth")), "{seen:#?}");
    let url = format!("redis://{USER}:{PASSWORD}@127.0.0.1:{}/0", redis.port);
    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let stored: Option<Vec<u8>> = redis::cmd("GET").arg("sec:k").query(&mut admin).unwrap();
    assert!(stored.is_some(), "the ACL user's writes reach L2");

    // A URL with credentials: redacted in errors and endpoint.
    let bad = CacheFactoryConfig::from_map([(
        "CACHE_REDIS_URL",
        format!("http://{USER}:{PASSWORD}@h:1").as_str(),
    )])
    .unwrap_err();
    seen.push(bad.to_string());
    let with_url = CacheFactoryConfig::from_map([("CACHE_REDIS_URL", url.as_str())]).unwrap();
    seen.push(format!("{with_url:?}"));
    seen.push(with_url.redis.endpoint());
    seen.push(format!("{}", Secret::new(PASSWORD)));

    drop(_guard);
    seen.push(logs.text());
    assert!(
        seen.last().unwrap().contains("L2 unavailable"),
        "logs were captured: {}",
        seen.last().unwrap()
    );
    for s in &seen {
        assert!(!s.contains(PASSWORD), "password leaked: {s}");
        assert!(!s.contains(USER), "username leaked: {s}");
    }
}

fn tls_material(dir: &std::path::Path, name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let path = |f: &str| dir.join(format!("{name}-{f}")).display().to_string();
    let (ca, cert, key) = (path("ca.pem"), path("cert.pem"), path("key.pem"));
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(&cert, server_cert.pem()).unwrap();
    std::fs::write(&key, server_key.serialize_pem()).unwrap();
    (ca, cert, key)
}

#[tokio::test]
async fn tls_with_a_trusted_ca_works_and_an_untrusted_one_is_refused() {
    let dir = std::env::temp_dir().join(format!("resilient-cache-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = tls_material(&dir, "server");
    let (other_ca, _, _) = tls_material(&dir, "other");
    // The shared helper: never the same free port twice in one process.
    let tls_port = common::free_port();
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ]);
    common::wait_for_port(tls_port);
    let url = format!("rediss://127.0.0.1:{tls_port}/0");

    let trusted = CacheFactoryConfig::from_map([
        ("CACHE_REDIS_URL", url.as_str()),
        ("CACHE_REDIS_TLS_CA", ca.as_str()),
    ])
    .unwrap();
    let service = CacheService::new(trusted).await.unwrap();
    service.ping().await.expect("TLS with the server's CA");
    let c = service.create_cache::<u32>(opts("tls")).unwrap();
    c.set("k", 7).await;
    assert!(redis.get_raw("tls:k").is_some(), "written over TLS");

    let untrusted = CacheFactoryConfig::from_map([
        ("CACHE_REDIS_URL", url.as_str()),
        ("CACHE_REDIS_TLS_CA", other_ca.as_str()),
    ])
    .unwrap();
    let service = CacheService::new(untrusted).await.unwrap();
    assert!(
        service.ping().await.is_err(),
        "a certificate from an untrusted CA is refused"
    );
    let c = service.create_cache::<u32>(opts("tls2")).unwrap();
    c.set("k", 8).await;
    assert_eq!(c.get("k").await.as_deref(), Some(&8), "L1 keeps serving");
    assert_eq!(redis.get_raw("tls2:k"), None);
    let _ = std::fs::remove_dir_all(&dir);
}
