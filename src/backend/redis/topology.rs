//! How the service reaches Redis: one server, a Redis Cluster, or the
//! primary that Sentinel names. [`RedisConnection`](super::redis::RedisConnection)
//! runs every command through a [`Link`] and does not care which.
//!
//! - **Single**: one lazily connecting, auto-reconnecting `ConnectionManager`.
//! - **Cluster**: the `redis` crate's async cluster client (slot routing,
//!   `MOVED`/`ASK`, topology refresh), connected on first use. Commands that
//!   must see every key (`SCAN`) are sent to each primary in turn.
//! - **Sentinel**: a `ConnectionManager` to the primary the sentinels name,
//!   asked on first use and asked again after any connection failure or
//!   `READONLY` answer, so a failover is followed without a restart.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisError, RedisFuture, Value};

#[cfg(feature = "tls")]
use super::connect::tls_root_cert;
use super::connect::{check_url, open_client};
use crate::backend::config::RedisConfig;
use crate::error::{config_err, ConnectionErrorKind as Kind, Error, Result};
use crate::keys::{self, redact_url};

/// A connection to run one command on (cheap clones of shared, multiplexed connections).
pub(crate) enum Handle {
    Manager(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Handle {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Handle::Manager(c) => c.req_packed_command(cmd),
            Handle::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Handle::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Handle::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Handle::Manager(c) => c.get_db(),
            Handle::Cluster(c) => c.get_db(),
        }
    }
}

/// The server a per-node worker talks to: the one the link reaches (a
/// single server, the primary Sentinel names), or one cluster primary.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Node {
    Current,
    Primary(String, u16),
}

#[derive(Clone)]
pub(crate) enum Link {
    Single(Arc<SingleLink>),
    Cluster(Arc<ClusterLink>),
    Sentinel(Arc<SentinelLink>),
}

pub(crate) struct SingleLink {
    pub(crate) manager: ConnectionManager,
    pub(crate) client: redis::Client,
}

pub(crate) struct ClusterLink {
    client: ClusterClient,
    conn: tokio::sync::OnceCell<ClusterConnection>,
    /// Seeds, for the backplane's subscriber (rotated on each reconnect).
    seeds: Vec<ConnectionInfo>,
    next_seed: AtomicUsize,
    /// Which primary serves which slots, for batches (one pipeline per
    /// node); read on first use, forgotten after a batch fails.
    slots: Mutex<Option<Arc<SlotTable>>>,
}

/// The primaries of a cluster and the slot ranges each serves.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct SlotTable {
    nodes: Vec<(String, u16)>,
    /// `(first, last, index in nodes)`, sorted by `first`.
    ranges: Vec<(u16, u16, usize)>,
}

impl SlotTable {
    /// The index (in `nodes`) of the primary serving `key`, if known.
    fn node_of(&self, key: &str) -> Option<usize> {
        let slot = key_slot(key.as_bytes());
        let i = self.ranges.partition_point(|r| r.0 <= slot).checked_sub(1)?;
        let (first, last, node) = self.ranges[i];
        (first..=last).contains(&slot).then_some(node)
    }
}

pub(crate) struct SentinelLink {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    primary: Mutex<Option<(ConnectionManager, redis::Client)>>,
    manager_config: ConnectionManagerConfig,
}

/// No retries inside the connection: a refused connection fails at once, and
/// the next call allowed by the breaker tries again. No response timeout
/// inside either: each call is bounded by one timer around it.
fn manager_config(config: &RedisConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_number_of_retries(0)
        .set_connection_timeout(Some(config.connect_timeout.min(config.socket_timeout)))
        .set_response_timeout(None)
}

/// `host:port` or a URL → connection info with the configured credentials.
fn node_info(key: &str, node: &str, config: &RedisConfig) -> Result<ConnectionInfo> {
    let url = if node.contains("://") {
        node.to_string()
    } else {
        format!("redis://{node}")
    };
    let info = url
        .as_str()
        .into_connection_info()
        .map_err(|_| config_err(key, &redact_url(node), "a comma-separated list of host:port"))?;
    Ok(with_credentials(info, config, None))
}

