//! The batch harness: what `get_many`, `set_many` and `get_or_load_many`
//! cost L2 (commands and round trips, counted, not inferred), how much
//! faster a batch read is than the same keys read one by one (a ratio of two
//! runs in this process), how often the loader runs for cold and for
//! overlapping batches, the same on a Redis Cluster, and whether adaptive
//! entries and not-modified refreshes do what they say. Run by `cargo run
//! --release --example batch` and, small, by `tests/batch_harness.rs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use resilient_cache::{Cache, CacheFactoryConfig, CacheOptions, CacheService, LoadContext, Loaded};
use serde::{Deserialize, Serialize};

use super::topology::RedisCluster;
use super::{config_for, server_or_url};

#[derive(Debug, Clone)]
pub struct BatchParams {
    pub redis_url: Option<String>,
    pub batch_size: usize,
    /// Rounds of each read shape when comparing batch and single reads.
    pub rounds: usize,
    /// Whether to start a Redis Cluster for the cluster figures.
    pub cluster: bool,
}

impl Default for BatchParams {
    fn default() -> Self {
        Self {
            redis_url: None,
            batch_size: 100,
            rounds: 300,
            cluster: true,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct BatchReport {
    pub batch_size: usize,
    /// Commands L2 ran for one `get_many` of `batch_size` keys, none in L1.
    pub l2_commands_per_get_many: u64,
    /// Keys per second of `get_many` from L2 over keys per second of as many
    /// sequential `get`s from L2 (same run, interleaved rounds).
    pub get_many_l2_vs_single_gets_ops: f64,
    /// Loader calls for one cold `get_or_load_many` of `batch_size` keys.
    pub get_or_load_many_loader_calls_cold: u64,
    /// Loader calls when two cold batches sharing half their keys start together.
    pub get_or_load_many_overlap_loader_calls: u64,
    /// Keys the loader was asked for more than once in that run.
    pub get_or_load_many_overlap_keys_loaded_twice: u64,
    /// Round trips of one `set_many` of `batch_size` keys (the write itself).
    pub set_many_l2_round_trips: u64,
    /// Backplane messages announcing that `set_many`.
    pub set_many_backplane_messages: u64,
    /// Round trips of one `get_many` of `batch_size` keys on a 3-primary
    /// cluster (0 when the cluster part was not run).
    pub cluster_get_many_round_trips: u64,
    pub cluster_primaries: u64,
    /// A loader's per-entry TTLs (a not-found for 10 s, a found for the
    /// cache's hour) and "do not cache" are what L2 holds.
    pub adaptive_ttl_honoured: bool,
    /// A loader answering "not modified" made the stale value fresh again,
    /// on this instance and for another one, without building it again.
    pub not_modified_refreshed: bool,
}

fn options(prefix: &str) -> CacheOptions {
    CacheOptions::new(prefix)
        .l2_ttl(Duration::from_secs(3600))
        .l1_maxsize(100_000)
        .serializer("json")
}

/// A value of about 100 bytes once encoded.
fn value(i: usize) -> String {
    format!("{i:0>96}")
}

async fn service(config: &CacheFactoryConfig) -> CacheService {
    CacheService::new(config.clone()).await.unwrap()
}

/// `calls` of each command on the server at `url`.
fn command_calls(url: &str) -> BTreeMap<String, u64> {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let info: String = redis::cmd("INFO").arg("commandstats").query(&mut conn).unwrap();
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_string(), calls.parse().ok()?))
        })
        .collect()
}

/// Commands run between two `command_calls`, leaving out the harness's own
/// `INFO`, the backplane's `PUBLISH`, and what runs on timers
/// ([`from_timers`](super::from_timers)).
fn commands_between(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> u64 {
    after
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "info" | "publish") && !super::from_timers(name))
        .map(|(name, n)| n - before.get(name).copied().unwrap_or(0))
        .sum()
}

