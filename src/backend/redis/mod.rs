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
//!
//! Where things are: `connect` opens clients and maps errors, `conn`
//! is the shared connection, `gather` joins overlapping fenced writes into
//! one pipeline, `topology` follows single servers, clusters and
//! sentinels, `backplane` is the pub/sub worker, `tracking` the worker of
//! Redis-assisted invalidation, `push` the connections both of them read; this file is the backend of
//! one cache (namespacing, leases, the commands of each operation).
//!
//! # Performance notes
//!
//! A write allocates as little as the `redis` crate allows: keys are written
//! into the command from their parts (`Stored`), commands are sized once,
//! and pipelines mark no command `ignore()`d (the crate keeps those in a
//! hashed set per pipeline; `()` reads any array of replies, and a server
//! error in one still fails the call).
//!
//! A fenced `set` (lease `HDEL` + `SET`) costs Redis a second command and the
//! client a pipeline instead of a single command: with the `redis` crate
//! alone, a pipeline of a lease's `DEL` and the `SET` ran at a median 0.76×
//! of a plain `SET` at 64 tasks (load generator, `raw_fenced_set`). So
//! fenced writes that overlap are gathered (`gather`): while a few are on
//! their way, later ones leave together, one `HDEL` for all their leases and
//! their `SET`s in one pipeline; a write with nothing to share with goes
//! out at once.
//!
//! On one server the leases are fields of one hash ([`LEASES`]) rather than
//! keys of their own: ending a lease that does not exist — what almost
//! every write does — is then one lookup of the hash, absent while no load
//! is in flight, for a whole batch. A `DEL` of absent lease keys cost Redis
//! a lookup of the keyspace per key: 0.25–0.47 µs each (`INFO commandstats`
//! of a `DEL` of 60 absent keys on a server holding 300,000), a third of
//! what the `SET` itself costs, where an `HDEL` of 60 fields of an absent
//! hash cost 0.05 µs in all.

use std::time::Duration;

use std::collections::BTreeMap;

use crate::backend::config::{L2BackendKind, L2Config, RedisMode};
use crate::backend::{CacheBackend, L2Stats};
use crate::error::{ConnectionErrorKind as Kind, Error, Result};

pub(crate) mod backplane;
mod conn;
pub(crate) mod connect;
mod gather;
mod push;
mod topology;
pub(crate) mod tracking;

pub use conn::RedisConnection;

/// Where load leases live on a cluster: `rc:lease:{<namespace>:<key>}`,
/// outside every namespace, hash-tagged into the data key's slot (a script
/// may touch one slot only). One spelling, for the lease itself and for the
/// pattern `clear` removes them by.
const LEASE_PREFIX: &str = "rc:lease:{";
/// Where load leases live on one server (or a Sentinel's primary): one hash,
/// outside every namespace, with a field per lease named as its data key is
/// stored (`<namespace>:<key>`) and holding `<token>:<deadline>` (the
/// server's clock, in milliseconds). The hash lives as long as its
/// longest lease and is gone, as an empty hash is, once the last ends.
const LEASES: &str = "rc:leases";
/// Past this many fields, taking a lease also drops the expired ones (left
/// by loads whose process died before ending them).
const LEASES_PRUNE_ABOVE: u32 = 1024;
/// The namespace's marker hash is `rc:marks:{<namespace>}` (see [`crate::tags`]).
const MARKS_PREFIX: &str = "rc:marks:{";
/// Past this many fields, recording a marker also drops those older than
/// the marker lifetime (each field says when it was set).
const MARKS_PRUNE_ABOVE: u32 = 1024;

/// Locks `m`, whatever a panicking holder left: the workers' maps stay usable.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A `PTTL` answer as a remaining TTL (`None`: no expiry, or no key).
fn remaining(ms: i64) -> Option<Duration> {
    (ms >= 0).then(|| Duration::from_millis(ms as u64))
}

