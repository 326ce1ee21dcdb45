//! Coherence harness: `cargo run --release -p resilient-cache --example coherence -- --json coherence.json`
//!
//! Two `CacheService` instances (separate connections, like two processes) on
//! one namespace. Instance A performs `--updates` updates (2,000) over
//! `--keys` keys (100) while instance B reads the same keys: propagation is
//! from A's `set` returning to B no longer serving the old value; stale reads
//! are B reads of an old value after that. Halfway, Redis is restarted to check
//! that B's L1 is cleared when its subscriber reconnects. Starts its own
//! `redis-server` unless `--redis-url` is given (then the restart is skipped).

use resilient_cache_testkit as common;

use common::cli::{self, Args};
use common::coherence::{run, CoherenceParams};

fn main() {
    let mut args = Args::new("coherence [--json PATH] [--redis-url URL] [--updates N] [--keys N]");
    let mut p = CoherenceParams::default();
    let mut json = None;
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "--json" => json = Some(args.value(&flag)),
            "--redis-url" => p.redis_url = Some(args.value(&flag)),
            "--updates" => p.updates = args.num(&flag).max(2),
            "--keys" => p.keys = args.num(&flag).max(1),
            other => args.fail(&format!("unknown option {other}")),
        }
    }
    let report = cli::run(run(p));
    cli::write_json(&args, json.as_deref(), &report);
    println!(
        "coherence: {} instances, {} updates; propagation p50 {} us, p99 {} us, max {} us; \
         stale reads after propagation {}; L1 cleared on reconnect: {}{}",
        report.instances,
        report.updates,
        report.propagation_p50_us,
        report.propagation_p99_us,
        report.propagation_max_us,
        report.stale_reads_after_propagation,
        report.reconnect_l1_cleared,
        if report.reconnect_checked {
            ""
        } else {
            " (not checked: external server)"
        }
    );
}
