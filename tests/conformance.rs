//! The public conformance suite (`testing::conformance`) against every
//! built-in backend — on real servers for L2 — and against deliberately
//! broken backends, which it must catch with a message that names the rule.

use resilient_cache_testkit as common;

use std::sync::Arc;
use std::time::Duration;

use common::topology::{RedisCluster, RedisSentinels};
use common::RedisServer;
use resilient_cache::backend::memory::{LruBackend, TtlBackend};
use resilient_cache::backend::redis::{RedisBackend, RedisConnection};
use resilient_cache::backend::L2Stats;
use resilient_cache::testing::conformance::{self, Options, Report};
use resilient_cache::testing::MemoryL2;
use resilient_cache::{CacheBackend, CacheFactoryConfig, L1BackendKind, L1Config, L2BackendKind, L2Config};

fn bytes(i: u32) -> Vec<u8> {
    i.to_be_bytes().to_vec()
}

fn l1_config(backend: L1BackendKind) -> L1Config {
    L1Config {
        backend,
        maxsize: 1000,
        ttl: Duration::from_secs(60),
        fail_safe: Duration::ZERO,
    }
}

fn redis_backend(config: &CacheFactoryConfig, kind: L2BackendKind, prefix: &str) -> Arc<RedisBackend> {
    let conn = RedisConnection::new(&config.redis).unwrap();
    let l2 = L2Config {
        backend: kind,
        key_prefix: prefix.into(),
        ttl: Duration::from_secs(60),
        lease_fence: true,
    };
    Arc::new(RedisBackend::new(conn, &l2, "msgpack"))
}

async fn check_l2<B: CacheBackend<Value = Vec<u8>>>(backend: Arc<B>) -> Report {
    conformance::check(backend, Options::default(), bytes).await
}

#[tokio::test]
async fn memory_l1_backends_conform() {
    let ttl = Arc::new(TtlBackend::new(&l1_config(L1BackendKind::Ttl)));
    conformance::check(ttl, Options::default(), Arc::new)
        .await
        .assert_ok();
    let lru = Arc::new(LruBackend::new(&l1_config(L1BackendKind::Lru)));
    let no_expiry = Options {
        expires: false,
        ..Options::default()
    };
    let report = conformance::check(lru, no_expiry, Arc::new).await;
    report.assert_ok();
    assert_eq!(report.passed, conformance::RULES, "every rule ran");
}