/// One reply of a pipeline read as `T`; a missing reply or a server error
/// (e.g. `MOVED` during a resharding) is an error of the whole call. A
/// server error is classified as it would be for a command sent alone.
fn reply<T: redis::FromRedisValue>(v: Option<redis::Value>) -> Result<T> {
    let v = v.ok_or_else(|| Error::Serialization("a reply is missing from the pipeline".into()))?;
    if let redis::Value::ServerError(e) = v {
        return Err(connect::map_err(e.into()));
    }
    redis::from_redis_value(v).map_err(|e| Error::Serialization(e.to_string()))
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

/// A key as stored, written straight into a command's argument from its
/// parts (no `String` built for it: one allocation less per command).
#[derive(Clone, Copy)]
struct Stored<'a, const N: usize>([&'a [u8]; N]);

impl<const N: usize> Stored<'_, N> {
    /// Its length in bytes, to size a command's buffer once.
    fn len(&self) -> usize {
        self.0.iter().map(|part| part.len()).sum()
    }
}

impl<const N: usize> redis::ToRedisArgs for Stored<'_, N> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write;
        let mut arg = out.writer_for_next_arg();
        for part in self.0 {
            // Writing into the command's own buffer cannot fail.
            let _ = arg.write_all(part);
        }
    }
}

/// The load lease of the key stored as `namespace` + `key`: outside every
/// namespace, and hash-tagged with the data key so that both share a
/// cluster slot. The one rule for a lease's name; a stored key given whole
/// comes with an empty `namespace`.
fn lease_of<'a>(namespace: &'a [u8], key: &'a [u8]) -> Stored<'a, 4> {
    Stored([LEASE_PREFIX.as_bytes(), namespace, key, b"}"])
}

/// `head… key…` (`DEL k…`, `UNLINK k…`, `MGET k…`, `HDEL hash field…`),
/// each key written from its parts into a buffer sized once: built key by
/// key, it would grow with each doubling, each a reallocation, and a
/// `String` per key would be one allocation more each.
fn key_list_cmd<'a, const N: usize>(
    head: &[&str],
    keys: impl Iterator<Item = Stored<'a, N>> + Clone,
) -> redis::Cmd {
    let (count, bytes) = keys.clone().fold((0, 0), |(n, b), k| (n + 1, b + k.len()));
    let head_bytes: usize = head.iter().map(|h| h.len()).sum();
    let mut cmd = redis::Cmd::with_capacity(count + head.len(), head_bytes + bytes);
    for h in head {
        cmd.arg(*h);
    }
    for key in keys {
        cmd.arg(key);
    }
    cmd
}

/// `HDEL` of the leases of the keys stored as `keys` ([`LEASES`], one
/// server): the fence of the writes to those keys.
fn end_leases_cmd<'a, const N: usize>(keys: impl Iterator<Item = Stored<'a, N>> + Clone) -> redis::Cmd {
    key_list_cmd(&["HDEL", LEASES], keys)
}

