//! The coherence harness: instance A updates keys while instance B reads them;
//! measures how long B's L1 keeps the old value, counts stale reads after that,
//! and checks that B's L1 is cleared when its subscriber reconnects. Then a
//! foreign writer (a plain Redis client, not this crate) sets, deletes and
//! expires keys both instances hold in L1; tracking must evict them. Run by
//! `cargo run --release --example coherence` and, small, by `tests/coherence.rs`.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use resilient_cache::{Cache, CacheFactoryConfig, CacheOptions, CacheService, InvalidationSources};
use serde::Serialize;

use super::eventually;

#[derive(Debug, Clone)]
pub struct CoherenceParams {
    pub redis_url: Option<String>,
    pub updates: u64,
    pub keys: u64,
}

impl Default for CoherenceParams {
    fn default() -> Self {
        Self {
            redis_url: None,
            updates: 2000,
            keys: 100,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CoherenceReport {
    pub instances: u32,
    pub updates: u64,
    pub propagation_p50_us: u64,
    pub propagation_p99_us: u64,
    pub propagation_max_us: u64,
    pub stale_reads_after_propagation: u64,
    pub reconnect_l1_cleared: bool,
    /// False with `--redis-url`: the harness cannot restart a server it did not start.
    pub reconnect_checked: bool,
    /// Per-key messages A sent per update it made, both sources on (the
    /// default): none while every instance's tracking covers the namespace.
    pub default_messages_per_write: f64,
    /// Updates by A seen by B with the backplane alone (no tracking): B asks
    /// for per-key messages, A sends them.
    pub backplane_only_propagation_p50_us: u64,
    pub backplane_only_propagation_p99_us: u64,
    pub backplane_only_stale_reads_after_propagation: u64,
    /// Backplane messages B received in that run.
    pub messages_received_by_b: u64,
    /// Backplane messages A sent per update it made in that run.
    pub backplane_messages_per_write: f64,
    /// Updates by A seen by B with tracking alone (no backplane): what the
    /// backplane adds for this crate's own instances.
    pub tracking_only_propagation_p50_us: u64,
    pub tracking_only_propagation_p99_us: u64,
    pub tracking_only_stale_reads_after_propagation: u64,
    /// Changes made by a plain Redis client (`SET`, `DEL`, `PEXPIREAT` a
    /// deadline already past, in turn)
    /// to keys A and B both hold in L1.
    pub foreign_updates: u64,
    pub foreign_stale_reads_after_propagation: u64,
    /// From the foreign write returning until both A and B answer the new
    /// state (the new value, or nothing).
    pub foreign_propagation_p50_us: u64,
    pub foreign_propagation_p99_us: u64,
    /// L1 hit ratio of reads right after the reader's own writes, tracking
    /// on and off (same workload, same run).
    pub own_write_l1_hit_ratio_tracking: f64,
    pub own_write_l1_hit_ratio_off: f64,
    /// The invalidation connections killed (`CLIENT KILL`): B's L1 cleared,
    /// the clear counted, tracking back.
    pub tracking_loss_l1_cleared: bool,
}

async fn service(config: &CacheFactoryConfig, sources: InvalidationSources, prefix: &str) -> Cache<u64> {
    let s = CacheService::new(config.clone()).await.unwrap();
    let c = s
        .create_cache(
            CacheOptions::new(prefix)
                .l2_ttl(Duration::from_secs(600))
                .l1_ttl(Duration::from_secs(600)) // only invalidation makes an instance forget
                .serializer("json")
                .invalidation(sources),
        )
        .unwrap();
    // The cache keeps the service's connection alive; the workers live with the service.
    std::mem::forget(s);
    let up = eventually(Duration::from_secs(10), async || {
        let s = c.get_stats().await;
        s.backplane.as_ref().is_none_or(|b| b.connected) && s.tracking.as_ref().is_none_or(|t| t.connected)
    })
    .await;
    assert!(up, "invalidation sources did not connect");
    c
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap()
}

/// Waits (at most 5 s: a bounded wait, not a check on speed) until every
/// reader answers `want` for `key`; returns the time it took.
async fn propagation(readers: &[&Cache<u64>], key: &str, want: Option<u64>, t0: Instant) -> u64 {
    let seen = async {
        for r in readers {
            while r.get(key).await.as_deref().copied() != want {
                tokio::task::yield_now().await;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), seen).await;
    (t0.elapsed().as_micros() as u64).max(1)
}

/// Reads after propagation that do not answer `want`.
async fn stale_reads(readers: &[&Cache<u64>], key: &str, want: Option<u64>) -> u64 {
    let mut stale = 0;
    for r in readers {
        for _ in 0..3 {
            if r.get(key).await.as_deref().copied() != want {
                stale += 1;
            }
        }
    }
    stale
}

/// A updates, B reads: the propagation histogram and the stale reads.
async fn updates(a: &Cache<u64>, b: &Cache<u64>, n: u64, keys: u64, first: u64) -> (Histogram<u64>, u64) {
    let mut hist = histogram();
    let mut stale = 0;
    for u in first..first + n {
        let key = format!("k{}", u % keys);
        b.get(&key).await; // B's L1 now holds the current value (or nothing yet)
        a.set(&key, u).await;
        let t0 = Instant::now();
        hist.saturating_record(propagation(&[b], &key, Some(u), t0).await);
        stale += stale_reads(&[b], &key, Some(u)).await;
    }
    (hist, stale)
}

pub async fn run(p: CoherenceParams) -> CoherenceReport {
    let (mut server, url) = super::server_or_url(p.redis_url.as_deref());
    let mut config = super::config_for(&url);
    config.redis.socket_timeout = Duration::from_millis(500);
    config.circuit_breaker.timeout = Duration::from_secs(1);
    let a = service(&config, InvalidationSources::Both, "coherence").await;
    let b = service(&config, InvalidationSources::Both, "coherence").await;

    let half = p.updates / 2;
    let (mut hist, mut stale) = updates(&a, &b, half, p.keys, 1).await;
    let (mut reconnect_checked, mut reconnect_l1_cleared) = (false, false);
    if let Some(server) = server.as_mut() {
        reconnect_checked = true;
        // B holds keys in L1; a restart may lose messages: B must clear its L1.
        // (Read again first: on a loaded machine a subscriber's keep-alive
        // may have timed out, and its reconnect cleared L1 already.)
        for k in 0..p.keys {
            b.get(&format!("k{k}")).await;
        }
        let before = b.get_stats().await.backplane.unwrap().reconnect_clears;
        let held = b.get_stats().await;
        assert!(held.l1.as_ref().unwrap().size > 0, "B's L1 is empty: {held:?}");
        server.kill();
        server.restart();
        reconnect_l1_cleared = eventually(Duration::from_secs(15), async || {
            b.get_stats().await.backplane.unwrap().reconnect_clears > before
        })
        .await
            && b.get_stats().await.l1.unwrap().size == 0;
        // Let both sides find the server again before measuring on.
        eventually(Duration::from_secs(15), async || {
            a.set("warm", 0).await;
            let (sa, sb) = (a.get_stats().await, b.get_stats().await);
            a.breaker_state() == resilient_cache::CircuitState::Closed
                && b.get("warm").await.is_some()
                && sa.backplane.unwrap().connected
                && sb.tracking.unwrap().connected
        })
        .await;
    }
    let sent_before = a.get_stats().await.backplane.unwrap().messages_sent;
    let (h2, s2) = updates(&a, &b, p.updates - half, p.keys, half + 1).await;
    hist.add(h2).unwrap();
    stale += s2;
    let sent = a.get_stats().await.backplane.unwrap().messages_sent - sent_before;
    let default_messages_per_write = sent as f64 / (p.updates - half).max(1) as f64;

    // The backplane alone between two instances of this crate.
    let ba = service(&config, InvalidationSources::Backplane, "coherence-bp").await;
    let bb = service(&config, InvalidationSources::Backplane, "coherence-bp").await;
    let sent_before = ba.get_stats().await.backplane.unwrap().messages_sent;
    let (bp_hist, bp_stale) = updates(&ba, &bb, p.updates / 2, p.keys, 1).await;
    let sent = ba.get_stats().await.backplane.unwrap().messages_sent - sent_before;
    let backplane_messages_per_write = sent as f64 / (p.updates / 2).max(1) as f64;
    let messages_received_by_b = bb.get_stats().await.backplane.unwrap().messages_received;

    // Tracking alone between two instances of this crate.
    let ta = service(&config, InvalidationSources::Tracking, "coherence-trk").await;
    let tb = service(&config, InvalidationSources::Tracking, "coherence-trk").await;
    let (track_hist, track_stale) = updates(&ta, &tb, p.updates / 2, p.keys, 1).await;

    // A foreign writer: a plain client, in turn SET, DEL, PEXPIREAT (past).
    let mut raw = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut foreign_hist = histogram();
    let mut foreign_stale = 0;
    let foreign_updates = p.updates / 2;
    for u in 0..foreign_updates {
        let key = format!("f{}", u % p.keys);
        a.set(&key, u).await;
        // Both hold it in L1 (B once A's write reached it) before the foreign write.
        propagation(&[&a, &b], &key, Some(u), Instant::now()).await;
        let redis_key = format!("coherence:{key}");
        let new = 1_000_000 + u;
        let want = match u % 3 {
            0 => {
                let _: () = redis::cmd("SET")
                    .arg(&redis_key)
                    .arg(new.to_string())
                    .query_async(&mut raw)
                    .await
                    .unwrap();
                Some(new)
            }
            1 => {
                let _: () = redis::cmd("DEL")
                    .arg(&redis_key)
                    .query_async(&mut raw)
                    .await
                    .unwrap();
                None
            }
            _ => {
                // Expired now. (A TTL that runs out later is announced when
                // Redis expires the key: on access, or by its expiry cycle.)
                let _: () = redis::cmd("PEXPIREAT")
                    .arg(&redis_key)
                    .arg(1)
                    .query_async(&mut raw)
                    .await
                    .unwrap();
                None
            }
        };
        let t0 = Instant::now();
        foreign_hist.saturating_record(propagation(&[&a, &b], &key, want, t0).await);
        foreign_stale += stale_reads(&[&a, &b], &key, want).await;
    }

    let own_write_l1_hit_ratio_tracking = own_write_hit_ratio(&a, p.keys).await;
    let off = service(&config, InvalidationSources::Backplane, "coherence-off").await;
    let own_write_l1_hit_ratio_off = own_write_hit_ratio(&off, p.keys).await;

    let tracking_loss_l1_cleared = tracking_loss(&b, &mut raw, p.keys).await;

    CoherenceReport {
        instances: 2,
        updates: p.updates,
        propagation_p50_us: hist.value_at_quantile(0.5),
        propagation_p99_us: hist.value_at_quantile(0.99),
        propagation_max_us: hist.max(),
        stale_reads_after_propagation: stale,
        reconnect_l1_cleared,
        reconnect_checked,
        default_messages_per_write,
        backplane_only_propagation_p50_us: bp_hist.value_at_quantile(0.5),
        backplane_only_propagation_p99_us: bp_hist.value_at_quantile(0.99),
        backplane_only_stale_reads_after_propagation: bp_stale,
        messages_received_by_b,
        backplane_messages_per_write,
        tracking_only_propagation_p50_us: track_hist.value_at_quantile(0.5),
        tracking_only_propagation_p99_us: track_hist.value_at_quantile(0.99),
        tracking_only_stale_reads_after_propagation: track_stale,
        foreign_updates,
        foreign_stale_reads_after_propagation: foreign_stale,
        foreign_propagation_p50_us: foreign_hist.value_at_quantile(0.5),
        foreign_propagation_p99_us: foreign_hist.value_at_quantile(0.99),
        own_write_l1_hit_ratio_tracking,
        own_write_l1_hit_ratio_off,
        tracking_loss_l1_cleared,
    }
}

/// Writes `keys` keys, lets any notification arrive, reads each back three
/// times: the share of those reads that L1 answered.
async fn own_write_hit_ratio(c: &Cache<u64>, keys: u64) -> f64 {
    let (mut hits, mut reads) = (0, 0);
    for round in 0..5 {
        for k in 0..keys {
            c.set(&format!("own{k}"), round).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = c.get_stats().await.l1.unwrap().hits;
        for k in 0..keys {
            for _ in 0..3 {
                assert_eq!(c.get(&format!("own{k}")).await.as_deref(), Some(&round));
            }
        }
        hits += c.get_stats().await.l1.unwrap().hits - before;
        reads += keys * 3;
    }
    hits as f64 / reads as f64
}

/// Kills every tracking invalidation connection (`CLIENT KILL ID`): `c`'s
/// L1 must be cleared, the clear counted, and tracking come back.
async fn tracking_loss(c: &Cache<u64>, raw: &mut redis::aio::MultiplexedConnection, keys: u64) -> bool {
    for k in 0..keys {
        c.set(&format!("loss{k}"), k).await;
    }
    let held = c.get_stats().await.l1.unwrap().size;
    let before = c.tracking_stats().unwrap().loss_clears;
    let list: String = redis::cmd("CLIENT").arg("LIST").query_async(raw).await.unwrap();
    let ids: Vec<String> = list
        .lines()
        .filter(|l| l.contains(" name=resilient-cache-tracking "))
        .filter_map(|l| {
            l.split(' ')
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_string)
        })
        .collect();
    for id in &ids {
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(raw)
            .await
            .unwrap();
    }
    let cleared = eventually(Duration::from_secs(15), async || {
        let t = c.tracking_stats().unwrap();
        t.loss_clears > before && t.connected
    })
    .await;
    held > 0 && !ids.is_empty() && cleared && c.get_stats().await.l1.unwrap().size == 0
}
