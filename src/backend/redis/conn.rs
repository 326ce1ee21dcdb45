//! The service's shared L2 connection: one multiplexed link per service, every
//! call bounded by the operation timeout, timed for metrics.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use redis::{Cmd, FromRedisValue};

use super::connect::map_err;
use super::gather::{Channel, Gather};
use super::topology::{Handle, Link, Node};
use crate::backend::config::{RedisConfig, RedisMode};
use crate::error::{ConnectionErrorKind as Kind, Error, Result};

/// The service's shared L2 connection. Cheap to clone.
#[derive(Clone)]
pub struct RedisConnection {
    link: Link,
    op_timeout: Duration,
    pub(super) endpoint: String,
    pub(super) db: i64,
    mode: RedisMode,
    /// Requests sent (a command, a pipeline, a script; on a cluster, each
    /// node's part of a batch counts once).
    round_trips: std::sync::Arc<crate::counter::Counter>,
    /// Keys this service is storing by script, with a digest of the bytes:
    /// what tracking must confirm rather than evict (see `tracking`).
    own_stores: std::sync::Arc<OwnStores>,
    /// Where overlapping fenced writes are gathered (see `gather`).
    gather: std::sync::Arc<Gather>,
}

impl Channel for RedisConnection {
    fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn send<T: FromRedisValue + Send>(&self, p: &redis::Pipeline) -> impl Future<Output = Result<T>> + Send {
        self.query_pipeline(p)
    }
}

/// Stores made by script while tracking is on: Redis's `NOLOOP` does not
/// cover a script's writes, so their notifications come back to this
/// service, and the tracking worker confirms them (the key still holds these
/// bytes) instead of evicting a fresh L1 entry.
#[derive(Default)]
pub(crate) struct OwnStores {
    on: std::sync::atomic::AtomicBool,
    keys: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

/// Beyond this many unconfirmed stores the list is dropped: an entry not in
/// it is evicted on notification, which is always safe.
const OWN_STORES_MAX: usize = 65_536;

impl OwnStores {
    fn digest(bytes: &[u8]) -> u64 {
        use std::hash::{BuildHasher, BuildHasherDefault};
        BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(bytes)
    }

    /// Tracking is on for this service: remember own stores from now on.
    pub(crate) fn enable(&self) {
        self.on.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Remembers that `key` (as stored) is about to receive `bytes`.
    pub(crate) fn note(&self, key: &str, bytes: &[u8]) {
        if !self.on.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.len() >= OWN_STORES_MAX {
            keys.clear();
        }
        keys.insert(key.to_string(), Self::digest(bytes));
    }

    /// The store did not happen: nothing to confirm.
    pub(crate) fn forget(&self, key: &str) {
        if self.on.load(std::sync::atomic::Ordering::Relaxed) {
            self.keys.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        }
    }

    /// The digest noted for `key`, taken (a later notification of the same
    /// key is another change).
    pub(crate) fn take(&self, key: &str) -> Option<u64> {
        if !self.on.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).remove(key)
    }

    /// Whether `bytes` are what was noted as `digest`.
    pub(crate) fn matches(digest: u64, bytes: &[u8]) -> bool {
        Self::digest(bytes) == digest
    }
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("endpoint", &self.endpoint)
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

impl RedisConnection {
    /// Builds the connection without connecting (must run inside a Tokio runtime).
    pub fn new(config: &RedisConfig) -> Result<Self> {
        let link = Link::new(config)?;
        let db = match &link {
            Link::Single(s) => s.client.get_connection_info().redis_settings().db(),
            _ => config.db,
        };
        Ok(Self {
            link,
            op_timeout: config.socket_timeout,
            endpoint: config.endpoint(),
            db,
            mode: config.mode(),
            round_trips: Default::default(),
            own_stores: Default::default(),
            gather: Default::default(),
        })
    }

    /// A RESP3 client for the backplane's subscriber connection (see
    /// [`topology`](super::topology) for which node it reaches).
    pub(crate) async fn subscriber_client(&self) -> Result<redis::Client> {
        self.link
            .subscriber_client()
            .await
            .map_err(|e| Error::connection(Kind::Io, format!("backplane client: {}", e.category())))
    }

    /// Standalone, cluster or sentinel.
    pub fn mode(&self) -> RedisMode {
        self.mode
    }