/// Where the lease of one key lives.
#[derive(Clone, Copy)]
enum LeaseAt<'a> {
    /// A field of [`LEASES`], named as the data key is stored (one server).
    Field(Stored<'a, 2>),
    /// A key of its own in the data key's slot ([`lease_of`], a cluster).
    Key(Stored<'a, 4>),
}

/// The command that ends the lease at `at`: the fence of a write to its key.
fn end_lease_cmd(at: LeaseAt<'_>) -> redis::Cmd {
    match at {
        LeaseAt::Field(field) => end_leases_cmd(std::iter::once(field)),
        LeaseAt::Key(lease) => key_list_cmd(&["DEL"], std::iter::once(lease)),
    }
}

/// The start of every script on [`LEASES`]: the one spelling of a lease
/// field's value (`lease_value`, and `lease_parts` reading it back as token
/// and deadline), and `now`, the server's clock in milliseconds (`TIME` is
/// allowed in a script: scripts replicate their effects).
const LUA_LEASES: &str = "local function lease_value(token, deadline)
  return token .. ':' .. string.format('%.0f', deadline)
end
local function lease_parts(held)
  local token, deadline = string.match(held, '^(%d+):(%d+)$')
  return token, tonumber(deadline)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

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
        format!("{}{key}", self.namespace)
    }

    /// [`redis_key`](Self::redis_key) as a command argument.
    fn key_arg<'a>(&'a self, key: &'a str) -> Stored<'a, 2> {
        Stored([self.namespace.as_bytes(), key.as_bytes()])
    }

    /// The shared connection.
    pub fn connection(&self) -> &RedisConnection {
        &self.conn
    }

    /// The namespace's marker hash: outside the namespace, so `list_keys`
    /// and `get_size` never count it.
    fn marks_key(&self) -> String {
        format!("{MARKS_PREFIX}{}}}", self.prefix)
    }

    /// The field of `key`'s lease in [`LEASES`] (one server): the data key
    /// as stored. The batch paths end their keys' leases through it, with
    /// no check of the fence or the mode, which they have made already.
    fn lease_field<'a>(&'a self, key: &'a str) -> Stored<'a, 2> {
        self.key_arg(key)
    }

    /// Where `key`'s load lease lives, or `None` when this namespace has no
    /// leases. Outside the namespace either way, so `list_keys` never sees
    /// it. A key with braces of its own gets no lease on a cluster: its
    /// lease's hash tag would not be its data key.
    fn lease_at<'a>(&'a self, key: &'a str) -> Option<LeaseAt<'a>> {
        if !self.fence {
            return None;
        }
        if self.conn.mode() != RedisMode::Cluster {
            return Some(LeaseAt::Field(self.lease_field(key)));
        }
        if key.contains(['{', '}']) {
            return None;
        }
        Some(LeaseAt::Key(lease_of(self.namespace.as_bytes(), key.as_bytes())))
    }

    /// A cluster node's pipeline for `key`: with the fence, its lease's
    /// `DEL` first (a `PING` for a key with no lease, so that every key has
    /// as many replies).
    fn end_lease_on_node(&self, p: &mut redis::Pipeline, key: &str) {
        if let Some(at) = self.lease_at(key) {
            p.add_command(end_lease_cmd(at));
        } else if self.fence {
            p.cmd("PING");
        }
    }

    /// `name key` (`GET`, `EXISTS`, …): [`key_list_cmd`] of one key.
    fn key_cmd(&self, name: &'static str, key: &str) -> redis::Cmd {
        key_list_cmd(&[name], std::iter::once(self.key_arg(key)))
    }

    /// `SET key value PX ttl`, its buffer sized once for the key's parts,
    /// the value and the TTL's digits: built argument by argument, a
    /// command's buffer grows four or five times, each a reallocation.
    fn set_cmd(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> redis::Cmd {
        let stored = self.key_arg(key);
        let mut set = redis::Cmd::with_capacity(5, 3 + 2 + 20 + stored.len() + value.len());
        set.arg("SET").arg(stored).arg(value).arg("PX").arg(self.px(ttl));
        set
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
        self.conn.query(&self.key_cmd("GET", key)).await
    }

    fn operation_timeout(&self) -> Option<Duration> {
        Some(self.conn.op_timeout())
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<()> {
        let set = self.set_cmd(key, &value, ttl);
        let Some(at) = self.lease_at(key) else {
            return self.conn.query::<()>(&set).await;
        };
        // Ending the lease first (one round trip) fences out a load in flight:
        // its conditional store can no longer land over this value. Built
        // only for a write sent alone: a gathered one's ends with its batch's.
        let alone = |set| {
            let mut p = redis::Pipeline::with_capacity(2);
            p.add_command(end_lease_cmd(at));
            p.add_command(set);
            p
        };
        self.conn.fenced_set(set, alone).await
    }

    async fn set_if_not_exist(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<bool> {
        let mut c = redis::cmd("SET");
        c.arg(self.key_arg(key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(self.px(ttl));
        Ok(self.conn.query::<Option<String>>(&c).await?.is_some())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let Some(at) = self.lease_at(key) else {
            let n: u64 = self.conn.query(&self.key_cmd("UNLINK", key)).await?;
            return Ok(n > 0);
        };
        let mut p = redis::Pipeline::with_capacity(2);
        p.add_command(end_lease_cmd(at));
        p.add_command(self.key_cmd("UNLINK", key));
        let ((), removed): ((), u64) = self.conn.query_pipeline(&p).await?;
        Ok(removed > 0)
    }

    async fn clear(&self) -> Result<u64> {
        self.clear_with_progress(&|_| {}).await
    }

    async fn clear_with_progress(&self, progress: &(dyn Fn(u64) + Send + Sync)) -> Result<u64> {
        if self.conn.mode() == RedisMode::Cluster {
            let leases = format!("{LEASE_PREFIX}{}*", escape_glob(&self.namespace));
            self.conn
                .scan(&leases, |batch| {
                    let mut c = redis::cmd("UNLINK");
                    c.arg(batch);
                    Some(c)
                })
                .await?;
        } else {
            // The hash holds the leases of loads in flight only: few fields.
            static END_ALL: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
                redis::Script::new(
                    r"for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #ARGV[1]) == ARGV[1] then redis.call('HDEL', KEYS[1], f) end
end
return 0",
                )
            });
            let mut inv = END_ALL.prepare_invoke();
            inv.key(LEASES).arg(&self.namespace);
            self.conn.query_script::<()>(inv).await?;
        }
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
        Ok(self.conn.query::<u64>(&self.key_cmd("EXISTS", key)).await? > 0)
    }

    async fn get_ttl(&self, key: &str) -> Result<Option<Duration>> {
        let ms: i64 = self.conn.query(&self.key_cmd("PTTL", key)).await?;
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
        Ok(value.map(|v| (v, remaining(ms))))
    }

    async fn get_many(
        &self,
        keys: &[&str],
        with_ttl: bool,
    ) -> Result<Vec<Option<(Vec<u8>, Option<Duration>)>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if !with_ttl && self.conn.mode() != RedisMode::Cluster {
            let mget = key_list_cmd(&["MGET"], keys.iter().map(|k| self.key_arg(k)));
            let values: Vec<Option<Vec<u8>>> = self.conn.query(&mget).await?;
            return Ok(values.into_iter().map(|v| v.map(|v| (v, None))).collect());
        }
        let per_key = if with_ttl { 2 } else { 1 };
        let raw: Vec<String> = keys.iter().map(|k| self.redis_key(k)).collect();
        let replies = self
            .conn
            .query_by_node(&raw, per_key, &|p, i| {
                if with_ttl {
                    p.cmd("GET").arg(&raw[i]).cmd("PTTL").arg(&raw[i]);
                } else {
                    p.cmd("GET").arg(&raw[i]);
                }
            })
            .await?;
        replies
            .into_iter()
            .map(|r| {
                let mut r = r.into_iter();
                let value: Option<Vec<u8>> = reply(r.next())?;
                let ttl = match r.next() {
                    Some(ms) => remaining(reply(Some(ms))?),
                    None => None,
                };
                Ok(value.map(|v| (v, ttl)))
            })
            .collect()
    }

    async fn set_many(&self, entries: Vec<(&str, Vec<u8>, Option<Duration>)>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        if self.conn.mode() != RedisMode::Cluster {
            // One server: every lease ends in one `HDEL`, then the writes, in
            // one round trip (half the commands of a fence per key).
            let mut p = redis::Pipeline::with_capacity(entries.len() + 1);
            if self.fence {
                p.add_command(end_leases_cmd(entries.iter().map(|e| self.lease_field(e.0))));
            }
            for (key, value, ttl) in &entries {
                p.add_command(self.set_cmd(key, value, *ttl));
            }
            return self.conn.query_pipeline::<()>(&p).await;
        }
        let raw: Vec<String> = entries.iter().map(|e| self.redis_key(e.0)).collect();
        // Each key's lease ends with its write, as in `set`.
        let per_key = if self.fence { 2 } else { 1 };
        let replies = self
            .conn
            .query_by_node(&raw, per_key, &|p, i| {
                let (key, value, ttl) = &entries[i];
                self.end_lease_on_node(p, key);
                p.add_command(self.set_cmd(key, value, *ttl));
            })
            .await?;
        for r in replies {
            for v in r {
                reply::<redis::Value>(Some(v))?;
            }
        }
        Ok(())
    }

    async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        if self.conn.mode() != RedisMode::Cluster {
            // One server: the leases in one `HDEL`, the keys in one `UNLINK`.
            let mut p = redis::Pipeline::with_capacity(2);
            if self.fence {
                p.add_command(end_leases_cmd(keys.iter().map(|k| self.lease_field(k))));
            }
            p.add_command(key_list_cmd(&["UNLINK"], keys.iter().map(|k| self.key_arg(k))));
            let mut replies: Vec<redis::Value> = self.conn.query_pipeline(&p).await?;
            return reply(replies.pop());
        }
        let raw: Vec<String> = keys.iter().map(|k| self.redis_key(k)).collect();
        let per_key = if self.fence { 2 } else { 1 };
        let replies = self
            .conn
            .query_by_node(&raw, per_key, &|p, i| {
                self.end_lease_on_node(p, keys[i]);
                p.cmd("UNLINK").arg(&raw[i]);
            })
            .await?;
        let mut removed = 0;
        for r in replies {
            let n: u64 = reply(r.into_iter().last())?;
            removed += n;
        }
        Ok(removed)
    }

    async fn lease(&self, key: &str, token: u64, ttl: Duration, exclusive: bool) -> Result<Option<bool>> {
        // On one server: with `exclusive`, refused while a lease that has not
        // expired holds the field; the hash outlives its longest lease, and
        // past `ARGV[5]` fields the expired ones go.
        static TAKE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(&format!(
                r"{LUA_LEASES}local ttl = tonumber(ARGV[3])
if ARGV[4] == '1' then
  local held = redis.call('HGET', KEYS[1], ARGV[1])
  if held then
    local _, deadline = lease_parts(held)
    if deadline and deadline > now then return 0 end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], lease_value(ARGV[2], now + ttl))
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[5]) then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    local _, deadline = lease_parts(all[i + 1])
    if not deadline or deadline <= now then redis.call('HDEL', KEYS[1], all[i]) end
  end
end
return 1"
            ))
        });
        let ttl_ms = self.px(Some(ttl));
        match self.lease_at(key) {
            None => Ok(None),
            Some(LeaseAt::Field(field)) => {
                let mut inv = TAKE.prepare_invoke();
                inv.key(LEASES)
                    .arg(field)
                    .arg(token)
                    .arg(ttl_ms)
                    .arg(if exclusive { "1" } else { "0" })
                    .arg(LEASES_PRUNE_ABOVE);
                Ok(Some(self.conn.query_script::<u8>(inv).await? == 1))
            }
            Some(LeaseAt::Key(lease)) => {
                let mut c = redis::cmd("SET");
                c.arg(lease).arg(token).arg("PX").arg(ttl_ms);
                if exclusive {
                    c.arg("NX");
                }
                Ok(Some(self.conn.query::<Option<String>>(&c).await?.is_some()))
            }
        }
    }

    async fn store_if_leased(
        &self,
        key: &str,
        token: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> Result<Option<bool>> {
        // A cluster's lease is a key of its own (`KEYS[2]`), gone when it expires.
        static STORE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r"if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1",
            )
        });
        // One server's lease is the data key's field of the hash `KEYS[2]`,
        // held until its deadline.
        static STORE_FIELD: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(&format!(
                r"{LUA_LEASES}local held = redis.call('HGET', KEYS[2], KEYS[1])
if not held then return 0 end
local token, deadline = lease_parts(held)
if token ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[2], KEYS[1])
if deadline <= now then return 0 end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1"
            ))
        });
        let Some(at) = self.lease_at(key) else {
            return Ok(None);
        };
        let redis_key = self.redis_key(key);
        // A script's write comes back to this service as a tracking
        // notification (`NOLOOP` does not cover scripts): noted, so that the
        // notification is confirmed rather than evicting the fresh L1 entry.
        self.conn.own_stores().note(&redis_key, &value);
        let mut inv = match at {
            LeaseAt::Field(_) => {
                let mut inv = STORE_FIELD.prepare_invoke();
                inv.key(&redis_key).key(LEASES);
                inv
            }
            LeaseAt::Key(lease) => {
                let mut inv = STORE.prepare_invoke();
                inv.key(&redis_key).key(lease);
                inv
            }
        };
        inv.arg(token)
            .arg(value)
            .arg(self.px(ttl))
            .arg(if only_if_absent { "1" } else { "0" });
        let stored = self.conn.query_script::<u8>(inv).await.map(|r| r == 1);
        if !matches!(stored, Ok(true)) {
            self.conn.own_stores().forget(&redis_key);
        }
        Ok(Some(stored?))
    }

    async fn release_lease(&self, key: &str, token: u64) -> Result<()> {
        static RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 0",
            )
        });
        static RELEASE_FIELD: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(&format!(
                r"{LUA_LEASES}local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and lease_parts(held) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0"
            ))
        });
        let inv = match self.lease_at(key) {
            None => return Ok(()),
            Some(LeaseAt::Field(field)) => {
                let mut inv = RELEASE_FIELD.prepare_invoke();
                inv.key(LEASES).arg(field).arg(token);
                inv
            }
            Some(LeaseAt::Key(lease)) => {
                let mut inv = RELEASE.prepare_invoke();
                inv.key(lease).arg(token);
                inv
            }
        };
        self.conn.query_script::<()>(inv).await
    }

    async fn load_markers(&self) -> Result<Option<crate::backend::MarkerFields>> {
        let fields: Vec<(String, String)> = self
            .conn
            .query(redis::cmd("HGETALL").arg(self.marks_key()))
            .await?;
        Ok(Some(
            fields
                .into_iter()
                .filter_map(|(f, v)| Some((f, v.parse().ok()?)))
                .collect(),
        ))
    }

    async fn put_marker(&self, field: &str, at_us: u64, keep: Duration) -> Result<bool> {
        // One script, so that the latest stamp wins whatever the order in
        // which instances record theirs, and the hash outlives its newest marker.
        static PUT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r"local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local at = tonumber(ARGV[2])
if at > cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
local keep = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < keep then redis.call('PEXPIRE', KEYS[1], keep) end
if redis.call('HLEN', KEYS[1]) > tonumber(ARGV[4]) then
  local all = redis.call('HGETALL', KEYS[1])
  local oldest = at - keep * 1000
  for i = 1, #all, 2 do
    if tonumber(all[i + 1]) < oldest then redis.call('HDEL', KEYS[1], all[i]) end
  end
end
return 1",
            )
        });
        let mut inv = PUT.prepare_invoke();
        inv.key(self.marks_key())
            .arg(field)
            .arg(at_us)
            .arg(keep.as_millis().max(1) as u64)
            .arg(MARKS_PRUNE_ABOVE);
        self.conn.query_script::<u8>(inv).await?;
        Ok(true)
    }

    async fn expire_in(&self, key: &str, ttl: Duration) -> Result<bool> {
        let mut c = redis::cmd("PEXPIRE");
        c.arg(self.key_arg(key)).arg(self.px(Some(ttl)));
        Ok(self.conn.query::<u8>(&c).await? == 1)
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
    fn a_key_written_from_its_parts_is_the_joined_key() {
        let packed = |arg: &dyn Fn(&mut redis::Cmd)| {
            let mut c = redis::cmd("DEL");
            arg(&mut c);
            c.get_packed_command()
        };
        assert_eq!(
            packed(&|c| {
                c.arg(lease_of(b"users:", b"42"));
            }),
            packed(&|c| {
                c.arg("rc:lease:{users:42}");
            })
        );
        assert_eq!(
            packed(&|c| {
                c.arg(vec![Stored([b"a:", b"1"]), Stored([b"a:", b""])]);
            }),
            packed(&|c| {
                c.arg("a:1").arg("a:");
            }),
            "one argument per key, an empty part included"
        );
    }

    #[test]
    fn the_cache_own_keys_live_in_the_reserved_namespace() {
        // No namespace may be `rc`, so none of these is a cache's data key
        // and no namespace's `clear` reaches them.
        let reserved = format!("{}:", crate::keys::RESERVED_NAMESPACE);
        for own in [LEASE_PREFIX, LEASES, MARKS_PREFIX] {
            assert!(own.starts_with(&reserved), "{own}");
        }
        assert!(crate::keys::validate_prefix(crate::keys::RESERVED_NAMESPACE).is_err());
    }

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(escape_glob("a*b?c[d]e\\f"), "a\\*b\\?c\\[d\\]e\\\\f");
        assert_eq!(escape_glob("users"), "users");
    }
}
