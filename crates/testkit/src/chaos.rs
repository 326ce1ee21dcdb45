//! The chaos harness: concurrent traffic through `healthy`, `frozen`
//! (SIGSTOP), `down` (killed) and `recovered` (restarted) phases of a real
//! redis-server, then checks that nothing deleted came back and nothing
//! written was lost. Run by `cargo run --release --example chaos` and, at small
//! scale, by `tests/chaos.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use resilient_cache::{Cache, CacheOptions, CacheService, CircuitState};
use serde::Serialize;

use super::RedisServer;

#[derive(Debug, Clone)]
pub struct ChaosParams {
    pub tasks: usize,
    pub keys: usize,
    pub phase: Duration,
    pub op_timeout: Duration,
    pub breaker_timeout: Duration,
}

impl Default for ChaosParams {
    fn default() -> Self {
        Self {
            tasks: 48,
            keys: 4000,
            phase: Duration::from_secs(4),
            op_timeout: Duration::from_millis(250),
            breaker_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PhaseReport {
    pub name: &'static str,
    pub ops: u64,
    pub get_p50_us: u64,
    pub get_p99_us: u64,
    pub get_max_us: u64,
    /// Gets that started while the breaker was open, in this phase.
    pub open_get_p99_us: Option<u64>,
    /// Gets of a key the task had just written (L1 hits).
    pub l1_hit_get_p99_us: u64,
    pub caller_errors: u64,
}

#[derive(Debug, Serialize)]
pub struct ChaosReport {
    pub op_timeout_ms: u64,
    pub breaker_timeout_ms: u64,
    pub tasks: usize,
    pub keys: usize,
    pub phases: Vec<PhaseReport>,
    pub caller_errors_total: u64,
    pub panics: u64,
    pub recovery_ms: u64,
    pub resurrected_deletes: u64,
    /// Keys deleted during the outage (frozen or down) and never written
    /// afterwards: only the replay of those deletes keeps them out of L2.
    pub outage_deletes_checked: u64,
    /// Of those, the ones found in L2 at the end.
    pub outage_deletes_resurrected: u64,
    pub lost_writes: u64,
    pub deletes_checked: u64,
    pub writes_checked: u64,
    pub replayed: u64,
    pub breaker_transitions: u64,
}

const PHASES: [&str; 4] = ["healthy", "frozen", "down", "recovered"];

struct Hists {
    get: Histogram<u64>,
    open_get: Histogram<u64>,
    l1_hit: Histogram<u64>,
    ops: u64,
    errors: u64,
}

impl Hists {
    fn new() -> Self {
        let h = || Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
        Self {
            get: h(),
            open_get: h(),
            l1_hit: h(),
            ops: 0,
            errors: 0,
        }
    }
}

#[derive(Clone, Copy)]
enum Last {
    Set(u64),
    Deleted,
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn key(i: usize) -> String {
    format!("k{i}")
}

/// Values carry their key, so a value read under the wrong key is caught.
fn value(key_id: usize, seq: u64) -> u64 {
    ((key_id as u64) << 32) | seq
}

pub async fn run(p: ChaosParams) -> ChaosReport {
    // Append-only with fsync on every write: a killed server comes back with
    // its data, so a delete missed during the outage would really resurrect.
    let mut redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut config = redis.config();
    config.redis.socket_timeout = p.op_timeout;
    config.redis.connect_timeout = p.op_timeout;
    config.circuit_breaker.threshold = 5;
    config.circuit_breaker.timeout = p.breaker_timeout;
    let service = CacheService::new(config.clone()).await.unwrap();
    let cache: Cache<u64> = service
        .create_cache(
            CacheOptions::new("chaos")
                .l2_ttl(Duration::from_secs(3600))
                // Short L1 TTL and size: plenty of reads go to L2.
                .l1_ttl(Duration::from_secs(1))
                .l1_maxsize(p.keys / 2),
        )
        .unwrap();

    let phase_idx = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let hists: Arc<Vec<Mutex<Hists>>> = Arc::new((0..4).map(|_| Mutex::new(Hists::new())).collect());
    let seq = Arc::new(AtomicU64::new(1));

    let mut handles = Vec::new();
    for t in 0..p.tasks {
        let (cache, phase_idx, stop, hists, seq) = (
            cache.clone(),
            phase_idx.clone(),
            stop.clone(),
            hists.clone(),
            seq.clone(),
        );
        let (tasks, keys) = (p.tasks, p.keys);
        handles.push(tokio::spawn(async move {
            let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) * 0x1234_5678));
            let own: Vec<usize> = (t..keys).step_by(tasks).collect();
            // A quarter of the task's keys is not written once the outage is
            // over, so a delete made during the outage stays the key's last
            // word: if its replay were lost, the server's own copy would show.
            let reserved = |k: usize| (k / tasks).is_multiple_of(4);
            let unreserved: Vec<usize> = own.iter().copied().filter(|k| !reserved(*k)).collect();
            let mut last: HashMap<usize, Last> = HashMap::new();
            let mut outage_deletes: HashSet<usize> = HashSet::new();
            let mut local = [(); 4].map(|_| Hists::new());
            while !stop.load(Relaxed) {
                let ph = phase_idx.load(Relaxed);
                let h = &mut local[ph];
                let r = rng.next();
                let pick = |r: u64| {
                    let k = own[(r >> 8) as usize % own.len()];
                    if ph == 3 && reserved(k) {
                        unreserved[(r >> 8) as usize % unreserved.len()]
                    } else {
                        k
                    }
                };
                match r % 100 {
                    0..=59 => {
                        let k = (r >> 8) as usize % keys;
                        let open = cache.breaker_state() == CircuitState::Open;
                        let t0 = Instant::now();
                        let v = cache.get(&key(k)).await;
                        let us = t0.elapsed().as_micros() as u64;
                        h.get.saturating_record(us.max(1));
                        if open {
                            h.open_get.saturating_record(us.max(1));
                        }
                        if v.is_some_and(|v| (*v >> 32) as usize != k) {
                            h.errors += 1;
                        }
                    }
                    60..=84 => {
                        let k = pick(r);
                        let v = value(k, seq.fetch_add(1, Relaxed));
                        cache.set(&key(k), v).await;
                        last.insert(k, Last::Set(v));
                        outage_deletes.remove(&k);
                        // Read-your-write right away: an L1 hit, whatever L2 is doing.
                        let t0 = Instant::now();
                        let got = cache.get(&key(k)).await;
                        h.l1_hit
                            .saturating_record((t0.elapsed().as_micros() as u64).max(1));
                        if got.as_deref() != Some(&v) {
                            h.errors += 1;
                        }
                    }
                    85..=94 => {
                        let k = pick(r);
                        cache.delete(&key(k)).await;
                        last.insert(k, Last::Deleted);
                        if ph == 1 || ph == 2 {
                            outage_deletes.insert(k);
                        }
                        if cache.get(&key(k)).await.is_some() {
                            h.errors += 1; // a delete this task just made must hold
                        }
                    }
                    _ => {
                        let k = (r >> 8) as usize % keys;
                        cache.get_ttl(&key(k)).await;
                    }
                }
                h.ops += 1;
                if h.ops % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            for (i, l) in local.into_iter().enumerate() {
                let mut g = hists[i].lock().unwrap();
                g.get.add(&l.get).unwrap();
                g.open_get.add(&l.open_get).unwrap();
                g.l1_hit.add(&l.l1_hit).unwrap();
                g.ops += l.ops;
                g.errors += l.errors;
            }
            (last, outage_deletes)
        }));
    }

    tokio::time::sleep(p.phase).await; // healthy
    phase_idx.store(1, Relaxed);
    redis.freeze();
    tokio::time::sleep(p.phase).await; // frozen
    phase_idx.store(2, Relaxed);
    redis.kill();
    tokio::time::sleep(p.phase).await; // down
    redis.restart();
    let back = Instant::now();
    phase_idx.store(3, Relaxed);
    // Wait for the breaker to close (a bounded wait, not a check on speed).
    let closed = async {
        while cache.breaker_state() != CircuitState::Closed {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(60), closed).await;
    let recovery_ms = back.elapsed().as_millis() as u64;
    tokio::time::sleep(p.phase).await; // recovered
    stop.store(true, Relaxed);

    let mut panics = 0;
    let mut last_ops: HashMap<usize, Last> = HashMap::new();
    let mut outage_deletes: HashSet<usize> = HashSet::new();
    for h in handles {
        match h.await {
            Ok((last, deleted)) => {
                last_ops.extend(last);
                outage_deletes.extend(deleted);
            }
            Err(_) => panics += 1,
        }
    }

    // Let the replay finish, then compare L2 with the last operation on each key.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cache.get_stats().await.recovery.queue_depth > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let checker_service = CacheService::new(config).await.unwrap();
    let checker: Cache<u64> = checker_service
        .create_cache(
            CacheOptions::new("chaos")
                .l2_ttl(Duration::from_secs(3600))
                .l1_enabled(false),
        )
        .unwrap();
    let (mut resurrected, mut lost, mut deletes, mut writes) = (0, 0, 0, 0);
    for (k, last) in &last_ops {
        let in_l2 = checker.get(&key(*k)).await;
        match last {
            Last::Deleted => {
                deletes += 1;
                resurrected += in_l2.is_some() as u64;
            }
            Last::Set(v) => {
                writes += 1;
                lost += (in_l2.as_deref() != Some(v)) as u64;
            }
        }
    }

    let mut outage_resurrected = 0;
    for k in &outage_deletes {
        outage_resurrected += checker.get(&key(*k)).await.is_some() as u64;
    }

    let stats = cache.get_stats().await;
    let mut phases = Vec::new();
    let mut total_errors = 0;
    for (i, name) in PHASES.iter().enumerate() {
        let h = hists[i].lock().unwrap();
        total_errors += h.errors;
        phases.push(PhaseReport {
            name,
            ops: h.ops,
            get_p50_us: h.get.value_at_quantile(0.5),
            get_p99_us: h.get.value_at_quantile(0.99),
            get_max_us: h.get.max(),
            open_get_p99_us: (!h.open_get.is_empty()).then(|| h.open_get.value_at_quantile(0.99)),
            l1_hit_get_p99_us: h.l1_hit.value_at_quantile(0.99),
            caller_errors: h.errors,
        });
    }
    ChaosReport {
        op_timeout_ms: p.op_timeout.as_millis() as u64,
        breaker_timeout_ms: p.breaker_timeout.as_millis() as u64,
        tasks: p.tasks,
        keys: p.keys,
        phases,
        caller_errors_total: total_errors,
        panics,
        recovery_ms,
        resurrected_deletes: resurrected,
        outage_deletes_checked: outage_deletes.len() as u64,
        outage_deletes_resurrected: outage_resurrected,
        lost_writes: lost,
        deletes_checked: deletes,
        writes_checked: writes,
        replayed: stats.recovery.replayed,
        breaker_transitions: stats.circuit_breaker.transitions,
    }
}