pub async fn run(p: BatchParams) -> BatchReport {
    let (_server, url) = server_or_url(p.redis_url.as_deref());
    let config = config_for(&url);
    let keys: Vec<String> = (0..p.batch_size).map(|i| format!("item:{i}")).collect();
    let writer = service(&config).await;
    let w = writer.create_cache::<String>(options("batch")).unwrap();
    w.set_many(keys.iter().enumerate().map(|(i, k)| (k.clone(), value(i))))
        .await;
    // A reader without L1: every read goes to L2.
    let reader = service(&config).await;
    let r = reader
        .create_cache::<String>(options("batch").l1_enabled(false))
        .unwrap();
    assert!(
        r.get_many(&keys).await.iter().all(Option::is_some),
        "the batch is in L2"
    );

    let before = command_calls(&url);
    let _ = r.get_many(&keys).await;
    let l2_commands_per_get_many = commands_between(&before, &command_calls(&url));

    let ratio = many_vs_single(&r, &keys, p.rounds).await;
    let (cold, overlap, twice) = loader_calls(&config, p.batch_size).await;
    let (set_trips, set_messages) = set_many_costs(&config, &keys).await;
    let (cluster_trips, primaries) = if p.cluster {
        cluster_get_many(p.batch_size).await
    } else {
        (0, 0)
    };
    BatchReport {
        batch_size: p.batch_size,
        l2_commands_per_get_many,
        get_many_l2_vs_single_gets_ops: ratio,
        get_or_load_many_loader_calls_cold: cold,
        get_or_load_many_overlap_loader_calls: overlap,
        get_or_load_many_overlap_keys_loaded_twice: twice,
        set_many_l2_round_trips: set_trips,
        set_many_backplane_messages: set_messages,
        cluster_get_many_round_trips: cluster_trips,
        cluster_primaries: primaries,
        adaptive_ttl_honoured: adaptive(&config, &url).await,
        not_modified_refreshed: not_modified(&config).await,
    }
}

/// Keys per second of `get_many` over keys per second of single `get`s,
/// rounds interleaved so that both see the same machine.
async fn many_vs_single(r: &Cache<String>, keys: &[String], rounds: usize) -> f64 {
    let (mut batch, mut single) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let t = Instant::now();
        let got = r.get_many(keys).await;
        batch += t.elapsed();
        assert_eq!(got.len(), keys.len());
        let t = Instant::now();
        for k in keys {
            assert!(r.get(k).await.is_some());
        }
        single += t.elapsed();
    }
    single.as_secs_f64() / batch.as_secs_f64().max(1e-9)
}

/// Loader calls: one cold batch; two overlapping cold batches started
/// together (and how many keys the loader saw twice).
async fn loader_calls(config: &CacheFactoryConfig, n: usize) -> (u64, u64, u64) {
    let s = service(config).await;
    let calls = Arc::new(AtomicU64::new(0));
    let seen: Arc<Mutex<HashMap<String, u64>>> = Default::default();
    let loader = |calls: Arc<AtomicU64>, seen: Arc<Mutex<HashMap<String, u64>>>| {
        move |keys: Vec<String>| async move {
            calls.fetch_add(1, SeqCst);
            {
                let mut seen = seen.lock().unwrap();
                keys.iter().for_each(|k| *seen.entry(k.clone()).or_default() += 1);
            }
            // A database round trip.
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, std::io::Error>(
                keys.into_iter()
                    .map(|k| (k.clone(), format!("db:{k}")))
                    .collect::<Vec<_>>(),
            )
        }
    };
    let cold = s.create_cache::<String>(options("cold")).unwrap();
    let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let got = cold
        .get_or_load_many(&keys, loader(calls.clone(), seen.clone()))
        .await
        .unwrap();
    assert!(got.iter().all(Option::is_some));
    let cold_calls = calls.swap(0, SeqCst);
    seen.lock().unwrap().clear();

    let overlap = s.create_cache::<String>(options("overlap")).unwrap();
    let first: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let second: Vec<String> = (n / 2..n + n / 2).map(|i| format!("k{i}")).collect();
    let (a, b) = tokio::join!(
        overlap.get_or_load_many(&first, loader(calls.clone(), seen.clone())),
        overlap.get_or_load_many(&second, loader(calls.clone(), seen.clone())),
    );
    assert!(a.unwrap().iter().chain(b.unwrap().iter()).all(Option::is_some));
    let twice = seen.lock().unwrap().values().filter(|&&n| n > 1).count() as u64;
    (cold_calls, calls.load(SeqCst), twice)
}

/// Round trips of one `set_many` (backplane off, so that only the write
/// counts), and backplane messages for one `set_many` with it on, for an
/// instance that wants per-key messages (the backplane without tracking:
/// with tracking, writes are announced only while such an instance exists).
async fn set_many_costs(config: &CacheFactoryConfig, keys: &[String]) -> (u64, u64) {
    let s = service(config).await;
    let quiet = s
        .create_cache::<String>(options("quiet").backplane(false))
        .unwrap();
    let conn = s.factory().connection();
    // The first call of a cache reads its markers, and its first moments
    // end with a check of what L1 took in: both out of the count.
    quiet.set("warm", value(0)).await;
    let settled = super::eventually(Duration::from_secs(10), async || {
        quiet.tracking_stats().is_some_and(|t| t.connected)
    })
    .await;
    assert!(settled, "tracking set up and the first moments checked");
    let before = conn.round_trips();
    quiet
        .set_many(keys.iter().enumerate().map(|(i, k)| (k.as_str(), value(i))))
        .await;
    let trips = conn.round_trips() - before;

    let loud = s
        .create_cache::<String>(options("loud").invalidation(resilient_cache::InvalidationSources::Backplane))
        .unwrap();
    let asked = super::eventually(Duration::from_secs(10), async || {
        loud.backplane_stats().is_some_and(|b| b.connected)
    })
    .await;
    assert!(asked, "per-key messages asked for");
    loud.set("warm", value(0)).await;
    let sent = || async { loud.get_stats().await.backplane.map_or(0, |b| b.messages_sent) };
    let before = sent().await;
    loud.set_many(keys.iter().enumerate().map(|(i, k)| (k.as_str(), value(i))))
        .await;
    (trips, sent().await - before)
}

