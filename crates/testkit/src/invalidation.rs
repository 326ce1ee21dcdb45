//! The invalidation harness: two services on one namespace, entries spread
//! over tags; measures how fast a tag's removal reaches the other instance,
//! what a removal costs in L2 (for a tag and for ten times as many entries),
//! what a namespace-wide invalidation costs, and checks that nothing removed
//! is served afterwards — on the other instance, on an instance started
//! later, after a removal made while Redis was down — and that an expired
//! entry is still a fail-safe fallback. Run by `cargo run --release
//! --example invalidation` and, small, by `tests/invalidation_harness.rs`.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use resilient_cache::{Cache, CacheEvent, CacheFactoryConfig, CacheOptions, CacheService, CircuitState};
use serde::Serialize;

use super::{eventually, RedisServer};

#[derive(Debug, Clone)]
pub struct InvalidationParams {
    pub redis_url: Option<String>,
    pub entries: u64,
    pub tags: u64,
    /// Tags removed one by one to measure propagation.
    pub rounds: u64,
    /// L1 reads per side when comparing tagged and untagged hits.
    pub hit_reads: u64,
}

impl Default for InvalidationParams {
    fn default() -> Self {
        Self {
            redis_url: None,
            entries: 10_000,
            tags: 100,
            rounds: 50,
            hit_reads: 2_000_000,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct InvalidationReport {
    pub entries: u64,
    pub tags: u64,
    /// Reads (on either instance) of entries of removed tags that returned a value after propagation.
    pub stale_reads_after_propagation: u64,
    pub propagation_p50_us: u64,
    pub propagation_p99_us: u64,
    /// Commands L2 ran for one `remove_by_tag` of a tag with entries/tags entries.
    pub remove_by_tag_l2_commands: u64,
    /// The same for a tag with ten times as many entries.
    pub remove_by_tag_l2_commands_10x: u64,
    /// Removed entries a service started after the removals could read.
    pub new_instance_sees_removed: u64,
    /// Entries of a tag removed while Redis was down that were readable after recovery.
    pub outage_removed_then_resurrected: u64,
    /// False with `--redis-url`: the harness cannot stop a server it did not start.
    pub outage_checked: bool,
    pub expired_served_by_fail_safe: bool,
    /// Commands L2 ran for one `invalidate_all` of the whole namespace.
    pub clear_all_l2_commands: u64,
    /// The same with ten times as many entries in the namespace.
    pub clear_all_l2_commands_10x: u64,
    /// Time of an L1 hit of a tagged entry over that of an untagged one
    /// (median of interleaved runs in this process).
    pub l1_hit_tagged_vs_untagged: f64,
}

const PREFIX: &str = "invalidation";

fn options() -> CacheOptions {
    CacheOptions::new(PREFIX)
        .l2_ttl(Duration::from_secs(600))
        .l1_ttl(Duration::from_secs(600)) // only an invalidation makes an instance forget
        .l1_maxsize(1_000_000)
        .fail_safe_max_duration(Duration::from_secs(600))
}

async fn service(config: &CacheFactoryConfig) -> Cache<String> {
    let s = CacheService::new(config.clone()).await.unwrap();
    let c = s.create_cache(options()).unwrap();
    // The cache keeps the service's connection alive; the subscriber lives with the service.
    std::mem::forget(s);
    let up = eventually(Duration::from_secs(10), async || {
        c.backplane_stats().is_some_and(|s| s.connected)
    })
    .await;
    assert!(up, "backplane subscriber did not connect");
    c
}

/// Commands the server ran since the last reset, without those sent on
/// timers ([`from_timers`](super::from_timers)) and the counting itself.
fn commands(url: &str) -> u64 {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut conn).unwrap();
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let calls: u64 = rest
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse()
                .ok()?;
            (!matches!(name, "info" | "config|resetstat") && !super::from_timers(name)).then_some(calls)
        })
        .sum()
}

fn reset_commands(url: &str) {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut conn).unwrap();
}

