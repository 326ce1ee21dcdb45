//! L2 on Redis or Valkey, through the `redis` crate.
//!
//! One [`RedisConnection`] per service: a lazily connecting, auto-reconnecting,
//! multiplexed `ConnectionManager` that every cache shares. It is created
//! without touching the network, so a dead Redis at start-up costs nothing;
//! the first L2 call connects, and after a failure the manager reconnects in
//! the background. Every call is bounded by the operation timeout
//! (`CACHE_REDIS_SOCKET_TIMEOUT`), connection set-up included.
//!
//! One command per operation: `GET`, `SET … PX`, `SET … NX PX`, `UNLINK`,
//! `EXISTS`, `PTTL`; `SCAN` (never `KEYS`) with `UNLINK` for `clear`.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::{Cmd, ConnectionAddr, FromRedisValue, IntoConnectionInfo, RedisError};

use crate::backend::topology::{Handle, Link};
use crate::backend::CacheBackend;
use crate::config::{keys, redact_url, L2BackendKind, L2Config, RedisConfig, RedisMode};
use crate::error::{config_err, ConnectionErrorKind as Kind, Error, Result};
use crate::stats::L2Stats;

/// Checks that a `CACHE_REDIS_URL` is one the client accepts (no secret in the error).
pub(crate) fn check_url(url: &str) -> Result<()> {
    url.into_connection_info().map(|_| ()).map_err(|e| {
        config_err(
            keys::REDIS_URL,
            &redact_url(url),
            format!("a valid Redis URL ({})", e.kind_name()),
        )
    })
}

trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for RedisError {
    fn kind_name(&self) -> String {
        self.category().to_string()
    }
}

/// The service's shared L2 connection. Cheap to clone.
#[derive(Clone)]
pub struct RedisConnection {
    link: Link,
    op_timeout: Duration,
    endpoint: String,
    db: i64,
    mode: RedisMode,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("endpoint", &self.endpoint)
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

/// Where load leases live: `rc:lease:{<namespace>:<key>}`, outside every
/// namespace, hash-tagged into the data key's slot. One spelling, for the
/// lease itself and for the pattern `clear` removes them by.
const LEASE_PREFIX: &str = "rc:lease:{";

/// The PEM file of `CACHE_REDIS_TLS_CA`, read; `None` for the system's roots.
#[cfg(feature = "tls")]
pub(crate) fn tls_root_cert(config: &RedisConfig) -> Result<Option<Vec<u8>>> {
    let Some(path) = &config.tls_ca else {
        return Ok(None);
    };
    std::fs::read(path).map(Some).map_err(|e| {
        config_err(
            keys::REDIS_TLS_CA,
            &path.display().to_string(),
            format!("a readable PEM file ({e})"),
        )
    })
}

/// A client for `info`, with the configured TLS roots for `rediss://`.
pub(crate) fn open_client(config: &RedisConfig, info: redis::ConnectionInfo) -> Result<redis::Client> {
    let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    let unusable = |e: RedisError| {
        config_err(
            keys::REDIS_URL,
            &config.endpoint(),
            format!("a usable Redis address ({})", e.category()),
        )
    };
    if !tls {
        return redis::Client::open(info).map_err(unusable);
    }
    #[cfg(feature = "tls")]
    {
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: tls_root_cert(config)?,
        };
        redis::Client::build_with_tls(info, certs).map_err(|e| {
            config_err(
                keys::REDIS_TLS_CA,
                &config
                    .tls_ca
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                format!("PEM certificates the TLS client accepts ({})", e.category()),
            )
        })
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = unusable;
        Err(config_err(
            keys::REDIS_URL,
            &config.endpoint(),
            "a redis:// URL in this build: rediss:// (TLS) needs the Cargo feature `tls` of resilient-cache",
        ))
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

    /// Runs one command, bounded by the operation timeout.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        self.call(Request::Cmd(cmd)).await
    }

    /// Sends several commands in one round trip, bounded by the operation timeout.
    pub(crate) async fn query_pipeline<T: FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T> {
        self.call(Request::Pipeline(pipe)).await
    }

    /// Runs a Lua script (`EVALSHA`, loading it once if needed), bounded by the operation timeout.
    pub(crate) async fn query_script<T: FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T> {
        self.call(Request::Script(&invocation)).await
    }

    /// Every request: on a connection from the link, bounded by the operation
    /// timeout, its time observed under the request's name.
    async fn call<T: FromRedisValue>(&self, request: Request<'_>) -> Result<T> {
        let timer = Timer::start();
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
            Request::Pipeline(_) => "pipeline",
            Request::Script(_) => "script",
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
        metrics::histogram!(
            "resilient_cache_l2_command_seconds",
            "command" => command(),
            "outcome" => if r.is_ok() { "ok" } else { "error" }
        )
        .record(self.started.elapsed().as_secs_f64());
    }
}

