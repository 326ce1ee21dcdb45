//! Cross-instance L1 invalidation over Redis pub/sub (the *backplane*).
//!
//! Every successful write, delete and clear of a cache that has both levels
//! publishes a small message on `rc:inv:{prefix}`: the writer's instance id and
//! the key (or "all" for a clear), never the value. Every other instance of
//! the service evicts that key from its L1; an instance ignores its own
//! messages. Evicting also moves the key's promotion guard, so a read that
//! fetched the old value from L2 just before the message arrived does not put
//! it into L1 just after.
//!
//! One subscriber connection per service (RESP3 push messages on a dedicated
//! connection, `PSUBSCRIBE rc:inv:*`). Messages are handed over through a
//! bounded buffer: if a flood outruns the subscriber, the overflow is dropped
//! and every backplane L1 of the service is cleared instead (memory stays
//! bounded, and nothing stale survives). When the subscriber connection drops
//! and comes back, messages may have been lost: the same clear happens, and is
//! counted. While Redis is unreachable there is no backplane: staleness is then
//! bounded by the L1 TTL.

#[cfg(feature = "redis")]
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
#[cfg(feature = "redis")]
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
#[cfg(feature = "redis")]
use std::sync::{Mutex, Weak};
#[cfg(feature = "redis")]
use std::time::Duration;

use serde::Serialize;

#[cfg(feature = "redis")]
use crate::backend::redis::RedisConnection;
#[cfg(feature = "redis")]
use crate::breaker::CircuitBreaker;
#[cfg(feature = "redis")]
use crate::clock::now_ms;
#[cfg(feature = "redis")]
use crate::stats::Counter;

/// Channel prefix; the namespace follows.
pub const CHANNEL_PREFIX: &str = "rc:inv:";
#[cfg(feature = "redis")]
/// Messages buffered between the subscriber connection and the evictions.
const BUFFER: usize = 4096;

/// Something that publishes invalidations (the two-level cache calls it after
/// each successful L2 write). Kept abstract so the composition does not depend
/// on Redis.
pub trait InvalidationBus: Send + Sync + 'static {
    /// `key: None` means the whole namespace (a clear).
    fn publish(&self, prefix: &str, key: Option<&str>);
    /// Figures for stats.
    fn stats(&self) -> BackplaneStats;
}

type Evict = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A cache that the backplane can evict from.
pub(crate) trait Invalidate: Send + Sync {
    /// Evicts `key` (or everything) from L1 and moves the promotion guard.
    fn invalidate(self: Arc<Self>, key: Option<String>) -> Evict;
}

/// Backplane figures (service-wide).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct BackplaneStats {
    /// This instance's id (hex), carried in its messages.
    pub instance_id: String,
    /// Whether the subscriber connection is up.
    pub connected: bool,
    /// Messages published by this instance.
    pub messages_sent: u64,
    /// Messages received from other instances.
    pub messages_received: u64,
    /// Received messages that evicted something in a local L1.
    pub messages_applied: u64,
    /// Own messages received and ignored.
    pub own_ignored: u64,
    /// Times every backplane L1 was cleared because the subscriber reconnected.
    pub reconnect_clears: u64,
    /// Times every backplane L1 was cleared because messages were dropped (flood).
    pub overflow_clears: u64,
    /// Seconds since the last message from another instance, if any.
    pub last_message_age_s: Option<f64>,
}

#[cfg(feature = "redis")]
/// The service's backplane.
pub(crate) struct Backplane {
    instance_id: u64,
    publisher: RedisConnection,
    caches: Mutex<HashMap<String, Vec<Weak<dyn Invalidate>>>>,
    sent: Counter,
    received: Counter,
    applied: Counter,
    own_ignored: Counter,
    reconnect_clears: Counter,
    overflow_clears: Counter,
    last_message_ms: AtomicU64,
    connected: AtomicBool,
}

