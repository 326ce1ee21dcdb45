//! The load generator: each scenario of ours beside its raw baseline, in one
//! process, at concurrency 1 and 64. Run by `cargo run --release --example
//! loadgen` and, at tiny scale, by `tests/loadgen.rs`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use resilient_cache::{Cache, CacheOptions, CacheService, InvalidationSources, Serializer};
use serde::{Deserialize, Serialize};

/// The original Python package on this kind of machine (single thread, small
/// dict values, local Redis 7.0): ops/s.
pub const ORIGINAL_L1_HIT_OPS: f64 = 1_340_000.0;
pub const ORIGINAL_L2_HIT_OPS: f64 = 7_580.0;
pub const ORIGINAL_SET_OPS: f64 = 7_277.0;

/// A ~100-byte value, like a small user record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub email: String,
    pub roles: Vec<String>,
    pub active: bool,
}

pub fn user(id: u64) -> User {
    User {
        id,
        name: format!("user number {id}"),
        email: format!("user{id}@example.com"),
        roles: vec!["reader".into(), "writer".into()],
        active: id.is_multiple_of(2),
    }
}

#[derive(Debug, Clone)]
pub struct LoadParams {
    pub redis_url: Option<String>,
    /// Length of one measured run.
    pub run: Duration,
    /// Runs of each side per scenario (the report keeps the median).
    pub repeats: usize,
    pub concurrencies: Vec<usize>,
    pub mixed_keys: usize,
    pub bytes_entries: usize,
    /// Scenarios to run (all when empty).
    pub only: Vec<String>,
    /// Each scenario's raw side measured against itself, in the same
    /// alternation and with the same medians as a normal run: what the
    /// ratios read on this machine when nothing differs, the noise floor
    /// of every ratio a normal run reports.
    pub raw_vs_raw: bool,
}

impl LoadParams {
    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.asked(scenario)
    }

    /// Named in `only` (the breakdown scenarios run only when asked for).
    fn asked(&self, scenario: &str) -> bool {
        self.only.iter().any(|s| s == scenario)
    }
}

impl Default for LoadParams {
    fn default() -> Self {
        Self {
            redis_url: None,
            run: Duration::from_millis(1500),
            repeats: 3,
            concurrencies: vec![1, 64],
            mixed_keys: 100_000,
            bytes_entries: 100_000,
            only: Vec::new(),
            raw_vs_raw: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: &'static str,
    pub concurrency: usize,
    pub ops_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub baseline_ops_per_sec: f64,
    pub baseline_p50_us: f64,
    pub ops_ratio: f64,
    pub p50_ratio: f64,
    /// CPU time per op of ours, µs: `[this process, redis-server]`.
    pub cpu_us_per_op: [f64; 2],
    /// The same for the baseline.
    pub baseline_cpu_us_per_op: [f64; 2],
    /// The baseline's CPU per op over ours (both processes): steadier than
    /// `ops_ratio` on a shared machine, and what `ops_ratio` tends to where
    /// the CPU is the limit (64 tasks).
    pub cpu_ratio: f64,
    /// Heap allocations per op, `[ours, baseline]`, counted over a short
    /// run at the scenario's concurrency after the measured runs
    /// (background work the op causes included). Exact and steady on any
    /// machine at one task; with more, it moves with how the calls overlap
    /// (by a tenth or so). NaN without an allocation counter.
    pub allocs_per_op: [f64; 2],
}

#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub scenarios: Vec<Scenario>,
    pub l2_commands_per_get: f64,
    pub l1_bytes_per_entry: f64,
    pub raw_l1_bytes_per_entry: f64,
    pub vs_original: BTreeMap<&'static str, f64>,
    pub run_ms: u64,
    pub repeats: usize,
    /// A run of [`LoadParams::raw_vs_raw`]: the "ours" side of every
    /// scenario is its raw side, and `vs_original` is empty.
    pub raw_vs_raw: bool,
}

#[derive(Clone, Copy)]
struct Measured {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    cpu_us_per_op: [f64; 2],
}

/// Reads the CPU time spent so far by this process (all its threads, ns
/// precision) and by the Redis server (`INFO cpu`, µs precision), and
/// counts allocations when the process has a counter.
struct Probe {
    redis: Option<redis::aio::MultiplexedConnection>,
    alloc: Option<&'static CountingAlloc>,
}

impl Probe {
    /// A probe of this process and the server behind `client`.
    async fn new(client: &redis::Client, alloc: Option<&'static CountingAlloc>) -> Self {
        let redis = client.get_multiplexed_async_connection().await.ok();
        Self { redis, alloc }
    }