/// Lets the backplane publisher send the announcements just made (a task
/// sends them, gathering writes' for a millisecond), so that each is counted
/// with the operation that made it.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn key(i: u64) -> String {
    format!("e{i}")
}

fn tag_of(i: u64, tags: u64) -> String {
    format!("tag:{}", i % tags)
}

/// Commands one `remove_by_tag` costs, for a tag that `n` entries carry.
async fn removal_cost(a: &Cache<String>, url: &str, tag: &str, n: u64) -> u64 {
    for i in 0..n {
        a.set_with_tags(&format!("{tag}/{i}"), "v".into(), &[tag]).await;
    }
    settle().await;
    reset_commands(url);
    a.remove_by_tag(tag).await.unwrap();
    settle().await; // its announcement is sent by the publisher task
    commands(url)
}

async fn count_readable(c: &Cache<String>, keys: impl Iterator<Item = String>) -> u64 {
    let mut n = 0;
    for k in keys {
        n += c.get(&k).await.is_some() as u64;
    }
    n
}

pub async fn run(p: InvalidationParams) -> InvalidationReport {
    let (mut server, url) = match p.redis_url.as_deref() {
        Some(url) => (None, url.to_string()),
        None => {
            // Durable, so that entries survive the restart of the outage check.
            let s = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "everysec"]);
            let url = s.url();
            (Some(s), url)
        }
    };
    let mut config = super::config_for(&url);
    config.redis.socket_timeout = Duration::from_millis(500);
    config.circuit_breaker.threshold = 2;
    config.circuit_breaker.timeout = Duration::from_secs(1);
    let a = service(&config).await;
    let b = service(&config).await;
    let tags = p.tags.max(2);
    let per_tag = (p.entries / tags).max(1);
    for i in 0..p.entries {
        a.set_with_tags(&key(i), format!("v{i}"), &[&tag_of(i, tags)])
            .await;
    }
    for i in 0..p.entries {
        assert!(
            b.get(&key(i)).await.is_some(),
            "B reads every entry (into its L1)"
        );
    }

    // Propagation: from A's call to B having applied the marker (its event),
    // after which B must no longer serve the tag's entries. Waiting on the
    // event, not polling B, keeps the measuring loop off the CPU.
    let rounds = p.rounds.clamp(1, tags - 1);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut events = b.subscribe();
    let mut stale = 0;
    for t in 0..rounds {
        let tag = tag_of(t, tags);
        let start = Instant::now();
        a.remove_by_tag(&tag).await.unwrap();
        let applied = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(event) = events.recv().await {
                if matches!(event, CacheEvent::Marked { tag: Some(ref m), .. } if *m == tag) {
                    return;
                }
            }
        })
        .await;
        assert!(applied.is_ok(), "the removal of {tag} never reached B");
        hist.record(start.elapsed().as_micros().max(1) as u64).unwrap();
        stale += b.get(&key(t)).await.is_some() as u64;
    }
    drop(events);
    let removed = || (0..p.entries).filter(move |i| i % tags < rounds).map(key);
    for c in [&a, &b] {
        stale += count_readable(c, removed()).await;
    }
    let later = service(&config).await;
    let new_instance_sees_removed = count_readable(&later, removed()).await;
    let kept = count_readable(&later, (0..p.entries).filter(|i| i % tags >= rounds).map(key)).await;
    assert_eq!(
        kept,
        p.entries - p.entries / tags * rounds,
        "what was not removed is still read"
    );

    // Cost: one tag of `per_tag` entries, and one of ten times as many.
    let remove_by_tag_l2_commands = removal_cost(&a, &url, "cost", per_tag).await;
    let remove_by_tag_l2_commands_10x = removal_cost(&a, &url, "cost-10x", per_tag * 10).await;

    // Expired, then the loader fails: the old value is the fallback (on B).
    let expired_tag = tag_of(tags - 1, tags);
    let expired_key = key(tags - 1);
    a.expire_by_tag(&expired_tag).await.unwrap();
    let got = eventually(Duration::from_secs(5), async || {
        b.get(&expired_key).await.is_none()
    })
    .await;
    let fallback = b
        .get_or_load(&expired_key, || async {
            Err::<String, _>(std::io::Error::other("source down"))
        })
        .await;
    let expired_served_by_fail_safe = got && fallback.is_ok_and(|v| *v == format!("v{}", tags - 1));

    // A removal while Redis is down: applied locally, replayed, nothing back.
    let (outage_checked, outage_removed_then_resurrected) = match server.as_mut() {
        None => (false, 0),
        Some(server) => {
            let doomed = tag_of(tags - 2, tags);
            assert!(tags - 2 >= rounds, "the doomed tag was not removed before");
            let doomed_keys = || (0..p.entries).filter(move |i| i % tags == tags - 2).map(key);
            // Everything written is on disk (fsync every second) before the kill.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let clears = |c: &Cache<String>| c.backplane_stats().map_or(0, |s| s.reconnect_clears);
            let (a_clears, b_clears) = (clears(&a), clears(&b));
            server.kill();
            a.remove_by_tag(&doomed).await.unwrap();
            server.restart();
            let replayed = eventually(Duration::from_secs(20), async || {
                a.get("probe").await;
                a.breaker_state() == CircuitState::Closed && a.get_stats().await.recovery.markers_pending == 0
            })
            .await;
            assert!(replayed, "the marker was replayed");
            // Recovered: both subscribers are back, and have cleared their L1
            // (messages may have been missed) and reloaded the markers.
            let settled = eventually(Duration::from_secs(20), async || {
                clears(&a) > a_clears && clears(&b) > b_clears
            })
            .await;
            assert!(settled, "the subscribers reconnected");
            let after = service(&config).await;
            let mut back = 0;
            for c in [&a, &b, &after] {
                back += count_readable(c, doomed_keys()).await;
            }
            (true, back)
        }
    };

    // Namespace-wide invalidation: the same commands for N and 10 N entries.
    settle().await;
    reset_commands(&url);
    a.invalidate_all().await;
    settle().await;
    let clear_all_l2_commands = commands(&url);
    for i in 0..p.entries * 10 {
        a.set(&format!("big{i}"), "v".into()).await;
    }
    settle().await;
    reset_commands(&url);
    a.invalidate_all().await;
    settle().await;
    let clear_all_l2_commands_10x = commands(&url);

    let l1_hit_tagged_vs_untagged = hit_ratio(&a, p.hit_reads.max(1000)).await;
    InvalidationReport {
        entries: p.entries,
        tags,
        stale_reads_after_propagation: stale,
        propagation_p50_us: hist.value_at_quantile(0.5),
        propagation_p99_us: hist.value_at_quantile(0.99),
        remove_by_tag_l2_commands,
        remove_by_tag_l2_commands_10x,
        new_instance_sees_removed,
        outage_removed_then_resurrected,
        outage_checked,
        expired_served_by_fail_safe,
        clear_all_l2_commands,
        clear_all_l2_commands_10x,
        l1_hit_tagged_vs_untagged,
    }
}

/// Median, over interleaved runs, of (tagged L1 hit time / untagged L1 hit time).
async fn hit_ratio(c: &Cache<String>, reads: u64) -> f64 {
    let keys = 1000u64;
    for i in 0..keys {
        c.set(&format!("plain{i}"), "v".into()).await;
        c.set_with_tags(&format!("tagged{i}"), "v".into(), &["hit", "more"])
            .await;
    }
    let names = |p: &str| (0..keys).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    let (plain, tagged) = (names("plain"), names("tagged"));
    let time = async |ks: &[String]| {
        let start = Instant::now();
        for r in 0..reads / 10 {
            let v = c.get(&ks[(r % keys) as usize]).await;
            assert!(v.is_some(), "an L1 hit");
        }
        start.elapsed().as_nanos() as f64
    };
    let mut ratios = Vec::new();
    for _ in 0..10 {
        let u = time(&plain).await;
        let t = time(&tagged).await;
        ratios.push(t / u);
    }
    ratios.sort_by(f64::total_cmp);
    (ratios[4] + ratios[5]) / 2.0
}
