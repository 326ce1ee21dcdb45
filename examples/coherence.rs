//! Coherence harness: `cargo run --release -p resilient-cache --example coherence -- --json coherence.json`
//!
//! Two `CacheService` instances (separate connections, like two processes) on
//! one namespace. Instance A performs `--updates` updates (2,000) over
//! `--keys` keys (100) while instance B reads the same keys: propagation is
//! from A's `set` returning to B no longer serving the old value; stale reads
//! are B reads of an old value after that. Halfway, Redis is restarted to check
//! that B's L1 is cleared when its subscriber reconnects. Then the same with
//! tracking alone (no backplane), and with the backplane alone; then a foreign writer (a plain Redis
//! client) sets, deletes and expires keys both instances hold in L1; then
//! the L1 hit ratio of reads after own writes with tracking on and off; then
//! the tracking connections are killed. Starts its own `redis-server` unless
//! `--redis-url` is given (then the restart is skipped).

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
         stale reads after propagation {}; L1 cleared on reconnect: {}{}\n\
         per-key messages per write with both sources {:.2}\n\
         tracking only: propagation p50 {} us, p99 {} us, stale {}\n\
         backplane only: propagation p50 {} us, p99 {} us, stale {}; messages per write {:.2}\n\
         foreign writer: {} updates, propagation p50 {} us, p99 {} us, stale {}; \
         own-write L1 hit ratio {:.4} (tracking) vs {:.4} (off); tracking loss cleared L1: {}",
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
        },
        report.default_messages_per_write,
        report.tracking_only_propagation_p50_us,
        report.tracking_only_propagation_p99_us,
        report.tracking_only_stale_reads_after_propagation,
        report.backplane_only_propagation_p50_us,
        report.backplane_only_propagation_p99_us,
        report.backplane_only_stale_reads_after_propagation,
        report.backplane_messages_per_write,
        report.foreign_updates,
        report.foreign_propagation_p50_us,
        report.foreign_propagation_p99_us,
        report.foreign_stale_reads_after_propagation,
        report.own_write_l1_hit_ratio_tracking,
        report.own_write_l1_hit_ratio_off,
        report.tracking_loss_l1_cleared,
    );
}