/// The command's name as a static label (unknown commands are `other`).
#[cfg(feature = "metrics")]
fn command_name(cmd: &Cmd) -> &'static str {
    const KNOWN: &[&str] = &[
        "GET", "SET", "UNLINK", "DEL", "EXISTS", "PTTL", "SCAN", "INFO", "PING", "PUBLISH",
    ];
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => KNOWN
            .iter()
            .find(|k| k.as_bytes().eq_ignore_ascii_case(name))
            .copied()
            .unwrap_or("other"),
        _ => "other",
    }
}

#[cfg(not(feature = "metrics"))]
fn command_name(_: &Cmd) -> &'static str {
    ""
}

/// Maps a client error to our kinds. Data problems (a key of another type)
/// are serialization errors: they must not count against the breaker.
fn map_err(e: RedisError) -> Error {
    use redis::{ErrorKind as K, ServerErrorKind as S};
    if e.is_timeout() {
        return Error::connection(Kind::Timeout, e.to_string());
    }
    if e.is_connection_refusal() {
        return Error::connection(Kind::Refused, e.to_string());
    }
    if e.code() == Some("WRONGTYPE") {
        return Error::Serialization("the key holds a value that is not a string".into());
    }
    let kind = match e.kind() {
        K::AuthenticationFailed | K::Server(S::NoPerm) => Kind::Auth,
        _ if e.code().is_some_and(|c| c == "NOAUTH" || c == "WRONGPASS") => Kind::Auth,
        K::UnexpectedReturnType => return Error::Serialization(e.to_string()),
        K::Server(_) | K::Extension => Kind::Server,
        _ => Kind::Io,
    };
    Error::connection(kind, e.to_string())
}

/// Escapes the glob characters of `SCAN MATCH`, so that caller text is matched literally.
pub(crate) fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The `redis` / `valkey` L2 backend of one cache: keys are `"{prefix}:{key}"`.
pub struct RedisBackend {
    conn: RedisConnection,
    kind: L2BackendKind,
    namespace: String,
    prefix: String,
    ttl: Duration,
    serializer: String,
    fence: bool,
}

impl RedisBackend {
    /// A backend for one cache's namespace on the shared connection.
    pub fn new(conn: RedisConnection, config: &L2Config, serializer: &str) -> Self {
        Self {
            conn,
            kind: config.backend,
            namespace: format!("{}:", config.key_prefix),
            prefix: config.key_prefix.clone(),
            ttl: config.ttl,
            serializer: serializer.to_string(),
            fence: config.lease_fence,
        }
    }

    /// The full Redis key of `key`.
    pub fn redis_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.namespace.len() + key.len());
        k.push_str(&self.namespace);
        k.push_str(key);
        k
    }

    /// The shared connection.
    pub fn connection(&self) -> &RedisConnection {
        &self.conn
    }

    /// The key of `key`'s load lease, or `None` when this namespace has no
    /// leases. It is outside the namespace (so `list_keys` never sees it) and
    /// hash-tagged with the data key, so both share a cluster slot — except
    /// for keys with braces of their own, which get no lease on a cluster.
    fn lease_key(&self, key: &str) -> Option<String> {
        if !self.fence || (self.conn.mode() == RedisMode::Cluster && key.contains(['{', '}'])) {
            return None;
        }
        Some(format!("{LEASE_PREFIX}{}{key}}}", self.namespace))
    }

    fn px(&self, ttl: Option<Duration>) -> u64 {
        ttl.unwrap_or(self.ttl).as_millis().clamp(1, i64::MAX as u128) as u64
    }

    fn pattern(&self, prefix: Option<&str>) -> String {
        format!(
            "{}{}*",
            escape_glob(&self.namespace),
            escape_glob(prefix.unwrap_or(""))
        )
    }

    fn strip(&self, keys: Vec<String>) -> impl Iterator<Item = String> + '_ {
        keys.into_iter()
            .filter_map(|k| k.strip_prefix(&self.namespace).map(str::to_string))
    }
}

