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
//! # The first set-up
//!
//! Changes made between a cache's creation and the set-up that covers its
//! namespace go unannounced. Once the links' set-up covers a namespace (on
//! every server that holds keys), the tracker tells its caches, and each
//! checks what its L1 took in before against L2 (`cache::coverage`): an
//! entry L2 no longer holds leaves L1.
//!
//! # Topologies
//!
//! Tracking is a state of one server, so there is one *link* (an
//! invalidation connection and the data connection's tracking) per server
//! that holds keys. A single server and Sentinel have one: both connections
//! follow the primary the sentinels name; after a failover the redirect
//! target is gone, set-up fails and starts again on the new primary. A Redis
//! Cluster has one per primary: the data connection's tracking is set on the
//! cluster client's own connection to that primary (commands routed to it by
//! address), and the invalidation connection goes to the same node. The
//! worker reads the primaries (`CLUSTER NODES`) every [`TOPOLOGY_CHECK`]: a
//! new primary (a promoted replica, a node added) gets a link, and once it
//! is set up every tracked L1 is cleared, since the slots it took over were
//! not tracked in between; a node that is no longer a healthy primary loses
//! its link. Slots moved by resharding announce themselves: the source
//! deletes each key it hands over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::conn::OwnStores;
use super::push::{backoff, PushConnection};
use super::topology::Node;
use super::{lock, RedisConnection};
use crate::backend::config::RedisMode;
use crate::backplane::{Invalidate, InvalidatedBy, Targets, TrackingSource, TrackingStats};
use crate::breaker::CircuitBreaker;
use crate::counter::Counter;

/// How often each link checks both of its connections.
pub(crate) const CHECK: Duration = Duration::from_millis(250);
/// How often the primaries of a cluster are read again.
pub(crate) const TOPOLOGY_CHECK: Duration = Duration::from_secs(1);

/// The invalidation connection's name in `CLIENT LIST`.
pub const CONNECTION_NAME: &str = "resilient-cache-tracking";

/// The service's tracking worker and its figures.
pub(crate) struct Tracker {
    data: RedisConnection,
    /// Tracked caches by namespace prefix (`<prefix>:`).
    caches: Targets,
    /// Bumped when a namespace is added: every link sets tracking up again with it.
    added: tokio::sync::watch::Sender<u64>,
    notifications: Counter,
    keys_invalidated: Counter,
    own_confirmed: Counter,
    flushes: Counter,
    loss_clears: Counter,
    overflow_clears: Counter,
    /// Links wanted (one, or one per cluster primary).
    links: AtomicUsize,
    /// The links set up, each with the prefixes its tracking covers.
    covered: Coverage,
}

/// The links set up, by node, each with its link's id and the prefixes it tracks.
type Coverage = Arc<Mutex<HashMap<Node, (u64, Vec<String>)>>>;

