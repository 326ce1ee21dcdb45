//! The main demo: `cargo run --example quickstart`.
//!
//! Works with no Redis at all (L1 only: degraded but alive) and uses Redis when
//! `CACHE_REDIS_URL` or `CACHE_REDIS_HOST`/`CACHE_REDIS_PORT` point at one (the
//! default is localhost:6379). Exits 0 in both cases.

use std::time::{Duration, Instant};

use resilient_cache::{CacheFactoryConfig, CacheOptions, CacheService, CircuitState};
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
    println!("get_ttl(\"1\"): {:?}", users.get_ttl("1").await);
    println!("list_keys(None): {:?}", users.list_keys(None).await);

    println!("\nMisses on keys nobody has (each one asks L2 while the breaker allows it):");
    for i in 0..5 {
        users.get(&format!("nobody-{i}")).await;
        println!(
            "  after miss {}: breaker {}",
            i + 1,
            users.breaker_state().as_str()
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
        println!(
            "  L2 ({}) {}  available {}  keys in namespace {:?}",
            l2.backend, l2.endpoint, l2.available, l2.size
        );
    }
    let cb = &stats.circuit_breaker;
    println!(
        "  circuit breaker: {}  failures {}/{}  L2 errors: {} connection, {} timeout, {} skipped",
        cb.state.as_str(),
        cb.failure_count,
        cb.threshold,
        stats.errors.l2_connection,
        stats.errors.l2_timeout,
        stats.errors.l2_skipped
    );

    let report = users.clear().await;
    println!(
        "\nclear: {} L1 entries and {} L2 keys removed; L2 cleared: {} ({:?})",
        report.l1_items_removed, report.l2_items_removed, report.l2_cleared, report.l2_status
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
