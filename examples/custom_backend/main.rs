//! A user-defined L2 backend, end to end:
//! `cargo run --release -p resilient-cache --example custom_backend -- --json custom_backend.json`
//!
//! `map_l2.rs` defines an L2 backend outside the library (a `HashMap` with a
//! configurable latency and an off switch), written against the public API
//! only. This program registers it under the name `map_l2`, builds a
//! service from the environment (`CACHE_L2_BACKEND=map_l2`, set for this run
//! when the environment does not say), runs the public conformance suite on
//! it, then a short workload through caches over it — hits at both levels,
//! misses, a load, a stale answer when the loader fails, an outage with its
//! replay — while subscribed to the caches' events, and reports:
//! `{"backend", "selected_by_env", "conformance_passed", "conformance_failed",
//! "workload_errors", "events_seen": {kind: count}, "events_missing": [kinds
//! the workload causes that were not seen]}`.
//! Options: `--latency-us N` (each backend call; default 0).

use resilient_cache_testkit as common;

// A path of its own, so that the tests can include this file as a module.
#[path = "map_l2.rs"]
mod map_l2;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cli::{self, Args};
use map_l2::MapL2;
use resilient_cache::backend::registry::register_l2_backend;
use resilient_cache::cache::Level;
use resilient_cache::testing::conformance;
use resilient_cache::{
    Cache, CacheEvent, CacheFactoryConfig, CacheOptions, CacheService, CircuitState, EventStream,
};

/// The name the backend is registered under.
const NAME: &str = "map_l2";

/// The event kinds the workload below causes.
const EXPECTED: &[&str] = &[
    "hit_l1",
    "hit_l2",
    "miss_l1",
    "miss_l2",
    "stale_served",
    "loader_error",
    "l2_failure",
    "breaker_opened",
    "breaker_closed",
    "replayed",
];

/// What the run found.
#[derive(serde::Serialize)]
pub struct Report {
    pub backend: &'static str,
    pub selected_by_env: bool,
    pub conformance_passed: usize,
    pub conformance_failed: usize,
    pub conformance_failures: Vec<String>,
    pub workload_errors: u64,
    pub events_seen: BTreeMap<&'static str, u64>,
    pub events_missing: Vec<&'static str>,
}

fn main() {
    let mut args = Args::new("custom_backend [--json PATH] [--latency-us N]");
    let mut json = None;
    let mut latency = Duration::ZERO;
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "--json" => json = Some(args.value(&flag)),
            "--latency-us" => latency = Duration::from_micros(args.num(&flag)),
            other => args.fail(&format!("unknown option {other}")),
        }
    }
    if std::env::var_os("CACHE_L2_BACKEND").is_none() {
        // Before any thread starts: the service below reads it like any other key.
        std::env::set_var("CACHE_L2_BACKEND", NAME);
    }
    let report = cli::run(run(latency));
    cli::write_json(&args, json.as_deref(), &report);
    println!(
        "{}: selected by CACHE_L2_BACKEND {}; conformance {} kept, {} broken; workload errors {}; events {:?}; missing {:?}",
        report.backend,
        report.selected_by_env,
        report.conformance_passed,
        report.conformance_failed,
        report.workload_errors,
        report.events_seen,
        report.events_missing,
    );
    for failure in &report.conformance_failures {
        println!("  broken: {failure}");
    }
    if !report.selected_by_env || report.conformance_failed > 0 || report.workload_errors > 0 {
        std::process::exit(1);
    }
}

