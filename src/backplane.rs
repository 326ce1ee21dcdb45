//! The contract of cross-instance L1 invalidation (the *backplane*): what the
//! cache announces after each L2 write ([`InvalidationBus`]), what a bus
//! calls back to evict (`Invalidate`), and the figures it reports. The cache
//! sees only this; the Redis pub/sub worker that fulfils it lives in
//! `backend::redis::backplane`. That worker sends per-key announcements only
//! while some instance asks for them (one whose namespace tracking does not
//! cover); clears and markers always go out.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

use serde::Serialize;

use crate::clock::now_ms;
use crate::counter::Counter;
use crate::tags::Mark;

/// Channel prefix; the namespace follows.
pub const CHANNEL_PREFIX: &str = "rc:inv:";

/// Something that publishes invalidations (the two-level cache calls it after
/// each successful L2 write). Kept abstract so the composition does not depend
/// on Redis.
pub trait InvalidationBus: Send + Sync + 'static {
    /// `key: None` means the whole namespace (a clear).
    fn publish(&self, prefix: &str, key: Option<&str>);
    /// Announces that several keys changed in L2, in one message where the
    /// bus can (the default announces them one by one).
    fn publish_keys(&self, prefix: &str, keys: &[&str]) {
        for key in keys {
            self.publish(prefix, Some(key));
        }
    }
    /// Announces an invalidation marker (a tag or the namespace removed or
    /// expired) so other instances apply it at once. The default sends
    /// nothing: other instances then learn of markers from L2 only.
    fn publish_mark(&self, prefix: &str, mark: &Mark) {
        let _ = (prefix, mark);
    }
    /// Figures for stats.
    fn stats(&self) -> BackplaneStats;
}

impl std::fmt::Debug for dyn InvalidationBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InvalidationBus")
    }
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) type Evict = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What told a cache that keys changed elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidatedBy {
    /// Another instance of this crate, over the pub/sub backplane.
    Backplane,
    /// Redis itself (tracking): any writer, expiry, eviction, a flush, or a
    /// lost channel.
    Tracking,
}

/// A cache that the backplane or tracking can evict from.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) trait Invalidate: Send + Sync {
    /// Evicts `key` (or everything) from L1 and moves the promotion guard.
    fn invalidate(self: Arc<Self>, key: Option<String>, by: InvalidatedBy) -> Evict;
    /// Applies another instance's invalidation marker to L1 and to the
    /// cache's marker table.
    fn mark(self: Arc<Self>, mark: Mark) -> Evict;
    /// Tracking (or a settled request for per-key messages) now covers the
    /// cache's namespace: what L1 took in before is checked against L2.
    fn covered(self: Arc<Self>) -> Evict {
        Box::pin(async {})
    }
}

/// The caches a backplane (or tracking) evicts from, by namespace; held
/// weakly, so a dropped cache leaves by itself.
#[cfg_attr(not(any(feature = "redis", feature = "testing")), allow(dead_code))]
#[derive(Default)]
pub(crate) struct Targets(Mutex<HashMap<String, Vec<Weak<dyn Invalidate>>>>);

#[cfg_attr(not(any(feature = "redis", feature = "testing")), allow(dead_code))]
impl Targets {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Weak<dyn Invalidate>>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `cache` under `name`; `true` if `name` had no cache before.
    pub fn add(&self, name: String, cache: Weak<dyn Invalidate>) -> bool {
        let mut map = self.map();
        let list = map.entry(name).or_default();
        let new = list.is_empty();
        list.retain(|w| w.strong_count() > 0);
        list.push(cache);
        new
    }

    /// The live caches under `name`.
    pub fn of(&self, name: &str) -> Vec<Arc<dyn Invalidate>> {
        self.map()
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Every live cache.
    pub fn all(&self) -> Vec<Arc<dyn Invalidate>> {
        self.map().values().flatten().filter_map(Weak::upgrade).collect()
    }

    /// The names caches were added under.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub fn names(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    /// The live caches whose name starts `key`, each with the rest of `key`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub fn owners(&self, key: &str) -> Vec<(Arc<dyn Invalidate>, String)> {
        self.map()
            .iter()
            .filter_map(|(name, list)| Some((key.strip_prefix(name.as_str())?, list)))
            .flat_map(|(rest, list)| {
                list.iter()
                    .filter_map(Weak::upgrade)
                    .map(move |c| (c, rest.to_string()))
            })
            .collect()
    }

