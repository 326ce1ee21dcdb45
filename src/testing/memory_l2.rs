//! An in-memory L2 with fault injection.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::memory::TtlBackend;
use crate::backend::{CacheBackend, L1BackendKind, L1Config, L2Stats};
use crate::clock::now_ms;
use crate::error::{ConnectionErrorKind, Error, Result};

/// The longest per-call TTL [`MemoryL2`] keeps (a year).
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// An L2 backend in process memory (bytes, like Redis), with leases and
/// fault injection: what a test uses where a real server adds nothing to
/// what it checks. It keeps every rule of the [conformance
/// suite](super::conformance), so a cache over it behaves as over Redis —
/// breaker, outage replay, load leases — while [`Faults`] decides when it
/// fails.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use resilient_cache::testing::MemoryL2;
/// use resilient_cache::error::ConnectionErrorKind;
/// use resilient_cache::CacheBackend;
///
/// let l2 = MemoryL2::new();
/// let faults = l2.faults();
/// faults.fail_next(1, ConnectionErrorKind::Refused);
/// assert!(l2.get("k").await.is_err()); // the injected failure
/// assert!(l2.get("k").await.unwrap().is_none()); // then healthy again
/// # }
/// ```
pub struct MemoryL2 {
    store: TtlBackend<Vec<u8>>,
    /// Key → (token, expiry in ms) of its load lease.
    leases: tokio::sync::Mutex<HashMap<String, (u64, u64)>>,
    /// Invalidation markers: field → stamp (kept for the test's lifetime).
    markers: std::sync::Mutex<HashMap<String, u64>>,
    default_ttl: Duration,
    op_timeout: Duration,
    faults: Arc<Faults>,
}

impl Default for MemoryL2 {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryL2 {
    /// Up to 100,000 entries, a default TTL of an hour, and an operation
    /// timeout of one second (what a frozen call waits before it fails).
    pub fn new() -> Self {
        Self::with_capacity(100_000)
    }

    /// Up to `capacity` entries (beyond, the least useful are evicted).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            store: TtlBackend::new(&L1Config {
                backend: L1BackendKind::Ttl,
                maxsize: capacity.max(1),
                ttl: MAX_TTL,
                fail_safe: Duration::ZERO,
            }),
            leases: Default::default(),
            markers: Default::default(),
            default_ttl: Duration::from_secs(3600),
            op_timeout: Duration::from_secs(1),
            faults: Arc::default(),
        }
    }

    /// The TTL of a write with `ttl: None`.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl.min(MAX_TTL);
        self
    }

    /// How long a call waits on a [frozen](Faults::freeze) backend before it
    /// fails with a timeout (reported by `operation_timeout`).
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// The handle that injects faults; keep it after the backend moves into a cache.
    pub fn faults(&self) -> Arc<Faults> {
        self.faults.clone()
    }

    fn ttl(&self, ttl: Option<Duration>) -> Option<Duration> {
        Some(ttl.unwrap_or(self.default_ttl).min(MAX_TTL))
    }
}

/// What [`MemoryL2`] does wrong, on demand. Every call of the backend first
/// passes here: it waits out the latency, then fails if the connection is
/// dropped or failures are due, then waits while frozen (failing with a
/// timeout after the operation timeout, as a frozen Redis does).
#[derive(Debug)]
pub struct Faults {
    fail_next: AtomicU64,
    fail_kind: Mutex<ConnectionErrorKind>,
    latency_us: AtomicU64,
    down: AtomicBool,
    frozen: tokio::sync::watch::Sender<bool>,
    calls: AtomicU64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            fail_next: AtomicU64::new(0),
            fail_kind: Mutex::new(ConnectionErrorKind::Io),
            latency_us: AtomicU64::new(0),
            down: AtomicBool::new(false),
            frozen: tokio::sync::watch::channel(false).0,
            calls: AtomicU64::new(0),
        }
    }
}

impl Faults {
    /// The next `n` calls fail with a connection error of `kind`.
    pub fn fail_next(&self, n: u64, kind: ConnectionErrorKind) {
        *self.fail_kind.lock().unwrap_or_else(|p| p.into_inner()) = kind;
        self.fail_next.store(n, Relaxed);
    }

    /// Every call fails at once (connection refused) until [`restore`](Self::restore).
    pub fn drop_connection(&self) {
        self.down.store(true, Relaxed);
    }

    /// Ends [`drop_connection`](Self::drop_connection).
    pub fn restore(&self) {
        self.down.store(false, Relaxed);
    }

    /// Calls wait (as on a server stopped with `SIGSTOP`) until
    /// [`release`](Self::release) or their operation timeout, which fails them.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Ends [`freeze`](Self::freeze): waiting calls go on.
    pub fn release(&self) {
        self.frozen.send_replace(false);
    }