impl Tracker {
    /// Must run inside a Tokio runtime (it starts the worker).
    pub fn new(data: RedisConnection, breaker: Arc<CircuitBreaker>) -> Arc<Self> {
        data.own_stores().enable();
        let tracker = Arc::new(Self {
            data: data.clone(),
            caches: Targets::default(),
            added: tokio::sync::watch::Sender::new(0),
            notifications: Counter::default(),
            keys_invalidated: Counter::default(),
            own_confirmed: Counter::default(),
            flushes: Counter::default(),
            loss_clears: Counter::default(),
            overflow_clears: Counter::default(),
            links: AtomicUsize::new(0),
            covered: Arc::default(),
        });
        let weak = Arc::downgrade(&tracker);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if data.mode() == RedisMode::Cluster => {
                drop(rt.spawn(follow_primaries(weak, data, breaker)))
            }
            Ok(rt) => {
                tracker.links.store(1, Relaxed);
                drop(rt.spawn(link(weak, Node::Current, data, breaker, false)));
            }
            Err(_) => tracing::warn!("no Tokio runtime: tracking is not running"),
        }
        tracker
    }

    /// Tracks `prefix`'s keys for `cache`.
    pub fn register(&self, prefix: &str, cache: Weak<dyn Invalidate>) {
        if self.caches.add(format!("{prefix}:"), cache) {
            self.added.send_modify(|generation| *generation += 1);
        }
    }

    /// The prefixes to ask Redis for. (None covers another: a namespace
    /// holds no `:`, so `a:` never starts `b:`.)
    fn prefixes(&self) -> Vec<String> {
        self.caches.names()
    }

    /// Whether tracking is set up for `namespace` on every server that
    /// holds keys: from then on, Redis tells this service of every change
    /// to its keys.
    pub fn covers(&self, namespace: &str) -> bool {
        self.covers_name(&format!("{namespace}:"))
    }

    /// [`covers`](Self::covers) by the name a cache is registered under (`<prefix>:`).
    fn covers_name(&self, name: &str) -> bool {
        let links = self.links.load(Relaxed);
        let covered = lock(&self.covered);
        links > 0 && covered.len() >= links && covered.values().all(|(_, p)| p.iter().any(|c| c == name))
    }

    /// Tells every cache whose namespace tracking now covers: each checks
    /// what its L1 took in before (once; later calls find nothing to do).
    /// Run apart from the link, which goes on applying notifications.
    fn tell_covered(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for name in self.caches.names() {
            if self.covers_name(&name) {
                for cache in self.caches.of(&name) {
                    drop(rt.spawn(cache.covered()));
                }
            }
        }
    }

    /// The caches whose namespace holds the Redis key `key`, each with the
    /// key as its callers spell it.
    fn owners(&self, key: &str) -> Vec<(Arc<dyn Invalidate>, String)> {
        self.caches.owners(key)
    }

    async fn clear_all(&self) {
        self.caches.clear_all(InvalidatedBy::Tracking).await;
    }

    /// A link was (re-)established after notifications may have been
    /// missed: every tracked L1 goes, and it is counted.
    async fn clear_after_loss(&self) {
        self.clear_all().await;
        self.loss_clears.incr();
    }

    /// One `invalidate` push from `node`: the keys that changed, or nil for
    /// a flush. `Err` when an own store could not be confirmed (L2 did not
    /// answer): the link then treats the channel as lost, which clears every
    /// tracked L1 once tracking is back — not before, so that L1 keeps
    /// serving (fail-safe included) while L2 is away.
    async fn apply(&self, node: &Node, data: &[redis::Value]) -> Result<(), ()> {
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
        // after this read sends a notification of its own. (The keys of one
        // notification live on the node that sent it.)
        let mut pipe = redis::pipe();
        for (key, _) in &to_confirm {
            pipe.cmd("GET").arg(key);
        }
        let now: Vec<Option<Vec<u8>>> = self.data.upkeep_on(node, &pipe).await.map_err(|_| ())?;
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
            cache.invalidate(Some(own), InvalidatedBy::Tracking).await;
        }
    }

    /// Points the data connection's tracking on `node` at `redirect` for
    /// every tracked prefix (off, then on again: one request, so no write
    /// of another client falls between). Returns the prefixes set up.
    async fn enable(&self, node: &Node, redirect: i64) -> crate::error::Result<Vec<String>> {
        let prefixes = self.prefixes();
        let mut on = redis::cmd("CLIENT");
        on.arg("TRACKING")
            .arg("ON")
            .arg("REDIRECT")
            .arg(redirect)
            .arg("BCAST");
        for p in &prefixes {
            on.arg("PREFIX").arg(p);
        }
        on.arg("NOLOOP");
        let mut pipe = redis::pipe();
        pipe.cmd("CLIENT").arg("TRACKING").arg("OFF");
        pipe.add_command(on);
        self.data.upkeep_on::<()>(node, &pipe).await?;
        Ok(prefixes)
    }

    /// Whether the data connection on `node` still tracks into `redirect`
    /// (a reconnected data connection does not track at all).
    async fn data_tracks(&self, node: &Node, redirect: i64) -> crate::error::Result<bool> {
        let mut pipe = redis::pipe();
        pipe.cmd("CLIENT").arg("TRACKINGINFO");
        let (info,): (redis::Value,) = self.data.upkeep_on(node, &pipe).await?;
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
        let links = self.links.load(Relaxed);
        TrackingStats {
            connected: links > 0 && lock(&self.covered).len() >= links,
            notifications: self.notifications.get(),
            keys_invalidated: self.keys_invalidated.get(),
            own_stores_confirmed: self.own_confirmed.get(),
            flushes: self.flushes.get(),
            loss_clears: self.loss_clears.get(),
            overflow_clears: self.overflow_clears.get(),
        }
    }
}