    /// Evicts everything from every live cache (messages may have been lost).
    pub async fn clear_all(&self, by: InvalidatedBy) {
        for cache in self.all() {
            cache.invalidate(None, by).await;
        }
    }

    /// Evicts everything from the live caches under `name`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub async fn clear(&self, name: &str, by: InvalidatedBy) {
        for cache in self.of(name) {
            cache.invalidate(None, by).await;
        }
    }
}

/// What every bus counts (the figures of [`BackplaneStats`] but its
/// identity and connection), and how it takes in another instance's message.
#[cfg_attr(not(any(feature = "redis", feature = "testing")), allow(dead_code))]
#[derive(Default)]
pub(crate) struct BusCounters {
    pub sent: Counter,
    pub received: Counter,
    pub applied: Counter,
    pub own_ignored: Counter,
    pub reconnect_clears: Counter,
    pub overflow_clears: Counter,
    pub skipped: Counter,
    pub subscribe_clears: Counter,
    last_message_ms: AtomicU64,
}

#[cfg_attr(not(any(feature = "redis", feature = "testing")), allow(dead_code))]
impl BusCounters {
    /// Another instance's message for `prefix`, applied to `caches`'
    /// targets for that namespace, then counted: whoever sees the count
    /// also sees its evictions done.
    pub async fn receive(&self, caches: &Targets, prefix: &str, notices: &[Notice]) {
        self.last_message_ms.store(now_ms().max(1), Relaxed);
        let targets = caches.of(prefix);
        let applies = !targets.is_empty();
        apply_notices(targets, notices).await;
        if applies {
            self.applied.incr();
        }
        self.received.incr();
    }

    /// The figures, for a bus with this identity and connection state.
    pub fn stats(&self, instance_id: u64, connected: bool) -> BackplaneStats {
        let last = self.last_message_ms.load(Relaxed);
        BackplaneStats {
            instance_id: format!("{instance_id:016x}"),
            connected,
            messages_sent: self.sent.get(),
            messages_received: self.received.get(),
            messages_applied: self.applied.get(),
            own_ignored: self.own_ignored.get(),
            reconnect_clears: self.reconnect_clears.get(),
            overflow_clears: self.overflow_clears.get(),
            messages_skipped: self.skipped.get(),
            subscribe_clears: self.subscribe_clears.get(),
            last_message_age_s: (last != 0).then(|| now_ms().saturating_sub(last) as f64 / 1000.0),
        }
    }
}

/// Applies one message from another instance to `targets`: markers always
/// (a clear does not cover later writes they judge), then the keys, or
/// everything when the message holds a clear.
#[cfg_attr(not(any(feature = "redis", feature = "testing")), allow(dead_code))]
async fn apply_notices(targets: Vec<Arc<dyn Invalidate>>, notices: &[Notice]) {
    let clear = notices.contains(&Notice::Clear);
    for cache in targets {
        for notice in notices {
            match notice {
                Notice::Mark(mark) => cache.clone().mark(mark.clone()).await,
                Notice::Key(key) if !clear => {
                    cache
                        .clone()
                        .invalidate(Some(key.clone()), InvalidatedBy::Backplane)
                        .await
                }
                Notice::Keys(keys) if !clear => {
                    for key in keys {
                        cache
                            .clone()
                            .invalidate(Some(key.clone()), InvalidatedBy::Backplane)
                            .await
                    }
                }
                _ => {}
            }
        }
        if clear {
            cache.invalidate(None, InvalidatedBy::Backplane).await;
        }
    }
}

