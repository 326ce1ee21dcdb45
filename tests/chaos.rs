//! The chaos harness at small scale: the invariants, not the timings.

use resilient_cache_testkit as common;

use std::time::Duration;

use common::chaos::{run, ChaosParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_sequence_keeps_every_invariant() {
    let report = run(ChaosParams {
        tasks: 8,
        keys: 200,
        phase: Duration::from_millis(1500),
        op_timeout: Duration::from_millis(200),
        breaker_timeout: Duration::from_secs(1),
    })
    .await;
    let json = serde_json::to_string(&report).unwrap();
    assert_eq!(report.panics, 0, "{json}");
    assert_eq!(report.caller_errors_total, 0, "{json}");
    assert_eq!(report.resurrected_deletes, 0, "{json}");
    assert!(
        report.outage_deletes_checked > 0,
        "deletes made during the outage, isolated: {json}"
    );
    assert_eq!(report.outage_deletes_resurrected, 0, "{json}");
    assert_eq!(report.lost_writes, 0, "{json}");
    assert!(report.deletes_checked > 0 && report.writes_checked > 0, "{json}");
    assert!(
        report.replayed > 0,
        "writes made during the outage were replayed: {json}"
    );
    assert!(
        report.breaker_transitions >= 3,
        "closed -> open -> half-open -> closed: {json}"
    );
    for ph in &report.phases {
        assert!(ph.ops > 0, "traffic in every phase: {json}");
    }
}
