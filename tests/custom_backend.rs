//! The `custom_backend` example as a test: a user's L2 backend, defined
//! outside the library, registered by name, selected by `CACHE_L2_BACKEND`
//! from the environment, conforming, and carrying a workload whose every
//! kind of event is seen. One test: the registry and the environment are
//! process-wide.

use std::time::Duration;

#[path = "../examples/custom_backend/main.rs"]
#[allow(dead_code)]
mod example;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_backend_is_selected_by_env_conforms_and_carries_a_cache() {
    // The only test of this process: nothing else reads the environment meanwhile.
    std::env::set_var("CACHE_L2_BACKEND", "map_l2");
    let report = example::run(Duration::from_micros(50)).await;
    assert!(report.selected_by_env);
    assert_eq!(report.conformance_failed, 0, "{:?}", report.conformance_failures);
    assert_eq!(
        report.conformance_passed,
        resilient_cache::testing::conformance::RULES.len()
    );
    assert_eq!(report.workload_errors, 0);
    assert!(
        report.events_missing.is_empty(),
        "every kind of event the workload causes is seen: missing {:?} of {:?}",
        report.events_missing,
        report.events_seen
    );
    assert_eq!(
        report.events_seen["hit_l2"], 1,
        "the peer's write, read from L2 once"
    );
    assert_eq!(report.events_seen["stale_served"], 1);
}