/// `info` with the configured username and password (and database, if given).
fn with_credentials(info: ConnectionInfo, config: &RedisConfig, db: Option<i64>) -> ConnectionInfo {
    let mut settings = info.redis_settings().clone();
    if let Some(db) = db {
        settings = settings.set_db(db);
    }
    if let Some(user) = &config.username {
        settings = settings.set_username(user.expose());
    }
    if let Some(pw) = &config.password {
        settings = settings.set_password(pw.expose());
    }
    info.set_redis_settings(settings)
}

/// The same server, speaking RESP3 (push messages): for the backplane's subscriber.
fn resp3(info: ConnectionInfo) -> std::result::Result<redis::Client, RedisError> {
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings))
}

impl Link {
    pub(crate) fn new(config: &RedisConfig) -> Result<Self> {
        if !config.cluster_nodes.is_empty() {
            return Self::cluster(config);
        }
        if !config.sentinel_nodes.is_empty() {
            return Self::sentinel(config);
        }
        let info = match &config.url {
            Some(url) => {
                check_url(url.expose())?;
                url.expose().into_connection_info().expect("checked above")
            }
            None => {
                let info = ConnectionAddr::Tcp(config.host.clone(), config.port)
                    .into_connection_info()
                    .map_err(|_| config_err(keys::REDIS_HOST, &config.host, "a valid host name"))?;
                with_credentials(info, config, Some(config.db))
            }
        };
        let client = open_client(config, info)?;
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), manager_config(config))
            .map_err(|e| Error::connection(Kind::Io, e.to_string()))?;
        Ok(Link::Single(Arc::new(SingleLink { manager, client })))
    }

    fn cluster(config: &RedisConfig) -> Result<Self> {
        let key = keys::REDIS_CLUSTER_NODES;
        let seeds = config
            .cluster_nodes
            .iter()
            .map(|n| node_info(key, n, config))
            .collect::<Result<Vec<_>>>()?;
        let tls = seeds
            .iter()
            .any(|s| matches!(s.addr(), ConnectionAddr::TcpTls { .. }));
        // The client retries a redirect or a dead node's slot after a short
        // pause; the whole call stays bounded by the operation timeout.
        let mut builder = ClusterClient::builder(seeds.clone())
            .connection_timeout(config.connect_timeout.min(config.socket_timeout))
            .response_timeout(config.socket_timeout)
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(100);
        if tls {
            #[cfg(feature = "tls")]
            {
                builder = builder.tls(redis::TlsMode::Secure);
                if let Some(root_cert) = tls_root_cert(config)? {
                    builder = builder.certs(redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    });
                }
            }
            #[cfg(not(feature = "tls"))]
            return Err(config_err(
                key,
                &config.cluster_nodes.join(","),
                "redis:// nodes in this build: rediss:// (TLS) needs the Cargo feature `tls` of resilient-cache",
            ));
        }
        if let Some(user) = &config.username {
            builder = builder.username(user.expose());
        }
        if let Some(pw) = &config.password {
            builder = builder.password(pw.expose());
        }
        let client = builder.build().map_err(|e| {
            config_err(
                key,
                &config.cluster_nodes.join(","),
                format!("a usable list of cluster seed nodes ({e})"),
            )
        })?;
        Ok(Link::Cluster(Arc::new(ClusterLink {
            client,
            conn: tokio::sync::OnceCell::new(),
            seeds,
            next_seed: AtomicUsize::new(0),
            slots: Mutex::new(None),
        })))
    }

    fn sentinel(config: &RedisConfig) -> Result<Self> {
        let key = keys::REDIS_SENTINEL_NODES;
        let mut sentinels = Vec::new();
        for n in &config.sentinel_nodes {
            let info = node_info(key, n, config)?;
            match info.addr() {
                ConnectionAddr::Tcp(host, port) => sentinels.push(ConnectionAddr::Tcp(host.clone(), *port)),
                _ => {
                    return Err(config_err(
                        key,
                        &redact_url(n),
                        "plain host:port sentinels (TLS to sentinels is not supported yet)",
                    ))
                }
            }
        }
        let master = config.sentinel_master.clone().unwrap_or_default();
        let mut builder = SentinelClientBuilder::new(sentinels, &master, SentinelServerType::Master)
            .map_err(|e| {
                config_err(
                    key,
                    &config.sentinel_nodes.join(","),
                    format!("a usable list of sentinels ({e})"),
                )
            })?
            .set_client_to_redis_db(config.db);
        if let Some(user) = &config.username {
            builder = builder.set_client_to_redis_username(user.expose());
        }
        if let Some(pw) = &config.password {
            builder = builder.set_client_to_redis_password(pw.expose());
        }
        let sentinel = builder.build().map_err(|e| {
            config_err(
                key,
                &config.sentinel_nodes.join(","),
                format!("a usable list of sentinels ({e})"),
            )
        })?;
        Ok(Link::Sentinel(Arc::new(SentinelLink {
            sentinel: tokio::sync::Mutex::new(sentinel),
            primary: Mutex::new(None),
            manager_config: manager_config(config),
        })))
    }

    /// A connection for the next command (connecting or discovering lazily).
    pub(crate) async fn handle(&self) -> std::result::Result<Handle, RedisError> {
        match self {
            Link::Single(s) => Ok(Handle::Manager(s.manager.clone())),
            Link::Cluster(c) => Ok(Handle::Cluster(c.connection().await?)),
            Link::Sentinel(s) => Ok(Handle::Manager(erased(s.primary()).await?.0)),
        }
    }

    /// After a failed call: a sentinel link forgets the primary when the
    /// failure may mean it moved (connection lost, timeout, `READONLY`).
    pub(crate) fn failed(&self, e: Option<&RedisError>) {
        if let Link::Sentinel(s) = self {
            if primary_may_have_moved(e) {
                *s.primary.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
        }
    }

    /// A RESP3 client for the backplane's subscriber: the server, a cluster
    /// node (classic pub/sub reaches every node; the next seed on each
    /// reconnect), or the current primary.
    pub(crate) async fn subscriber_client(&self) -> std::result::Result<redis::Client, RedisError> {
        match self {
            Link::Single(s) => resp3(s.client.get_connection_info().clone()),
            Link::Cluster(c) => {
                let i = c.next_seed.fetch_add(1, Relaxed) % c.seeds.len();
                resp3(c.seeds[i].clone())
            }
            Link::Sentinel(s) => resp3(s.primary().await?.1.get_connection_info().clone()),
        }
    }

    /// A RESP3 client for a connection of the service's own on `node`
    /// (tracking's invalidation connection): the credentials and TLS of the
    /// configured servers.
    pub(crate) async fn node_client(&self, node: &Node) -> std::result::Result<redis::Client, RedisError> {
        match (self, node) {
            (Link::Cluster(c), Node::Primary(host, port)) => {
                let seed = c.seeds[0].clone();
                let addr = match seed.addr() {
                    ConnectionAddr::TcpTls {
                        insecure, tls_params, ..
                    } => ConnectionAddr::TcpTls {
                        host: host.clone(),
                        port: *port,
                        insecure: *insecure,
                        tls_params: tls_params.clone(),
                    },
                    _ => ConnectionAddr::Tcp(host.clone(), *port),
                };
                resp3(seed.set_addr(addr))
            }
            (Link::Cluster(_), Node::Current) => Err(RedisError::from((
                redis::ErrorKind::Client,
                "a cluster has no current node",
            ))),
            _ => self.subscriber_client().await,
        }
    }

    /// Sends `pipe` to `node` on the data connection (the cluster
    /// connection's own link to that primary). A command's error reply is
    /// the pipeline's error.
    pub(crate) async fn pipeline_on(
        &self,
        pipe: &redis::Pipeline,
        node: &Node,
    ) -> std::result::Result<Value, RedisError> {
        let mut conn = self.handle().await?;
        let replies: Vec<Value> = match (&mut conn, node) {
            (Handle::Cluster(c), Node::Primary(host, port)) => {
                let route = SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                };
                c.route_pipeline(pipe.clone(), 0, pipe.len(), route).await?
            }
            _ => return pipe.query_async(&mut conn).await,
        };
        if let Some(Value::ServerError(e)) = replies.iter().find(|r| matches!(r, Value::ServerError(_))) {
            return Err(e.clone().into());
        }
        Ok(Value::Array(replies))
    }

    /// The primaries of a cluster (`None` for other links): where `SCAN` must go.
    pub(crate) async fn primaries(&self) -> Option<std::result::Result<Vec<(String, u16)>, RedisError>> {
        let Link::Cluster(c) = self else { return None };
        let mut conn = match c.connection().await {
            Ok(conn) => conn,
            Err(e) => return Some(Err(e)),
        };
        let nodes = conn
            .route_command(
                redis::cmd("CLUSTER").arg("NODES").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await;
        Some(nodes.and_then(|v| {
            let text: String = redis::from_redis_value(v)?;
            Ok(parse_primaries(&text))
        }))
    }

    /// Sends each key's commands (`add(pipe, i)` adds those of `keys[i]`, a
    /// key as stored (with its namespace),
    /// `per_key` of them, none ignored) in one pipeline per node that serves
    /// some of the keys — one pipeline off a cluster — the pipelines sent
    /// concurrently. Returns each key's replies, in key order.
    pub(crate) async fn pipelines_by_node(
        &self,
        keys: &[String],
        per_key: usize,
        add: &(dyn Fn(&mut redis::Pipeline, usize) + Sync),
        round_trips: &crate::counter::Counter,
    ) -> std::result::Result<Vec<Vec<Value>>, RedisError> {
        match self.pipelines_once(keys, per_key, add, round_trips).await {
            // Slots moved since the table was read (it is forgotten by now):
            // once more, with a fresh one.
            Err(e) if matches!(e.code(), Some("MOVED" | "ASK")) => {
                self.pipelines_once(keys, per_key, add, round_trips).await
            }
            r => r,
        }
    }

    async fn pipelines_once(
        &self,
        keys: &[String],
        per_key: usize,
        add: &(dyn Fn(&mut redis::Pipeline, usize) + Sync),
        round_trips: &crate::counter::Counter,
    ) -> std::result::Result<Vec<Vec<Value>>, RedisError> {
        let Link::Cluster(c) = self else {
            round_trips.incr();
            let mut pipe = redis::pipe();
            (0..keys.len()).for_each(|i| add(&mut pipe, i));
            let Handle::Manager(mut conn) = self.handle().await? else {
                unreachable!("only a cluster link hands out cluster connections")
            };
            let replies: Vec<Value> = pipe.query_async(&mut conn).await?;
            return Ok(split_replies(replies, per_key, keys.len()));
        };
        let conn = c.connection().await?;
        let table = c.slot_table(&conn, round_trips).await;
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); table.nodes.len()];
        let mut strays = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match table.node_of(key) {
                Some(node) => groups[node].push(i),
                // Not in the table (a slot being moved): alone, routed by the client.
                None => strays.push(vec![i]),
            }
        }
        let mut sends = tokio::task::JoinSet::new();
        for group in groups.into_iter().filter(|g| !g.is_empty()).chain(strays) {
            let mut pipe = redis::pipe();
            group.iter().for_each(|&i| add(&mut pipe, i));
            // Every key of the group is served by the node of its first key.
            let route = redis::cluster_routing::Route::with_key(&keys[group[0]], SlotAddr::Master);
            let mut conn = conn.clone();
            let count = pipe.len();
            round_trips.incr();
            sends.spawn(async move {
                let replies = conn
                    .route_pipeline(pipe, 0, count, SingleNodeRoutingInfo::SpecificNode(route))
                    .await;
                (group, replies)
            });
        }
        let mut out = vec![Vec::new(); keys.len()];
        while let Some(sent) = sends.join_next().await {
            let (group, replies) = sent.map_err(|e| RedisError::from(std::io::Error::other(e)))?;
            let replies = match replies {
                Ok(replies) => replies,
                Err(e) => {
                    c.forget_slots();
                    return Err(e);
                }
            };
            if replies.iter().any(|r| matches!(r, Value::ServerError(_))) {
                // Most likely MOVED: the table is out of date.
                c.forget_slots();
            }
            for (i, replies) in group.into_iter().zip(split_replies(replies, per_key, usize::MAX)) {
                out[i] = replies;
            }
        }
        Ok(out)
    }

    /// Runs `cmd` on the cluster node at `host:port`.
    pub(crate) async fn query_node(
        &self,
        cmd: &Cmd,
        host: &str,
        port: u16,
    ) -> std::result::Result<Value, RedisError> {
        let Handle::Cluster(mut conn) = self.handle().await? else {
            return Err(RedisError::from((redis::ErrorKind::Client, "not a cluster")));
        };
        conn.route_command(
            cmd.clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.to_string(),
                port,
            }),
        )
        .await
    }
}

