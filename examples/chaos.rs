//! Chaos harness: `cargo run --release -p resilient-cache --example chaos -- --json chaos.json`
//!
//! Starts its own `redis-server` on a free loopback port (append-only, so a
//! killed server restarts with its data), runs concurrent tasks doing
//! get/set/delete/get_ttl on a few thousand keys, and goes through the phases
//! `healthy`, `frozen` (SIGSTOP), `down` (killed) and `recovered` (restarted).
//! Then it checks L2 against the last operation on every key: no deleted key
//! may have come back (`resurrected_deletes`), no written value may be missing
//! (`lost_writes`). Writes JSON to `--json PATH` and prints a summary.
//!
//! Options: `--tasks N` (48), `--keys N` (4000), `--phase-secs S` (4),
//! `--op-timeout-ms N` (250), `--breaker-timeout-ms N` (2000).

use resilient_cache_testkit as common;

use std::time::Duration;

use common::chaos::{run, ChaosParams};
use common::cli::{self, Args};

fn main() {
    let mut args = Args::new(
        "chaos [--json PATH] [--tasks N] [--keys N] [--phase-secs S] [--op-timeout-ms N] [--breaker-timeout-ms N]",
    );
    let mut p = ChaosParams::default();
    let mut json = None;
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "--json" => json = Some(args.value(&flag)),
            "--tasks" => p.tasks = args.num(&flag).max(1) as usize,
            "--keys" => p.keys = args.num(&flag).max(64) as usize,
            "--phase-secs" => p.phase = Duration::from_secs(args.num(&flag).max(1)),
            "--op-timeout-ms" => p.op_timeout = Duration::from_millis(args.num(&flag).max(1)),
            "--breaker-timeout-ms" => p.breaker_timeout = Duration::from_millis(args.num(&flag).max(1000)),
            other => args.fail(&format!("unknown option {other}")),
        }
    }
    let report = cli::run(run(p));
    cli::write_json(&args, json.as_deref(), &report);
    println!(
        "chaos: {} tasks, {} keys, op timeout {} ms, breaker timeout {} ms",
        report.tasks, report.keys, report.op_timeout_ms, report.breaker_timeout_ms
    );
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>11} {:>13} {:>11} {:>7}",
        "phase", "ops", "get p50", "get p99", "get max", "open get p99", "L1 hit p99", "errors"
    );
    for ph in &report.phases {
        println!(
            "{:<10} {:>9} {:>7}us {:>7}us {:>9}us {:>11} {:>9}us {:>7}",
            ph.name,
            ph.ops,
            ph.get_p50_us,
            ph.get_p99_us,
            ph.get_max_us,
            ph.open_get_p99_us.map_or("-".into(), |v| format!("{v}us")),
            ph.l1_hit_get_p99_us,
            ph.caller_errors
        );
    }
    println!(
        "caller errors {}, panics {}, recovery {} ms, resurrected deletes {} (of {}; outage deletes never rewritten: {} of {}), lost writes {} (of {}), replayed {}",
        report.caller_errors_total,
        report.panics,
        report.recovery_ms,
        report.resurrected_deletes,
        report.deletes_checked,
        report.outage_deletes_resurrected,
        report.outage_deletes_checked,
        report.lost_writes,
        report.writes_checked,
        report.replayed
    );
}