    /// Heap allocations per call of `op`, over `n` calls from each of
    /// `concurrency` tasks (NaN without a counter). Counted at the
    /// scenario's concurrency, because what a call allocates can depend on
    /// the calls beside it (writes gathered into one batch).
    async fn allocs_per_op<F, Fut>(&self, concurrency: usize, n: u64, op: F) -> f64
    where
        F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let Some(counter) = self.alloc else {
            return f64::NAN;
        };
        // One untimed call first: a connection or an L1 shard set up on
        // first use is not the op's cost.
        op(0).await;
        // The tasks are spawned before counting starts and wait for it, so
        // that spawning them is not counted as the op's cost.
        let start = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
        let handles: Vec<_> = (0..concurrency as u64)
            .map(|t| {
                let (op, start) = (op.clone(), start.clone());
                tokio::spawn(async move {
                    start.wait().await;
                    for i in 1..=n {
                        op(t * n + i).await;
                    }
                })
            })
            .collect();
        counter.counting(true);
        let before = counter.allocations();
        start.wait().await;
        for h in handles {
            h.await.unwrap();
        }
        let after = counter.allocations();
        counter.counting(false);
        after.wrapping_sub(before) as f64 / (n * concurrency as u64) as f64
    }

    /// `[this process, redis-server]` CPU time so far, µs (NaN where unknown).
    async fn sample(&self) -> [f64; 2] {
        [process_cpu_us(), self.redis_cpu_us().await]
    }

    async fn redis_cpu_us(&self) -> f64 {
        let Some(mut conn) = self.redis.clone() else {
            return f64::NAN;
        };
        let Ok(info) = redis::cmd("INFO")
            .arg("cpu")
            .query_async::<String>(&mut conn)
            .await
        else {
            return f64::NAN;
        };
        info.lines()
            .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
            .filter_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
            .sum::<f64>()
            * 1e6
    }
}

/// CPU time of this process so far (every thread, those ended included), µs.
#[cfg(target_os = "linux")]
fn process_cpu_us() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) } != 0 {
        return f64::NAN;
    }
    t.tv_sec as f64 * 1e6 + t.tv_nsec as f64 / 1e3
}

#[cfg(not(target_os = "linux"))]
fn process_cpu_us() -> f64 {
    f64::NAN
}

/// Runs `op` from `concurrency` tasks for `run`. Ops that take well under a
/// microsecond are timed in batches (the clock would cost more than the op):
/// each sample is a batch's time divided by its size.
///
/// Each task stops itself at the deadline (read from the clock it already
/// reads per batch), so no timer has to interrupt it. A task whose op never
/// suspends (an L1 hit) yields once per millisecond so that the other tasks
/// run too: a yield costs ~12 µs on the multi-thread runtime, which spent
/// every 1,024 ops would add ~12 ns to a 30 ns op, ours and the baseline alike.
async fn measure<F, Fut>(probe: &Probe, concurrency: usize, run: Duration, batch: usize, op: F) -> Measured
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send,
{
    const YIELD_EVERY: Duration = Duration::from_millis(1);
    let cpu_before = probe.sample().await;
    let start = Instant::now();
    let deadline = start + run;
    let mut handles = Vec::new();
    for t in 0..concurrency {
        let op = op.clone();
        handles.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
            let mut n: u64 = 0;
            let mut i = (t as u64).wrapping_mul(0x9E37_79B9);
            let mut yielded = Instant::now();
            loop {
                let t0 = Instant::now();
                if t0 >= deadline {
                    return (n, h, t0);
                }
                if t0 - yielded >= YIELD_EVERY {
                    tokio::task::yield_now().await;
                    yielded = Instant::now();
                    continue;
                }
                for _ in 0..batch {
                    op(i).await;
                    i = i.wrapping_add(1);
                }
                let ns = t0.elapsed().as_nanos() as u64 / batch as u64;
                h.saturating_record(ns.max(1));
                n += batch as u64;
            }
        }));
    }
    let mut total = 0;
    let mut end = start;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
    for h in handles {
        let (n, h, stopped) = h.await.unwrap();
        total += n;
        end = end.max(stopped);
        hist.add(&h).unwrap();
    }
    let secs = (end - start).as_secs_f64();
    let cpu_after = probe.sample().await;
    let q = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let per_op = |i: usize| (cpu_after[i] - cpu_before[i]) / total.max(1) as f64;
    Measured {
        ops_per_sec: total as f64 / secs,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        cpu_us_per_op: [per_op(0), per_op(1)],
    }
}

fn median(mut v: Vec<Measured>) -> Measured {
    v.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    let mid = v[v.len() / 2];
    let mid_of = |f: fn(&Measured) -> f64| {
        let mut all: Vec<f64> = v.iter().map(f).collect();
        all.sort_by(f64::total_cmp);
        all[all.len() / 2]
    };
    Measured {
        p50_us: mid_of(|m| m.p50_us),
        cpu_us_per_op: [mid_of(|m| m.cpu_us_per_op[0]), mid_of(|m| m.cpu_us_per_op[1])],
        ..mid
    }
}