#[tokio::test]
async fn redis_and_valkey_backends_conform() {
    let redis = RedisServer::start();
    let config = redis.config();
    check_l2(redis_backend(&config, L2BackendKind::Redis, "conf"))
        .await
        .assert_ok();
    check_l2(redis_backend(&config, L2BackendKind::Valkey, "conf2"))
        .await
        .assert_ok();
    // The suite clears only its own namespace.
    redis.set_raw("other:k", b"kept");
    check_l2(redis_backend(&config, L2BackendKind::Redis, "conf"))
        .await
        .assert_ok();
    assert_eq!(redis.get_raw("other:k").as_deref(), Some(&b"kept"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_backend_conforms() {
    let cluster = RedisCluster::start();
    check_l2(redis_backend(&cluster.config(), L2BackendKind::Redis, "conf"))
        .await
        .assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_backend_conforms() {
    let set = RedisSentinels::start();
    check_l2(redis_backend(&set.config(), L2BackendKind::Redis, "conf"))
        .await
        .assert_ok();
}

#[tokio::test]
async fn in_memory_l2_conforms() {
    check_l2(Arc::new(MemoryL2::new())).await.assert_ok();
}

/// An L2 stand-in that breaks one rule on demand, over a backend that keeps them all.
struct Broken {
    inner: MemoryL2,
    flaw: Flaw,
    /// The markers of `Flaw::LastMarkerWins`.
    markers: std::sync::Mutex<Vec<(String, u64)>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Flaw {
    /// `list_keys` reads `*` and `?` as patterns (a forgotten escape).
    GlobListKeys,
    /// `set_if_not_exist` looks, then writes (two racers can both win).
    CheckThenSet,
    /// `list_keys` returns keys with the namespace still on.
    PrefixedKeys,
    /// `get` panics on an empty key.
    PanicsOnEmptyKey,
    /// `put_marker` overwrites a newer stamp with an older one.
    LastMarkerWins,
}

impl CacheBackend for Broken {
    type Value = Vec<u8>;
    type Stats = L2Stats;

    async fn get(&self, key: &str) -> resilient_cache::Result<Option<Vec<u8>>> {
        if self.flaw == Flaw::PanicsOnEmptyKey && key.is_empty() {
            panic!("empty key");
        }
        self.inner.get(key).await
    }
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> resilient_cache::Result<()> {
        self.inner.set(key, value, ttl).await
    }
    async fn set_if_not_exist(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> resilient_cache::Result<bool> {
        if self.flaw == Flaw::CheckThenSet {
            if self.inner.exists(key).await? {
                return Ok(false);
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.inner.set(key, value, ttl).await?;
            return Ok(true);
        }
        self.inner.set_if_not_exist(key, value, ttl).await
    }
    async fn delete(&self, key: &str) -> resilient_cache::Result<bool> {
        self.inner.delete(key).await
    }
    async fn clear(&self) -> resilient_cache::Result<u64> {
        self.inner.clear().await
    }
    async fn exists(&self, key: &str) -> resilient_cache::Result<bool> {
        self.inner.exists(key).await
    }
    async fn get_ttl(&self, key: &str) -> resilient_cache::Result<Option<Duration>> {
        self.inner.get_ttl(key).await
    }
    async fn list_keys(&self, prefix: Option<&str>) -> resilient_cache::Result<Vec<String>> {
        let all = self.inner.list_keys(None).await?;
        Ok(match (self.flaw, prefix) {
            (Flaw::GlobListKeys, Some(p)) => {
                let literal = p.split(['*', '?']).next().unwrap_or("");
                all.into_iter().filter(|k| k.starts_with(literal)).collect()
            }
            (Flaw::PrefixedKeys, _) => all.into_iter().map(|k| format!("ns:{k}")).collect(),
            (_, Some(p)) => all.into_iter().filter(|k| k.starts_with(p)).collect(),
            (_, None) => all,
        })
    }
    async fn get_size(&self) -> resilient_cache::Result<u64> {
        self.inner.get_size().await
    }
    async fn get_stats(&self) -> resilient_cache::Result<L2Stats> {
        self.inner.get_stats().await
    }
    fn describe(&self) -> L2Stats {
        self.inner.describe()
    }
    async fn lease(
        &self,
        key: &str,
        token: u64,
        ttl: Duration,
        exclusive: bool,
    ) -> resilient_cache::Result<Option<bool>> {
        self.inner.lease(key, token, ttl, exclusive).await
    }
    async fn store_if_leased(
        &self,
        key: &str,
        token: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> resilient_cache::Result<Option<bool>> {
        self.inner
            .store_if_leased(key, token, value, ttl, only_if_absent)
            .await
    }
    async fn release_lease(&self, key: &str, token: u64) -> resilient_cache::Result<()> {
        self.inner.release_lease(key, token).await
    }

    async fn load_markers(&self) -> resilient_cache::Result<Option<Vec<(String, u64)>>> {
        if self.flaw == Flaw::LastMarkerWins {
            return Ok(Some(self.markers.lock().unwrap().clone()));
        }
        self.inner.load_markers().await
    }

    async fn put_marker(&self, field: &str, at_us: u64, keep: Duration) -> resilient_cache::Result<bool> {
        if self.flaw == Flaw::LastMarkerWins {
            let mut m = self.markers.lock().unwrap();
            m.retain(|(f, _)| f != field);
            m.push((field.to_string(), at_us));
            return Ok(true);
        }
        self.inner.put_marker(field, at_us, keep).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_backends_fail_the_rule_they_break() {
    for (flaw, rule, words) in [
        (Flaw::GlobListKeys, "literal_list_keys", "match literally"),
        (Flaw::CheckThenSet, "atomic_set_if_not_exist", "exactly one may"),
        (
            Flaw::PrefixedKeys,
            "caller_keys",
            "without the backend's namespace",
        ),
        (Flaw::PanicsOnEmptyKey, "errors_not_panics", "never panics"),
        (Flaw::LastMarkerWins, "markers", "older stamp replaced a newer"),
    ] {
        let broken = Arc::new(Broken {
            inner: MemoryL2::new(),
            flaw,
            markers: Default::default(),
        });
        let report = check_l2(broken).await;
        let failure = report
            .failed
            .iter()
            .find(|f| f.rule == rule)
            .unwrap_or_else(|| panic!("{rule} not caught: {report}"));
        assert!(failure.message.contains(words), "{rule}: {}", failure.message);
        assert!(report.to_string().contains(rule), "{report}");
        // The other rules still ran, and a flaw in one does not fail the rest.
        assert_eq!(
            report.passed.len() + report.failed.len(),
            conformance::RULES.len()
        );
        assert!(report.passed.contains(&"round_trip"), "{report}");
    }
}
