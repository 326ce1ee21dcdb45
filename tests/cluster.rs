//! L2 on a real Redis Cluster (3 primaries + 3 replicas) and on a real
//! Sentinel set-up (1 primary, 1 replica, 3 sentinels): every operation,
//! SCAN over every primary, and failover without errors or restarts.

use resilient_cache_testkit as common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::eventually;
use common::topology::{RedisCluster, RedisSentinels};
use resilient_cache::{Cache, CacheFactoryConfig, CacheOptions, CacheService, CircuitState, LoadOptions};

/// Tasks reading (expecting the value set before) and writing `keys` in a
/// loop, each call under a 10 s hang guard, until `finish`.
struct Callers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
}

fn spawn_callers(c: &Cache<String>, keys: &[String]) -> Callers {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = (0..4)
        .map(|_| {
            let (c, keys, stop) = (c.clone(), keys.to_vec(), stop.clone());
            tokio::spawn(async move {
                let mut rounds = 0;
                while !stop.load(SeqCst) {
                    for k in &keys {
                        let got = tokio::time::timeout(Duration::from_secs(10), c.get(k))
                            .await
                            .expect("bounded");
                        assert!(got.is_some(), "{k} is served during the failover");
                        tokio::time::timeout(Duration::from_secs(10), c.set(k, (*got.unwrap()).clone()))
                            .await
                            .expect("bounded");
                    }
                    rounds += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                rounds
            })
        })
        .collect();
    Callers { stop, tasks }
}

impl Callers {
    async fn finish(self) -> u64 {
        self.stop.store(true, SeqCst);
        let mut total = 0;
        for t in self.tasks {
            total += t.await.expect("no caller panicked");
        }
        total
    }
}

fn opts(prefix: &str) -> CacheOptions {
    CacheOptions::new(prefix)
        .l2_ttl(Duration::from_secs(300))
        .serializer("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_works_on_a_cluster_and_scans_every_primary() {
    let cluster = RedisCluster::start();
    let service = CacheService::new(cluster.config()).await.unwrap();
    let users = service.create_cache::<String>(opts("users")).unwrap();
    // Another instance's view, without L1 (one service has one cache per namespace).
    let reader = CacheService::new(cluster.config()).await.unwrap();
    let l2_only = reader
        .create_cache::<String>(opts("users").l1_enabled(false))
        .unwrap();
    let other = service.create_cache::<String>(opts("other")).unwrap();

    let keys: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    for k in &keys {
        users.set(k, format!("v-{k}")).await;
    }
    other.set("o1", "x".to_string()).await;
    // Keys spread over all three primaries.
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    for &p in &primaries {
        let n = cluster
            .keys_on(p)
            .iter()
            .filter(|k| k.starts_with("users:"))
            .count();
        assert!(n > 30, "primary {p} holds {n} of the namespace's keys");
    }
    // Reads route by slot (L1 off: every read is an L2 GET).
    for k in &keys {
        assert_eq!(l2_only.get(k).await.as_deref(), Some(&format!("v-{k}")), "{k}");
    }
    assert_eq!(l2_only.get_stats().await.errors.l2_connection, 0);
    assert!(l2_only
        .get_ttl("user-1")
        .await
        .is_some_and(|t| t > Duration::from_secs(200)));
    assert!(!users.set_if_not_exist("user-1", "again".into(), None).await);
    assert!(users.set_if_not_exist("fresh", "new".into(), None).await);
    assert!(users.delete("fresh").await);
    assert!(!l2_only.is_on_cache("fresh").await);

    // list_keys and get_size: the union over every primary.
    let listed: BTreeSet<String> = l2_only.list_keys(None).await.into_iter().collect();
    assert_eq!(listed, keys.iter().cloned().collect::<BTreeSet<_>>());
    assert_eq!(l2_only.list_keys(Some("user-29")).await.len(), 11); // user-29, user-290..299
    let stats = l2_only.get_stats().await;
    assert_eq!(stats.l2.unwrap().size, Some(300));

    // get_or_load with the distributed lock: the lease shares the key's slot.
    let loaded = users
        .get_or_load_with("loaded", &LoadOptions::new().distributed_lock(true), || async {
            Ok::<_, std::io::Error>("from-db".to_string())
        })
        .await
        .unwrap();
    assert_eq!(*loaded, "from-db");
    assert_eq!(
        l2_only.get("loaded").await.as_deref().map(String::as_str),
        Some("from-db")
    );

    // clear: the namespace on every primary, and nothing else.
    let report = users.clear().await;
    assert!(report.l2_cleared, "{report:?}");
    assert_eq!(report.l2_items_removed, 301);
    assert_eq!(
        users.get_stats().await.errors.l2_connection,
        0,
        "no CROSSSLOT or other error"
    );
    for &p in &primaries {
        assert!(
            !cluster.keys_on(p).iter().any(|k| k.starts_with("users:")),
            "primary {p} still holds users:*"
        );
    }
    assert_eq!(other.get("o1").await.as_deref().map(String::as_str), Some("x"));
    assert_eq!(users.breaker_state(), CircuitState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backplane_works_on_a_cluster() {
    let cluster = RedisCluster::start();
    let a = CacheService::new(cluster.config()).await.unwrap();
    let b = CacheService::new(cluster.config()).await.unwrap();
    let ca = a.create_cache::<String>(opts("bp")).unwrap();
    let cb = b.create_cache::<String>(opts("bp")).unwrap();
    for c in [&ca, &cb] {
        assert!(
            eventually(Duration::from_secs(10), async || {
                c.get_stats().await.backplane.is_some_and(|s| s.connected)
            })
            .await
        );
    }
    ca.set("k", "v1".into()).await;
    assert_eq!(cb.get("k").await.as_deref().map(String::as_str), Some("v1")); // now in B's L1
    ca.set("k", "v2".into()).await;
    assert!(
        eventually(Duration::from_secs(5), async || {
            cb.get("k").await.as_deref().map(String::as_str) == Some("v2")
        })
        .await,
        "B's L1 copy was invalidated through the cluster's pub/sub"
    );
}

/// A service whose breaker opens after 3 failures and probes after 1 s, so a
/// failover's outage is short-circuited and its end noticed soon.
async fn failing_over_service(mut config: CacheFactoryConfig) -> CacheService {
    config.circuit_breaker.threshold = 3;
    config.circuit_breaker.timeout = Duration::from_secs(1);
    CacheService::new(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_cluster_primary_costs_no_errors_and_l2_comes_back_after_failover() {
    let cluster = RedisCluster::start();
    let service = failing_over_service(cluster.config()).await;
    let c = service.create_cache::<String>(opts("fo")).unwrap();
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    for k in &keys {
        c.set(k, "before".into()).await;
    }
    let victim = cluster.owner_of("fo:k0").expect("k0 is stored");
    let victim_keys: Vec<String> = keys
        .iter()
        .filter(|k| cluster.keys_on(victim).contains(&format!("fo:{k}")))
        .cloned()
        .collect();
    assert!(!victim_keys.is_empty());

    // Callers run through the whole failover: every call returns (bounded),
    // and reads of cached keys are served (from L1 while L2 is off).
    let callers = spawn_callers(&c, &keys);
    let mut cluster = cluster;
    cluster.nodes[victim].kill();
    // Written while the primary is dead (the callers never touch these keys):
    // only the outage replay can bring them to the promoted replica.
    let during: Vec<String> = (0..30).map(|i| format!("d{i}")).collect();
    for k in &during {
        c.set(k, "during".into()).await;
    }
    assert!(c.get_stats().await.recovery.queue_depth > 0, "writes wait for L2");
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_failover();
        cluster
    })
    .await
    .unwrap();
    let rounds = callers.finish().await;
    assert!(rounds >= 1, "callers kept going during the failover");

    // After the promotion, writes and reads of the dead primary's slots go through L2 again.
    let moved = &victim_keys[0];
    assert!(
        eventually(Duration::from_secs(20), async || {
            c.set(moved, "through-l2".into()).await;
            cluster.owner_of(&format!("fo:{moved}")).is_some_and(|i| {
                cluster.nodes[i].get_raw(&format!("fo:{moved}")) == Some(b"\"through-l2\"".to_vec())
            })
        })
        .await,
        "the promoted replica took the write"
    );
    assert!(
        eventually(Duration::from_secs(10), async || c.breaker_state()
            == CircuitState::Closed)
        .await
    );
    // The writes made during the outage were replayed into every primary,
    // the promoted replica included.
    assert!(
        eventually(Duration::from_secs(20), async || {
            during.iter().all(|k| {
                let raw = format!("fo:{k}");
                cluster.owner_of(&raw).map(|i| cluster.nodes[i].get_raw(&raw))
                    == Some(Some(b"\"during\"".to_vec()))
            })
        })
        .await,
        "{:?}",
        c.get_stats().await.recovery
    );
    assert!(c.get_stats().await.recovery.replayed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_mode_follows_a_failover_without_restart() {
    let set = RedisSentinels::start();
    let service = failing_over_service(set.config()).await;
    let c = service.create_cache::<String>(opts("sen")).unwrap();
    c.set("a", "1".into()).await;
    assert_eq!(
        set.primary.get_raw("sen:a"),
        Some(b"\"1\"".to_vec()),
        "written to the primary"
    );
    assert!(service.health().await.is_healthy());

    let callers = spawn_callers(&c, &["a".to_string()]);
    let mut set = set;
    set.primary.kill();
    // Written while no primary answers: only the outage replay can bring
    // them to the promoted replica.
    for i in 0..20 {
        c.set(&format!("w{i}"), "x".into()).await;
    }
    assert!(
        c.get_stats().await.recovery.queue_depth >= 20,
        "writes wait for L2"
    );
    let set = tokio::task::spawn_blocking(move || {
        set.wait_failover();
        set
    })
    .await
    .unwrap();
    let rounds = callers.finish().await;
    assert!(rounds >= 1, "callers kept going during the failover");
    assert!(
        eventually(Duration::from_secs(20), async || {
            c.set("b", "2".into()).await;
            set.replica.get_raw("sen:b") == Some(b"\"2\"".to_vec())
        })
        .await,
        "writes reach the promoted replica"
    );
    assert!(
        eventually(Duration::from_secs(10), async || service
            .health()
            .await
            .is_healthy())
        .await
    );
    // Writes made while L2 was unreachable were replayed into the new primary.
    assert!(
        eventually(Duration::from_secs(10), async || {
            (0..20).all(|i| set.replica.get_raw(&format!("sen:w{i}")).is_some())
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_and_namespace_invalidation_work_on_a_cluster() {
    let cluster = RedisCluster::start();
    let a = CacheService::new(cluster.config()).await.unwrap();
    let b = CacheService::new(cluster.config()).await.unwrap();
    let ca = a.create_cache::<String>(opts("ctag")).unwrap();
    let cb = b.create_cache::<String>(opts("ctag")).unwrap();
    for c in [&ca, &cb] {
        assert!(
            eventually(Duration::from_secs(10), async || {
                c.get_stats().await.backplane.is_some_and(|s| s.connected)
            })
            .await
        );
    }
    // Keys on every primary, half of them tagged.
    let keys: Vec<String> = (0..60).map(|i| format!("k{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let tag = if i % 2 == 0 { "even" } else { "odd" };
        ca.set_with_tags(k, format!("v{i}"), &[tag]).await;
        assert!(cb.get(k).await.is_some(), "{k} in B's L1");
    }
    let owners: BTreeSet<_> = keys
        .iter()
        .filter_map(|k| cluster.owner_of(&format!("ctag:{k}")))
        .collect();
    assert_eq!(owners.len(), 3, "the keys span every primary");
    ca.remove_by_tag("even").await.unwrap();
    let gone = eventually(Duration::from_secs(5), async || {
        let mut all = true;
        for (i, k) in keys.iter().enumerate() {
            all &= cb.get(k).await.is_some() == (i % 2 == 1);
        }
        all
    })
    .await;
    assert!(gone, "B: the even keys are gone, the odd ones are kept");
    let c = CacheService::new(cluster.config()).await.unwrap();
    let cc = c.create_cache::<String>(opts("ctag")).unwrap();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(cc.get(k).await.is_some(), i % 2 == 1, "{k} on a later instance");
    }
    cb.invalidate_all().await;
    for cache in [&ca, &cb, &cc] {
        assert!(
            eventually(Duration::from_secs(5), async || cache.get("k1").await.is_none()).await,
            "the whole namespace, on every instance"
        );
    }
    ca.set("k1", "after".into()).await;
    assert!(
        eventually(Duration::from_secs(5), async || {
            cc.get("k1").await.as_deref().map(String::as_str) == Some("after")
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_removal_survives_a_sentinel_failover() {
    let set = RedisSentinels::start();
    let service = failing_over_service(set.config()).await;
    let c = service.create_cache::<String>(opts("sentag")).unwrap();
    for i in 0..10 {
        c.set_with_tags(&format!("k{i}"), "v".into(), &["gone"]).await;
    }
    c.set_with_tags("kept", "v".into(), &["stays"]).await;
    c.remove_by_tag("gone").await.unwrap();
    // Replicated before the primary dies (replication is asynchronous).
    assert!(
        eventually(Duration::from_secs(10), async || {
            set.replica
                .cmd::<Option<String>>(&["HGET", "rc:marks:{sentag}", "r:gone"])
                .is_some()
                && set.replica.get_raw("sentag:kept").is_some()
        })
        .await
    );
    let mut set = set;
    set.primary.kill();
    let set = tokio::task::spawn_blocking(move || {
        set.wait_failover();
        set
    })
    .await
    .unwrap();
    let later = failing_over_service(set.config()).await;
    let cl = later.create_cache::<String>(opts("sentag")).unwrap();
    assert!(
        eventually(Duration::from_secs(20), async || {
            cl.get("kept").await.is_some()
        })
        .await,
        "the promoted replica answers"
    );
    for i in 0..10 {
        assert_eq!(
            cl.get(&format!("k{i}")).await,
            None,
            "k{i} stays removed after the failover"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_on_a_cluster_send_one_pipeline_per_primary() {
    let cluster = RedisCluster::start();
    let service = CacheService::new(cluster.config()).await.unwrap();
    let c = service.create_cache::<String>(opts("batch")).unwrap();
    let reader = CacheService::new(cluster.config()).await.unwrap();
    let l2_only = reader
        .create_cache::<String>(opts("batch").l1_enabled(false))
        .unwrap();
    let keys: Vec<String> = (0..100).map(|i| format!("item-{i}")).collect();
    c.set_many(keys.iter().map(|k| (k.clone(), format!("v-{k}"))))
        .await;
    let primaries = cluster.primaries();
    for &p in &primaries {
        let n = cluster
            .keys_on(p)
            .iter()
            .filter(|k| k.starts_with("batch:"))
            .count();
        assert!(n > 10, "primary {p} holds {n} of the batch");
    }
    // The first batch reads the slot table; count the ones after it.
    assert_eq!(l2_only.get_many(&keys[..1]).await.len(), 1);
    let conn = reader.factory().connection();
    let before = conn.round_trips();
    let found = l2_only.get_many(&keys).await;
    let trips = conn.round_trips() - before;
    assert!(
        found
            .iter()
            .zip(&keys)
            .all(|(v, k)| v.as_deref() == Some(&format!("v-{k}"))),
        "every key read back across the slots: {:?} {:?}",
        &found[..3],
        l2_only.get_stats().await.errors
    );
    assert!(
        trips as usize <= primaries.len(),
        "{trips} round trips for {} primaries",
        primaries.len()
    );
    // The writer's first moments end with a check of what its L1 took in
    // (one read per node): done before counting.
    let settled = eventually(Duration::from_secs(10), async || {
        c.tracking_stats().is_some_and(|t| t.connected)
    })
    .await;
    assert!(settled, "{:?}", c.tracking_stats());
    let writer = service.factory().connection();
    let before = writer.round_trips();
    c.set_many(keys.iter().map(|k| (k.as_str(), "again".to_string())))
        .await;
    assert!(
        (writer.round_trips() - before) as usize <= primaries.len() + 1,
        "writes pipelined per node (and one announcement)"
    );
    assert_eq!(c.delete_many(&keys).await, 100);
    for &p in &primaries {
        assert!(
            !cluster.keys_on(p).iter().any(|k| k.starts_with("batch:")),
            "primary {p}"
        );
    }
    let s = l2_only.get_stats().await;
    assert_eq!(
        s.errors.l2_connection, 0,
        "no CROSSSLOT or other error: {:?}",
        s.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_follows_a_sentinel_failover() {
    let set = RedisSentinels::start();
    let service = failing_over_service(set.config()).await;
    let c = service.create_cache::<String>(opts("sentrk")).unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            c.tracking_stats().is_some_and(|t| t.connected)
        })
        .await
    );
    c.set("k", "v1".into()).await;
    let _: () = set.primary.cmd(&["SET", "sentrk:k", "\"v2\""]);
    assert!(
        eventually(Duration::from_secs(5), async || {
            c.get("k").await.as_deref().map(String::as_str) == Some("v2")
        })
        .await,
        "a foreign write on the primary evicts L1"
    );
    let before = c.tracking_stats().unwrap().loss_clears;
    let mut set = set;
    set.primary.kill();
    let set = tokio::task::spawn_blocking(move || {
        set.wait_failover();
        set
    })
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(30), async || {
            c.set("probe", "p".into()).await;
            let t = c.tracking_stats().unwrap();
            t.connected && t.loss_clears > before
        })
        .await,
        "tracking re-established on the promoted replica, L1 cleared: {:?}",
        c.tracking_stats()
    );
    c.set("k", "v3".into()).await;
    assert_eq!(c.get("k").await.as_deref().map(String::as_str), Some("v3"));
    let _: () = set.replica.cmd(&["SET", "sentrk:k", "\"v4\""]);
    assert!(
        eventually(Duration::from_secs(5), async || {
            c.get("k").await.as_deref().map(String::as_str) == Some("v4")
        })
        .await,
        "a foreign write on the new primary evicts L1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_covers_every_cluster_primary_and_follows_a_primary_kill() {
    let cluster = RedisCluster::start();
    let service = failing_over_service(cluster.config()).await;
    let c = service.create_cache::<String>(opts("cltrk")).unwrap();
    assert!(c.backplane_stats().is_some(), "both sources by default");
    assert!(
        eventually(Duration::from_secs(10), async || {
            c.tracking_stats().is_some_and(|t| t.connected)
        })
        .await,
        "one link per primary set up: {:?}",
        c.tracking_stats()
    );
    let keys: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
    for k in &keys {
        c.set(k, "mine".into()).await;
    }
    // Each primary holds some of the keys: a foreign write on each one
    // evicts this instance's L1 copy.
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    let mut foreign = Vec::new();
    for &p in &primaries {
        let held = cluster.keys_on(p);
        let k = keys
            .iter()
            .find(|k| held.contains(&format!("cltrk:{k}")))
            .unwrap_or_else(|| panic!("node {p} holds one of the keys"));
        foreign.push((p, k.clone()));
    }
    for (p, k) in &foreign {
        let _: () = cluster.nodes[*p].cmd(&["SET", &format!("cltrk:{k}"), "\"foreign\""]);
    }
    for (p, k) in &foreign {
        assert!(
            eventually(Duration::from_secs(5), async || {
                c.get(k).await.as_deref().map(String::as_str) == Some("foreign")
            })
            .await,
            "a foreign write on node {p} evicts L1 ({k})"
        );
    }
    // Each node announces in order: had the 30 own writes (made before) been
    // announced back, they would have arrived before the foreign ones.
    assert_eq!(
        c.tracking_stats().unwrap().keys_invalidated,
        foreign.len() as u64,
        "own writes are not announced back (NOLOOP on every primary's data connection)"
    );

    // A load's fenced store is a script, announced back by each node: its
    // link confirms it with a GET routed to that node, and L1 keeps it.
    for i in 0..12 {
        let v = c
            .get_or_load(&format!("loaded{i}"), async move || {
                Ok::<_, std::io::Error>(format!("v{i}"))
            })
            .await
            .unwrap();
        assert_eq!(v.as_str(), format!("v{i}"));
    }
    assert!(
        eventually(Duration::from_secs(5), async || {
            c.tracking_stats().unwrap().own_stores_confirmed >= 12
        })
        .await,
        "{:?}",
        c.tracking_stats()
    );
    assert_eq!(
        c.tracking_stats().unwrap().keys_invalidated,
        foreign.len() as u64,
        "loaded values stay in L1"
    );

    // A primary dies: its replica takes over the slots, gets a link, and
    // every tracked L1 is cleared once that link is set up.
    let (victim, moved) = foreign[0].clone();
    let before = c.tracking_stats().unwrap().loss_clears;
    let mut cluster = cluster;
    cluster.nodes[victim].kill();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_failover();
        cluster
    })
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(30), async || {
            let t = c.tracking_stats().unwrap();
            t.connected && t.loss_clears > before
        })
        .await,
        "tracking set up on the promoted replica, L1 cleared: {:?}",
        c.tracking_stats()
    );
    assert!(
        eventually(Duration::from_secs(20), async || {
            c.set(&moved, "mine again".into()).await;
            c.get(&moved).await.as_deref().map(String::as_str) == Some("mine again")
                && cluster.owner_of(&format!("cltrk:{moved}")).is_some()
        })
        .await
    );
    let owner = cluster.owner_of(&format!("cltrk:{moved}")).unwrap();
    assert_ne!(owner, victim);
    let _: () = cluster.nodes[owner].cmd(&["SET", &format!("cltrk:{moved}"), "\"foreign again\""]);
    assert!(
        eventually(Duration::from_secs(5), async || {
            c.get(&moved).await.as_deref().map(String::as_str) == Some("foreign again")
        })
        .await,
        "a foreign write on the new primary evicts L1"
    );
}
