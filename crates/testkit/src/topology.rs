//! Real multi-process Redis deployments for the tests and the topology
//! harness: a Redis Cluster of 3 primaries + 3 replicas, and a Sentinel
//! set-up of 1 primary, 1 replica and 3 sentinels. Every process is a
//! [`RedisServer`] on a free 127.0.0.1 port, killed when dropped.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use resilient_cache::CacheFactoryConfig;

use super::{free_port, wait_until, RedisServer};

/// How often the deployments are polled while waiting (300 polls: ~30 s at most).
const POLL: Duration = Duration::from_millis(100);

/// A node's view of `CLUSTER NODES`: port → (is primary, failed).
fn cluster_nodes(node: &RedisServer) -> Option<BTreeMap<u16, (bool, bool)>> {
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query(&mut node.try_conn()?)
        .ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let port = f.get(1)?.split('@').next()?.rsplit_once(':')?.1.parse().ok()?;
                let flags = f.get(2)?;
                Some((port, (flags.contains("master"), flags.contains("fail"))))
            })
            .collect(),
    )
}

/// 3 primaries + 3 replicas, joined with `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                // The bus port is chosen too: port + 10000 may not be free (or valid).
                let bus = free_port().to_string();
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-port",
                    &bus,
                    // Replicas sync at once (not after the default 5 s wait for
                    // more replicas), and may always take over.
                    "--repl-diskless-sync-delay",
                    "0",
                    "--cluster-replica-validity-factor",
                    "0",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("run redis-cli (installed with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        cluster.wait_healthy();
        cluster
    }

    /// Every live node says `cluster_state:ok` and sees 3 healthy primaries,
    /// and every live replica has synced with its primary.
    pub fn wait_healthy(&self) {
        wait_until("the cluster to be ok", 300, POLL, || {
            self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                let Some(mut c) = n.try_conn() else { return false };
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut c)
                    .unwrap_or_default();
                let repl: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut c)
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
                    && cluster_nodes(n).is_some_and(|m| m.values().filter(|(p, f)| *p && !*f).count() == 3)
            })
        });
    }

    /// `host:port` of every node, for `CACHE_REDIS_CLUSTER_NODES`.
    pub fn seeds(&self) -> String {
        host_ports(&self.nodes)
    }

    pub fn config(&self) -> CacheFactoryConfig {
        let mut c = CacheFactoryConfig::from_map([("CACHE_REDIS_CLUSTER_NODES", self.seeds())]).unwrap();
        c.redis.connect_timeout = Duration::from_millis(500);
        c.redis.socket_timeout = Duration::from_millis(500);
        c
    }

    /// The live primaries (indexes into `nodes`).
    pub fn primaries(&self) -> Vec<usize> {
        let view = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .find_map(cluster_nodes)
            .expect("a node answers");
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.is_running() && view.get(&n.port).is_some_and(|(p, f)| *p && !*f))
            .map(|(i, _)| i)
            .collect()
    }

    /// Keys (raw) held by node `i`.
    pub fn keys_on(&self, i: usize) -> Vec<String> {
        self.nodes[i].keys()
    }

    /// Kills primary `i` and waits until its replica has taken over.
    pub fn kill_primary(&mut self, i: usize) {
        self.nodes[i].kill();
        self.wait_failover();
    }

    /// Waits until every killed node is flagged failed by the live ones and
    /// 3 healthy primaries serve all slots again.
    pub fn wait_failover(&self) {
        let dead: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| !n.is_running())
            .map(|n| n.port)
            .collect();
        let replaced = || {
            self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                cluster_nodes(n).is_some_and(|m| {
                    dead.iter()
                        .all(|port| m.get(port).is_some_and(|(_, failed)| *failed))
                        && m.values().filter(|(p, f)| *p && !*f).count() == 3
                })
            })
        };
        wait_until("the dead primary to be flagged and replaced", 300, POLL, replaced);
        self.wait_healthy();
    }

    /// The node index holding `raw_key` now (asks each live primary).
    pub fn owner_of(&self, raw_key: &str) -> Option<usize> {
        self.primaries().into_iter().find(|&i| {
            self.nodes[i]
                .try_conn()
                .and_then(|mut c| {
                    redis::cmd("GET")
                        .arg(raw_key)
                        .query::<Option<Vec<u8>>>(&mut c)
                        .ok()
                })
                .flatten()
                .is_some()
        })
    }
}