/// Alternates ours and the baseline `repeats` times and keeps the medians;
/// with [`LoadParams::raw_vs_raw`], the baseline stands on both sides.
async fn compare<F1, Fut1, F2, Fut2>(
    p: &LoadParams,
    probe: &Probe,
    name: &'static str,
    concurrency: usize,
    batch: usize,
    ours: F1,
    raw: F2,
) -> Scenario
where
    F1: Fn(u64) -> Fut1 + Send + Sync + Clone + 'static,
    Fut1: Future<Output = ()> + Send,
    F2: Fn(u64) -> Fut2 + Send + Sync + Clone + 'static,
    Fut2: Future<Output = ()> + Send,
{
    let at = Setting {
        p,
        probe,
        name,
        concurrency,
        batch,
    };
    if p.raw_vs_raw {
        at.sides(raw.clone(), raw).await
    } else {
        at.sides(ours, raw).await
    }
}

/// What a [`compare`] measures with, whichever two sides it measures.
struct Setting<'a> {
    p: &'a LoadParams,
    probe: &'a Probe,
    name: &'static str,
    concurrency: usize,
    batch: usize,
}

impl Setting<'_> {
    /// The scenario, `ours` reported as ours and `raw` as the baseline.
    async fn sides<F1, Fut1, F2, Fut2>(self, ours: F1, raw: F2) -> Scenario
    where
        F1: Fn(u64) -> Fut1 + Send + Sync + Clone + 'static,
        Fut1: Future<Output = ()> + Send,
        F2: Fn(u64) -> Fut2 + Send + Sync + Clone + 'static,
        Fut2: Future<Output = ()> + Send,
    {
        let Setting {
            p,
            probe,
            name,
            concurrency,
            batch,
        } = self;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..p.repeats {
            b.push(measure(probe, concurrency, p.run, batch, raw.clone()).await);
            a.push(measure(probe, concurrency, p.run, batch, ours.clone()).await);
        }
        let (a, b) = (median(a), median(b));
        // Batched ops are tiny: count over as many calls as a batch times ten,
        // shared among the tasks (each making enough to overlap the others').
        let n = ((10 * batch as u64).max(200) / concurrency as u64).max(20);
        let allocs_per_op = [
            probe.allocs_per_op(concurrency, n, ours).await,
            probe.allocs_per_op(concurrency, n, raw).await,
        ];
        Scenario {
            name,
            concurrency,
            ops_per_sec: a.ops_per_sec.round(),
            p50_us: a.p50_us,
            p99_us: a.p99_us,
            p999_us: a.p999_us,
            baseline_ops_per_sec: b.ops_per_sec.round(),
            baseline_p50_us: b.p50_us,
            ops_ratio: a.ops_per_sec / b.ops_per_sec,
            p50_ratio: a.p50_us / b.p50_us,
            cpu_us_per_op: a.cpu_us_per_op,
            baseline_cpu_us_per_op: b.cpu_us_per_op,
            cpu_ratio: b.cpu_us_per_op.iter().sum::<f64>() / a.cpu_us_per_op.iter().sum::<f64>(),
            allocs_per_op,
        }
    }
}

fn keys(n: usize, prefix: &str) -> Arc<Vec<String>> {
    Arc::new((0..n).map(|i| format!("{prefix}{i}")).collect())
}

/// Keys per `set_many` batch in the `set_many` scenario.
const SET_MANY: usize = 100;
/// The prefix of the raw writes that a raw connection tracks.
const RAW_TRACKED: &str = "raw-tracked:";
/// The scenarios that write on the tracked raw connection.
const TRACKED_BASELINE: [&str; 4] = [
    "raw_tracked_set",
    "raw_tracked_set_many",
    "set_vs_tracked",
    "set_many_vs_tracked",
];

