//! Load generator: `cargo run --release -p resilient-cache --example loadgen -- --json loadgen.json`
//!
//! Each scenario of ours runs beside its raw baseline in this same process, at
//! concurrency 1 and 64: `l1_hit` (vs quick_cache's get, same `Arc<User>`
//! value), `l2_hit` with L1 off (vs a raw `GET` + MessagePack decode on a
//! `ConnectionManager`), `miss`, `set` (vs encode + `SET PX`), `set_plain`
//! (`set` without lease fence and backplane), `set_many` of 100 keys (vs one
//! pipeline of 100 `SET PX`) and `mixed`
//! (90 % get / 10 % set over 100,000 keys, Zipf-like, L1 + L2, vs raw Redis).
//! Starts its own `redis-server` unless `--redis-url` is given.
//!
//! Beside throughput and latency, each side's CPU time per op (this process
//! and `redis-server`) and their ratio: steadier than throughput on a shared
//! machine. Heap allocations per op, each side, counted over a short run
//! at the scenario's concurrency after the measured runs (the counter is
//! off while they run, so they pay nothing for it).
//!
//! Options: `--json PATH`, `--redis-url URL`, `--run-ms N` (1500),
//! `--repeats N` (3; medians are reported), `--concurrency 1,64`,
//! `--only l1_hit,set,…` (those scenarios only). Breakdown scenarios run
//! only when named there: `set_fence_only`, `set_backplane_only` (`set`
//! with one of its two guarantees), `set_untracked` (fence, no backplane,
//! no tracking), `set_via_backplane` (fence, other instances told by
//! per-key backplane messages instead of tracking), `set_bare` (none of
//! the three), `raw_fenced_set` (a raw pipeline of lease `HDEL` + `SET PX`
//! against the raw `SET PX`), `raw_tracked_set` and `raw_tracked_set_many`
//! (the raw writes on a connection tracking their prefix as this crate
//! does, against the same writes untracked: what tracking alone costs),
//! `set_vs_tracked` and `set_many_vs_tracked` (the default `set` and
//! `set_many` against those tracked raw writes: both sides pay Redis's
//! tracking, so the ratio is this crate's own cost), and
//! `set_many_plain` (no fence, no
//! backplane), `set_many_untracked` (fence, no backplane, no tracking) and
//! `set_many_bare` (none of the three): `set`'s and `set_many`'s cost
//! piece by piece.
//!
//! `--raw-vs-raw` measures each scenario's raw side against itself, in the
//! same alternation, with the same medians: the ratios this machine reads
//! when nothing differs, so the noise floor of every ratio above. Run it
//! with the same `--only`, `--concurrency`, `--repeats` and `--run-ms` as
//! the run it qualifies.

use resilient_cache_testkit as common;

use std::time::Duration;

use common::cli::{self, Args};
use common::loadgen::{run, CountingAlloc, LoadParams};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// CPU µs per op as `client+redis`.
fn cpu([client, redis]: [f64; 2]) -> String {
    format!("{client:.1}+{redis:.1}")
}

fn main() {
    let mut args =
        Args::new("loadgen [--json PATH] [--redis-url URL] [--run-ms N] [--repeats N] [--concurrency 1,64] [--only SCENARIO,...] [--raw-vs-raw]");
    let mut p = LoadParams::default();
    let mut json = None;
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "--json" => json = Some(args.value(&flag)),
            "--redis-url" => p.redis_url = Some(args.value(&flag)),
            "--run-ms" => p.run = Duration::from_millis(args.num(&flag).max(10)),
            "--repeats" => p.repeats = args.num(&flag).max(1) as usize,
            "--concurrency" => {
                let list = args.value(&flag);
                p.concurrencies = list
                    .split(',')
                    .map(|c| {
                        c.trim()
                            .parse::<usize>()
                            .unwrap_or_else(|_| args.fail(&format!("bad concurrency list {list}")))
                            .max(1)
                    })
                    .collect();
            }
            "--raw-vs-raw" => p.raw_vs_raw = true,
            "--only" => {
                p.only = args
                    .value(&flag)
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect()
            }
            other => args.fail(&format!("unknown option {other}")),
        }
    }
    let report = cli::run(run(p, Some(&ALLOC)));
    if report.raw_vs_raw {
        println!("raw vs raw: each scenario's raw side against itself (this machine's noise floor)");
    }
    cli::write_json(&args, json.as_deref(), &report);
    println!(
        "{:<9} {:>4} {:>13} {:>9} {:>9} {:>9} {:>13} {:>9} {:>8} {:>8} {:>13} {:>13} {:>6} {:>11}",
        "scenario",
        "c",
        "ops/s",
        "p50 us",
        "p99 us",
        "p999 us",
        "raw ops/s",
        "raw p50",
        "ops x",
        "p50 x",
        "cpu us/op",
        "raw cpu",
        "cpu x",
        "allocs/op"
    );
    for s in &report.scenarios {
        println!(
            "{:<9} {:>4} {:>13.0} {:>9.3} {:>9.3} {:>9.3} {:>13.0} {:>9.3} {:>8.2} {:>8.2} {:>13} {:>13} {:>6.2} {:>11}",
            s.name,
            s.concurrency,
            s.ops_per_sec,
            s.p50_us,
            s.p99_us,
            s.p999_us,
            s.baseline_ops_per_sec,
            s.baseline_p50_us,
            s.ops_ratio,
            s.p50_ratio,
            cpu(s.cpu_us_per_op),
            cpu(s.baseline_cpu_us_per_op),
            s.cpu_ratio,
            format!("{:.1}/{:.1}", s.allocs_per_op[0], s.allocs_per_op[1])
        );
    }
    println!(
        "l2 commands per get {:.2}; L1 bytes per entry {:.0} (raw quick_cache {:.0}, x{:.2})",
        report.l2_commands_per_get,
        report.l1_bytes_per_entry,
        report.raw_l1_bytes_per_entry,
        report.l1_bytes_per_entry / report.raw_l1_bytes_per_entry
    );
    let vs: Vec<String> = report
        .vs_original
        .iter()
        .map(|(k, v)| format!("{k} {v:.1}x"))
        .collect();
    println!("vs the original Python package: {}", vs.join(", "));
}