#[cfg(feature = "redis")]
fn new_instance_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; mix in time and pid for good measure.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(feature = "redis")]
impl Backplane {
    pub fn new(publisher: RedisConnection) -> Arc<Self> {
        Arc::new(Self {
            instance_id: new_instance_id(),
            publisher,
            caches: Mutex::default(),
            sent: Counter::default(),
            received: Counter::default(),
            applied: Counter::default(),
            own_ignored: Counter::default(),
            reconnect_clears: Counter::default(),
            overflow_clears: Counter::default(),
            last_message_ms: AtomicU64::new(0),
            connected: AtomicBool::new(false),
        })
    }

    pub fn register(&self, prefix: &str, cache: Weak<dyn Invalidate>) {
        let mut caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        let list = caches.entry(prefix.to_string()).or_default();
        list.retain(|w| w.strong_count() > 0);
        list.push(cache);
    }

    fn targets(&self, prefix: Option<&str>) -> Vec<Arc<dyn Invalidate>> {
        let caches = self.caches.lock().unwrap_or_else(|p| p.into_inner());
        match prefix {
            Some(p) => caches
                .get(p)
                .into_iter()
                .flatten()
                .filter_map(Weak::upgrade)
                .collect(),
            None => caches.values().flatten().filter_map(Weak::upgrade).collect(),
        }
    }

    async fn clear_all(&self) {
        for cache in self.targets(None) {
            cache.invalidate(None).await;
        }
    }

    /// `instance id (8 bytes, big-endian)` + `k` + key, or `c` for a clear.
    fn encode(&self, key: Option<&str>) -> Vec<u8> {
        let mut m = Vec::with_capacity(9 + key.map_or(0, str::len));
        m.extend_from_slice(&self.instance_id.to_be_bytes());
        match key {
            Some(k) => {
                m.push(b'k');
                m.extend_from_slice(k.as_bytes());
            }
            None => m.push(b'c'),
        }
        m
    }

    fn decode(payload: &[u8]) -> Option<(u64, Option<String>)> {
        let (id, rest) = payload.split_at_checked(8)?;
        let id = u64::from_be_bytes(id.try_into().ok()?);
        match rest.split_first()? {
            (b'k', key) => Some((id, Some(String::from_utf8(key.to_vec()).ok()?))),
            (b'c', []) => Some((id, None)),
            _ => None,
        }
    }

    async fn apply(&self, channel: &[u8], payload: &[u8]) {
        let Some(prefix) = channel.strip_prefix(CHANNEL_PREFIX.as_bytes()) else {
            return;
        };
        let (Ok(prefix), Some((id, key))) = (std::str::from_utf8(prefix), Self::decode(payload)) else {
            return;
        };
        if id == self.instance_id {
            self.own_ignored.incr();
            return;
        }
        self.received.incr();
        self.last_message_ms.store(now_ms().max(1), Relaxed);
        let targets = self.targets(Some(prefix));
        if !targets.is_empty() {
            self.applied.incr();
        }
        for cache in targets {
            cache.invalidate(key.clone()).await;
        }
    }

    /// Starts the subscriber: one task per service, stopped when the service goes.
    pub fn spawn_subscriber(
        self: &Arc<Self>,
        client: redis::Client,
        breaker: Arc<CircuitBreaker>,
        op_timeout: Duration,
    ) {
        let weak = Arc::downgrade(self);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { subscriber(weak, client, breaker, op_timeout).await });
            }
            Err(_) => tracing::warn!("no Tokio runtime: the backplane subscriber is not running"),
        }
    }
}

#[cfg(feature = "redis")]
impl InvalidationBus for Backplane {
    fn publish(&self, prefix: &str, key: Option<&str>) {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(format!("{CHANNEL_PREFIX}{prefix}")).arg(self.encode(key));
        let conn = self.publisher.clone();
        // Fire and forget: the write already succeeded; the caller does not wait.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.sent.incr();
            rt.spawn(async move {
                let _ = conn.query::<redis::Value>(&cmd).await;
            });
        }
    }

    fn stats(&self) -> BackplaneStats {
        let last = self.last_message_ms.load(Relaxed);
        BackplaneStats {
            instance_id: format!("{:016x}", self.instance_id),
            connected: self.connected.load(Relaxed),
            messages_sent: self.sent.get(),
            messages_received: self.received.get(),
            messages_applied: self.applied.get(),
            own_ignored: self.own_ignored.get(),
            reconnect_clears: self.reconnect_clears.get(),
            overflow_clears: self.overflow_clears.get(),
            last_message_age_s: (last != 0).then(|| now_ms().saturating_sub(last) as f64 / 1000.0),
        }
    }
}

