//! Coherence harness: `cargo run --release -p resilient-cache --example coherence -- --json coherence.json`
//!
//! Two `CacheService` instances (separate connections, like two processes) on
//! one namespace. Instance A performs `--updates` updates (2,000) over
//! `--keys` keys (100) while instance B reads the same keys: propagation is
//! from A's `set` returning to B no longer serving the old value; stale reads
//! are B reads of an old value after that. Halfway, Redis is restarted to check
//! that B's L1 is cleared when its subscriber reconnects. Starts its own
//! `redis-server` unless `--redis-url` is given (then the restart is skipped).

#[path = "../tests/common/mod.rs"]
mod common;

use common::coherence::{run, CoherenceParams};

fn main() {
    let mut p = CoherenceParams::default();
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
            "--redis-url" => p.redis_url = Some(val()),
            "--updates" => p.updates = num(val()).max(2),
            "--keys" => p.keys = num(val()).max(1),
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

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("error: {msg}");
    }
    eprintln!("usage: coherence [--json PATH] [--redis-url URL] [--updates N] [--keys N]");
    std::process::exit(2)
}
