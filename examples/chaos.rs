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

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::chaos::{run, ChaosParams};

fn main() {
    let mut p = ChaosParams::default();
    let mut json = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        let num = |v: String| {
            v.parse::<u64>()
                .unwrap_or_else(|_| usage(&format!("not a number: {v}")))
        };
        match a.as_str() {
            "--json" => json = Some(val()),
            "--tasks" => p.tasks = num(val()).max(1) as usize,
            "--keys" => p.keys = num(val()).max(64) as usize,
            "--phase-secs" => p.phase = Duration::from_secs(num(val()).max(1)),
            "--op-timeout-ms" => p.op_timeout = Duration::from_millis(num(val()).max(1)),
            "--breaker-timeout-ms" => p.breaker_timeout = Duration::from_millis(num(val()).max(1000)),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown option {other}")),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(run(p));
    let text = serde_json::to_string_pretty(&report).unwrap();
    if let Some(path) = json {
        std::fs::write(&path, &text).unwrap_or_else(|e| usage(&format!("cannot write {path}: {e}")));
    }
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
        "caller errors {}, panics {}, recovery {} ms, resurrected deletes {} (of {}), lost writes {} (of {}), replayed {}",
        report.caller_errors_total,
        report.panics,
        report.recovery_ms,
        report.resurrected_deletes,
        report.deletes_checked,
        report.lost_writes,
        report.writes_checked,
        report.replayed
    );
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("error: {msg}");
    }
    eprintln!(
        "usage: chaos [--json PATH] [--tasks N] [--keys N] [--phase-secs S] [--op-timeout-ms N] [--breaker-timeout-ms N]"
    );
    std::process::exit(2)
}