/// A Zipf-like index in 0..n (exponent ~1): rank r has weight ~1/r.
fn zipf(i: u64, n: usize) -> usize {
    let u = ((i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64) / ((1u64 << 53) as f64);
    let r = ((n as f64 + 1.0).powf(u) - 1.0) as usize;
    r.min(n - 1)
}

/// Counts heap bytes and allocations while switched on; install it with
/// `#[global_allocator] static ALLOC: CountingAlloc = CountingAlloc;` and
/// pass `Some(&ALLOC)` to [`run`]. Off, it costs one relaxed load per call:
/// the measured runs pay no shared atomic per allocation, which would tax
/// the side that allocates more.
pub struct CountingAlloc;

impl CountingAlloc {
    /// Switches counting on or off.
    pub fn counting(&self, on: bool) {
        COUNTING.store(on, Relaxed);
    }

    /// Net heap bytes allocated while counting (wrapping: only differences
    /// taken while counting mean anything).
    pub fn live_bytes(&self) -> usize {
        LIVE.load(Relaxed)
    }

    /// Allocations (and reallocations) made while counting.
    pub fn allocations(&self) -> usize {
        ALLOCATIONS.load(Relaxed)
    }
}

static COUNTING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counters only observe sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            LIVE.fetch_add(layout.size(), Relaxed);
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Relaxed) {
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            LIVE.fetch_add(new_size, Relaxed);
            LIVE.fetch_sub(layout.size(), Relaxed);
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

pub async fn run(p: LoadParams, allocated: Option<&'static CountingAlloc>) -> LoadReport {
    let (_server, url) = super::server_or_url(p.redis_url.as_deref());
    let mut config = super::config_for(&url);
    config.redis.socket_timeout = Duration::from_secs(2);
    let service = CacheService::new(config).await.unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let raw_conn = redis::aio::ConnectionManager::new(client.clone()).await.unwrap();
    let msgpack = Serializer::msgpack();
    let probe = Probe::new(&client, allocated).await;
    let mut scenarios = Vec::new();

    // L2 only: our cache vs a raw GET + decode on the same kind of connection.
    // Commands per L2 get are counted on it first. The backplane's subscriber
    // (markers reach this cache through it) has its own connection; its
    // keepalive PING once a second is not counted.
    let hot = keys(1024, "");
    let l2: Cache<User> = service
        .create_cache(
            CacheOptions::new("lg-l2")
                .l2_ttl(Duration::from_secs(600))
                .l1_enabled(false),
        )
        .unwrap();
    for (i, k) in hot.iter().enumerate() {
        l2.set(k, user(i as u64)).await;
    }
    let l2_commands_per_get = commands_per_get(&client, &l2, &hot).await;

    // L1: our cache vs quick_cache holding the same Arc<User>. Both get room
    // for twice the hot set: quick_cache's bound is approximate, and a hit
    // scenario must not measure evictions.
    let l1: Cache<User> = service
        .create_cache(
            CacheOptions::new("lg-l1")
                .l2_ttl(Duration::from_secs(600))
                .l1_maxsize(2000),
        )
        .unwrap();
    let plain: Cache<User> = service
        .create_cache(
            CacheOptions::new("lg-plain")
                .l2_ttl(Duration::from_secs(600))
                .l1_maxsize(2000)
                .backplane(false)
                .lease_fence(false),
        )
        .unwrap();
    // The breakdown of a write's cost: each guarantee alone, and (for
    // `set_many`) none of them, tracking included.
    let write_cache = |name: &'static str, sources: InvalidationSources, fence: bool| -> Cache<User> {
        service
            .create_cache(
                CacheOptions::new(name)
                    .l2_ttl(Duration::from_secs(600))
                    .l1_maxsize(2000)
                    .invalidation(sources)
                    .lease_fence(fence),
            )
            .unwrap()
    };
    let fence_only = write_cache("lg-fence", InvalidationSources::Tracking, true);
    let backplane_only = write_cache("lg-bp", InvalidationSources::Both, false);
    let untracked = write_cache("lg-untracked", InvalidationSources::None, true);
    // Made only when asked: its namespace is not tracked, so its own
    // instance asks for per-key messages, and every other write of the
    // service then looks up whether its namespace is asked for too, which a
    // default deployment (every instance tracking) does not do.
    let via_backplane = p
        .asked("set_via_backplane")
        .then(|| write_cache("lg-via-bp", InvalidationSources::Backplane, true));
    let bare = write_cache("lg-bare", InvalidationSources::None, false);
    let raw_l1: &'static quick_cache::sync::Cache<String, Arc<User>> =
        Box::leak(Box::new(quick_cache::sync::Cache::new(2000)));
    for (i, k) in hot.iter().enumerate() {
        l1.set(k, user(i as u64)).await;
        raw_l1.insert(k.clone(), Arc::new(user(i as u64)));
    }
    // The caches a write scenario compares with `l1` start as it does,
    // holding the hot keys: a write then overwrites an entry made here in
    // every one of them, and the breakdown measures the guarantees, not
    // where each cache's entries were made.
    let prefilled = [&plain, &fence_only, &backplane_only, &untracked, &bare];
    for cache in prefilled.into_iter().chain(via_backplane.as_ref()) {
        for (i, k) in hot.iter().enumerate() {
            cache.set(k, user(i as u64)).await;
        }
    }
    // Made only when asked: its prefix, tracked, is one more prefix that
    // every later write is matched against.
    let raw_tracked = if TRACKED_BASELINE.iter().any(|s| p.asked(s)) {
        Some(tracked_raw_conn(&client, RAW_TRACKED).await)
    } else {
        None
    };
    let raw_keys = keys(1024, "lg-l2:");
    let absent = keys(1000, "absent-");
    let raw_absent = keys(1000, "lg-l2:absent-");

    for &c in &p.concurrencies {
        // Leaked so that the op closures borrow instead of cloning an Arc per op
        // (a shared refcount would make the cores fight and measure the harness).
        let (cache, ks): (&'static Cache<User>, &'static [String]) = (
            Box::leak(Box::new(l1.clone())),
            Box::leak(hot.to_vec().into_boxed_slice()),
        );
        let raw = raw_l1;
        if p.wants("l1_hit") {
            scenarios.push(
                compare(
                    &p,
                    &probe,
                    "l1_hit",
                    c,
                    64,
                    // 1024 keys: a mask, not a division, so the harness costs ~nothing.
                    move |i| async move {
                        std::hint::black_box(cache.get(&ks[i as usize & 1023]).await);
                    },
                    move |i| {
                        let v = raw.get(ks[i as usize & 1023].as_str());
                        async move {
                            std::hint::black_box(v);
                        }
                    },
                )
                .await,
            );
        }

        let (cache, ks, conn, rk, ser) = (
            l2.clone(),
            hot.clone(),
            raw_conn.clone(),
            raw_keys.clone(),
            msgpack.clone(),
        );
        if p.wants("l2_hit") {
            scenarios.push(
                compare(
                    &p,
                    &probe,
                    "l2_hit",
                    c,
                    1,
                    move |i| {
                        let (cache, ks) = (cache.clone(), ks.clone());
                        async move {
                            assert!(cache.get(&ks[i as usize % ks.len()]).await.is_some());
                        }
                    },
                    move |i| {
                        let (mut conn, rk, ser) = (conn.clone(), rk.clone(), ser.clone());
                        async move {
                            let b = raw_get(&mut conn, &rk[i as usize % rk.len()]).await;
                            assert!(ser.decode::<User>(&b.unwrap()).is_ok());
                        }
                    },
                )
                .await,
            );
        }

        let (cache, ks, conn, rk) = (l1.clone(), absent.clone(), raw_conn.clone(), raw_absent.clone());
        if p.wants("miss") {
            scenarios.push(
                compare(
                    &p,
                    &probe,
                    "miss",
                    c,
                    1,
                    move |i| {
                        let (cache, ks) = (cache.clone(), ks.clone());
                        async move {
                            assert!(cache.get(&ks[i as usize % ks.len()]).await.is_none());
                        }
                    },
                    move |i| {
                        let (mut conn, rk) = (conn.clone(), rk.clone());
                        async move {
                            let b = raw_get(&mut conn, &rk[i as usize % rk.len()]).await;
                            assert!(b.is_none());
                        }
                    },
                )
                .await,
            );
        }

        // `set` as configured by default (backplane announcement + lease fence),
        // then `set_plain` without either: what those two cost; when asked,
        // each guarantee alone, the fence without tracking, the default
        // with the backplane's per-key messages instead of tracking, and
        // none of the three. The raw writes go to keys no cache tracks: Redis would
        // otherwise announce each of them to this process (tracking),
        // slowing the baseline.
        //
        // When asked, `set_vs_tracked` and `set_many_vs_tracked` measure
        // the default cache against the raw writes on a connection tracking
        // their prefix as this crate's data connection does: both sides pay
        // Redis's tracking, so what is left is this crate's own cost.
        let untracked_raw = (raw_conn.clone(), keys(1024, "raw-set:"));
        let tracked_raw = raw_tracked
            .as_ref()
            .map(|(tracked, _target)| (tracked.clone(), keys(1024, RAW_TRACKED)));
        let vs_tracked = |name: &'static str| tracked_raw.clone().filter(|_| p.asked(name));
        // The scenarios wanted, each with the untracked raw writes as its baseline.
        let against_untracked = |all: Vec<(&'static str, Cache<User>, bool)>| {
            all.into_iter()
                .filter(|(_, _, wanted)| *wanted)
                .map(|(name, cache, _)| (name, cache, untracked_raw.clone()))
                .collect::<Vec<_>>()
        };
        let mut writes = against_untracked(vec![
            ("set", l1.clone(), p.wants("set")),
            ("set_plain", plain.clone(), p.wants("set_plain")),
            ("set_fence_only", fence_only.clone(), p.asked("set_fence_only")),
            (
                "set_backplane_only",
                backplane_only.clone(),
                p.asked("set_backplane_only"),
            ),
            ("set_untracked", untracked.clone(), p.asked("set_untracked")),
            ("set_bare", bare.clone(), p.asked("set_bare")),
        ]);
        if let Some(cache) = &via_backplane {
            writes.push(("set_via_backplane", cache.clone(), untracked_raw.clone()));
        }
        if let Some(raw) = vs_tracked("set_vs_tracked") {
            writes.push(("set_vs_tracked", l1.clone(), raw));
        }
        for (name, cache, (conn, rk)) in writes {
            let (ks, ser) = (hot.clone(), msgpack.clone());
            scenarios.push(
                compare(
                    &p,
                    &probe,
                    name,
                    c,
                    1,
                    move |i| {
                        let (cache, ks) = (cache.clone(), ks.clone());
                        async move {
                            let n = i as usize % ks.len();
                            cache.set(&ks[n], user(n as u64)).await;
                        }
                    },
                    move |i| raw_write(conn.clone(), rk.clone(), ser.clone(), i),
                )
                .await,
            );
        }

        // Only when asked: what a fence sent with every write costs with the
        // `redis` crate alone, a raw pipeline of `HDEL` (the key's field in a
        // lease hash that does not exist, as this crate's fence on one
        // server) + `SET PX` against the raw `SET PX`.
        if p.asked("raw_fenced_set") {
            let (conn, rk, ser) = (raw_conn.clone(), keys(1024, "raw-set:"), msgpack.clone());
            let (conn2, rk2, ser2) = (conn.clone(), rk.clone(), ser.clone());
            scenarios.push(
                compare(
                    &p,
                    &probe,
                    "raw_fenced_set",
                    c,
                    1,
                    move |i| {
                        let (mut conn, rk, ser) = (conn.clone(), rk.clone(), ser.clone());
                        async move {
                            let n = i as usize % rk.len();
                            let mut pipe = redis::pipe();
                            pipe.cmd("HDEL").arg("raw-leases").arg(&rk[n]);
                            pipe.cmd("SET")
                                .arg(&rk[n])
                                .arg(ser.encode(&user(n as u64)).unwrap())
                                .arg("PX")
                                .arg(600_000);
                            let _: () = pipe.query_async(&mut conn).await.unwrap();
                        }
                    },
                    move |i| raw_write(conn2.clone(), rk2.clone(), ser2.clone(), i),
                )
                .await,
            );
        }

        // Only when asked: what tracking alone costs, with the `redis` crate
        // alone: the raw writes (one `SET PX`, or a pipeline of 100) on a
        // connection tracking their prefix as this crate's data connection
        // tracks a namespace, against the same writes to an untracked prefix.
        if let Some((tracked, _target)) = &raw_tracked {
            let (tk, rk) = (keys(1024, RAW_TRACKED), keys(1024, "raw-set:"));
            if p.asked("raw_tracked_set") {
                let (tconn, tk, ser) = (tracked.clone(), tk.clone(), msgpack.clone());
                let (conn, rk, ser2) = (raw_conn.clone(), rk.clone(), msgpack.clone());
                scenarios.push(
                    compare(
                        &p,
                        &probe,
                        "raw_tracked_set",
                        c,
                        1,
                        move |i| raw_write(tconn.clone(), tk.clone(), ser.clone(), i),
                        move |i| raw_write(conn.clone(), rk.clone(), ser2.clone(), i),
                    )
                    .await,
                );
            }
            if p.asked("raw_tracked_set_many") {
                let (tconn, ser) = (tracked.clone(), msgpack.clone());
                let (conn, ser2) = (raw_conn.clone(), msgpack.clone());
                scenarios.push(
                    compare(
                        &p,
                        &probe,
                        "raw_tracked_set_many",
                        c,
                        1,
                        move |i| raw_write_many(tconn.clone(), tk.clone(), ser.clone(), i),
                        move |i| raw_write_many(conn.clone(), rk.clone(), ser2.clone(), i),
                    )
                    .await,
                );
            }
        }

        // `set_many` of 100 keys (default cache: fence, backplane and
        // tracking on) vs one raw pipeline of the same 100 `SET PX`; when
        // asked, the same through caches without some of those guarantees.
        let mut batches = against_untracked(vec![
            ("set_many", l1.clone(), p.wants("set_many")),
            ("set_many_plain", plain.clone(), p.asked("set_many_plain")),
            (
                "set_many_untracked",
                untracked.clone(),
                p.asked("set_many_untracked"),
            ),
            ("set_many_bare", bare.clone(), p.asked("set_many_bare")),
        ]);
        if let Some(raw) = vs_tracked("set_many_vs_tracked") {
            batches.push(("set_many_vs_tracked", l1.clone(), raw));
        }
        for (name, cache, (conn, rk)) in batches {
            let (ks, ser) = (hot.clone(), msgpack.clone());
            scenarios.push(
                compare(
                    &p,
                    &probe,
                    name,
                    c,
                    1,
                    move |i| {
                        let (cache, ks) = (cache.clone(), ks.clone());
                        async move {
                            let first = (i as usize * SET_MANY) % (ks.len() - SET_MANY);
                            let entries = (first..first + SET_MANY).map(|n| (&ks[n], user(n as u64)));
                            cache.set_many(entries).await;
                        }
                    },
                    move |i| raw_write_many(conn.clone(), rk.clone(), ser.clone(), i),
                )
                .await,
            );
        }

        // Mixed: 90 % get / 10 % set over many keys, Zipf-like; ours has L1 in front.
        if !p.wants("mixed") {
            continue;
        }
        let mixed: Cache<User> = service
            .create_cache(
                CacheOptions::new("lg-mixed")
                    .l2_ttl(Duration::from_secs(600))
                    .l1_maxsize(p.mixed_keys / 10)
                    .l1_ttl(Duration::from_secs(30)),
            )
            .unwrap();
        let (mk, rmk) = (keys(p.mixed_keys, ""), keys(p.mixed_keys, "raw-mixed:"));
        let (cache, ks, conn, rk, ser) = (
            mixed.clone(),
            mk.clone(),
            raw_conn.clone(),
            rmk.clone(),
            msgpack.clone(),
        );
        let n = p.mixed_keys;
        scenarios.push(
            compare(
                &p,
                &probe,
                "mixed",
                c,
                1,
                move |i| {
                    let (cache, ks) = (cache.clone(), ks.clone());
                    async move {
                        let k = zipf(i, n);
                        if i.is_multiple_of(10) {
                            cache.set(&ks[k], user(k as u64)).await;
                        } else {
                            std::hint::black_box(cache.get(&ks[k]).await);
                        }
                    }
                },
                move |i| {
                    let (mut conn, rk, ser) = (conn.clone(), rk.clone(), ser.clone());
                    async move {
                        let k = zipf(i, n);
                        if i.is_multiple_of(10) {
                            raw_set(&mut conn, &rk[k], ser.encode(&user(k as u64)).unwrap()).await;
                        } else {
                            let b = raw_get(&mut conn, &rk[k]).await;
                            if let Some(b) = b {
                                std::hint::black_box(ser.decode::<User>(&b).unwrap());
                            }
                        }
                    }
                },
            )
            .await,
        );
    }

    let (l1_bytes_per_entry, raw_l1_bytes_per_entry) = match allocated {
        Some(counter) if p.only.is_empty() => bytes_per_entry(&service, counter, p.bytes_entries).await,
        _ => (f64::NAN, f64::NAN),
    };
    // Against the original package, only our own figures mean anything:
    // none in a raw-vs-raw run.
    let ours = |name: &str, c: usize| {
        scenarios
            .iter()
            .find(|s| !p.raw_vs_raw && s.name == name && s.concurrency == c)
            .map(|s| s.ops_per_sec)
    };
    let vs_original: BTreeMap<&'static str, f64> = [
        ("l1_hit_c1", "l1_hit", 1, ORIGINAL_L1_HIT_OPS),
        ("l2_hit_c1", "l2_hit", 1, ORIGINAL_L2_HIT_OPS),
        ("l2_hit_c64", "l2_hit", 64, ORIGINAL_L2_HIT_OPS),
        ("set_c1", "set", 1, ORIGINAL_SET_OPS),
    ]
    .into_iter()
    .filter_map(|(label, name, c, original)| ours(name, c).map(|v| (label, v / original)))
    .collect();
    LoadReport {
        scenarios,
        l2_commands_per_get,
        l1_bytes_per_entry,
        raw_l1_bytes_per_entry,
        vs_original,
        run_ms: p.run.as_millis() as u64,
        repeats: p.repeats,
        raw_vs_raw: p.raw_vs_raw,
    }
}

