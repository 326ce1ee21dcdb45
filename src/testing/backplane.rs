//! An in-process backplane with fault injection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::backend::CacheBackend;
use crate::backplane::{BackplaneStats, BusCounters, InvalidatedBy, InvalidationBus, Notice, Targets};
use crate::cache::{CacheValue, TwoLevelCache};
use crate::tags::Mark;

/// A backplane inside one process: several caches, each standing for an
/// instance of a service, tell each other about their writes as they would
/// over Redis pub/sub — with the same rules (an instance ignores its own
/// messages; lost messages clear every L1 that may have missed them) and
/// faults a test turns on: latency, a freeze, a lost connection, a flood.
///
/// Each instance [joins](Self::join) and gets a [`MemoryBus`]: give it to
/// the cache's settings as its bus, then [attach](MemoryBus::attach) the
/// cache so that it receives the others' messages. Delivery is asynchronous,
/// as over a network; [`settle`](Self::settle) waits until every message
/// published so far has been applied. Needs a Tokio runtime.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use resilient_cache::backend::memory::TtlBackend;
/// use resilient_cache::testing::{MemoryBackplane, MemoryL2};
/// use resilient_cache::{L1BackendKind, L1Config, Serializer, TwoLevelCache, TwoLevelSettings};
///
/// let l2 = Arc::new(MemoryL2::new());
/// let backplane = MemoryBackplane::new();
/// let instance = || {
///     let bus = backplane.join();
///     let l1 = TtlBackend::new(&L1Config {
///         backend: L1BackendKind::Ttl,
///         maxsize: 1000,
///         ttl: Duration::from_secs(60),
///         fail_safe: Duration::ZERO,
///     });
///     let settings = TwoLevelSettings {
///         bus: Some(bus.clone()),
///         ..TwoLevelSettings::new("users", Serializer::json())
///     };
///     let cache: TwoLevelCache<String, _, _> =
///         TwoLevelCache::new(Some(l1), Some(l2.clone()), settings).unwrap();
///     bus.attach(&cache);
///     cache
/// };
/// let (a, b) = (instance(), instance());
/// a.set("1", "ada".to_string()).await;
/// assert_eq!(b.get("1").await.as_deref().map(String::as_str), Some("ada")); // now in b's L1
///
/// backplane.freeze(); // messages wait
/// a.set("1", "grace".to_string()).await;
/// backplane.release();
/// backplane.settle().await; // b's copy evicted
/// assert_eq!(b.get("1").await.as_deref().map(String::as_str), Some("grace"));
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryBackplane(Arc<Hub>);

struct Hub {
    members: Mutex<Vec<Weak<MemoryBus>>>,
    next_id: AtomicU64,
    queue: mpsc::UnboundedSender<Delivery>,
    latency_us: AtomicU64,
    frozen: watch::Sender<bool>,
    down: AtomicBool,
    drop_next: AtomicU64,
}

enum Delivery {
    Message {
        from: u64,
        prefix: String,
        notices: Vec<Notice>,
        /// Publication time (Tokio's clock), for the latency.
        at: tokio::time::Instant,
    },
    /// The connection came back: every instance clears what it may have missed.
    Reconnected,
    /// Everything before this has been applied.
    Settled(oneshot::Sender<()>),
}