    /// `host:port/db` (or the redacted URL).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The bound on one operation.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// Round trips made so far by every cache of the service: each command,
    /// pipeline or script sent counts one; a batch on a cluster counts one
    /// per node it reached (those are sent concurrently).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.get()
    }

    /// Runs one command, bounded by the operation timeout.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        self.call(Request::Cmd(cmd), true).await
    }

    /// The stores by script that tracking must confirm.
    pub(crate) fn own_stores(&self) -> &OwnStores {
        &self.own_stores
    }

    /// Sends several commands in one round trip on the data connection,
    /// bounded by the operation timeout, and not counted in
    /// [`round_trips`](Self::round_trips): the service's own upkeep (the
    /// tracking worker's checks), not work a cache asked for.
    pub(crate) async fn upkeep<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T> {
        self.call(Request::Pipeline(pipe), false).await
    }

    /// [`upkeep`](Self::upkeep) on one node: the server itself, or one
    /// primary of a cluster (routed to it on the cluster connection).
    pub(crate) async fn upkeep_on<T: FromRedisValue>(
        &self,
        node: &Node,
        pipe: &redis::Pipeline,
    ) -> Result<T> {
        if *node == Node::Current {
            return self.upkeep(pipe).await;
        }
        let reply = self.bounded(self.link.pipeline_on(pipe, node)).await?;
        redis::from_redis_value(reply).map_err(|e| map_err(e.into()))
    }

    /// A RESP3 client for a connection of the service's own on `node`.
    pub(crate) async fn node_client(&self, node: &Node) -> Result<redis::Client> {
        self.link
            .node_client(node)
            .await
            .map_err(|e| Error::connection(Kind::Io, format!("client for {node:?}: {}", e.category())))
    }

    /// A cluster's healthy primaries, bounded by the operation timeout
    /// (empty off a cluster).
    pub(crate) async fn primaries(&self) -> Result<Vec<(String, u16)>> {
        match self
            .bounded(async { self.link.primaries().await.transpose() })
            .await?
        {
            Some(p) => Ok(p),
            None => Ok(Vec::new()),
        }
    }

    /// Sends several commands in one round trip, bounded by the operation timeout.
    pub(crate) async fn query_pipeline<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T> {
        self.call(Request::Pipeline(pipe), true).await
    }

    /// The end of the lease of `set`'s key, then `set`, gathered with the
    /// fenced writes that overlap it (see `gather`); `alone` is the pipeline
    /// of a write sent by itself, as every fenced write is on a cluster (one
    /// `DEL` of leases of several slots is refused there).
    pub(crate) async fn fenced_set(
        &self,
        set: Cmd,
        alone: impl FnOnce(Cmd) -> redis::Pipeline,
    ) -> Result<()> {
        if self.mode == RedisMode::Cluster {
            return self.query_pipeline(&alone(set)).await;
        }
        self.gather.fenced_set(self, set, alone).await
    }

    /// Sends each key's commands (`add(pipe, i)` adds the `per_key` commands
    /// of `keys[i]`, a key as stored, none ignored) in one pipeline per node that serves some
    /// of the keys (one off a cluster), concurrently, all bounded by the
    /// operation timeout. Returns each key's replies, in key order.
    pub(crate) async fn query_by_node(
        &self,
        keys: &[String],
        per_key: usize,
        add: &(dyn Fn(&mut redis::Pipeline, usize) + Sync),
    ) -> Result<Vec<Vec<redis::Value>>> {
        let timer = Timer::start();
        let r = tracing::Instrument::instrument(
            self.bounded(self.link.pipelines_by_node(keys, per_key, add, &self.round_trips)),
            self.span(|| "PIPELINE"),
        )
        .await;
        timer.observe(|| "PIPELINE", &r);
        r
    }

