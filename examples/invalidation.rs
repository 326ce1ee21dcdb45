//! Invalidation harness: `cargo run --release -p resilient-cache --example invalidation -- --json invalidation.json`
//!
//! Two `CacheService` instances (separate connections, like two processes) on
//! one namespace holding `--entries` entries (10,000) spread over `--tags`
//! tags (100). A removes `--rounds` tags (50) one by one while B watches:
//! propagation is from A's call to B no longer serving the tag's entries.
//! Then: stale reads on either instance and on an instance started later,
//! the L2 commands of one removal (for a tag and for ten times as many
//! entries) and of one namespace-wide invalidation (for the namespace and
//! ten times as many entries), an expired entry as a fail-safe fallback, a
//! removal made while Redis is down (replayed, nothing comes back), and the
//! cost of an L1 hit of a tagged entry against an untagged one. Starts its
//! own (append-only) `redis-server` unless `--redis-url` is given (then the
//! outage is skipped).

use resilient_cache_testkit as common;

use common::cli::{self, Args};
use common::invalidation::{run, InvalidationParams};

fn main() {
    let mut args = Args::new(
        "invalidation [--json PATH] [--redis-url URL] [--entries N] [--tags N] [--rounds N] [--hit-reads N]",
    );
    let mut p = InvalidationParams::default();
    let mut json = None;
    while let Some(flag) = args.next_flag() {
        match flag.as_str() {
            "--json" => json = Some(args.value(&flag)),
            "--redis-url" => p.redis_url = Some(args.value(&flag)),
            "--entries" => p.entries = args.num(&flag).max(10),
            "--tags" => p.tags = args.num(&flag).max(3),
            "--rounds" => p.rounds = args.num(&flag).max(1),
            "--hit-reads" => p.hit_reads = args.num(&flag).max(1000),
            other => args.fail(&format!("unknown option {other}")),
        }
    }
    let report = cli::run(run(p));
    cli::write_json(&args, json.as_deref(), &report);
    println!(
        "invalidation: {} entries over {} tags; propagation p50 {} us, p99 {} us; stale reads {}; \
         remove_by_tag {} L2 commands ({} for 10x the entries); later instance sees {} removed; \
         resurrected after an outage {}{}; expired served by fail-safe: {}; invalidate_all {} L2 commands \
         ({} for 10x); L1 hit tagged/untagged {:.2}",
        report.entries,
        report.tags,
        report.propagation_p50_us,
        report.propagation_p99_us,
        report.stale_reads_after_propagation,
        report.remove_by_tag_l2_commands,
        report.remove_by_tag_l2_commands_10x,
        report.new_instance_sees_removed,
        report.outage_removed_then_resurrected,
        if report.outage_checked {
            ""
        } else {
            " (not checked: external server)"
        },
        report.expired_served_by_fail_safe,
        report.clear_all_l2_commands,
        report.clear_all_l2_commands_10x,
        report.l1_hit_tagged_vs_untagged,
    );
}