/// Registers the backend, checks it, runs the workload over it.
pub async fn run(latency: Duration) -> Report {
    // The factory runs once per cache. One map per namespace, shared by the
    // caches of every service in this process (as a server is shared by
    // instances); the program keeps them, to take one down.
    let backends: Arc<Mutex<BTreeMap<String, Arc<MapL2>>>> = Arc::default();
    let kept = backends.clone();
    register_l2_backend(NAME, move |l2| {
        let mut maps = kept.lock().unwrap();
        let map = maps
            .entry(l2.key_prefix.clone())
            .or_insert_with(|| Arc::new(MapL2::new(l2, latency)));
        Ok(map.clone())
    })
    .expect("the name is free");

    let conformance = conformance::check(
        Arc::new(MapL2::with_namespace(
            "conformance",
            Duration::from_secs(60),
            latency,
        )),
        conformance::Options::default(),
        |i| i.to_be_bytes().to_vec(),
    )
    .await;

    let mut config = CacheFactoryConfig::from_env().expect("a valid configuration in the environment");
    let selected_by_env = config.l2_backend.name() == NAME;
    let mut report = Report {
        backend: NAME,
        selected_by_env,
        conformance_passed: conformance.passed.len(),
        conformance_failed: conformance.failed.len(),
        conformance_failures: conformance
            .failed
            .iter()
            .map(|f| format!("{}: {}", f.rule, f.message))
            .collect(),
        workload_errors: 0,
        events_seen: BTreeMap::new(),
        events_missing: EXPECTED.to_vec(),
    };
    if !selected_by_env {
        eprintln!(
            "CACHE_L2_BACKEND names {:?}, not {NAME}: no workload",
            config.l2_backend.name()
        );
        return report;
    }
    // A short breaker timeout, so the outage below ends within the run.
    config.circuit_breaker.threshold = 2;
    config.circuit_breaker.timeout = Duration::from_secs(1);
    let service = CacheService::new(config.clone())
        .await
        .expect("a service over map_l2");
    // Another instance of the same service, for a write this one did not make.
    let peer = CacheService::new(config)
        .await
        .expect("a second service over map_l2");
    let peer_users: Cache<String> = peer
        .create_cache(CacheOptions::new("users").l2_ttl(Duration::from_secs(60)))
        .expect("a cache over map_l2");
    let users: Cache<String> = service
        .create_cache(CacheOptions::new("users").l2_ttl(Duration::from_secs(60)))
        .expect("a cache over map_l2");
    let sessions: Cache<String> = service
        .create_cache(
            CacheOptions::new("sessions")
                .l2_ttl(Duration::from_secs(1))
                .l1_ttl(Duration::from_secs(1))
                .fail_safe_max_duration(Duration::from_secs(600)),
        )
        .expect("a fail-safe cache over map_l2");
    let mut streams = [users.subscribe(), sessions.subscribe()];
    let users_l2 = backends.lock().unwrap()["users"].clone();
    report.workload_errors = workload(&users, &peer_users, &sessions, &users_l2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    for stream in &mut streams {
        count(stream, &mut report.events_seen);
    }
    report.events_missing = EXPECTED
        .iter()
        .copied()
        .filter(|k| !report.events_seen.contains_key(k))
        .collect();
    report
}

/// Runs the workload; returns how many of its checks failed.
async fn workload(
    users: &Cache<String>,
    peer_users: &Cache<String>,
    sessions: &Cache<String>,
    users_l2: &MapL2,
) -> u64 {
    let mut errors = 0u64;
    let mut check = |ok: bool, what: &str| {
        if !ok {
            eprintln!("workload: {what}");
            errors += 1;
        }
    };
    let text = |v: Option<Arc<String>>| v.map(|v| v.as_str().to_string());

    // Writes, then reads answered by L1.
    for i in 0..100 {
        users.set(format!("u{i}"), format!("user {i}")).await;
    }
    for i in 0..100 {
        let got = text(users.get(format!("u{i}")).await);
        check(got == Some(format!("user {i}")), "a written key reads back");
    }
    // A value only L2 holds (written by another instance): an L1 miss, an L2 hit.
    peer_users.set("peer", "from another instance".into()).await;
    let got = text(users.get("peer").await);
    check(got.as_deref() == Some("from another instance"), "an L2 hit");
    // Absent everywhere: a miss at each level.
    check(users.get("absent").await.is_none(), "an absent key is a miss");

    // A load, then a stale answer once it expired and the source failed.
    let loaded = sessions
        .get_or_load("s1", async || Ok::<_, std::io::Error>("token".to_string()))
        .await;
    check(loaded.is_ok_and(|v| v.as_str() == "token"), "a load");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stale = sessions
        .get_or_load("s1", async || {
            Err::<String, _>(std::io::Error::other("source down"))
        })
        .await;
    check(
        stale.is_ok_and(|v| v.as_str() == "token"),
        "fail-safe serves the stale value",
    );

    // An outage: no errors reach the caller, L1 keeps answering, writes wait.
    let down = users_l2.down_switch();
    down.store(true, Relaxed);
    for key in ["gone1", "gone2", "gone3"] {
        check(users.get(key).await.is_none(), "a miss during the outage");
    }
    check(users.breaker_state() == CircuitState::Open, "the breaker opened");
    users.set("during", "written in the outage".into()).await;
    let got = text(users.get("u1").await);
    check(got.as_deref() == Some("user 1"), "L1 answers during the outage");
    down.store(false, Relaxed);
    let mut recovered = false;
    for _ in 0..100 {
        users.get("probe").await;
        if users.breaker_state() == CircuitState::Closed && users.get_stats().await.recovery.queue_depth == 0
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check(recovered, "the breaker closed and the queued write was replayed");
    errors
}

/// Adds the events waiting on `stream` to `seen`, by kind.
fn count(stream: &mut EventStream, seen: &mut BTreeMap<&'static str, u64>) {
    while let Some(event) = stream.try_recv() {
        let kind = match event {
            CacheEvent::Hit { level: Level::L1, .. } => "hit_l1",
            CacheEvent::Hit { .. } => "hit_l2",
            CacheEvent::Miss { level: Level::L1, .. } => "miss_l1",
            CacheEvent::Miss { .. } => "miss_l2",
            CacheEvent::StaleServed { .. } => "stale_served",
            CacheEvent::LoaderError { .. } => "loader_error",
            CacheEvent::LoaderTimeout { .. } => "loader_timeout",
            CacheEvent::L2Failure { .. } => "l2_failure",
            CacheEvent::BreakerOpened => "breaker_opened",
            CacheEvent::BreakerClosed => "breaker_closed",
            CacheEvent::Invalidated { .. } => "invalidated",
            CacheEvent::Marked { .. } => "marked",
            CacheEvent::Replayed { .. } => "replayed",
            _ => "other",
        };
        *seen.entry(kind).or_default() += 1;
        if kind.starts_with("hit") {
            *seen.entry("hit").or_default() += 1;
        } else if kind.starts_with("miss") {
            *seen.entry("miss").or_default() += 1;
        }
    }
}
