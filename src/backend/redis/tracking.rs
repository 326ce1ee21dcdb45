//! Tracking: Redis tells this instance about every change to a key of its
//! namespaces — by any client, by expiry, by eviction under `maxmemory`, by
//! `FLUSHDB` — and the key leaves L1 (server-assisted client-side caching in
//! broadcast mode).
//!
//! # How
//!
//! One *invalidation connection* per service (RESP3, its own socket) receives
//! the notifications. The service's data connection, the one every cache
//! writes through, turns tracking on for it:
//! `CLIENT TRACKING ON REDIRECT <invalidation connection> BCAST PREFIX <ns>: … NOLOOP`.
//! `BCAST` costs Redis nothing per key read (it remembers prefixes, not
//! keys); `NOLOOP` means a key this instance wrote is not announced back to
//! it, so its own writes keep their L1 entries. If another client writes the
//! same key in the same instant, Redis announces it (a key changed by two
//! clients is never dropped by `NOLOOP`), so the rule costs no coherence.
//!
//! A store made by a Lua script (a load's fenced store) is the exception:
//! Redis attributes a script's writes to the script, not to the connection
//! that ran it, so `NOLOOP` lets their notifications through. The backend
//! notes each such store (key and a digest of its bytes) before running the
//! script; when the notification comes, the worker reads the key once and
//! keeps the L1 entry only if the key still holds those bytes (any other
//! change shows as other bytes, or sends a notification of its own after
//! that read). One `GET` per load, instead of an L1 miss and an L2 read
//! after each one.
//!
//! # Losing the channel
//!
//! Tracking is a state of two connections on one server, and either can be
//! lost without a word: the invalidation connection drops (or is killed),
//! the data connection reconnects (a new connection does not track), Redis
//! restarts, a Sentinel failover moves the primary. Every such case ends the
//! same way: tracking is set up again, and only then is every tracked L1
//! cleared (and counted in `loss_clears`), moving each cache's promotion
//! guard so that a read in flight does not bring back what it fetched
//! before. The worker checks the data connection's tracking (`CLIENT
//! TRACKINGINFO`) every [`CHECK`], so a silent reconnect is found within
//! that time; the invalidation connection is pinged at the same pace. A
//! frozen or slow server is not a loss: both connections stay up, and the
//! notifications queued on them arrive when it answers again.
//!
//! # Topologies
//!
//! A single server, and Sentinel (both connections follow the primary the
//! sentinels name; after a failover the redirect target is gone, set-up
//! fails and starts again on the new primary). A Redis Cluster is not
//! tracked: tracking is per node there and the `redis` crate keeps its
//! per-node data connections to itself; its caches rely on the backplane.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::backplane::{backoff, forward};
use super::conn::OwnStores;
use super::RedisConnection;
use crate::backplane::{Invalidate, TrackingSource, TrackingStats};
use crate::breaker::CircuitBreaker;
use crate::counter::Counter;

/// Notifications buffered between the invalidation connection and the evictions.
const BUFFER: usize = 4096;
/// How often the worker checks both connections' tracking state.
pub(crate) const CHECK: Duration = Duration::from_millis(250);

/// The invalidation connection's name in `CLIENT LIST`.
pub const CONNECTION_NAME: &str = "resilient-cache-tracking";

/// The service's tracking worker and its figures.
pub(crate) struct Tracker {
    data: RedisConnection,
    /// Tracked caches by namespace prefix (`<prefix>:`).
    caches: Mutex<HashMap<String, Vec<Weak<dyn Invalidate>>>>,
    /// A namespace was added: tracking must be set up again with it.
    added: Arc<tokio::sync::Notify>,
    notifications: Counter,
    keys_invalidated: Counter,
    own_confirmed: Counter,
    flushes: Counter,
    loss_clears: Counter,
    overflow_clears: Counter,
    connected: AtomicBool,
}

