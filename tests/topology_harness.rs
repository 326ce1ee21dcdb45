//! The topology harness at small scale: it runs end to end, callers never
//! hang, and L2 comes back after both failovers. No timings asserted.

use resilient_cache_testkit as common;

use common::topology_bench::{run, TopologyParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_harness_runs() {
    let r = run(TopologyParams {
        seconds: 0.3,
        concurrency: 8,
        keys: 100,
    })
    .await;
    let json = serde_json::to_string(&r).unwrap();
    assert!(
        r.single_l2_hit_ops_per_sec > 0.0 && r.cluster_l2_hit_ops_per_sec > 0.0,
        "{json}"
    );
    assert_eq!(r.hung_calls, 0, "{json}");
    assert!(
        r.cluster_failover_gap_ms.is_some(),
        "L2 came back after the cluster failover: {json}"
    );
    assert!(
        r.sentinel_failover_gap_ms.is_some(),
        "L2 came back after the sentinel failover: {json}"
    );
}
