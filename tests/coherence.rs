//! The coherence harness at small scale: invariants only, no timings.

use resilient_cache_testkit as common;

use common::coherence::{run, CoherenceParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coherence_harness_invariants() {
    let r = run(CoherenceParams {
        updates: 200,
        keys: 20,
        ..Default::default()
    })
    .await;
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(r.stale_reads_after_propagation, 0, "{json}");
    assert!(r.reconnect_checked && r.reconnect_l1_cleared, "{json}");
    assert!(r.messages_received_by_b >= 100, "{json}");
    assert!(
        r.propagation_max_us < 5_000_000,
        "every update propagated: {json}"
    );
}
