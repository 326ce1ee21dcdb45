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
    // The backplane alone: B asked for per-key messages, and got them (an
    // update B did not hold can share a message with the next one).
    assert_eq!(r.backplane_only_stale_reads_after_propagation, 0, "{json}");
    assert!(r.messages_received_by_b >= 50, "{json}");
    assert!(
        r.propagation_max_us < 5_000_000,
        "every update propagated: {json}"
    );
    // Tracking: every writer seen, own writes kept, a lost channel cleared.
    assert_eq!(r.tracking_only_stale_reads_after_propagation, 0, "{json}");
    assert!(r.foreign_updates >= 100, "{json}");
    assert_eq!(r.foreign_stale_reads_after_propagation, 0, "{json}");
    assert!(
        r.foreign_propagation_p99_us < 5_000_000,
        "every foreign change reached both L1s: {json}"
    );
    assert!(
        r.own_write_l1_hit_ratio_tracking >= 0.99 * r.own_write_l1_hit_ratio_off,
        "{json}"
    );
    assert!(r.own_write_l1_hit_ratio_off > 0.99, "{json}");
    assert!(r.tracking_loss_l1_cleared, "{json}");
}