type Erased<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Type-erases the connection set-up futures of the cluster and sentinel
/// clients: they nest deeply, and without this every future that awaits an
/// L2 call (in this crate and in its users') would carry their whole type.
fn erased<'a, T>(f: impl std::future::Future<Output = T> + Send + 'a) -> Erased<'a, T> {
    Box::pin(f)
}

impl ClusterLink {
    /// The cluster connection, connected on first use.
    async fn connection(&self) -> std::result::Result<ClusterConnection, RedisError> {
        let conn = self
            .conn
            .get_or_try_init(|| erased(self.client.get_async_connection()))
            .await?;
        Ok(conn.clone())
    }
}

impl ClusterLink {
    /// The slot table, read from a node (`CLUSTER NODES`) when not known.
    /// An unreadable table is an empty one: every key then goes alone.
    async fn slot_table(
        &self,
        conn: &ClusterConnection,
        round_trips: &crate::counter::Counter,
    ) -> Arc<SlotTable> {
        if let Some(t) = self.slots.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return t;
        }
        round_trips.incr();
        let nodes = conn
            .clone()
            .route_command(
                redis::cmd("CLUSTER").arg("NODES").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .and_then(|v| redis::from_redis_value::<String>(v).map_err(Into::into));
        let table = Arc::new(nodes.map(|t| parse_slot_table(&t)).unwrap_or_default());
        if !table.ranges.is_empty() {
            *self.slots.lock().unwrap_or_else(|p| p.into_inner()) = Some(table.clone());
        }
        table
    }