    /// Every call takes at least `latency` (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        self.latency_us.store(latency.as_micros() as u64, Relaxed);
    }

    /// Calls made so far, failed ones included.
    pub fn calls(&self) -> u64 {
        self.calls.load(Relaxed)
    }

    async fn before(&self, op_timeout: Duration) -> Result<()> {
        self.calls.fetch_add(1, Relaxed);
        let latency = self.latency_us.load(Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_micros(latency)).await;
        }
        if self.down.load(Relaxed) {
            return Err(Error::connection(
                ConnectionErrorKind::Refused,
                "connection dropped (injected)",
            ));
        }
        let due = self
            .fail_next
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if due {
            let kind = *self.fail_kind.lock().unwrap_or_else(|p| p.into_inner());
            return Err(Error::connection(kind, "injected failure"));
        }
        let mut frozen = self.frozen.subscribe();
        if *frozen.borrow() {
            let thawed = tokio::time::timeout(op_timeout, frozen.wait_for(|f| !*f)).await;
            if thawed.is_err() {
                return Err(Error::connection(
                    ConnectionErrorKind::Timeout,
                    format!("no answer within {op_timeout:?} (frozen, injected)"),
                ));
            }
        }
        Ok(())
    }
}

impl CacheBackend for MemoryL2 {
    type Value = Vec<u8>;
    type Stats = L2Stats;

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.faults.before(self.op_timeout).await?;
        self.store.get(key).await
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<()> {
        self.faults.before(self.op_timeout).await?;
        let mut leases = self.leases.lock().await;
        leases.remove(key);
        self.store.set(key, value, self.ttl(ttl)).await
    }

    async fn set_if_not_exist(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> Result<bool> {
        self.faults.before(self.op_timeout).await?;
        let mut leases = self.leases.lock().await;
        let stored = self.store.set_if_not_exist(key, value, self.ttl(ttl)).await?;
        if stored {
            leases.remove(key);
        }
        Ok(stored)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.faults.before(self.op_timeout).await?;
        let mut leases = self.leases.lock().await;
        leases.remove(key);
        self.store.delete(key).await
    }

    async fn clear(&self) -> Result<u64> {
        self.faults.before(self.op_timeout).await?;
        let mut leases = self.leases.lock().await;
        leases.clear();
        self.store.clear().await
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        self.faults.before(self.op_timeout).await?;
        self.store.exists(key).await
    }

    async fn get_ttl(&self, key: &str) -> Result<Option<Duration>> {
        self.faults.before(self.op_timeout).await?;
        self.store.get_ttl(key).await
    }

    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Vec<u8>, Option<Duration>)>> {
        self.faults.before(self.op_timeout).await?;
        self.store.get_with_ttl(key).await
    }

    async fn load_markers(&self) -> Result<Option<crate::backend::MarkerFields>> {
        self.faults.before(self.op_timeout).await?;
        let markers = self.markers.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Some(markers.iter().map(|(f, at)| (f.clone(), *at)).collect()))
    }

    async fn put_marker(&self, field: &str, at_us: u64, _keep: Duration) -> Result<bool> {
        self.faults.before(self.op_timeout).await?;
        let mut markers = self.markers.lock().unwrap_or_else(|p| p.into_inner());
        let at = markers.entry(field.to_string()).or_default();
        *at = (*at).max(at_us);
        Ok(true)
    }

    async fn list_keys(&self, prefix: Option<&str>) -> Result<Vec<String>> {
        self.faults.before(self.op_timeout).await?;
        self.store.list_keys(prefix).await
    }

    async fn get_size(&self) -> Result<u64> {
        self.faults.before(self.op_timeout).await?;
        self.store.get_size().await
    }

    async fn get_stats(&self) -> Result<L2Stats> {
        self.faults.before(self.op_timeout).await?;
        let mut stats = self.describe();
        stats.available = true;
        stats.size = Some(self.store.get_size().await?);
        Ok(stats)
    }

    fn describe(&self) -> L2Stats {
        L2Stats {
            backend: "memory",
            endpoint: "memory".into(),
            db: 0,
            key_prefix: String::new(),
            ttl: self.default_ttl.as_secs_f64(),
            serializer: String::new(),
            available: false,
            size: None,
            server: BTreeMap::new(),
        }
    }

    fn operation_timeout(&self) -> Option<Duration> {
        Some(self.op_timeout)
    }

    async fn lease(&self, key: &str, token: u64, ttl: Duration, exclusive: bool) -> Result<Option<bool>> {
        self.faults.before(self.op_timeout).await?;
        let mut leases = self.leases.lock().await;
        let now = now_ms();
        let held = leases.get(key).is_some_and(|&(_, until)| until > now);
        if exclusive && held {
            return Ok(Some(false));
        }
        leases.insert(key.to_string(), (token, now + ttl.as_millis() as u64));
        Ok(Some(true))
    }

    async fn store_if_leased(
        &self,
        key: &str,
        token: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> Result<Option<bool>> {
        self.faults.before(self.op_timeout).await?;
        let mut leases = self.leases.lock().await;
        let holds = leases
            .get(key)
            .is_some_and(|&(t, until)| t == token && until > now_ms());
        if !holds {
            return Ok(Some(false));
        }
        leases.remove(key);
        if only_if_absent {
            return self
                .store
                .set_if_not_exist(key, value, self.ttl(ttl))
                .await
                .map(Some);
        }
        self.store.set(key, value, self.ttl(ttl)).await?;
        Ok(Some(true))
    }

    async fn release_lease(&self, key: &str, token: u64) -> Result<()> {
        self.faults.before(self.op_timeout).await?;
        let mut leases = self.leases.lock().await;
        if leases.get(key).is_some_and(|&(t, _)| t == token) {
            leases.remove(key);
        }
        Ok(())
    }
}
