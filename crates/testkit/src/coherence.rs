//! The coherence harness: instance A updates keys while instance B reads them;
//! measures how long B's L1 keeps the old value, counts stale reads after that,
//! and checks that B's L1 is cleared when its subscriber reconnects. Run by
//! `cargo run --release --example coherence` and, small, by `tests/coherence.rs`.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use resilient_cache::{Cache, CacheFactoryConfig, CacheOptions, CacheService};
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
    pub messages_received_by_b: u64,
}

async fn service(config: &CacheFactoryConfig) -> Cache<u64> {
    let s = CacheService::new(config.clone()).await.unwrap();
    let c = s
        .create_cache(
            CacheOptions::new("coherence")
                .l2_ttl(Duration::from_secs(600))
                .l1_ttl(Duration::from_secs(600)), // only the backplane makes B forget
        )
        .unwrap();
    // The cache keeps the service's connection alive; the subscriber lives with the service.
    std::mem::forget(s);
    c
}

pub async fn run(p: CoherenceParams) -> CoherenceReport {
    let (mut server, url) = super::server_or_url(p.redis_url.as_deref());
    let mut config = super::config_for(&url);
    config.redis.socket_timeout = Duration::from_millis(500);
    config.circuit_breaker.timeout = Duration::from_secs(1);
    let a = service(&config).await;
    let b = service(&config).await;
    for c in [&a, &b] {
        let up = eventually(Duration::from_secs(10), async || {
            c.get_stats().await.backplane.is_some_and(|s| s.connected)
        })
        .await;
        assert!(up, "backplane subscriber did not connect");
    }

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut stale = 0;
    let (mut reconnect_checked, mut reconnect_l1_cleared) = (false, false);
    for u in 1..=p.updates {
        if u == p.updates / 2 {
            if let Some(server) = server.as_mut() {
                reconnect_checked = true;
                // B holds keys in L1; a restart may lose messages: B must clear its L1.
                let before = b.get_stats().await.backplane.unwrap().reconnect_clears;
                assert!(b.get_stats().await.l1.unwrap().size > 0);
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
                    a.breaker_state() == resilient_cache::CircuitState::Closed
                        && b.get("warm").await.is_some()
                        && a.get_stats().await.backplane.unwrap().connected
                })
                .await;
            }
        }
        let key = format!("k{}", u % p.keys);
        b.get(&key).await; // B's L1 now holds the current value (or nothing yet)
        a.set(&key, u).await;
        let t0 = Instant::now();
        // Until B serves the new value; an update not seen within 5 s is
        // recorded as a 5 s propagation (a bounded wait, not a check on speed).
        let seen = async {
            while b.get(&key).await.as_deref() != Some(&u) {
                tokio::task::yield_now().await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), seen).await;
        hist.saturating_record((t0.elapsed().as_micros() as u64).max(1));
        for _ in 0..3 {
            if b.get(&key).await.as_deref() != Some(&u) {
                stale += 1;
            }
        }
    }
    CoherenceReport {
        instances: 2,
        updates: p.updates,
        propagation_p50_us: hist.value_at_quantile(0.5),
        propagation_p99_us: hist.value_at_quantile(0.99),
        propagation_max_us: hist.max(),
        stale_reads_after_propagation: stale,
        reconnect_l1_cleared,
        reconnect_checked,
        messages_received_by_b: b.get_stats().await.backplane.unwrap().messages_received,
    }
}