impl CacheBackend for RedisBackend {
    type Value = Vec<u8>;
    type Stats = L2Stats;

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.conn.query(redis::cmd("GET").arg(self.redis_key(key))).await
    }

    fn operation_timeout(&self) -> Option<Duration> {
        Some(self.conn.op_timeout())
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<()> {
        let Some(lease) = self.lease_key(key) else {
            let mut c = redis::cmd("SET");
            c.arg(self.redis_key(key)).arg(value).arg("PX").arg(self.px(ttl));
            return self.conn.query::<()>(&c).await;
        };
        // Ending the lease first (one round trip) fences out a load in flight:
        // its conditional store can no longer land over this value.
        let mut p = redis::pipe();
        p.cmd("DEL").arg(lease).ignore();
        p.cmd("SET")
            .arg(self.redis_key(key))
            .arg(value)
            .arg("PX")
            .arg(self.px(ttl))
            .ignore();
        self.conn.query_pipeline::<()>(&p).await
    }

    async fn set_if_not_exist(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<bool> {
        let mut c = redis::cmd("SET");
        c.arg(self.redis_key(key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(self.px(ttl));
        Ok(self.conn.query::<Option<String>>(&c).await?.is_some())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let Some(lease) = self.lease_key(key) else {
            let n: u64 = self
                .conn
                .query(redis::cmd("UNLINK").arg(self.redis_key(key)))
                .await?;
            return Ok(n > 0);
        };
        let mut p = redis::pipe();
        p.cmd("DEL").arg(lease).ignore();
        p.cmd("UNLINK").arg(self.redis_key(key));
        let (removed,): (u64,) = self.conn.query_pipeline(&p).await?;
        Ok(removed > 0)
    }

    async fn clear(&self) -> Result<u64> {
        self.clear_with_progress(&|_| {}).await
    }

    async fn clear_with_progress(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<u64> {
        let leases = format!("{LEASE_PREFIX}{}*", escape_glob(&self.namespace));
        self.conn
            .scan(&leases, |batch| {
                let mut c = redis::cmd("UNLINK");
                c.arg(batch);
                Some(c)
            })
            .await?;
        let mut removed = 0u64;
        self.conn
            .scan(&self.pattern(None), |batch| {
                removed += batch.len() as u64;
                progress(removed);
                let mut c = redis::cmd("UNLINK");
                c.arg(batch);
                Some(c)
            })
            .await?;
        Ok(removed)
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        Ok(self
            .conn
            .query::<u64>(redis::cmd("EXISTS").arg(self.redis_key(key)))
            .await?
            > 0)
    }

    async fn get_ttl(&self, key: &str) -> Result<Option<Duration>> {
        let ms: i64 = self
            .conn
            .query(redis::cmd("PTTL").arg(self.redis_key(key)))
            .await?;
        Ok((ms >= 0).then(|| Duration::from_millis(ms as u64)))
    }

    async fn list_keys(&self, prefix: Option<&str>) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        self.conn
            .scan(&self.pattern(prefix), |batch| {
                keys.extend(self.strip(batch));
                None
            })
            .await?;
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn get_size(&self) -> Result<u64> {
        Ok(self.list_keys(None).await?.len() as u64)
    }

    async fn get_stats(&self) -> Result<L2Stats> {
        let (size, server) = tokio::join!(self.get_size(), self.conn.info());
        let mut s = self.describe();
        s.available = size.is_ok() || server.is_ok();
        s.size = size.ok();
        s.server = server.unwrap_or_default();
        if s.available {
            Ok(s)
        } else {
            Err(Error::connection(Kind::Io, "stats unavailable"))
        }
    }

    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Vec<u8>, Option<Duration>)>> {
        let k = self.redis_key(key);
        let mut p = redis::pipe();
        p.cmd("GET").arg(&k).cmd("PTTL").arg(&k);
        let (value, ms): (Option<Vec<u8>>, i64) = self.conn.query_pipeline(&p).await?;
        Ok(value.map(|v| (v, (ms >= 0).then(|| Duration::from_millis(ms as u64)))))
    }

    async fn lease(&self, key: &str, token: u64, ttl: Duration, exclusive: bool) -> Result<Option<bool>> {
        let Some(lease) = self.lease_key(key) else {
            return Ok(None);
        };
        let mut c = redis::cmd("SET");
        c.arg(lease).arg(token).arg("PX").arg(self.px(Some(ttl)));
        if exclusive {
            c.arg("NX");
        }
        Ok(Some(self.conn.query::<Option<String>>(&c).await?.is_some()))
    }

    async fn store_if_leased(
        &self,
        key: &str,
        token: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> Result<Option<bool>> {
        static STORE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r"if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1",
            )
        });
        let Some(lease) = self.lease_key(key) else {
            return Ok(None);
        };
        let mut inv = STORE.prepare_invoke();
        inv.key(self.redis_key(key))
            .key(lease)
            .arg(token)
            .arg(value)
            .arg(self.px(ttl))
            .arg(if only_if_absent { "1" } else { "0" });
        Ok(Some(self.conn.query_script::<u8>(inv).await? == 1))
    }

    async fn release_lease(&self, key: &str, token: u64) -> Result<()> {
        static RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 0",
            )
        });
        let Some(lease) = self.lease_key(key) else {
            return Ok(());
        };
        let mut inv = RELEASE.prepare_invoke();
        inv.key(lease).arg(token);
        self.conn.query_script::<()>(inv).await
    }

    fn describe(&self) -> L2Stats {
        L2Stats {
            backend: self.kind.name(),
            endpoint: self.conn.endpoint.clone(),
            db: self.conn.db,
            key_prefix: self.prefix.clone(),
            ttl: self.ttl.as_secs_f64(),
            serializer: self.serializer.clone(),
            available: false,
            size: None,
            server: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(escape_glob("a*b?c[d]e\\f"), "a\\*b\\?c\\[d\\]e\\\\f");
        assert_eq!(escape_glob("users"), "users");
    }

    #[test]
    fn bad_url_error_hides_the_password() {
        let e = check_url("redis://u:hunter2@[bad").unwrap_err().to_string();
        assert!(e.contains("CACHE_REDIS_URL") && !e.contains("hunter2"), "{e}");
    }
}