    fn forget_slots(&self) {
        *self.slots.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// `replies` cut into runs of `per_key` (at most `keys` runs).
fn split_replies(replies: Vec<Value>, per_key: usize, keys: usize) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    let mut it = replies.into_iter();
    while out.len() < keys {
        let run: Vec<Value> = it.by_ref().take(per_key).collect();
        if run.is_empty() {
            break;
        }
        out.push(run);
    }
    out
}

impl SentinelLink {
    /// The current primary's connection, asking the sentinels when unknown.
    async fn primary(&self) -> std::result::Result<(ConnectionManager, redis::Client), RedisError> {
        if let Some(p) = self.primary.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(p);
        }
        let mut sentinel = self.sentinel.lock().await;
        // Someone may have found it while we waited for the lock.
        if let Some(p) = self.primary.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(p);
        }
        let client = sentinel.async_get_client().await?;
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), self.manager_config.clone())?;
        tracing::info!(primary = %client.get_connection_info().addr(), "sentinel: using primary");
        *self.primary.lock().unwrap_or_else(|p| p.into_inner()) = Some((manager.clone(), client.clone()));
        Ok((manager, client))
    }
}

/// Whether a failure (`None`: a timeout around the call) may mean the
/// primary is elsewhere now, so the sentinels must be asked again: the
/// connection is gone or silent, or the server answers `READONLY` (it was
/// demoted to a replica while our connection to it stayed up).
fn primary_may_have_moved(e: Option<&RedisError>) -> bool {
    e.is_none_or(|e| {
        e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.code() == Some("READONLY")
    })
}

