//! The load generator at tiny scale, so it cannot rot. No speed assertions.

use resilient_cache_testkit as common;

use std::time::Duration;

use common::loadgen::{run, CountingAlloc, LoadParams, LoadReport};

// Counts only while the load generator switches it on.
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Taken by every test here: the counter counts the whole process, so a
/// test reading allocations per op must not run beside another.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A short run of the scenarios `only` names at `concurrency` tasks
/// (against `redis_url`, or a server of the run's own), with the names of
/// the scenarios that ran, sorted.
async fn run_only(
    only: &[&str],
    concurrency: usize,
    redis_url: Option<String>,
) -> (LoadReport, Vec<&'static str>) {
    let report = run(
        LoadParams {
            redis_url,
            run: Duration::from_millis(30),
            repeats: 1,
            concurrencies: vec![concurrency],
            only: only.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
        None,
    )
    .await;
    let mut names: Vec<_> = report.scenarios.iter().map(|s| s.name).collect();
    names.sort();
    (report, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_smoke() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let report = run(
        LoadParams {
            run: Duration::from_millis(50),
            repeats: 1,
            concurrencies: vec![1, 4],
            mixed_keys: 1000,
            bytes_entries: 1000,
            ..Default::default()
        },
        Some(&ALLOC),
    )
    .await;
    let names: Vec<_> = report.scenarios.iter().map(|s| (s.name, s.concurrency)).collect();
    for name in [
        "l1_hit",
        "l2_hit",
        "miss",
        "set",
        "set_plain",
        "set_many",
        "mixed",
    ] {
        for c in [1, 4] {
            assert!(names.contains(&(name, c)), "{name} at {c}: {names:?}");
        }
    }
    for s in &report.scenarios {
        assert!(s.ops_per_sec > 0.0 && s.baseline_ops_per_sec > 0.0, "{s:?}");
        // CPU per op, both sides: this process always spends some; the
        // server's share is measured (a write always costs it some).
        for [client, server] in [s.cpu_us_per_op, s.baseline_cpu_us_per_op] {
            assert!(client.is_finite() && client > 0.0, "{s:?}");
            assert!(server.is_finite() && server >= 0.0, "{s:?}");
        }
        if s.name.starts_with("set") {
            assert!(
                s.cpu_us_per_op[1] > 0.0 && s.baseline_cpu_us_per_op[1] > 0.0,
                "{s:?}"
            );
        }
        assert!(s.cpu_ratio.is_finite() && s.cpu_ratio > 0.0, "{s:?}");
        // Counted: a write allocates on both sides (its encoding, at least).
        for a in s.allocs_per_op {
            assert!(a.is_finite() && a >= 0.0, "{s:?}");
        }
        if s.name.starts_with("set") {
            assert!(s.allocs_per_op.iter().all(|&a| a >= 1.0), "{s:?}");
        }
    }
    // Bytes per entry are measured too (another test of this binary may
    // allocate meanwhile, so only their presence is checked).
    assert!(report.l1_bytes_per_entry.is_finite() && report.raw_l1_bytes_per_entry.is_finite());
    assert_eq!(report.l2_commands_per_get, 1.0);
    assert!(report.vs_original.contains_key("l2_hit_c1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_scenarios_asked_for_run() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (_, names) = run_only(&["set_many", "l1_hit"], 2, None).await;
    assert_eq!(names, ["l1_hit", "set_many"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakdown_scenarios_run_when_named() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let breakdown = [
        "raw_fenced_set",
        "raw_tracked_set",
        "raw_tracked_set_many",
        "set_backplane_only",
        "set_bare",
        "set_fence_only",
        "set_many_bare",
        "set_many_plain",
        "set_many_untracked",
        "set_many_vs_tracked",
        "set_untracked",
        "set_via_backplane",
        "set_vs_tracked",
    ];
    let (report, names) = run_only(&breakdown, 2, None).await;
    assert_eq!(names, breakdown);
    for s in &report.scenarios {
        assert!(s.ops_per_sec > 0.0 && s.baseline_ops_per_sec > 0.0, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_vs_raw_measures_the_raw_side_on_both_sides() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let params = |raw_vs_raw| LoadParams {
        run: Duration::from_millis(30),
        repeats: 1,
        concurrencies: vec![1],
        only: vec!["set_many".into(), "set".into()],
        raw_vs_raw,
        ..Default::default()
    };
    // Allocations per op tell the sides apart: a cache `set_many` makes
    // about a fifth fewer than the raw pipeline of the same 100 `SET`s.
    let normal = run(params(false), Some(&ALLOC)).await;
    let noise = run(params(true), Some(&ALLOC)).await;
    let allocs = |report: &common::loadgen::LoadReport| {
        report
            .scenarios
            .iter()
            .find(|s| s.name == "set_many")
            .expect("set_many ran")
            .allocs_per_op
    };
    let [ours, raw] = allocs(&normal);
    assert!(
        ours < 0.9 * raw,
        "a normal run measures the cache: {ours} vs {raw}"
    );
    let [first, second] = allocs(&noise);
    assert!(
        (first - second).abs() <= 0.02 * second,
        "raw vs raw measures the raw side twice: {first} vs {second}"
    );
    assert!(noise.raw_vs_raw && !normal.raw_vs_raw);
    assert!(noise.vs_original.is_empty(), "{:?}", noise.vs_original);
    assert!(
        normal.vs_original.contains_key("set_c1"),
        "{:?}",
        normal.vs_original
    );
    for s in &noise.scenarios {
        assert!(s.ops_per_sec > 0.0 && s.baseline_ops_per_sec > 0.0, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vs_tracked_scenarios_write_their_baseline_on_the_tracked_prefix() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = common::RedisServer::start();
    let (_, names) = run_only(&["set_vs_tracked", "set_many_vs_tracked"], 1, Some(server.url())).await;
    assert_eq!(names, ["set_many_vs_tracked", "set_vs_tracked"]);
    // The baseline is the raw writes on the connection that tracks
    // `raw-tracked:`, never the untracked `raw-set:` writes of `set`.
    let client = redis::Client::open(server.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let count = |pattern: &'static str| {
        let mut conn = conn.clone();
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut conn)
                .await
                .unwrap();
            keys.len()
        }
    };
    assert!(
        count("raw-tracked:*").await > 0,
        "no baseline write on the tracked prefix"
    );
    assert_eq!(count("raw-set:*").await, 0, "a baseline wrote untracked keys");
}
