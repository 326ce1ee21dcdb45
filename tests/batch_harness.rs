//! The batch harness, small: its invariants (counts and booleans, no speed).

use resilient_cache_testkit as common;

use common::batch::{run, BatchParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_harness_invariants() {
    let r = run(BatchParams {
        batch_size: 40,
        rounds: 3,
        ..Default::default()
    })
    .await;
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(r.l2_commands_per_get_many, 1, "{json}");
    assert!(r.get_many_l2_vs_single_gets_ops > 0.0, "{json}");
    assert_eq!(r.get_or_load_many_loader_calls_cold, 1, "{json}");
    assert!(
        (1..=2).contains(&r.get_or_load_many_overlap_loader_calls),
        "{json}"
    );
    assert_eq!(r.get_or_load_many_overlap_keys_loaded_twice, 0, "{json}");
    assert_eq!(r.set_many_l2_round_trips, 1, "{json}");
    assert_eq!(r.set_many_backplane_messages, 1, "{json}");
    assert_eq!(r.cluster_primaries, 3, "{json}");
    assert!(
        (1..=r.cluster_primaries).contains(&r.cluster_get_many_round_trips),
        "{json}"
    );
    assert!(r.adaptive_ttl_honoured, "{json}");
    assert!(r.not_modified_refreshed, "{json}");
}