/// The raw baseline of an L2 read: `GET key`.
pub async fn raw_get(conn: &mut redis::aio::ConnectionManager, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

/// The raw baseline of the write scenarios: op `i` encodes `user(n)` and
/// sends `SET PX` to `keys[n]`, `n = i % keys.len()`.
async fn raw_write(mut conn: redis::aio::ConnectionManager, keys: Arc<Vec<String>>, ser: Serializer, i: u64) {
    let n = i as usize % keys.len();
    raw_set(&mut conn, &keys[n], ser.encode(&user(n as u64)).unwrap()).await;
}

/// The raw baseline of a cache `set_many`: one pipeline of `SET key bytes
/// PX 600000` for [`SET_MANY`] consecutive keys.
async fn raw_write_many(
    mut conn: redis::aio::ConnectionManager,
    keys: Arc<Vec<String>>,
    ser: Serializer,
    i: u64,
) {
    let first = (i as usize * SET_MANY) % (keys.len() - SET_MANY);
    let mut pipe = redis::pipe();
    for n in first..first + SET_MANY {
        let bytes = ser.encode(&user(n as u64)).unwrap();
        pipe.cmd("SET")
            .arg(&keys[n])
            .arg(bytes)
            .arg("PX")
            .arg(600_000)
            .ignore();
    }
    let _: () = pipe.query_async(&mut conn).await.unwrap();
}

/// A raw connection whose own writes under `prefix` cost Redis what this
/// crate's data connection's writes to a namespace cost it: the same
/// `CLIENT TRACKING ON REDIRECT <id> BCAST PREFIX <prefix> NOLOOP`,
/// redirected to a connection held for it (returned with it). Checked with
/// `CLIENT TRACKINGINFO`.
async fn tracked_raw_conn(
    client: &redis::Client,
    prefix: &str,
) -> (redis::aio::ConnectionManager, redis::aio::MultiplexedConnection) {
    let mut target = client.get_multiplexed_async_connection().await.unwrap();
    let id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut target)
        .await
        .unwrap();
    let mut conn = redis::aio::ConnectionManager::new(client.clone()).await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("REDIRECT")
        .arg(id)
        .arg("BCAST")
        .arg("PREFIX")
        .arg(prefix)
        .arg("NOLOOP")
        .query_async(&mut conn)
        .await
        .unwrap();
    let info: BTreeMap<String, redis::Value> = redis::cmd("CLIENT")
        .arg("TRACKINGINFO")
        .query_async(&mut conn)
        .await
        .unwrap();
    let flags: Vec<String> = redis::from_redis_value(info["flags"].clone()).unwrap();
    let prefixes: Vec<String> = redis::from_redis_value(info["prefixes"].clone()).unwrap();
    assert!(
        ["on", "bcast", "noloop"]
            .iter()
            .all(|f| flags.iter().any(|g| g == f))
            && prefixes == [prefix],
        "tracking not set up as asked: {info:?}"
    );
    (conn, target)
}