/// One announcement on the backplane.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// A key changed in L2.
    Key(String),
    /// Keys written together (a batch): announced in one message.
    Keys(Vec<String>),
    /// The namespace was cleared (or anything may have changed).
    Clear,
    /// An invalidation marker.
    Mark(Mark),
}

#[cfg_attr(not(any(feature = "redis", feature = "testing")), allow(dead_code))]
impl Notice {
    /// What [`InvalidationBus::publish`] announces: `key`, or a clear.
    pub fn of_key(key: Option<&str>) -> Self {
        key.map_or(Notice::Clear, |k| Notice::Key(k.to_string()))
    }

    /// What [`InvalidationBus::publish_keys`] announces.
    pub fn of_keys(keys: &[&str]) -> Self {
        Notice::Keys(keys.iter().map(|k| k.to_string()).collect())
    }
}

/// Backplane figures (service-wide).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BackplaneStats {
    /// This instance's id (hex), carried in its messages.
    pub instance_id: String,
    /// Whether the subscriber connection is up and every namespace of this
    /// instance with an L1 hears of other instances' writes: through tracking,
    /// or through the per-key messages it asked writers for. In a cache's
    /// stats, also that the cache has checked what its L1 took in before.
    pub connected: bool,
    /// Writes announced by this instance, a batch (`set_many`,
    /// `delete_many`) counting once (announcements close together share one
    /// message).
    pub messages_sent: u64,
    /// Messages received from other instances (each may carry several keys),
    /// counted once applied: a count read means its evictions are done.
    pub messages_received: u64,
    /// Received messages that evicted something in a local L1.
    pub messages_applied: u64,
    /// Own messages received and ignored.
    pub own_ignored: u64,
    /// Times every backplane L1 was cleared because the subscriber reconnected.
    pub reconnect_clears: u64,
    /// Times every backplane L1 was cleared because messages were dropped (flood).
    pub overflow_clears: u64,
    /// Writes not announced key by key because no instance asked for such
    /// messages: every instance with an L1 of the namespace hears of them
    /// from Redis (tracking). See the backplane's module docs.
    pub messages_skipped: u64,
    /// Times a namespace's L1 was cleared after this instance asked writers
    /// for per-key messages (its namespace not covered by tracking): it
    /// covers writes made before the writers saw the request.
    pub subscribe_clears: u64,
    /// Seconds since the last message from another instance, if any.
    pub last_message_age_s: Option<f64>,
}

/// Something that reports tracking figures (Redis-assisted invalidation);
/// kept abstract so the composition does not depend on Redis.
pub trait TrackingSource: Send + Sync + 'static {
    /// Figures for stats.
    fn stats(&self) -> TrackingStats;
}

impl std::fmt::Debug for dyn TrackingSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrackingSource")
    }
}

/// Tracking figures (service-wide): Redis telling this instance which keys
/// of its namespaces any client changed.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TrackingStats {
    /// Whether tracking is established: the invalidation connection is up and
    /// the data connection's tracking points at it — on every primary of a
    /// Redis Cluster. In a cache's stats, also that the cache has checked
    /// what its L1 took in before tracking covered its namespace.
    pub connected: bool,
    /// Invalidation messages received (each may name several keys).
    pub notifications: u64,
    /// Keys named by those messages that belong to a tracked cache (each
    /// evicted from that cache's L1, if it held it).
    pub keys_invalidated: u64,
    /// Notifications of this instance's own stores by script (a load's
    /// fenced store, which Redis announces back), confirmed by one read
    /// and kept in L1.
    pub own_stores_confirmed: u64,
    /// Whole-database notifications (`FLUSHDB`, `FLUSHALL`): every tracked
    /// L1 cleared.
    pub flushes: u64,
    /// Times every tracked L1 was cleared because notifications may have
    /// been missed (a connection lost, Redis restarted or failed over, the
    /// data connection's tracking found off, a new cluster primary).
    pub loss_clears: u64,
    /// Times every tracked L1 was cleared because notifications arrived
    /// faster than they could be applied and some were dropped.
    pub overflow_clears: u64,
}
