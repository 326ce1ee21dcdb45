//! `/metrics` of the example app. Alone in its test binary: the metrics
//! recorder is process-wide, so no other test's traffic can reach the counters
//! this one reads.
#![cfg(all(feature = "axum", feature = "metrics"))]

use resilient_cache_testkit as common;

use common::http::Running;
use common::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_publish_this_apps_own_counters() {
    let redis = RedisServer::start();
    let app = Running::start(&redis).await;
    for _ in 0..3 {
        assert_eq!(app.get("/users/1").await.0, 200);
    }
    let stats = app.state.users.get_stats().await;
    let (code, metrics) = app.get("/metrics").await;
    assert_eq!(code, 200);
    let text = metrics.as_str().unwrap();
    let value = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{cache=\"users\"}}")))
            .unwrap_or_else(|| panic!("no {name} for users in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    // One load, then two L1 hits: exactly what the cache's own stats say.
    assert_eq!(value("resilient_cache_loads_total"), stats.loader.loads as f64);
    assert_eq!(stats.loader.loads, 1);
    assert_eq!(
        value("resilient_cache_l1_hits_total"),
        stats.l1.as_ref().unwrap().hits as f64
    );
    assert_eq!(stats.l1.as_ref().unwrap().hits, 2);
    // The L2 latency histogram, by command and outcome: the first load
    // read L2 (a miss) before it loaded.
    let get_ok = text
        .lines()
        .find(|l| {
            l.starts_with("resilient_cache_l2_command_seconds_count")
                && l.contains(r#"command="GET""#)
                && l.contains(r#"outcome="ok""#)
        })
        .unwrap_or_else(|| panic!("no L2 GET timings in:\n{text}"));
    let gets: f64 = get_ok.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(gets >= 1.0, "{get_ok}");
    assert_eq!(
        value("resilient_cache_markers_known"),
        stats.invalidation.markers_known as f64
    );
    assert!(
        text.contains(r#"resilient_cache_marker_reads_total{cache="users",kind="removed"}"#),
        "marker reads by kind:\n{text}"
    );
    // Tracking's counters move on their own (a load's store is announced
    // back and confirmed): their lines are there, and nothing was lost.
    assert!(stats.tracking.is_some(), "the app's caches are tracked");
    for name in [
        "resilient_cache_tracking_notifications_total",
        "resilient_cache_tracking_keys_invalidated_total",
        "resilient_cache_tracking_flushes_total",
        "resilient_cache_tracking_connected",
    ] {
        value(name);
    }
    assert_eq!(value("resilient_cache_tracking_loss_clears_total"), 0.0);
}