#[cfg(feature = "redis")]
async fn subscriber(
    weak: Weak<Backplane>,
    client: redis::Client,
    breaker: Arc<CircuitBreaker>,
    op_timeout: Duration,
) {
    let mut ever_connected = false;
    let mut failures: u32 = 0;
    loop {
        // One view of the endpoint's health: while the service's breaker says
        // Redis is down, the subscriber does not knock either.
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
                if tx.try_send(info).is_err() {
                    lost_in_sender.store(true, Relaxed);
                }
                Ok::<(), redis::aio::SendError>(())
            });
        let connected = tokio::time::timeout(op_timeout * 2, async {
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            conn.psubscribe(format!("{CHANNEL_PREFIX}*")).await?;
            Ok::<_, redis::RedisError>(conn)
        })
        .await;
        let mut conn = match connected {
            Ok(Ok(conn)) => conn,
            _ => {
                failures = failures.saturating_add(1);
                // Backoff with jitter: 100 ms doubling to 5 s, plus up to 50 %.
                let base = (100u64 << failures.min(6)).min(5000);
                let jitter = now_ms().wrapping_mul(0x9E37_79B9) % (base / 2 + 1);
                tokio::time::sleep(Duration::from_millis(base + jitter)).await;
                continue;
            }
        };
        let Some(bp) = weak.upgrade() else { return };
        bp.connected.store(true, Relaxed);
        if ever_connected || failures > 0 {
            // Messages may have been missed while disconnected.
            bp.clear_all().await;
            bp.reconnect_clears.incr();
        }
        drop(bp);
        ever_connected = true;
        failures = 0;

        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(info) = msg else { break };
                    let Some(bp) = weak.upgrade() else { return };
                    match info.kind {
                        redis::PushKind::Disconnection => break,
                        redis::PushKind::PMessage => {
                            if let [_, redis::Value::BulkString(ch), redis::Value::BulkString(p)] = info.data.as_slice() {
                                bp.apply(ch, p).await;
                            }
                        }
                        redis::PushKind::Message => {
                            if let [redis::Value::BulkString(ch), redis::Value::BulkString(p)] = info.data.as_slice() {
                                bp.apply(ch, p).await;
                            }
                        }
                        _ => {}
                    }
                }
                _ = tick.tick() => {
                    let Some(bp) = weak.upgrade() else { return };
                    if lost.swap(false, Relaxed) {
                        bp.clear_all().await;
                        bp.overflow_clears.incr();
                    }
                    let ping = tokio::time::timeout(op_timeout, redis::cmd("PING").query_async::<redis::Value>(&mut conn)).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        if let Some(bp) = weak.upgrade() {
            bp.connected.store(false, Relaxed);
        }
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;

    #[test]
    fn messages_are_compact_and_round_trip() {
        let id = 0x0123_4567_89ab_cdefu64;
        let mut m = id.to_be_bytes().to_vec();
        m.push(b'k');
        m.extend_from_slice("user:42".as_bytes());
        assert_eq!(Backplane::decode(&m), Some((id, Some("user:42".into()))));
        let mut c = id.to_be_bytes().to_vec();
        c.push(b'c');
        assert_eq!(Backplane::decode(&c), Some((id, None)));
        assert_eq!(Backplane::decode(b"short"), None);
        assert_eq!(Backplane::decode(&[0; 9]), None);
        c.push(b'x');
        assert_eq!(Backplane::decode(&c), None);
    }
}
