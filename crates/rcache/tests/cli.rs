//! `rcache` run as a process against a real `redis-server`.

use assert_cmd::Command;
use resilient_cache_testkit::RedisServer;

fn rcache(redis: &RedisServer) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rcache"));
    c.env_clear()
        .env("CACHE_REDIS_URL", redis.url())
        .env("CACHE_SERIALIZER", "json")
        .env("CACHE_REDIS_SOCKET_TIMEOUT", "0.5");
    c
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn ping_reports_the_round_trip() {
    let redis = RedisServer::start();
    let out = rcache(&redis).arg("ping").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("PONG from ") && text.contains(&format!("127.0.0.1:{}", redis.port)),
        "{text}"
    );
    let out = rcache(&redis).args(["ping", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    let rtt = v["rtt_ms"].as_f64().unwrap();
    assert!(rtt > 0.0 && rtt.is_finite(), "a measured round trip: {rtt}");
}

#[test]
fn set_get_ttl_keys_del_round_trip_in_the_configured_format() {
    let redis = RedisServer::start();
    let ok = |args: &[&str]| {
        let out = rcache(&redis).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    ok(&[
        "set",
        "--prefix",
        "users",
        "42",
        r#"{"name":"Ada","tags":["x"]}"#,
        "--ttl",
        "120",
    ]);
    ok(&[
        "set",
        "--prefix",
        "users",
        "43*",
        r#""glob in key""#,
        "--ttl",
        "60",
    ]);
    ok(&["set", "--prefix", "users2", "42", "1", "--ttl", "60"]);
    // Encoded with the configured serializer: plain JSON bytes in Redis.
    assert_eq!(
        redis.get_raw("users:42"),
        Some(br#"{"name":"Ada","tags":["x"]}"#.to_vec())
    );
    let got: serde_json::Value = serde_json::from_str(&ok(&["get", "--prefix", "users", "42"])).unwrap();
    assert_eq!(got, serde_json::json!({"name": "Ada", "tags": ["x"]}));
    let ttl: f64 = ok(&["ttl", "--prefix", "users", "42"]).trim().parse().unwrap();
    assert!(ttl > 100.0 && ttl <= 120.0, "{ttl}");
    assert_eq!(ok(&["keys", "--prefix", "users"]), "42\n43*\n");
    // --match is literal text, not a glob.
    assert_eq!(ok(&["keys", "--prefix", "users", "--match", "43*"]), "43*\n");
    assert_eq!(ok(&["keys", "--prefix", "users", "--match", "4?"]), "");
    let keys: Vec<String> = serde_json::from_str(&ok(&["keys", "--prefix", "users", "--json"])).unwrap();
    assert_eq!(keys, ["42", "43*"]);
    assert_eq!(ok(&["del", "--prefix", "users", "42"]), "deleted\n");
    assert_eq!(redis.get_raw("users:42"), None);
    assert_eq!(
        redis.get_raw("users2:42"),
        Some(b"1".to_vec()),
        "other namespace untouched"
    );

    // A missing key is an error (1) for every command that names a key:
    // one line, no backtrace.
    for cmd in ["get", "ttl", "del"] {
        let out = rcache(&redis)
            .args([cmd, "--prefix", "users", "42"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        assert_eq!(stderr(&out), "rcache: users:42 not found\n", "{cmd}");
    }
    // `set` does not guess a TTL.
    let out = rcache(&redis)
        .args(["set", "--prefix", "users", "k", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--ttl"), "{}", stderr(&out));
}

#[test]
fn get_reads_any_namespace_in_the_format_that_wrote_it() {
    let redis = RedisServer::start();
    // Written as msgpack (with its header), read by a CLI configured for json.
    let msgpack = resilient_cache::Serializer::msgpack()
        .encode(&serde_json::json!({"n": 34}))
        .unwrap();
    redis.set_raw("nums:m", &msgpack);
    redis.set_raw("nums:j", br#""alice""#);
    let get = |key: &str, serializer: &str| {
        let out = rcache(&redis)
            .env("CACHE_SERIALIZER", serializer)
            .args(["get", "--prefix", "nums", key])
            .output()
            .unwrap();
        (out.status.code(), stdout(&out), stderr(&out))
    };
    for serializer in ["json", "msgpack"] {
        assert_eq!(get("m", serializer).1.trim(), "{\n  \"n\": 34\n}", "{serializer}");
        assert_eq!(get("j", serializer).1.trim(), "\"alice\"", "{serializer}");
    }
    // Bytes of no format are not shown as some value: `redis-cli set nums:x 'not msgpack'`.
    redis.set_raw("nums:x", b"not msgpack");
    let (code, out, err) = get("x", "msgpack");
    assert_eq!((code, out.as_str()), (Some(1), ""), "{err}");
    assert!(err.contains("cannot be shown"), "{err}");
}

#[test]
fn undecodable_bytes_are_an_error_and_are_left_alone() {
    let redis = RedisServer::start();
    redis.set_raw("users:bad", &[0xff, 0x00, 0xfe]);
    let out = rcache(&redis)
        .args(["get", "--prefix", "users", "bad"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("users:bad (3 bytes) cannot be shown"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        redis.get_raw("users:bad"),
        Some(vec![0xff, 0x00, 0xfe]),
        "an operator tool does not delete"
    );
}

#[test]
fn clear_one_prefix_leaves_the_others_and_asks_first() {
    let redis = RedisServer::start();
    for k in ["users:1", "users:2", "users2:1", "usersX", "users", "other:1"] {
        redis.set_raw(k, b"1");
    }
    // No terminal to confirm on and no --yes: refused as a usage error, nothing removed.
    let out = rcache(&redis)
        .args(["clear", "--prefix", "users"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--yes"));
    assert_eq!(redis.keys().len(), 6);

    let out = rcache(&redis)
        .args(["clear", "--prefix", "users", "--yes", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["removed"], 2);
    redis.set_raw("users:3", b"1");
    let out = rcache(&redis)
        .args(["clear", "--prefix", "users", "--yes"])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "removed 1 key from users:*\n");
    let mut left = redis.keys();
    left.sort();
    assert_eq!(left, ["other:1", "users", "users2:1", "usersX"]);
}

#[test]
fn stats_and_bench_report_in_tables_or_json() {
    let redis = RedisServer::start();
    redis.set_raw("users:1", b"1");
    let out = rcache(&redis)
        .args(["stats", "--prefix", "users"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.lines().any(|l| l.starts_with("keys") && l.ends_with(" 1")),
        "{text}"
    );
    let out = rcache(&redis)
        .args(["stats", "--prefix", "users", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["size"], 1);
    assert!(v["server"]["keyspace_hits"].is_u64(), "counters are numbers: {v}");
    assert!(v["server"]["redis_version"].is_string(), "{v}");
    assert!(v.get("ttl").is_none(), "no TTL of the tool's own: {v}");

    let out = rcache(&redis)
        .args(["bench", "--ops", "200", "--concurrency", "4", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<_> = rows.iter().map(|r| r["scenario"].as_str().unwrap()).collect();
    assert_eq!(names, ["set", "l2_get", "l1_get"]);
    assert!(rows.iter().all(|r| r["ops"].as_u64() == Some(200)), "{rows:?}");
    assert!(
        !redis.keys().iter().any(|k| k.starts_with("rcache-bench")),
        "bench cleans up after itself"
    );
}

#[test]
fn exit_codes_for_redis_down_usage_and_bad_configuration() {
    let mut redis = RedisServer::start();
    redis.kill();
    for args in [
        &["ping"][..],
        &["get", "--prefix", "users", "1"],
        &["clear", "--prefix", "users", "--yes"],
    ] {
        let out = rcache(&redis).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.starts_with("rcache: L2 unavailable at ") && err.contains("refused"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
    let out = rcache(&redis).args(["frobnicate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = rcache(&redis)
        .args(["ping", "--redis-port", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("CACHE_REDIS_PORT"), "{}", stderr(&out));
    let out = rcache(&redis)
        .args(["set", "--prefix", "users", "k", "{not json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn demo_runs_with_and_without_redis() {
    let mut redis = RedisServer::start();
    let out = rcache(&redis).args(["demo", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["l2_reachable"], true);
    assert_eq!(v["l2_hits"], 1, "{v}");
    assert_eq!(v["loads"], 1);
    assert!(redis.keys().is_empty(), "the demo cleans up: {:?}", redis.keys());
    redis.kill();
    let out = rcache(&redis).arg("demo").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "degraded but alive: {}", stderr(&out));
    assert!(stdout(&out).contains("running on L1 only"), "{}", stdout(&out));
}

#[test]
fn flags_override_the_environment() {
    let redis = RedisServer::start();
    let mut c = Command::new(env!("CARGO_BIN_EXE_rcache"));
    c.env_clear()
        .env("CACHE_REDIS_HOST", "127.0.0.1")
        .env("CACHE_REDIS_PORT", "1") // wrong on purpose
        .args(["ping", "--redis-port", &redis.port.to_string()]);
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// An entry in the documented tagged layout, written `age_us` ago.
fn tagged(tags: &[&str], body: &[u8], age_us: u64) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let mut b = vec![0xC0, 1];
    b.extend_from_slice(&(now - age_us).to_be_bytes());
    b.push(tags.len() as u8);
    for t in tags {
        b.push(t.len() as u8);
        b.extend_from_slice(t.as_bytes());
    }
    b.extend_from_slice(body);
    b
}

#[test]
fn invalidation_commands_mark_tags_and_namespaces_and_get_honours_them() {
    let redis = RedisServer::start();
    let run = |args: &[&str]| rcache(&redis).args(args).output().unwrap();
    redis.set_raw(
        "shop:p1",
        &tagged(&["product:1", "prices"], br#"{"price":10}"#, 1_000),
    );
    redis.set_raw(
        "shop:p2",
        &tagged(&["product:2", "prices"], br#"{"price":20}"#, 1_000),
    );
    redis.set_raw("shop:plain", br#""untagged""#);

    let out = run(&["get", "--prefix", "shop", "p1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("\"price\": 10"),
        "the tagged layout is read"
    );

    let out = run(&["remove-by-tag", "--prefix", "shop", "product:1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["scope"].as_str(), v["tag"].as_str()),
        (Some("tag"), Some("product:1"))
    );
    assert_eq!(
        (v["kind"].as_str(), v["l2"].as_str()),
        (Some("remove"), Some("recorded"))
    );
    let out = run(&["get", "--prefix", "shop", "p1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("removed by an invalidation marker"),
        "{}",
        stderr(&out)
    );
    assert_eq!(run(&["get", "--prefix", "shop", "p2"]).status.code(), Some(0));

    let out = run(&["expire-by-tag", "--prefix", "shop", "prices"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("expired entries tagged \"prices\""),
        "{}",
        stdout(&out)
    );
    let out = run(&["get", "--prefix", "shop", "p2"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("stale"), "{}", stderr(&out));

    let out = run(&["remove-by-tag", "--prefix", "shop", "bad\ntag"]);
    assert_eq!(out.status.code(), Some(2), "an invalid tag is a usage error");
    assert!(stderr(&out).contains("control characters"), "{}", stderr(&out));

    let out = run(&[
        "expire",
        "--prefix",
        "shop",
        "plain",
        "--fail-safe",
        "60",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kept = v["fallback_s"].as_f64().unwrap();
    assert!(kept > 0.0 && kept <= 60.0, "{v}");
    assert_eq!(
        run(&["expire", "--prefix", "shop", "missing"]).status.code(),
        Some(1)
    );
    let out = run(&["expire", "--prefix", "shop", "plain"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(redis.get_raw("shop:plain"), None, "without --fail-safe: removed");

    redis.set_raw("shop:plain", br#""again""#);
    redis.reset_stats();
    let out = run(&["invalidate-all", "--prefix", "shop", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["scope"].as_str(), Some("namespace"));
    let calls = redis.command_calls();
    assert!(!calls.contains_key("scan"), "constant time, no scan: {calls:?}");
    let out = run(&["get", "--prefix", "shop", "plain"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        redis.get_raw("shop:plain").is_some(),
        "the key stays until its TTL"
    );
    let out = run(&["expire-all", "--prefix", "shop"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
