//! Stampede harness: `cargo run --release -p resilient-cache --example stampede -- --json stampede.json`
//!
//! `--callers` (1,000) concurrent `get_or_load` calls on one cold key with a
//! `--loader-ms` (50 ms) loader; the same over two instances with the
//! distributed lock; a failing loader with a stale value at hand (fail-safe);
//! a hot key read for three TTLs with eager refresh on. Starts its own
//! `redis-server` unless `--redis-url` is given.

use resilient_cache_testkit as common;

use common::cli::{self, Args};
use common::stampede::{run, StampedeParams};

fn main() {
    let mut args = Args::new("stampede [--json PATH] [--redis-url URL] [--callers N] [--loader-ms N]");
    let mut p = StampedeParams::default();
    let mut json = None;
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "--json" => json = Some(args.value(&flag)),
            "--redis-url" => p.redis_url = Some(args.value(&flag)),
            "--callers" => p.callers = args.num(&flag).max(1),
            "--loader-ms" => p.loader_ms = args.num(&flag),
            other => args.fail(&format!("unknown option {other}")),
        }
    }
    let r = cli::run(run(p));
    cli::write_json(&args, json.as_deref(), &r);
    println!(
        "stampede: {} callers, {} ms loader: {} loader call(s), p50 {:.1} ms, p99 {:.1} ms (target <= {} ms)\n\
         two instances, distributed lock: {} loader call(s)\n\
         fail-safe served stale: {}\n\
         eager refresh hid expiry: {} ({} reads, {} background refreshes, {} reads waited)",
        r.concurrent_callers,
        r.loader_ms,
        r.loader_calls,
        r.p50_ms,
        r.p99_ms,
        2 * r.loader_ms + 20,
        r.distributed_loader_calls,
        r.fail_safe_served_stale,
        r.eager_refresh_hidden_expiry,
        r.eager_reads,
        r.eager_refreshes,
        r.eager_reads_that_waited,
    );
}
