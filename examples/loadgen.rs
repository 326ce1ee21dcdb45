//! Load generator: `cargo run --release -p resilient-cache --example loadgen -- --json loadgen.json`
//!
//! Each scenario of ours runs beside its raw baseline in this same process, at
//! concurrency 1 and 64: `l1_hit` (vs quick_cache's get, same `Arc<User>`
//! value), `l2_hit` with L1 off (vs a raw `GET` + MessagePack decode on a
//! `ConnectionManager`), `miss`, `set` (vs encode + `SET PX`) and `mixed`
//! (90 % get / 10 % set over 100,000 keys, Zipf-like, L1 + L2, vs raw Redis).
//! Starts its own `redis-server` unless `--redis-url` is given.
//!
//! Options: `--json PATH`, `--redis-url URL`, `--run-ms N` (1500),
//! `--repeats N` (3; medians are reported), `--concurrency 1,64`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use common::loadgen::{run, LoadParams};

/// Counts live heap bytes, for the bytes-per-entry figures.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Relaxed);
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Relaxed)
}

fn main() {
    let mut p = LoadParams::default();
    let mut json = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        let num = |v: &str| {
            v.parse::<u64>()
                .unwrap_or_else(|_| usage(&format!("not a number: {v}")))
        };
        match a.as_str() {
            "--json" => json = Some(val()),
            "--redis-url" => p.redis_url = Some(val()),
            "--run-ms" => p.run = Duration::from_millis(num(&val()).max(10)),
            "--repeats" => p.repeats = num(&val()).max(1) as usize,
            "--concurrency" => p.concurrencies = val().split(',').map(|c| num(c).max(1) as usize).collect(),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown option {other}")),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = rt.block_on(run(p, Some(live)));
    if let Some(path) = &json {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap())
            .unwrap_or_else(|e| usage(&format!("cannot write {path}: {e}")));
    }
    println!(
        "{:<8} {:>4} {:>13} {:>9} {:>9} {:>9} {:>13} {:>9} {:>8} {:>8}",
        "scenario", "c", "ops/s", "p50 us", "p99 us", "p999 us", "raw ops/s", "raw p50", "ops x", "p50 x"
    );
    for s in &report.scenarios {
        println!(
            "{:<8} {:>4} {:>13.0} {:>9.3} {:>9.3} {:>9.3} {:>13.0} {:>9.3} {:>8.2} {:>8.2}",
            s.name,
            s.concurrency,
            s.ops_per_sec,
            s.p50_us,
            s.p99_us,
            s.p999_us,
            s.baseline_ops_per_sec,
            s.baseline_p50_us,
            s.ops_ratio,
            s.p50_ratio
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

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("error: {msg}");
    }
    eprintln!(
        "usage: loadgen [--json PATH] [--redis-url URL] [--run-ms N] [--repeats N] [--concurrency 1,64]"
    );
    std::process::exit(2)
}