    /// Runs a Lua script (`EVALSHA`, loading it once if needed), bounded by the operation timeout.
    pub(crate) async fn query_script<T: FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        self.call(Request::Script(&invocation), true).await
    }

    /// Every request: on a connection from the link, bounded by the operation
    /// timeout, its time observed under the request's name.
    async fn call<T: FromRedisValue>(&self, request: Request<'_>, counted: bool) -> Result<T> {
        tracing::Instrument::instrument(self.call_now(request, counted), self.span(|| request.name())).await
    }

    /// A client span per L2 request, with OpenTelemetry's database field
    /// names, so that a service bridging `tracing` to OpenTelemetry traces
    /// its cache's calls with no glue. Costs a callsite check when no
    /// subscriber wants it: the fields, the request's name included, are
    /// worked out only when one does.
    fn span(&self, name: impl Fn() -> &'static str) -> tracing::Span {
        tracing::info_span!(
            "redis",
            otel.name = name(),
            otel.kind = "client",
            db.system = "redis",
            db.operation.name = name(),
            db.namespace = %self.db,
            server.address = %self.endpoint,
        )
    }

    async fn call_now<T: FromRedisValue>(&self, request: Request<'_>, counted: bool) -> Result<T> {
        let timer = Timer::start();
        if counted {
            self.round_trips.incr();
        }
        let run = async {
            let mut conn = self.link.handle().await?;
            match request.send::<T>(&mut conn).await {
                // A refusal is reported before anything is sent. It may be the
                // stale result of an earlier attempt (the manager has just started
                // a fresh one), so one retry is safe and finds a recovered server.
                Err(e) if e.is_connection_refusal() => request.send::<T>(&mut conn).await,
                r => r,
            }
        };
        let r = self.bounded(run).await;
        timer.observe(|| request.name(), &r);
        r
    }

    /// Bounds a call by the operation timeout; tells the link about failures.
    async fn bounded<T>(&self, call: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T> {
        match tokio::time::timeout(self.op_timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.link.failed(Some(&e));
                Err(map_err(e))
            }
            Err(_) => {
                self.link.failed(None);
                Err(Error::connection(
                    Kind::Timeout,
                    format!("no answer within {:?} from {}", self.op_timeout, self.endpoint),
                ))
            }
        }
    }

    /// `PING`: round-trip time, bounded by the operation timeout.
    pub async fn ping(&self) -> Result<Duration> {
        let t = std::time::Instant::now();
        self.query::<String>(&redis::cmd("PING")).await?;
        Ok(t.elapsed())
    }

    /// Selected `INFO` fields: server identity, clients, memory, keyspace
    /// hits/misses. Counters are numbers, names and versions strings.
    pub async fn info(&self) -> Result<BTreeMap<String, serde_json::Value>> {
        const FIELDS: &[&str] = &[
            "redis_version",
            "valkey_version",
            "uptime_in_seconds",
            "connected_clients",
            "used_memory",
            "used_memory_human",
            "maxmemory_policy",
            "keyspace_hits",
            "keyspace_misses",
            "evicted_keys",
            "expired_keys",
            "total_commands_processed",
        ];
        let text: String = self.query(&redis::cmd("INFO")).await?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| FIELDS.contains(k))
            .map(|(k, v)| {
                let v = v.trim();
                let v = v
                    .parse::<u64>()
                    .map_or_else(|_| v.into(), serde_json::Value::from);
                (k.to_string(), v)
            })
            .collect())
    }

    /// Every key matching `pattern`, by `SCAN` (each round trip bounded); on
    /// a cluster, on every primary in turn.
    pub async fn scan(&self, pattern: &str, mut each: impl FnMut(Vec<String>) -> Option<Cmd>) -> Result<()> {
        match self
            .bounded(async { self.link.primaries().await.transpose() })
            .await?
        {
            None => self.scan_node(pattern, None, &mut each).await,
            Some(primaries) => {
                for (host, port) in primaries {
                    self.scan_node(pattern, Some((&host, port)), &mut each).await?;
                }
                Ok(())
            }
        }
    }

    async fn scan_node(
        &self,
        pattern: &str,
        node: Option<(&str, u16)>,
        each: &mut impl FnMut(Vec<String>) -> Option<Cmd>,
    ) -> Result<()> {
        let mut cursor: u64 = 0;
        loop {
            let mut c = redis::cmd("SCAN");
            c.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000);
            let (next, batch): (u64, Vec<String>) = match node {
                None => self.query(&c).await?,
                Some((host, port)) => {
                    let v = self.bounded(self.link.query_node(&c, host, port)).await?;
                    redis::from_redis_value(v).map_err(|e| Error::Serialization(e.to_string()))?
                }
            };
            if !batch.is_empty() {
                if let Some(follow_up) = each(batch) {
                    self.query::<redis::Value>(&follow_up).await?;
                }
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

/// What one L2 call sends.
#[derive(Clone, Copy)]
enum Request<'a> {
    Cmd(&'a Cmd),
    Pipeline(&'a redis::Pipeline),
    Script(&'a redis::ScriptInvocation<'a>),
}

impl Request<'_> {
    async fn send<T: FromRedisValue>(self, conn: &mut Handle) -> redis::RedisResult<T> {
        match self {
            Request::Cmd(c) => c.query_async(conn).await,
            Request::Pipeline(p) => p.query_async(conn).await,
            Request::Script(s) => s.invoke_async(conn).await,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Request::Cmd(c) => command_name(c),
            Request::Pipeline(_) => "PIPELINE",
            Request::Script(_) => "EVALSHA",
        }
    }
}

/// Times one L2 round trip for the `resilient_cache_l2_command_seconds`
/// histogram (feature `metrics`; nothing at all without it).
struct Timer {
    #[cfg(feature = "metrics")]
    started: std::time::Instant,
}

impl Timer {
    #[inline]
    fn start() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            started: std::time::Instant::now(),
        }
    }

    #[inline]
    #[allow(unused_variables)]
    fn observe<T>(self, command: impl FnOnce() -> &'static str, r: &Result<T>) {
        #[cfg(feature = "metrics")]
        {
            static METADATA: metrics::Metadata<'static> =
                metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
            let key = histogram_key(command(), r.is_ok());
            metrics::with_recorder(|recorder| recorder.register_histogram(key, &METADATA))
                .record(self.started.elapsed().as_secs_f64());
        }
    }
}

