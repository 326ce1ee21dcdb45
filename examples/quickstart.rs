//! The main demo: `cargo run --example quickstart`.
//!
//! Works with no Redis at all (L1 only: degraded but alive) and uses Redis when
//! `CACHE_REDIS_URL` or `CACHE_REDIS_HOST`/`CACHE_REDIS_PORT` point at one (the
//! default is localhost:6379). Exits 0 in both cases.

use std::time::{Duration, Instant};

use resilient_cache::{CacheFactoryConfig, CacheOptions, CacheService, CircuitState, L2ClearStatus};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    email: String,
}

/// Stands in for a slow database.
async fn load_user(id: u64) -> User {
    tokio::time::sleep(Duration::from_millis(20)).await;
    User {
        id,
        name: format!("user-{id}"),
        email: format!("user-{id}@example.com"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = CacheFactoryConfig::from_env()?;
    if std::env::var_os("CACHE_REDIS_SOCKET_TIMEOUT").is_none() {
        // A demo should not sit for the 5 s default if the host swallows packets.
        config.redis.socket_timeout = Duration::from_secs(1);
        config.redis.connect_timeout = Duration::from_secs(1);
    }
    let service = CacheService::new(config).await?;
    println!("resilient-cache quickstart");
    println!("  L2 endpoint: {}", service.factory().config().redis.endpoint());
    let l2_up = match service.ping().await {
        Ok(rtt) => {
            println!("  L2 is available (PING {} us): two-level mode", rtt.as_micros());
            true
        }
        Err(e) => {
            println!("  L2 is unavailable ({e})");
            println!("  -> running on L1 only: degraded but alive");
            false
        }
    };

    let users = service.create_cache::<User>(
        CacheOptions::new("quickstart-users")
            .l2_ttl(Duration::from_secs(300))
            .l1_ttl(Duration::from_secs(30))
            .circuit_breaker_threshold(3)
            .circuit_breaker_timeout(Duration::from_secs(5)),
    )?;

    println!("\nRead-through, three rounds over users 1..=3:");
    for round in 1..=3 {
        for id in 1..=3u64 {
            let key = id.to_string();
            let t = Instant::now();
            let (user, source) = match users.get(&key).await {
                Some(u) => (u, "cache"),
                None => {
                    let u = load_user(id).await;
                    users.set(&key, u.clone()).await;
                    (std::sync::Arc::new(u), "database")
                }
            };
            println!(
                "  round {round} user {id}: {:<10} from {:<8} in {:>7} us",
                user.name,
                source,
                t.elapsed().as_micros()
            );
        }
    }

    let first = users
        .set_if_not_exist("lock:report", load_user(99).await, None)
        .await;
    let second = users
        .set_if_not_exist("lock:report", load_user(98).await, None)
        .await;
    println!("\nset_if_not_exist: first call stored={first}, second call stored={second}");
    match users.get_ttl("1").await {
        Some(ttl) => println!("get_ttl(\"1\"): {:.1} s left", ttl.as_secs_f64()),
        None => println!("get_ttl(\"1\"): absent"),
    }
    println!("list_keys(): {}", users.list_keys(None).await.join(", "));

    // A cache with a breaker of its own starts closed, so each miss below
    // shows what the breaker makes of it (the `users` cache's breaker has
    // already seen the calls above).
    let probes = service.create_cache::<User>(
        CacheOptions::new("quickstart-probes")
            .l2_ttl(Duration::from_secs(300))
            .circuit_breaker_threshold(3)
            .circuit_breaker_timeout(Duration::from_secs(5)),
    )?;
    println!("\nMisses on keys nobody has, on a cache whose breaker opens after 3 failures:");
    let mut before = CircuitState::Closed;
    for i in 0..5 {
        probes.get(&format!("nobody-{i}")).await;
        // The breaker itself, not get_stats: stats would ask L2 too.
        let cb = probes.circuit_breaker();
        let what = match (before, cb.state()) {
            (_, CircuitState::Closed) if l2_up => "L2 answered (a miss is an answer)".to_string(),
            (_, CircuitState::Closed) => format!("L2 failed, {} of 3 failures", cb.failure_count()),
            (CircuitState::Open, CircuitState::Open) => "L2 skipped: no call, no wait".to_string(),
            (_, CircuitState::Open) => "L2 failed a third time: skipped from now on".to_string(),
            (_, CircuitState::HalfOpen) => "probing L2".to_string(),
        };
        before = cb.state();
        println!(
            "  after miss {}: breaker {:<6} {what}",
            i + 1,
            cb.state().as_str()
        );
    }

    let stats = users.get_stats().await;
    let l1 = stats.l1.as_ref().expect("L1 is on");
    println!("\nStats:");
    println!(
        "  L1 ({}) size {}/{}  hits {}  misses {}  hit rate {:.0}%",
        l1.backend,
        l1.size,
        l1.maxsize,
        l1.hits,
        l1.misses,
        l1.hit_rate * 100.0
    );
    if let Some(l2) = &stats.l2 {
        let keys = l2
            .size
            .map_or("not asked (L2 unavailable)".to_string(), |n| n.to_string());
        println!(
            "  L2 ({}) {}  available {}  keys in namespace: {keys}",
            l2.backend, l2.endpoint, l2.available
        );
    }
    let cb = &stats.circuit_breaker;
    let e = &stats.errors;
    let errors: Vec<String> = [
        ("refused", e.l2_refused),
        ("timeout", e.l2_timeout),
        ("connection", e.l2_connection),
        ("authentication", e.l2_auth),
        ("skipped (breaker open)", e.l2_skipped),
    ]
    .iter()
    .filter(|(_, n)| *n > 0)
    .map(|(what, n)| format!("{n} {what}"))
    .collect();
    println!(
        "  circuit breaker: {} ({} consecutive failures; opens at {})",
        cb.state.as_str(),
        cb.failure_count,
        cb.threshold
    );
    println!(
        "  L2 calls that failed or were skipped: {}",
        if errors.is_empty() {
            "none".to_string()
        } else {
            errors.join(", ")
        }
    );

    let report = users.clear().await;
    let l2_clear = match report.l2_status {
        L2ClearStatus::Cleared => "cleared",
        L2ClearStatus::SkippedBreakerOpen => "skipped (breaker open): it will be cleared when L2 is back",
        L2ClearStatus::Failed => "failed: it will be cleared when L2 is back",
        L2ClearStatus::Deferred => "queued behind the writes waiting for L2",
        L2ClearStatus::Disabled => "no L2",
    };
    println!(
        "\nclear: {} L1 entries and {} L2 keys removed; L2 {l2_clear}",
        report.l1_items_removed, report.l2_items_removed
    );
    if !l2_up {
        assert_ne!(
            cb.state,
            CircuitState::Closed,
            "without Redis the breaker should have opened"
        );
        println!("\nNo Redis: every call above was answered from L1, none failed.");
        println!("Start one (redis-server --port 6379) and run again to see L2 in use.");
    }
    Ok(())
}