impl Tracker {
    /// Must run inside a Tokio runtime (it starts the worker).
    pub fn new(data: RedisConnection, breaker: Arc<CircuitBreaker>) -> Arc<Self> {
        data.own_stores().enable();
        let tracker = Arc::new(Self {
            data: data.clone(),
            caches: Mutex::default(),
            added: Arc::default(),
            notifications: Counter::default(),
            keys_invalidated: Counter::default(),
            own_confirmed: Counter::default(),
            flushes: Counter::default(),
            loss_clears: Counter::default(),
            overflow_clears: Counter::default(),
            connected: AtomicBool::new(false),
        });
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(worker(
                Arc::downgrade(&tracker),
                tracker.added.clone(),
                data,
                breaker,
            ))),
            Err(_) => tracing::warn!("no Tokio runtime: tracking is not running"),
        }
        tracker
    }

    /// Tracks `prefix`'s keys for `cache`.
    pub fn register(&self, prefix: &str, cache: Weak<dyn Invalidate>) {
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        let list = caches.entry(format!("{prefix}:")).or_default();
        let new = list.is_empty();
        list.retain(|w| w.strong_count() > 0);
        list.push(cache);
        drop(caches);
        if new {
            self.added.notify_one();
        }
    }

    /// The prefixes to ask Redis for: none that another one already covers
    /// (Redis refuses overlapping prefixes).
    fn prefixes(&self) -> Vec<String> {
        let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<&String> = caches.keys().collect();
        all.sort();
        let mut kept: Vec<String> = Vec::new();
        for p in all {
            if !kept.iter().any(|k| p.starts_with(k.as_str())) {
                kept.push(p.clone());
            }
        }
        kept
    }

    fn all_targets(&self) -> Vec<Arc<dyn Invalidate>> {
        let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches.values().flatten().filter_map(Weak::upgrade).collect()
    }

    /// The caches whose namespace holds the Redis key `key`, each with the
    /// key as its callers spell it.
    fn owners(&self, key: &str) -> Vec<(Arc<dyn Invalidate>, String)> {
        let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches
            .iter()
            .filter_map(|(prefix, list)| Some((key.strip_prefix(prefix.as_str())?, list)))
            .flat_map(|(own, list)| {
                list.iter()
                    .filter_map(Weak::upgrade)
                    .map(move |c| (c, own.to_string()))
            })
            .collect()
    }

    async fn clear_all(&self) {
        for cache in self.all_targets() {
            cache.invalidate(None).await;
        }
    }

    /// One `invalidate` push: the keys that changed, or nil for a flush.
    /// `Err` when an own store could not be confirmed (L2 did not answer):
    /// the worker then treats the channel as lost, which clears every
    /// tracked L1 once tracking is back — not before, so that L1 keeps
    /// serving (fail-safe included) while L2 is away.
    async fn apply(&self, data: &[redis::Value]) -> Result<(), ()> {
        self.notifications.incr();
        let Some(redis::Value::Array(keys)) = data.first() else {
            self.flushes.incr();
            self.clear_all().await;
            return Ok(());
        };
        let mut to_confirm = Vec::new();
        for key in keys {
            let key = match key {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Value::SimpleString(s) => s.clone(),
                _ => continue,
            };
            match self.data.own_stores().take(&key) {
                Some(digest) => to_confirm.push((key, digest)),
                None => self.evict(&key).await,
            }
        }
        if to_confirm.is_empty() {
            return Ok(());
        }
        // This service's own stores by script: kept in L1 only if the key
        // still holds the bytes stored. A later change, or one coalesced
        // with the store in the same notification, shows as other bytes; one
        // after this read sends a notification of its own.
        let mut pipe = redis::pipe();
        for (key, _) in &to_confirm {
            pipe.cmd("GET").arg(key);
        }
        let now: Vec<Option<Vec<u8>>> = self.data.upkeep(&pipe).await.map_err(|_| ())?;
        for (i, (key, digest)) in to_confirm.iter().enumerate() {
            match now.get(i) {
                Some(Some(bytes)) if OwnStores::matches(*digest, bytes) => self.own_confirmed.incr(),
                _ => self.evict(key).await,
            }
        }
        Ok(())
    }

    /// Evicts the Redis key `key` from every tracked cache that holds it.
    async fn evict(&self, key: &str) {
        for (cache, own) in self.owners(key) {
            self.keys_invalidated.incr();
            cache.invalidate(Some(own)).await;
        }
    }

    /// Points the data connection's tracking at `redirect` for every
    /// tracked prefix (off, then on again: one request, so no write of
    /// another client falls between).
    async fn enable(&self, redirect: i64) -> crate::error::Result<()> {
        let mut on = redis::cmd("CLIENT");
        on.arg("TRACKING")
            .arg("ON")
            .arg("REDIRECT")
            .arg(redirect)
            .arg("BCAST");
        for p in self.prefixes() {
            on.arg("PREFIX").arg(p);
        }
        on.arg("NOLOOP");
        let mut pipe = redis::pipe();
        pipe.cmd("CLIENT").arg("TRACKING").arg("OFF").ignore();
        pipe.add_command(on).ignore();
        self.data.upkeep::<()>(&pipe).await
    }

    /// Whether the data connection still tracks into `redirect` (a
    /// reconnected data connection does not track at all).
    async fn data_tracks(&self, redirect: i64) -> crate::error::Result<bool> {
        let mut pipe = redis::pipe();
        pipe.cmd("CLIENT").arg("TRACKINGINFO");
        let (info,): (redis::Value,) = self.data.upkeep(&pipe).await?;
        Ok(tracking_points_at(&info, redirect))
    }
}

