//! Batch harness: `cargo run --release -p resilient-cache --example batch -- --json batch.json`
//!
//! What `get_many`, `set_many` and `get_or_load_many` cost L2 (commands and
//! round trips, counted), batch reads against the same keys read one by one
//! (a ratio of two interleaved runs in this process), loader calls for cold
//! and overlapping batches, round trips on a 3-primary Redis Cluster, and
//! whether adaptive entries and not-modified refreshes hold. Starts its own
//! `redis-server` unless `--redis-url` is given; the cluster part always
//! starts its own six servers (`--no-cluster` skips it).

use resilient_cache_testkit as common;

use common::batch::{run, BatchParams};
use common::cli::{self, Args};

fn main() {
    let mut args = Args::new("batch [--json PATH] [--redis-url URL] [--batch N] [--rounds N] [--no-cluster]");
    let mut p = BatchParams::default();
    let mut json = None;
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "--json" => json = Some(args.value(&flag)),
            "--redis-url" => p.redis_url = Some(args.value(&flag)),
            "--batch" => p.batch_size = args.num(&flag).max(2) as usize,
            "--rounds" => p.rounds = args.num(&flag).max(1) as usize,
            "--no-cluster" => p.cluster = false,
            other => args.fail(&format!("unknown option {other}")),
        }
    }
    let r = cli::run(run(p));
    cli::write_json(&args, json.as_deref(), &r);
    println!(
        "batch of {}: {} L2 command(s) per get_many; get_many {:.1}x the keys/s of single gets; \
         loader calls cold {}, overlapping {} ({} keys loaded twice); set_many {} round trip(s), \
         {} backplane message(s); cluster get_many {} round trips for {} primaries; \
         adaptive TTLs honoured: {}; not-modified refreshed: {}",
        r.batch_size,
        r.l2_commands_per_get_many,
        r.get_many_l2_vs_single_gets_ops,
        r.get_or_load_many_loader_calls_cold,
        r.get_or_load_many_overlap_loader_calls,
        r.get_or_load_many_overlap_keys_loaded_twice,
        r.set_many_l2_round_trips,
        r.set_many_backplane_messages,
        r.cluster_get_many_round_trips,
        r.cluster_primaries,
        r.adaptive_ttl_honoured,
        r.not_modified_refreshed,
    );
}