/// The raw baseline of a cache `set`: `SET key bytes PX 600000`.
pub async fn raw_set(conn: &mut redis::aio::ConnectionManager, key: &str, bytes: Vec<u8>) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(bytes)
        .arg("PX")
        .arg(600_000)
        .query_async(conn)
        .await
        .unwrap();
}

/// Redis commands per L2 get, from `INFO commandstats` around 1,000 gets.
async fn commands_per_get(client: &redis::Client, l2: &Cache<User>, ks: &[String]) -> f64 {
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    // Steady state: a cache's first L2 read also loads its invalidation
    // markers, and the subscriber's connection set-up is not the gets' doing.
    let up = crate::eventually(Duration::from_secs(5), async || {
        l2.backplane_stats().is_some_and(|b| b.connected)
    })
    .await;
    assert!(up, "backplane subscriber did not connect");
    assert!(l2.get(&ks[0]).await.is_some());
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut admin)
        .await
        .unwrap();
    let n = 1000;
    for k in ks.iter().take(n) {
        assert!(l2.get(k).await.is_some());
    }
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut admin)
        .await
        .unwrap();
    let calls: u64 = info
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter(|l| {
            let name = l.split(':').next().unwrap_or_default();
            !name.starts_with("config") && name != "info" && !crate::from_timers(name)
        })
        .filter_map(|l| l.split(',').next()?.split("calls=").nth(1)?.parse::<u64>().ok())
        .sum();
    calls as f64 / n as f64
}