/// The cluster slot of `key`: CRC16 of its hash tag (the part between the
/// first `{` and the next `}`, when not empty) or of the whole key.
fn key_slot(key: &[u8]) -> u16 {
    let tag = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tag.unwrap_or(key)) % 16384
}

/// The slot table from `CLUSTER NODES`: healthy primaries and the slot
/// ranges they serve (migration entries, in brackets, are skipped).
fn parse_slot_table(text: &str) -> SlotTable {
    let mut table = SlotTable::default();
    for (host, port, ranges) in parse_nodes(text) {
        let node = table.nodes.len();
        table.nodes.push((host, port));
        table.ranges.extend(ranges.into_iter().map(|(a, b)| (a, b, node)));
    }
    table.ranges.sort_unstable();
    table
}

/// Primaries from `CLUSTER NODES`: `id ip:port@cport[,host] flags …`; healthy masters only.
fn parse_primaries(text: &str) -> Vec<(String, u16)> {
    parse_nodes(text).into_iter().map(|(h, p, _)| (h, p)).collect()
}

/// A primary's host, port and slot ranges (first, last).
type Primary = (String, u16, Vec<(u16, u16)>);

/// Healthy primaries from `CLUSTER NODES` (`id ip:port@cport[,host] flags
/// master ping pong epoch state slot…`), each with its slot ranges.
fn parse_nodes(text: &str) -> Vec<Primary> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let healthy_master = flags.split(',').any(|f| f == "master")
                && !flags
                    .split(',')
                    .any(|f| matches!(f, "fail" | "fail?" | "noaddr" | "handshake"));
            if !healthy_master {
                return None;
            }
            let addr = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            let ranges = fields
                .iter()
                .skip(8)
                .filter_map(|r| match r.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => r.parse().ok().map(|a| (a, a)),
                })
                .collect();
            Some((host.to_string(), port.parse().ok()?, ranges))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(line: &[u8]) -> RedisError {
        match redis::parse_redis_value(line) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            other => panic!("not a server error: {other:?}"),
        }
    }

    #[test]
    fn a_demoted_primary_sends_the_sentinel_link_back_to_the_sentinels() {
        let readonly = server_error(b"-READONLY You can't write against a read only replica.\r\n");
        assert!(primary_may_have_moved(Some(&readonly)));
        assert!(primary_may_have_moved(None), "a timeout");
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(primary_may_have_moved(Some(&io)));
        // An answer about the data says nothing about where the primary is.
        let wrongtype =
            server_error(b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
        assert!(!primary_may_have_moved(Some(&wrongtype)));
    }

    #[test]
    fn keys_map_to_the_slots_redis_computes_and_slots_to_their_primary() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        let table = parse_slot_table(
            "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
a2 127.0.0.1:7001@17001 master - 0 1 2 connected 5461-10922 [10923->-a5]
a4 127.0.0.1:7003@17003 slave a1 0 1 1 connected
a5 127.0.0.1:7004@17004 master - 0 1 5 connected 10923-16000 16383
",
        );
        assert_eq!(table.nodes.len(), 3);
        assert_eq!(table.node_of("123456789"), Some(2), "slot 12739");
        assert_eq!(table.node_of("foo"), Some(2));
        let slot_0 = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| key_slot(k.as_bytes()) < 5461)
            .unwrap();
        assert_eq!(table.node_of(&slot_0), Some(0));
        let unserved = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| (16001..16383).contains(&key_slot(k.as_bytes())))
            .unwrap();
        assert_eq!(table.node_of(&unserved), None, "a slot no primary serves");
        let moved = server_error(b"-MOVED 3999 127.0.0.1:6381\r\n");
        assert_eq!(moved.code(), Some("MOVED"), "a batch retries on this");
    }

    #[test]
    fn primaries_are_parsed_from_cluster_nodes() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
a2 127.0.0.1:7001@17001 master - 0 1 2 connected 5461-10922
a3 127.0.0.1:7002@17002,host.example master,fail - 0 1 3 connected
a4 127.0.0.1:7003@17003 slave a1 0 1 1 connected
a5 127.0.0.1:7004@17004 master - 0 1 5 connected 10923-16383
";
        assert_eq!(
            parse_primaries(text),
            vec![
                ("127.0.0.1".to_string(), 7000),
                ("127.0.0.1".to_string(), 7001),
                ("127.0.0.1".to_string(), 7004)
            ]
        );
    }
}
