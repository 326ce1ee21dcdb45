//! The stampede harness at small scale: counts and flags only, no timings.

use resilient_cache_testkit as common;

use common::stampede::{run, StampedeParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stampede_harness_invariants() {
    let r = run(StampedeParams {
        callers: 200,
        loader_ms: 20,
        ..Default::default()
    })
    .await;
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(r.loader_calls, 1, "{json}");
    assert_eq!(r.distributed_loader_calls, 1, "{json}");
    assert!(r.fail_safe_served_stale, "{json}");
    assert!(r.eager_refresh_hidden_expiry, "{json}");
    assert!(r.eager_reads > 100, "{json}");
}