/// 1 primary, 1 replica, 3 sentinels watching `mymaster` (quorum 2).
pub struct RedisSentinels {
    pub primary: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
}

pub const MASTER: &str = "mymaster";

impl RedisSentinels {
    pub fn start() -> Self {
        // The replica syncs at once (not after the default 5 s diskless-sync wait).
        let primary = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]);
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
        wait_until("the replica to sync", 300, POLL, || {
            let info: Option<String> = replica
                .try_conn()
                .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c).ok());
            info.is_some_and(|i| i.contains("master_link_status:up"))
        });
        let conf = format!(
            "sentinel monitor {MASTER} 127.0.0.1 {} 2\n\
             sentinel down-after-milliseconds {MASTER} 1000\n\
             sentinel failover-timeout {MASTER} 5000\n\
             sentinel parallel-syncs {MASTER} 1\n",
            primary.port
        );
        let sentinels: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_sentinel(&conf)).collect();
        let s = Self {
            primary,
            replica,
            sentinels,
        };
        // Sentinels find the replica and each other through hello messages.
        wait_until(
            "the sentinels to know the replica and each other",
            300,
            POLL,
            || {
                s.sentinels.iter().all(|sen| {
                    let Some(mut c) = sen.try_conn() else { return false };
                    let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
                        .arg("REPLICAS")
                        .arg(MASTER)
                        .query(&mut c)
                        .unwrap_or_default();
                    let peers: Vec<redis::Value> = redis::cmd("SENTINEL")
                        .arg("SENTINELS")
                        .arg(MASTER)
                        .query(&mut c)
                        .unwrap_or_default();
                    replicas.len() == 1 && peers.len() == 2
                })
            },
        );
        s
    }

    /// `host:port` of every sentinel, for `CACHE_REDIS_SENTINEL_NODES`.
    pub fn seeds(&self) -> String {
        host_ports(&self.sentinels)
    }

    pub fn config(&self) -> CacheFactoryConfig {
        let mut c = CacheFactoryConfig::from_map([
            ("CACHE_REDIS_SENTINEL_NODES", self.seeds().as_str()),
            ("CACHE_REDIS_SENTINEL_MASTER", MASTER),
        ])
        .unwrap();
        c.redis.connect_timeout = Duration::from_millis(500);
        c.redis.socket_timeout = Duration::from_millis(500);
        c
    }

    /// The port the sentinels name as primary.
    pub fn primary_port(&self) -> Option<u16> {
        self.sentinels.iter().filter(|s| s.is_running()).find_map(|s| {
            let (_, port): (String, String) = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(MASTER)
                .query(&mut s.try_conn()?)
                .ok()?;
            port.parse().ok()
        })
    }

    /// Kills the primary and waits until the sentinels have promoted the replica.
    pub fn kill_primary_and_fail_over(&mut self) {
        self.primary.kill();
        self.wait_failover();
    }

    /// Waits until the sentinels name the replica as primary and it takes writes.
    pub fn wait_failover(&self) {
        let replica = self.replica.port;
        wait_until("the sentinels to promote the replica", 300, POLL, || {
            self.primary_port() == Some(replica)
        });
        wait_until("the replica to accept writes", 300, POLL, || {
            self.replica
                .try_conn()
                .and_then(|mut c| {
                    redis::cmd("SET")
                        .arg("rc-probe")
                        .arg("1")
                        .query::<()>(&mut c)
                        .ok()
                })
                .is_some()
        });
        let _: () = self.replica.cmd(&["DEL", "rc-probe"]);
    }
}

/// `127.0.0.1:port,…` of `servers`.
fn host_ports(servers: &[RedisServer]) -> String {
    servers
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect::<Vec<_>>()
        .join(",")
}
