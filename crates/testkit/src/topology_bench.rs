//! The topology harness: `l2_hit` throughput at concurrency 64 on one
//! instance and on a 3-primary cluster, then the failover gap — how long
//! callers were served from L1 only — after a cluster primary is killed, and
//! after a Sentinel-managed primary is killed. Run by
//! `cargo run --release -p resilient-cache --example topology` and, small,
//! by `tests/topology_harness.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use resilient_cache::{Cache, CacheFactoryConfig, CacheOptions, CacheService};
use serde::Serialize;

use super::topology::{RedisCluster, RedisSentinels};
use super::RedisServer;

#[derive(Debug, Clone)]
pub struct TopologyParams {
    /// Seconds of `l2_hit` load on each deployment.
    pub seconds: f64,
    pub concurrency: usize,
    pub keys: usize,
}

impl Default for TopologyParams {
    fn default() -> Self {
        Self {
            seconds: 5.0,
            concurrency: 64,
            keys: 1000,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TopologyReport {
    pub concurrency: usize,
    pub single_l2_hit_ops_per_sec: f64,
    pub cluster_l2_hit_ops_per_sec: f64,
    pub cluster_vs_single: f64,
    /// `None`: L2 did not take writes again within 60 s.
    pub cluster_failover_gap_ms: Option<u64>,
    pub sentinel_failover_gap_ms: Option<u64>,
    /// Calls that did not return within 10 s during the failovers (a hang guard).
    pub hung_calls: u64,
    pub note: &'static str,
}

async fn cache(config: CacheFactoryConfig, prefix: &str, l1: bool) -> Cache<String> {
    let mut config = config;
    config.circuit_breaker.timeout = Duration::from_secs(1);
    let s = CacheService::new(config).await.unwrap();
    let c = s
        .create_cache(
            CacheOptions::new(prefix)
                .l2_ttl(Duration::from_secs(600))
                .l1_enabled(l1),
        )
        .unwrap();
    std::mem::forget(s);
    c
}

async fn l2_hit(config: CacheFactoryConfig, p: &TopologyParams) -> f64 {
    let c = cache(config, "topo", false).await;
    for i in 0..p.keys {
        c.set(&format!("k{i}"), format!("value-{i}")).await;
    }
    let ops = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs_f64(p.seconds);
    let tasks: Vec<_> = (0..p.concurrency)
        .map(|t| {
            let (c, ops, keys) = (c.clone(), ops.clone(), p.keys);
            tokio::spawn(async move {
                let mut i = t;
                while Instant::now() < stop {
                    assert!(c.get(&format!("k{}", i % keys)).await.is_some(), "an L2 hit");
                    ops.fetch_add(1, SeqCst);
                    i += 7;
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    ops.load(SeqCst) as f64 / t0.elapsed().as_secs_f64()
}

/// Callers keep reading and writing while `kill` kills the primary holding
/// the slot of `{p}`, then `wait` waits for the failover; returns (ms from the
/// kill until a write of a fresh key in that slot reaches L2 again, calls
/// that hung). Until then callers are served from L1 only.
async fn failover_gap<S: Send + 'static>(
    config: CacheFactoryConfig,
    mut deployment: S,
    kill: fn(&mut S),
    wait: fn(&mut S),
) -> (Option<u64>, u64, S) {
    let c = cache(config.clone(), "gap", true).await;
    let l2_only = cache(config, "gap", false).await;
    for i in 0..100 {
        c.set(&format!("k{i}"), "v".into()).await;
    }
    // With L1 off, `set_if_not_exist` of a fresh key is true only if L2 stored it.
    let mut n = 0;
    let mut l2_write = async || {
        n += 1;
        l2_only
            .set_if_not_exist(&format!("{{p}}{n}"), "probe".into(), None)
            .await
    };
    assert!(l2_write().await, "L2 takes writes before the kill");
    let stop = Arc::new(AtomicBool::new(false));
    let hung = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let (c, stop, hung) = (c.clone(), stop.clone(), hung.clone());
            tokio::spawn(async move {
                while !stop.load(SeqCst) {
                    for i in 0..100 {
                        let k = format!("k{i}");
                        if tokio::time::timeout(Duration::from_secs(10), c.get(&k))
                            .await
                            .is_err()
                        {
                            hung.fetch_add(1, SeqCst);
                        }
                        if tokio::time::timeout(Duration::from_secs(10), c.set(&k, "v".into()))
                            .await
                            .is_err()
                        {
                            hung.fetch_add(1, SeqCst);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect();
    kill(&mut deployment);
    let killed = Instant::now();
    let waiting = tokio::task::spawn_blocking(move || {
        wait(&mut deployment);
        deployment
    });
    // Polls until L2 takes a write again (waiting 60 s at most: `None` then).
    let back = async {
        while !l2_write().await {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        killed.elapsed().as_millis() as u64
    };
    let gap = tokio::time::timeout(Duration::from_secs(60), back).await.ok();
    let deployment = waiting.await.unwrap();
    stop.store(true, SeqCst);
    for t in callers {
        t.await.unwrap();
    }
    (gap, hung.load(SeqCst), deployment)
}

pub async fn run(p: TopologyParams) -> TopologyReport {
    let single = RedisServer::start();
    let single_ops = l2_hit(single.config(), &p).await;
    drop(single);

    let cluster = RedisCluster::start();
    let cluster_ops = l2_hit(cluster.config(), &p).await;
    let (cluster_gap, hung_c, _cluster) = failover_gap(
        cluster.config(),
        cluster,
        |c| {
            let victim = c.owner_of("gap:{p}1").expect("probe stored");
            c.nodes[victim].kill();
        },
        |c| c.wait_failover(),
    )
    .await;

    let sentinels = RedisSentinels::start();
    let (sentinel_gap, hung_s, _sentinels) = failover_gap(
        sentinels.config(),
        sentinels,
        |s| s.primary.kill(),
        |s| s.wait_failover(),
    )
    .await;

    TopologyReport {
        concurrency: p.concurrency,
        single_l2_hit_ops_per_sec: single_ops.round(),
        cluster_l2_hit_ops_per_sec: cluster_ops.round(),
        cluster_vs_single: (cluster_ops / single_ops * 100.0).round() / 100.0,
        cluster_failover_gap_ms: cluster_gap,
        sentinel_failover_gap_ms: sentinel_gap,
        hung_calls: hung_c + hung_s,
        note: "all processes share this machine's cores: a cluster cannot show scaling here, only its routing cost",
    }
}