/// Reads `CLIENT TRACKINGINFO`'s reply (a map in RESP3, pairs in RESP2):
/// tracking is on, with `redirect` as its target.
fn tracking_points_at(info: &redis::Value, redirect: i64) -> bool {
    use redis::Value;
    let pairs: Vec<(&Value, &Value)> = match info {
        Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        Value::Array(a) => a.chunks_exact(2).map(|p| (&p[0], &p[1])).collect(),
        _ => return false,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    };
    let (mut on, mut target) = (false, false);
    for (k, v) in pairs {
        match text(k).as_str() {
            "flags" => {
                let flags: Vec<String> = match v {
                    Value::Array(f) | Value::Set(f) => f.iter().map(text).collect(),
                    _ => Vec::new(),
                };
                on = flags.iter().any(|f| f == "on") && flags.iter().any(|f| f == "bcast");
            }
            "redirect" => target = matches!(v, Value::Int(id) if *id == redirect),
            _ => {}
        }
    }
    on && target
}

impl TrackingSource for Tracker {
    fn stats(&self) -> TrackingStats {
        TrackingStats {
            connected: self.connected.load(Relaxed),
            notifications: self.notifications.get(),
            keys_invalidated: self.keys_invalidated.get(),
            own_stores_confirmed: self.own_confirmed.get(),
            flushes: self.flushes.get(),
            loss_clears: self.loss_clears.get(),
            overflow_clears: self.overflow_clears.get(),
        }
    }
}

