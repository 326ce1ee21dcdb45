//! The invalidation harness at small scale: invariants only, no timings.

use resilient_cache_testkit as common;

use common::invalidation::{run, InvalidationParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_harness_invariants() {
    let r = run(InvalidationParams {
        entries: 500,
        tags: 10,
        rounds: 5,
        hit_reads: 10_000,
        ..Default::default()
    })
    .await;
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(r.stale_reads_after_propagation, 0, "{json}");
    assert_eq!(r.new_instance_sees_removed, 0, "{json}");
    assert!(r.outage_checked, "{json}");
    assert_eq!(r.outage_removed_then_resurrected, 0, "{json}");
    assert!(r.expired_served_by_fail_safe, "{json}");
    assert!(r.remove_by_tag_l2_commands > 0, "{json}");
    assert_eq!(
        r.remove_by_tag_l2_commands, r.remove_by_tag_l2_commands_10x,
        "{json}"
    );
    assert_eq!(r.clear_all_l2_commands, r.clear_all_l2_commands_10x, "{json}");
    assert!(r.l1_hit_tagged_vs_untagged > 0.0, "{json}");
}