/// What an L2 request is called in its span and in the histogram's
/// `command` label: the single commands known by name, then `PIPELINE`,
/// `EVALSHA` and `other` (a command not in the list).
const NAMES: &[&str] = &[
    "GET", "SET", "UNLINK", "DEL", "EXISTS", "PTTL", "SCAN", "INFO", "PING", "PUBLISH", "MGET", "CLIENT",
    "PIPELINE", "EVALSHA", "other",
];

/// The histogram's key for one request name (one of [`NAMES`]) and
/// outcome, built once: built per call, as `metrics::histogram!` does with
/// labels that are not literals, each L2 call would allocate its labels.
#[cfg(feature = "metrics")]
fn histogram_key(name: &'static str, ok: bool) -> &'static metrics::Key {
    static KEYS: std::sync::LazyLock<Vec<[metrics::Key; 2]>> = std::sync::LazyLock::new(|| {
        NAMES
            .iter()
            .map(|&name| {
                ["ok", "error"].map(|outcome| {
                    metrics::Key::from_parts(
                        "resilient_cache_l2_command_seconds",
                        vec![
                            metrics::Label::new("command", name),
                            metrics::Label::new("outcome", outcome),
                        ],
                    )
                })
            })
            .collect()
    });
    let i = NAMES.iter().position(|&n| n == name).unwrap_or(NAMES.len() - 1);
    &KEYS[i][usize::from(!ok)]
}

/// The command's name as a static label (unknown commands are `other`).
fn command_name(cmd: &Cmd) -> &'static str {
    // The single commands: all the names but the last three.
    let known = &NAMES[..NAMES.len() - 3];
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => known
            .iter()
            .find(|k| k.as_bytes().eq_ignore_ascii_case(name))
            .copied()
            .unwrap_or("other"),
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_named_from_the_list_and_unknown_ones_are_other() {
        assert_eq!(command_name(&redis::cmd("get")), "GET");
        assert_eq!(command_name(redis::cmd("UNLINK").arg("k")), "UNLINK");
        assert_eq!(command_name(&redis::cmd("HSET")), "other");
        // A request name is never mistaken for a command's.
        assert_eq!(command_name(&redis::cmd("PIPELINE")), "other");
        assert_eq!(command_name(&redis::cmd("EVALSHA")), "other");
    }

    #[cfg(feature = "metrics")]
    #[test]
    fn each_name_and_outcome_has_its_own_histogram_key() {
        let labels = |k: &metrics::Key| -> Vec<(String, String)> {
            k.labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect()
        };
        let pair = |c: &str, o: &str| vec![("command".into(), c.into()), ("outcome".into(), o.into())];
        for &name in NAMES {
            let ok = histogram_key(name, true);
            assert_eq!(ok.name(), "resilient_cache_l2_command_seconds");
            assert_eq!(labels(ok), pair(name, "ok"));
            assert_eq!(labels(histogram_key(name, false)), pair(name, "error"));
        }
        assert_eq!(labels(histogram_key("HSET", true)), pair("other", "ok"));
    }
}