impl Default for MemoryBackplane {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackplane {
    /// A backplane with no instance yet, healthy. Must be called inside a
    /// Tokio runtime (it starts the task that delivers messages).
    pub fn new() -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub {
            members: Mutex::default(),
            next_id: AtomicU64::new(1),
            queue,
            latency_us: AtomicU64::new(0),
            frozen: watch::channel(false).0,
            down: AtomicBool::new(false),
            drop_next: AtomicU64::new(0),
        });
        tokio::spawn(deliver(Arc::downgrade(&hub), rx));
        Self(hub)
    }

    /// A new instance on this backplane: its bus, for one or more caches.
    pub fn join(&self) -> Arc<MemoryBus> {
        let member = Arc::new(MemoryBus {
            id: self.0.next_id.fetch_add(1, Relaxed),
            hub: self.0.clone(),
            caches: Targets::default(),
            counters: BusCounters::default(),
        });
        let mut members = self.0.members.lock().unwrap_or_else(|p| p.into_inner());
        members.retain(|m| m.strong_count() > 0);
        members.push(Arc::downgrade(&member));
        member
    }

    /// Every message is delivered no sooner than `latency` after it was
    /// published (zero: at once). Measured on Tokio's clock, so a test with
    /// paused time moves it.
    pub fn set_latency(&self, latency: Duration) {
        self.0.latency_us.store(latency.as_micros() as u64, Relaxed);
    }

    /// Messages wait, in order, until [`release`](Self::release).
    pub fn freeze(&self) {
        self.0.frozen.send_replace(true);
    }

    /// Ends [`freeze`](Self::freeze): waiting messages are delivered.
    pub fn release(&self) {
        self.0.frozen.send_replace(false);
    }

    /// The connection drops: messages published from now on are lost, and
    /// the instances say they are disconnected.
    pub fn disconnect(&self) {
        self.0.down.store(true, Relaxed);
    }

    /// Ends [`disconnect`](Self::disconnect). As over Redis, every instance
    /// then clears the L1 of its attached caches (messages may have been
    /// missed), and counts it in `reconnect_clears`.
    pub fn reconnect(&self) {
        if self.0.down.swap(false, Relaxed) {
            let _ = self.0.queue.send(Delivery::Reconnected);
        }
    }

    /// The next `n` messages are lost on the way, as in a flood that
    /// outruns a subscriber: each instance that should have received one
    /// clears the L1 of its attached caches instead (`overflow_clears`).
    pub fn drop_next(&self, n: u64) {
        self.0.drop_next.store(n, Relaxed);
    }

    /// Waits until every message published before this call has been
    /// applied (or lost). While [frozen](Self::freeze), that is after the release.
    pub async fn settle(&self) {
        let (done, wait) = oneshot::channel();
        if self.0.queue.send(Delivery::Settled(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

impl Hub {
    fn members(&self) -> Vec<Arc<MemoryBus>> {
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members.iter().filter_map(Weak::upgrade).collect()
    }
}

/// The task that delivers messages, in order, until the backplane is dropped.
async fn deliver(hub: Weak<Hub>, mut rx: mpsc::UnboundedReceiver<Delivery>) {
    while let Some(delivery) = rx.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        match delivery {
            Delivery::Message {
                from,
                prefix,
                notices,
                at,
            } => {
                let latency = Duration::from_micros(hub.latency_us.load(Relaxed));
                tokio::time::sleep_until(at + latency).await;
                let mut frozen = hub.frozen.subscribe();
                let _ = frozen.wait_for(|f| !*f).await;
                let lost = hub
                    .drop_next
                    .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                    .is_ok();
                for member in hub.members().into_iter().filter(|m| m.id != from) {
                    if lost {
                        member.counters.overflow_clears.incr();
                        member.caches.clear_all(InvalidatedBy::Backplane).await;
                    } else {
                        member.counters.receive(&member.caches, &prefix, &notices).await;
                    }
                }
            }
            Delivery::Reconnected => {
                for member in hub.members() {
                    member.counters.reconnect_clears.incr();
                    member.caches.clear_all(InvalidatedBy::Backplane).await;
                }
            }
            Delivery::Settled(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// One instance's side of a [`MemoryBackplane`]: the bus its caches
/// publish on ([`InvalidationBus`]) and the caches it evicts from when
/// another instance publishes.
pub struct MemoryBus {
    id: u64,
    hub: Arc<Hub>,
    caches: Targets,
    counters: BusCounters,
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBus")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MemoryBus {
    /// From now on, `cache` evicts from its L1 what other instances of
    /// this backplane announce for its namespace. Build the cache with this
    /// bus in its settings, so that its own writes are announced too.
    pub fn attach<V, A, B>(&self, cache: &TwoLevelCache<V, A, B>)
    where
        V: CacheValue,
        A: CacheBackend<Value = Arc<V>>,
        B: CacheBackend<Value = Vec<u8>>,
    {
        self.caches
            .add(cache.key_prefix().to_string(), cache.invalidation_target());
    }

    fn send(&self, prefix: &str, notices: Vec<Notice>) {
        self.counters.sent.incr();
        if self.hub.down.load(Relaxed) {
            return;
        }
        let _ = self.hub.queue.send(Delivery::Message {
            from: self.id,
            prefix: prefix.to_string(),
            notices,
            at: tokio::time::Instant::now(),
        });
    }
}

impl InvalidationBus for MemoryBus {
    fn publish(&self, prefix: &str, key: Option<&str>) {
        self.send(prefix, vec![Notice::of_key(key)]);
    }

    fn publish_keys(&self, prefix: &str, keys: &[&str]) {
        self.send(prefix, vec![Notice::of_keys(keys)]);
    }

    fn publish_mark(&self, prefix: &str, mark: &Mark) {
        self.send(prefix, vec![Notice::Mark(mark.clone())]);
    }

    fn stats(&self) -> BackplaneStats {
        self.counters.stats(self.id, !self.hub.down.load(Relaxed))
    }
}
