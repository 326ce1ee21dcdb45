//! `get_or_load`: read-through with one loader per key.
//!
//! Concurrent callers of one key in one process share a single run of the
//! loader (single-flight) and all get its result, value or error. A loader that
//! panics, or whose caller is cancelled, does not wedge the key: its waiters
//! wake up and the next of them loads again.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::backend::CacheBackend;
use crate::two_level::{CacheValue, TwoLevelCache};

/// The loads in flight of one cache, by key.
#[derive(Default)]
pub(crate) struct Flights(Mutex<HashMap<String, Arc<Flight>>>);

#[derive(Default)]
pub(crate) struct Flight {
    /// `Result<Arc<V>, Arc<E>>` of the load, type-erased (one map serves every `E`).
    result: OnceLock<Box<dyn Any + Send + Sync>>,
    done: Notify,
}

/// Removes the flight and wakes its waiters when the leader finishes, panics
/// or is cancelled.
struct Leader<'a> {
    flights: &'a Flights,
    key: &'a str,
    flight: Arc<Flight>,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(self.key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
            map.remove(self.key);
        }
        drop(map);
        self.flight.done.notify_waiters();
    }
}

enum Role {
    Leader(Arc<Flight>),
    Waiter(Arc<Flight>),
}

impl Flights {
    fn join(&self, key: &str) -> Role {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some(f) => Role::Waiter(f.clone()),
            None => {
                let f = Arc::new(Flight::default());
                map.insert(key.to_string(), f.clone());
                Role::Leader(f)
            }
        }
    }
}

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// The value under `key`, from L1, then L2, then `loader`, whose result is
    /// stored in both levels. Concurrent callers of one key in this process
    /// share one run of `loader` and all get its result; a loader error reaches
    /// each of them (shared, as `Arc<E>`) and nothing is stored.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use resilient_cache::{CacheOptions, CacheService, CacheFactoryConfig};
    /// # async fn demo(service: CacheService) -> resilient_cache::Result<()> {
    /// let users = service.create_cache::<String>(CacheOptions::new("users").l2_ttl(Duration::from_secs(60)))?;
    /// let name = users
    ///     .get_or_load("42", || async { Ok::<_, std::io::Error>("Ada".to_string()) })
    ///     .await
    ///     .expect("loader failed");
    /// assert_eq!(*name, "Ada");
    /// # Ok(()) }
    /// ```
    pub async fn get_or_load<F, Fut, E>(&self, key: &str, loader: F) -> Result<Arc<V>, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        self.get_or_load_with_ttl(key, None, loader).await
    }

    /// [`get_or_load`](Self::get_or_load) storing the loaded value with a per-call TTL.
    pub async fn get_or_load_with_ttl<F, Fut, E>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        loader: F,
    ) -> Result<Arc<V>, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        let mut loader = Some(loader);
        loop {
            if let Some(v) = self.get(key).await {
                return Ok(v);
            }
            match self.flights().join(key) {
                Role::Leader(flight) => {
                    let _leader = Leader {
                        flights: self.flights(),
                        key,
                        flight: flight.clone(),
                    };
                    // Someone may have stored the value between our miss and our lead.
                    let result: Result<Arc<V>, Arc<E>> = match self.get(key).await {
                        Some(v) => Ok(v),
                        None => {
                            let load = loader.take().expect("a caller leads at most once");
                            match load().await {
                                Ok(v) => {
                                    let v = Arc::new(v);
                                    // A key or value the cache refuses is still returned.
                                    let _ = self.store(key, v.clone(), ttl).await;
                                    Ok(v)
                                }
                                Err(e) => Err(Arc::new(e)),
                            }
                        }
                    };
                    let _ = flight.result.set(Box::new(result.clone()));
                    return result;
                }
                Role::Waiter(flight) => {
                    let notified = flight.done.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if flight.result.get().is_none() {
                        notified.await;
                    }
                    if let Some(r) = flight
                        .result
                        .get()
                        .and_then(|r| r.downcast_ref::<Result<Arc<V>, Arc<E>>>())
                    {
                        return r.clone();
                    }
                    // The leader panicked or was cancelled: try again (maybe as leader).
                }
            }
        }
    }
}