/// Round trips of one `get_many` on a fresh 3-primary cluster, and its primaries.
async fn cluster_get_many(n: usize) -> (u64, u64) {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start).await.unwrap();
    let config = cluster.config();
    let w = service(&config).await;
    let w = w.create_cache::<String>(options("cluster")).unwrap();
    let keys: Vec<String> = (0..n).map(|i| format!("item:{i}")).collect();
    w.set_many(keys.iter().enumerate().map(|(i, k)| (k.clone(), value(i))))
        .await;
    let s = service(&config).await;
    let r = s
        .create_cache::<String>(options("cluster").l1_enabled(false))
        .unwrap();
    // The first batch reads the slot table.
    let _ = r.get_many(&keys[..1]).await;
    let conn = s.factory().connection();
    let before = conn.round_trips();
    let got = r.get_many(&keys).await;
    let trips = conn.round_trips() - before;
    assert!(got.iter().all(Option::is_some), "every key read on the cluster");
    let primaries = cluster.primaries().len() as u64;
    drop(cluster);
    (trips, primaries)
}

/// Per-entry TTLs and "do not cache" from a loader reach L2 as asked.
async fn adaptive(config: &CacheFactoryConfig, url: &str) -> bool {
    let s = service(config).await;
    let c = s.create_cache::<Option<String>>(options("adaptive")).unwrap();
    let got = c
        .get_or_load_many(["found", "missing", "private"], |keys: Vec<String>| async move {
            Ok::<_, std::io::Error>(
                keys.into_iter()
                    .map(|k| {
                        let entry = match k.as_str() {
                            "found" => Loaded::new(Some("product".to_string())),
                            "missing" => Loaded::new(None).ttl(Duration::from_secs(10)),
                            _ => Loaded::new(Some("per-user".to_string())).do_not_cache(),
                        };
                        (k, entry)
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .await
        .unwrap();
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let mut pttl = |k: &str| -> i64 {
        redis::cmd("PTTL")
            .arg(format!("adaptive:{k}"))
            .query(&mut conn)
            .unwrap()
    };
    let (found, missing, private) = (pttl("found"), pttl("missing"), pttl("private"));
    got.iter().all(Option::is_some)
        && found > 3_000_000
        && (1..=10_000).contains(&missing)
        && private == -2
        && !c.is_on_cache("private").await
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Page {
    etag: String,
    body: String,
}

/// A stale entry refreshed by "not modified" is fresh again here and for
/// another instance, and was built once.
async fn not_modified(config: &CacheFactoryConfig) -> bool {
    let o = options("conditional").fail_safe_max_duration(Duration::from_secs(600));
    let s = service(config).await;
    let c = s.create_cache::<Page>(o.clone()).unwrap();
    let built = Arc::new(AtomicU64::new(0));
    let fetch = |built: Arc<AtomicU64>| {
        move |ctx: LoadContext<Page>| async move {
            if ctx.stale().is_some_and(|p| p.etag == "v1") {
                return Ok::<_, std::io::Error>(Loaded::not_modified());
            }
            built.fetch_add(1, SeqCst);
            Ok(Loaded::new(Page {
                etag: "v1".into(),
                body: "x".repeat(90),
            }))
        }
    };
    let opts = c.load_defaults().clone();
    c.get_or_load_entry("page", &opts, fetch(built.clone()))
        .await
        .unwrap();
    if !c.expire("page").await || c.get("page").await.is_some() {
        return false;
    }
    let again = c
        .get_or_load_entry("page", &opts, fetch(built.clone()))
        .await
        .unwrap();
    let other = service(config).await;
    let other = other.create_cache::<Page>(o).unwrap();
    again.etag == "v1"
        && built.load(SeqCst) == 1
        && c.get("page").await.is_some()
        && other.get("page").await.is_some_and(|p| p.etag == "v1")
}