/// Heap bytes per entry: our L1 vs quick_cache, each holding a freshly
/// allocated `Arc<User>` per entry (so both include one copy of the value).
async fn bytes_per_entry(service: &CacheService, allocated: &CountingAlloc, n: usize) -> (f64, f64) {
    let values: Vec<User> = (0..n as u64).map(user).collect();
    let names: Vec<String> = (0..n).map(|i| format!("key-{i}")).collect();

    let live = || allocated.live_bytes();
    let grown = |before: usize| live().wrapping_sub(before) as isize as f64;
    allocated.counting(true);
    let before = live();
    let raw = quick_cache::sync::Cache::<String, Arc<User>>::new(n);
    for (k, v) in names.iter().zip(&values) {
        raw.insert(k.clone(), Arc::new(v.clone()));
    }
    let raw_bytes = grown(before) / raw.len() as f64;
    drop(raw);

    let before = live();
    let ours: Cache<User> = service
        .create_cache(
            CacheOptions::new("lg-bytes")
                .l2_enabled(false)
                .l1_maxsize(n)
                .l1_ttl(Duration::from_secs(600)),
        )
        .unwrap();
    for (k, v) in names.iter().zip(&values) {
        ours.set(k, v.clone()).await;
    }
    let size = ours.get_stats().await.l1.unwrap().size as f64;
    let ours_bytes = grown(before) / size;
    allocated.counting(false);
    (ours_bytes, raw_bytes)
}
