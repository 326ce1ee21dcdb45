//! The cache's side of the backplane: announcing its L2 writes on the bus,
//! and evicting from L1 when another instance announces one (or applying
//! its invalidation marker).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use super::events::CacheEvent;
use super::{CacheValue, Inner, TwoLevelCache};
use crate::backend::CacheBackend;
use crate::backplane::{Invalidate, InvalidatedBy};
use crate::tags::{Mark, Scope};

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// Tells other instances that `key` (or, with `None`, the namespace) changed in L2.
    ///
    /// A cache without L1 announces nothing: it is on the backplane only to
    /// receive invalidation markers.
    pub(super) fn announce(&self, key: Option<&str>) {
        if self.inner.l1.is_none() {
            return;
        }
        if let Some(bus) = &self.inner.bus {
            bus.publish(&self.inner.prefix, key);
        }
    }

    /// Tells other instances that `keys` changed in L2, in one message.
    pub(super) fn announce_keys(&self, keys: &[&str]) {
        if self.inner.l1.is_none() || keys.is_empty() {
            return;
        }
        if let Some(bus) = &self.inner.bus {
            bus.publish_keys(&self.inner.prefix, keys);
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn invalidation_target(&self) -> Weak<dyn Invalidate> {
        let weak: Weak<Inner<V, A, B>> = Arc::downgrade(&self.inner);
        weak
    }
}

impl<V, A, B> Invalidate for Inner<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    fn invalidate(
        self: Arc<Self>,
        key: Option<String>,
        by: InvalidatedBy,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            if key.is_none() {
                // Markers may have been missed with the messages: reload them.
                self.markers.forget_loaded();
            }
            let Some(l1) = &self.l1 else { return };
            match &key {
                Some(key) => {
                    // Moving the guard stops an L2 read in flight from promoting the old value.
                    let _write = self.guard.write(key);
                    let _ = l1.delete(key).await;
                }
                None => {
                    self.guard.bump_epoch();
                    self.tag_index.clear();
                    let _ = l1.clear().await;
                    self.guard.bump_epoch();
                }
            }
            // Told once applied: a subscriber that reads next sees its effect.
            self.events.emit(|| CacheEvent::Invalidated { key, by });
        })
    }

    fn covered(self: Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let inner = Arc::downgrade(&self);
        Box::pin(TwoLevelCache::check_early_entries(inner))
    }

    fn mark(self: Arc<Self>, mark: Mark) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            self.apply_mark(&mark).await;
            // Told once applied: a subscriber that reads next sees its effect.
            self.events.emit(|| CacheEvent::Marked {
                tag: match &mark.scope {
                    Scope::Tag(t) => Some(t.clone()),
                    Scope::All => None,
                },
                kind: mark.kind,
            });
        })
    }
}
