//! The stampede harness: many callers on one cold key, the same across two
//! instances with the distributed lock, a failing loader with a stale value
//! at hand, and a hot key read across its TTL with eager refresh. Run by
//! `cargo run --release --example stampede` and, small, by `tests/stampede.rs`.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use resilient_cache::{Cache, CacheFactoryConfig, CacheOptions, CacheService, LoadOptions};
use serde::Serialize;

use super::eventually;

#[derive(Debug, Clone)]
pub struct StampedeParams {
    pub redis_url: Option<String>,
    pub callers: u64,
    pub loader_ms: u64,
}

impl Default for StampedeParams {
    fn default() -> Self {
        Self {
            redis_url: None,
            callers: 1000,
            loader_ms: 50,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct StampedeReport {
    pub concurrent_callers: u64,
    pub loader_ms: u64,
    pub loader_calls: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub instances: u32,
    pub distributed_loader_calls: u64,
    pub fail_safe_served_stale: bool,
    pub eager_refresh_hidden_expiry: bool,
    /// Eager refresh phase: reads, background refreshes, and reads that waited for a load.
    pub eager_reads: u64,
    pub eager_refreshes: u64,
    pub eager_reads_that_waited: u64,
}

#[derive(Debug)]
struct DbDown;

/// A loader that counts its calls and answers after `ms`.
fn loader(
    calls: &Arc<AtomicU64>,
    ms: u64,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, DbDown>> + Send>>
       + Send
       + 'static {
    let calls = calls.clone();
    move || {
        Box::pin(async move {
            let n = calls.fetch_add(1, SeqCst);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(format!("value-{n}"))
        })
    }
}

async fn cache(config: &CacheFactoryConfig, options: CacheOptions) -> Cache<String> {
    let s = CacheService::new(config.clone()).await.unwrap();
    let c = s.create_cache(options).unwrap();
    // The cache keeps the connection alive; the service's subscriber lives with it.
    std::mem::forget(s);
    c
}

/// `callers` concurrent `get_or_load` calls spread over `caches`; the latency of each.
async fn storm(
    caches: &[Cache<String>],
    key: &str,
    callers: u64,
    calls: &Arc<AtomicU64>,
    ms: u64,
) -> Vec<Duration> {
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let c = caches[i as usize % caches.len()].clone();
            let (key, load) = (key.to_string(), loader(calls, ms));
            tokio::spawn(async move {
                let t0 = Instant::now();
                c.get_or_load(&key, load).await.expect("loader succeeds");
                t0.elapsed()
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

pub async fn run(p: StampedeParams) -> StampedeReport {
    let (_server, url) = super::server_or_url(p.redis_url.as_deref());
    let config = super::config_for(&url);
    let run_id = std::process::id();
    let ttl = Duration::from_secs(600);

    // 1. One instance, one cold key.
    let single = cache(
        &config,
        CacheOptions::new(format!("stampede{run_id}")).l2_ttl(ttl),
    )
    .await;
    single.clear().await;
    let calls = Arc::new(AtomicU64::new(0));
    let latencies = storm(
        std::slice::from_ref(&single),
        "cold",
        p.callers,
        &calls,
        p.loader_ms,
    )
    .await;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap();
    for l in &latencies {
        hist.saturating_record((l.as_micros() as u64).max(1));
    }
    let loader_calls = calls.load(SeqCst);

    // 2. Two instances, the distributed lock.
    let dist_opts = CacheOptions::new(format!("stampede-dist{run_id}"))
        .l2_ttl(ttl)
        .load(LoadOptions::new().distributed_lock(true));
    let pair = [
        cache(&config, dist_opts.clone()).await,
        cache(&config, dist_opts).await,
    ];
    pair[0].clear().await;
    let dist_calls = Arc::new(AtomicU64::new(0));
    storm(&pair, "cold", p.callers, &dist_calls, p.loader_ms).await;

    // 3. A failing loader with a stale value at hand.
    let fs = cache(
        &config,
        CacheOptions::new(format!("stampede-fs{run_id}"))
            .l2_ttl(Duration::from_secs(1))
            .l1_ttl(Duration::from_secs(1))
            .fail_safe_max_duration(Duration::from_secs(60)),
    )
    .await;
    fs.clear().await;
    let fs_calls = Arc::new(AtomicU64::new(0));
    let first = fs.get_or_load("k", loader(&fs_calls, 0)).await.unwrap();
    eventually(Duration::from_secs(10), async || fs.get("k").await.is_none()).await;
    let failed = fs.get_or_load("k", || async { Err::<String, _>(DbDown) }).await;
    let fail_safe_served_stale = failed.is_ok_and(|v| v == first) && fs.loader_stats().stale_served == 1;

    // 4. A hot key read continuously for three TTLs, eager refresh on.
    let eager = cache(
        &config,
        CacheOptions::new(format!("stampede-eager{run_id}"))
            .l2_ttl(Duration::from_secs(1))
            .l1_ttl(Duration::from_secs(1))
            .load(LoadOptions::new().eager_refresh(0.5)),
    )
    .await;
    eager.clear().await;
    let eager_calls = Arc::new(AtomicU64::new(0));
    eager
        .get_or_load("hot", loader(&eager_calls, p.loader_ms))
        .await
        .unwrap();
    let warm = eager.loader_stats();
    let reads = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(3);
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let (c, calls, reads) = (eager.clone(), eager_calls.clone(), reads.clone());
            let ms = p.loader_ms;
            tokio::spawn(async move {
                while Instant::now() < stop {
                    c.get_or_load("hot", loader(&calls, ms)).await.unwrap();
                    reads.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect();
    for r in readers {
        r.await.unwrap();
    }
    let after = eager.loader_stats();
    let waited = after.waits - warm.waits;
    let refreshes = after.eager_refreshes - warm.eager_refreshes;

    StampedeReport {
        concurrent_callers: p.callers,
        loader_ms: p.loader_ms,
        loader_calls,
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        instances: 2,
        distributed_loader_calls: dist_calls.load(SeqCst),
        fail_safe_served_stale,
        eager_refresh_hidden_expiry: waited == 0 && refreshes >= 2,
        eager_reads: reads.load(SeqCst),
        eager_refreshes: refreshes,
        eager_reads_that_waited: waited,
    }
}
