//! Topology harness: `cargo run --release -p resilient-cache --example topology -- --json topology.json`
//!
//! `l2_hit` throughput at concurrency 64 (L1 off) on one `redis-server` and on
//! a local 3-primary + 3-replica Redis Cluster, then the failover gap (how
//! long callers are served from L1 only) when a cluster primary is killed,
//! and when a Sentinel-managed primary is killed. Starts every process itself.

use resilient_cache_testkit as common;

use common::cli::{self, Args};
use common::topology_bench::{run, TopologyParams};

fn main() {
    let mut args = Args::new("topology [--json PATH] [--seconds N] [--concurrency N]");
    let mut p = TopologyParams::default();
    let mut json = None;
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "--json" => json = Some(args.value(&flag)),
            "--seconds" => p.seconds = args.num(&flag).max(1) as f64,
            "--concurrency" => p.concurrency = args.num(&flag).max(1) as usize,
            other => args.fail(&format!("unknown option {other}")),
        }
    }
    let r = cli::run(run(p));
    cli::write_json(&args, json.as_deref(), &r);
    println!(
        "l2_hit c{}: single {:.0} ops/s, 3-primary cluster {:.0} ops/s ({:.2}x)\n\
         failover gap (served from L1 only): cluster {:?} ms, sentinel {:?} ms; hung calls {}\n({})",
        r.concurrency,
        r.single_l2_hit_ops_per_sec,
        r.cluster_l2_hit_ops_per_sec,
        r.cluster_vs_single,
        r.cluster_failover_gap_ms,
        r.sentinel_failover_gap_ms,
        r.hung_calls,
        r.note
    );
}