/// One link counted as set up, with the prefixes it tracks, while this
/// lives (a link task may end by being aborted, mid-await).
struct Up {
    covered: Coverage,
    node: Node,
    /// Tells this link from a later one on the same node: an aborted link
    /// dropped late must not remove its successor.
    id: u64,
}

impl Up {
    fn new(covered: Coverage, node: Node) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT.fetch_add(1, Relaxed);
        Self { covered, node, id }
    }

    fn set(&self, prefixes: Vec<String>) {
        lock(&self.covered).insert(self.node.clone(), (self.id, prefixes));
    }

    fn unset(&self) {
        let mut map = lock(&self.covered);
        if map.get(&self.node).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.node);
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        self.unset();
    }
}

/// A cluster: one link per healthy primary, following `CLUSTER NODES`.
async fn follow_primaries(weak: Weak<Tracker>, data: RedisConnection, breaker: Arc<CircuitBreaker>) {
    let mut links: HashMap<Node, tokio::task::JoinHandle<()>> = HashMap::new();
    // Primaries found later than the first reading (a promoted replica, a
    // node added) took over slots nobody tracked: their set-up clears.
    let mut first_reading = true;
    loop {
        let wait = breaker.time_until_probe();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let Some(tracker) = weak.upgrade() else { break };
        match data.primaries().await {
            Ok(primaries) if !primaries.is_empty() => {
                let wanted: Vec<Node> = primaries.into_iter().map(|(h, p)| Node::Primary(h, p)).collect();
                links.retain(|node, task| {
                    let keep = wanted.contains(node) && !task.is_finished();
                    if !keep {
                        task.abort();
                    }
                    keep
                });
                for node in wanted {
                    if let std::collections::hash_map::Entry::Vacant(slot) = links.entry(node) {
                        let node = slot.key().clone();
                        let task = link(weak.clone(), node, data.clone(), breaker.clone(), !first_reading);
                        slot.insert(tokio::spawn(task));
                    }
                }
                tracker.links.store(links.len(), Relaxed);
                first_reading = false;
            }
            // Not read: the links there keep going (each finds its own
            // losses). A cluster not read at start clears on its first
            // set-ups, as a single server's link does after failed attempts.
            _ if links.is_empty() => first_reading = false,
            _ => {}
        }
        drop(tracker);
        tokio::time::sleep(TOPOLOGY_CHECK).await;
    }
    links.values().for_each(tokio::task::JoinHandle::abort);
}