/// Connects the invalidation connection, sets tracking up, applies
/// notifications, checks both connections; starts over on any loss.
async fn worker(
    weak: Weak<Tracker>,
    added: Arc<tokio::sync::Notify>,
    data: RedisConnection,
    breaker: Arc<CircuitBreaker>,
) {
    let op_timeout = data.op_timeout();
    let mut ever_connected = false;
    let mut failures: u32 = 0;
    loop {
        let wait = breaker.time_until_probe();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if weak.strong_count() == 0 {
            return;
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<redis::PushInfo>(BUFFER);
        let lost = Arc::new(AtomicBool::new(false));
        let lost_in_sender = lost.clone();
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(Some(op_timeout))
            .set_push_sender(move |info: redis::PushInfo| {
                forward(&tx, &lost_in_sender, info);
                Ok::<(), redis::aio::SendError>(())
            });
        let connected = tokio::time::timeout(op_timeout * 2, async {
            let client = data.subscriber_client().await.map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::Io, "tracking client", e.to_string()))
            })?;
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            // Named, so that an operator can tell it in `CLIENT LIST`.
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(CONNECTION_NAME)
                .query_async::<()>(&mut conn)
                .await?;
            let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut conn).await?;
            Ok::<_, redis::RedisError>((conn, id))
        })
        .await;
        let Ok(Ok((mut conn, id))) = connected else {
            failures = failures.saturating_add(1);
            tokio::time::sleep(backoff(failures)).await;
            continue;
        };
        let Some(tracker) = weak.upgrade() else { return };
        if let Err(e) = tracker.enable(id).await {
            // The data connection may be on another server than the
            // invalidation connection (a failover in between), or the server
            // may refuse tracking (Redis < 6, an ACL without `client`).
            if failures == 0 {
                tracing::warn!(error = %e, "tracking could not be set up; retrying");
            }
            failures = failures.saturating_add(1);
            drop(tracker);
            tokio::time::sleep(backoff(failures)).await;
            continue;
        }
        if ever_connected || failures > 0 {
            // Set up first, cleared after: nothing read while notifications
            // could be missed stays. (The first set-up of a service that
            // never lost Redis clears nothing: tracking covers changes from
            // then on, as the backplane's subscriber does.)
            tracker.clear_all().await;
            tracker.loss_clears.incr();
        }
        tracker.connected.store(true, Relaxed);
        drop(tracker);
        ever_connected = true;
        failures = 0;

        let mut tick = tokio::time::interval(CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The worker holds the tracker only while it acts, so the tracker
            // (and the worker) end with the service.
            tokio::select! {
                msg = rx.recv() => {
                    let Some(info) = msg else { break };
                    let Some(tracker) = weak.upgrade() else { return };
                    match info.kind {
                        redis::PushKind::Disconnection => break,
                        redis::PushKind::Invalidate if tracker.apply(&info.data).await.is_err() => break,
                        _ => {}
                    }
                }
                _ = added.notified() => {
                    let Some(tracker) = weak.upgrade() else { return };
                    if tracker.enable(id).await.is_err() {
                        break;
                    }
                }
                _ = tick.tick() => {
                    let Some(tracker) = weak.upgrade() else { return };
                    if lost.swap(false, Relaxed) {
                        tracker.clear_all().await;
                        tracker.overflow_clears.incr();
                    }
                    // A slow or frozen server is not a lost channel: the
                    // connections stay, and notifications queue up on them.
                    let ping = tokio::time::timeout(
                        op_timeout,
                        redis::cmd("PING").query_async::<redis::Value>(&mut conn),
                    )
                    .await;
                    if matches!(ping, Ok(Err(ref e)) if !e.is_timeout()) {
                        break;
                    }
                    // An error is the data connection busy reconnecting:
                    // the next check sees how it came back.
                    if let Ok(false) = tracker.data_tracks(id).await {
                        // The data connection came back without tracking.
                        if tracker.enable(id).await.is_err() {
                            break;
                        }
                        tracker.clear_all().await;
                        tracker.loss_clears.incr();
                    }
                }
            }
        }
        if let Some(tracker) = weak.upgrade() {
            tracker.connected.store(false, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn trackinginfo_is_read_in_both_protocols() {
        let fields = |flags: &[&str], redirect: i64| {
            vec![
                bulk("flags"),
                Value::Array(flags.iter().map(|f| bulk(f)).collect()),
                bulk("redirect"),
                Value::Int(redirect),
                bulk("prefixes"),
                Value::Array(vec![bulk("users:")]),
            ]
        };
        let resp2 = Value::Array(fields(&["on", "bcast", "noloop"], 7));
        assert!(tracking_points_at(&resp2, 7));
        assert!(!tracking_points_at(&resp2, 8), "another target");
        assert!(!tracking_points_at(&Value::Array(fields(&["off"], -1)), 7));
        assert!(
            !tracking_points_at(&Value::Array(fields(&["on"], 7)), 7),
            "not broadcast"
        );
        let pairs = fields(&["on", "bcast"], 7);
        let resp3 = Value::Map(pairs.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect());
        assert!(tracking_points_at(&resp3, 7));
        assert!(!tracking_points_at(&Value::Nil, 7));
    }
}