/// One link on `node`: connects the invalidation connection, sets tracking
/// up, applies notifications, checks both connections; starts over on any
/// loss. `missed`: changes on `node` may already have gone unannounced, so
/// the first set-up clears too.
async fn link(
    weak: Weak<Tracker>,
    node: Node,
    data: RedisConnection,
    breaker: Arc<CircuitBreaker>,
    missed: bool,
) {
    let op_timeout = data.op_timeout();
    let mut ever_connected = missed;
    let mut failures: u32 = 0;
    let Some((mut added, up)) = weak
        .upgrade()
        .map(|t| (t.added.subscribe(), Up::new(t.covered.clone(), node.clone())))
    else {
        return;
    };
    loop {
        let wait = breaker.time_until_probe();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if weak.strong_count() == 0 {
            return;
        }
        let connected = tokio::time::timeout(op_timeout * 2, async {
            let client = data.node_client(&node).await.map_err(|e| {
                redis::RedisError::from((redis::ErrorKind::Io, "tracking client", e.to_string()))
            })?;
            let mut push = PushConnection::open(&client, op_timeout).await?;
            // Named, so that an operator can tell it in `CLIENT LIST`.
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(CONNECTION_NAME)
                .query_async::<()>(&mut push.conn)
                .await?;
            let id: i64 = redis::cmd("CLIENT").arg("ID").query_async(&mut push.conn).await?;
            Ok::<_, redis::RedisError>((push, id))
        })
        .await;
        let Ok(Ok((mut push, id))) = connected else {
            failures = failures.saturating_add(1);
            tokio::time::sleep(backoff(failures)).await;
            continue;
        };
        let Some(tracker) = weak.upgrade() else { return };
        added.mark_unchanged();
        let prefixes = match tracker.enable(&node, id).await {
            Ok(prefixes) => prefixes,
            Err(e) => {
                // The data connection may be on another server than the
                // invalidation connection (a failover in between), or the server
                // may refuse tracking (Redis < 6, an ACL without `client`).
                if failures == 0 {
                    tracing::warn!(error = %e, ?node, "tracking could not be set up; retrying");
                }
                failures = failures.saturating_add(1);
                drop(tracker);
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
        };
        if ever_connected || failures > 0 {
            // Set up first, cleared after: nothing read while notifications
            // could be missed stays. (The first set-up of a service that
            // never lost Redis clears nothing: each cache then checks what its
            // L1 took in before against L2, see `tell_covered`.)
            tracker.clear_after_loss().await;
        }
        up.set(prefixes);
        tracker.tell_covered();
        drop(tracker);
        ever_connected = true;
        failures = 0;

        let mut tick = tokio::time::interval(CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The link holds the tracker only while it acts, so the tracker
            // (and its links) end with the service.
            tokio::select! {
                msg = push.rx.recv() => {
                    let Some(info) = msg else { break };
                    let Some(tracker) = weak.upgrade() else { return };
                    match info.kind {
                        redis::PushKind::Disconnection => break,
                        redis::PushKind::Invalidate if tracker.apply(&node, &info.data).await.is_err() => break,
                        _ => {}
                    }
                }
                changed = added.changed() => {
                    let Some(tracker) = weak.upgrade() else { return };
                    if changed.is_err() {
                        break;
                    }
                    match tracker.enable(&node, id).await {
                        Ok(prefixes) => {
                            up.set(prefixes);
                            tracker.tell_covered();
                        }
                        Err(_) => break,
                    }
                }
                _ = tick.tick() => {
                    let Some(tracker) = weak.upgrade() else { return };
                    if push.take_lost() {
                        tracker.clear_all().await;
                        tracker.overflow_clears.incr();
                    }
                    // A slow or frozen server is not a lost channel: the
                    // connections stay, and notifications queue up on them.
                    if push.ping(op_timeout).await.is_err() {
                        break;
                    }
                    // An error is the data connection busy reconnecting:
                    // the next check sees how it came back.
                    if let Ok(false) = tracker.data_tracks(&node, id).await {
                        // The data connection came back without tracking.
                        match tracker.enable(&node, id).await {
                            Ok(prefixes) => {
                                up.set(prefixes);
                                tracker.tell_covered();
                            }
                            Err(_) => break,
                        }
                        tracker.clear_after_loss().await;
                    }
                }
            }
        }
        up.unset();
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
    fn a_link_dropped_late_leaves_its_successor_counted() {
        let covered = Coverage::default();
        let node = Node::Primary("127.0.0.1".into(), 7000);
        let old = Up::new(covered.clone(), node.clone());
        old.set(vec!["a:".into()]);
        let new = Up::new(covered.clone(), node.clone());
        new.set(vec!["a:".into(), "b:".into()]);
        drop(old);
        assert_eq!(covered.lock().unwrap().get(&node).map(|(_, p)| p.len()), Some(2));
        drop(new);
        assert!(covered.lock().unwrap().is_empty());
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
