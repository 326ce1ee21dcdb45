//! A tracked cache's first moments: what L1 took in before tracking covered
//! the namespace is checked against L2 once it does.
//!
//! Tracking tells a service of every change to its keys from the moment
//! Redis confirms the set-up, a few round trips after the cache is created.
//! A change made in between goes unannounced, so an entry put in L1 in
//! between (read from L2, loaded, or written by the cache itself) may be
//! older than what L2 holds once tracking is up. Clearing L1 at set-up would
//! drop what a program wrote in its first milliseconds, and leave it nothing
//! to serve if L2 then went away. Instead the cache notes each key it puts in
//! L1 until then, with a digest of the value's encoding ([`Journal`]); when
//! tracking covers the namespace, it reads those keys from L2 once, and an
//! entry whose value is not what L2 holds (another digest of the encoded
//! value, whatever the entry's tags; or nothing) leaves L1, as a tracking
//! invalidation would have made it. The
//! check reads L2 only, so it counts no L1 hit. From then on, tracking
//! announces every change.
//!
//! An operation that began before the check but puts its entry in L1 after
//! it is the one case the notes cannot cover. The check counts itself in the
//! promotion guard before it takes the notes (a count promotion itself does
//! not look at), so such an operation sees the notes closed and the count
//! moved since it began: its key is then checked the same way on its own,
//! so that what a program read, loaded or wrote in its first milliseconds
//! stays in L1 when L2 still holds it. (Without a Tokio runtime to run that
//! check, the entry is removed instead: a miss is never wrong.)
//!
//! Past [`CAP`] keys the notes stop and the check clears the namespace's L1
//! instead. If L2 does not answer the check, the entries stay (L1 keeps
//! serving while L2 is away) and the check is tried again every [`RETRY`];
//! an L2 that is gone for good ends tracking's channel too, and its return
//! clears every tracked L1 anyway. Until the checks are done, the cache's
//! view of `tracking.connected` and `backplane.connected` is `false`.
//!
//! Cost: after the check, a write reads one atomic more than before and a
//! read from L2 three (one in its guard snapshot); the L1 hit none.

use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::{CacheValue, Inner, TwoLevelCache};
use crate::backend::CacheBackend;
use crate::backplane::{Invalidate, InvalidatedBy};

/// Keys noted before the check; past this many, the check clears L1.
pub(super) const CAP: usize = 4096;

/// How long a check that L2 did not answer waits before it tries again.
pub(super) const RETRY: Duration = Duration::from_millis(250);

const OFF: u8 = 0;
const NOTING: u8 = 1;
const FULL: u8 = 2;

/// The keys put in L1 before tracking covered the namespace.
pub(super) struct Journal {
    state: AtomicU8,
    /// Each key with the digest of what L1 took in (`None`: it could not
    /// be encoded, so it cannot be confirmed).
    keys: Mutex<HashMap<String, Option<u64>>>,
    /// Checks to run or finish: the one of the notes, and one per entry
    /// that straddled it.
    checks: AtomicUsize,
}

/// What the check has to look at.
enum Early {
    Keys(Vec<(String, Option<u64>)>),
    /// More than [`CAP`] keys: all of L1.
    Full,
}

impl Journal {
    /// Closed: a cache that no tracking covers notes nothing.
    pub(super) fn new() -> Self {
        Self {
            state: AtomicU8::new(OFF),
            keys: Mutex::default(),
            checks: AtomicUsize::new(0),
        }
    }

    /// Starts noting (a tracked cache, before it is handed out).
    pub(super) fn open(&self) {
        self.checks.store(1, Ordering::Release);
        self.state.store(NOTING, Ordering::Release);
    }

    /// Whether a check is still to run or to finish.
    pub(super) fn is_pending(&self) -> bool {
        self.checks.load(Ordering::Acquire) > 0
    }

    /// Whether keys are being noted: the check has not run yet.
    #[inline]
    pub(super) fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) != OFF
    }

    /// Notes `key`, just put in L1, with the digest of its value (asked
    /// only while noting). `false` once the check has run (not noted).
    fn note(&self, key: &str, digest: impl FnOnce() -> Option<u64>) -> bool {
        match self.state.load(Ordering::Acquire) {
            OFF => return false,
            FULL => return true,
            _ => {}
        }
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        match self.state.load(Ordering::Acquire) {
            OFF => false,
            FULL => true,
            _ => {
                if let Some(noted) = keys.get_mut(key) {
                    *noted = digest();
                } else if keys.len() >= CAP {
                    keys.clear();
                    self.state.store(FULL, Ordering::Release);
                } else {
                    keys.insert(key.to_string(), digest());
                }
                true
            }
        }
    }

    /// Closes the notes and hands them over; `None` if they were closed.
    /// `bump` (the guard's count of checks) runs first, so that an
    /// operation noting after this sees the count moved.
    fn close(&self, bump: impl FnOnce()) -> Option<Early> {
        if !self.is_open() {
            return None;
        }
        bump();
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        match self.state.swap(OFF, Ordering::AcqRel) {
            OFF => None,
            FULL => Some(Early::Full),
            _ => Some(Early::Keys(keys.drain().collect())),
        }
    }
}

impl<V, A, B> TwoLevelCache<V, A, B>
where
    V: CacheValue,
    A: CacheBackend<Value = Arc<V>>,
    B: CacheBackend<Value = Vec<u8>>,
{
    /// Tracking will cover this cache's namespace: note what L1 takes in
    /// until it does.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn note_until_covered(&self) {
        if self.inner.l1.is_some() && self.inner.l2.is_some() {
            self.inner.journal.open();
        }
    }

    /// What a write about to begin must carry to its L1 insert: the
    /// guard's count of checks while the notes are open, `None` after (a
    /// read carries the count in its promotion guard snapshot).
    #[inline]
    pub(super) fn early_since(&self) -> Option<u64> {
        self.inner.journal.is_open().then(|| self.inner.guard.checks())
    }

    /// Puts `value` in L1 for `key`, after an operation that began when the
    /// guard's count of checks was `since` (`None`: nothing to do). Before
    /// the check the key is noted; if the check ran in between, the key is
    /// checked on its own (see the module docs).
    pub(super) async fn l1_keep(
        &self,
        l1: &A,
        key: &str,
        value: Arc<V>,
        ttl: Option<Duration>,
        since: Option<u64>,
    ) {
        if let Some(late) = self.l1_put(l1, key, value, ttl, since).await {
            self.check_late(l1, vec![late]).await;
        }
    }

    /// [`l1_keep`](Self::l1_keep) without the check of a late key: the key
    /// and its digest are returned for [`check_late`](Self::check_late), so
    /// that a batch checks its late keys in one read.
    pub(super) async fn l1_put(
        &self,
        l1: &A,
        key: &str,
        value: Arc<V>,
        ttl: Option<Duration>,
        since: Option<u64>,
    ) -> Option<(String, Option<u64>)> {
        // Nothing to note or check: the notes closed before the operation
        // began (no check since it began, and there is only one).
        let settled = |since| !self.inner.journal.is_open() && self.inner.guard.checks() == since;
        let Some(since) = since.filter(|&since| !settled(since)) else {
            let _ = l1.set(key, value, ttl).await;
            return None;
        };
        let _ = l1.set(key, value.clone(), ttl).await;
        let digest = || self.digest(&value);
        if self.inner.journal.note(key, digest) || self.inner.guard.checks() == since {
            return None;
        }
        Some((key.to_string(), self.digest(&value)))
    }

    /// Checks keys put in L1 by operations that began before the check and
    /// ended after it, in the background (without a Tokio runtime to run
    /// it, they leave L1: a miss is never wrong).
    pub(super) async fn check_late(&self, l1: &A, keys: Vec<(String, Option<u64>)>) {
        if keys.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                self.inner.journal.checks.fetch_add(1, Ordering::AcqRel);
                let inner = Arc::downgrade(&self.inner);
                drop(rt.spawn(Self::confirm_until_done(inner, keys)));
            }
            Err(_) => {
                for (key, _) in keys {
                    let _ = l1.delete(&key).await;
                }
            }
        }
    }

    /// Tracking now covers the namespace: each noted key is read from L2
    /// once, and its L1 entry kept only if L2 holds the same value.
    pub(super) async fn check_early_entries(inner: Weak<Inner<V, A, B>>) {
        let Some(cache) = inner.upgrade().map(|inner| Self { inner }) else {
            return;
        };
        let Some(early) = cache.inner.journal.close(|| cache.inner.guard.bump_checks()) else {
            return;
        };
        let keys = match early {
            Early::Full => {
                Arc::clone(&cache.inner)
                    .invalidate(None, InvalidatedBy::Tracking)
                    .await;
                Vec::new()
            }
            Early::Keys(keys) => keys,
        };
        drop(cache);
        Self::confirm_until_done(inner, keys).await;
    }

    /// Checks `keys` against L2; until L2 answers, the entries stay and the
    /// check is tried again every [`RETRY`], for as long as the cache lives.
    async fn confirm_until_done(inner: Weak<Inner<V, A, B>>, keys: Vec<(String, Option<u64>)>) {
        while let Some(cache) = inner.upgrade().map(|inner| Self { inner }) {
            if cache.confirm(&keys).await {
                cache.inner.journal.checks.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            drop(cache);
            tokio::time::sleep(RETRY).await;
        }
    }

    /// One try of the check on `keys`: `false` if L2 did not answer.
    async fn confirm(&self, keys: &[(String, Option<u64>)]) -> bool {
        if keys.is_empty() || self.inner.l1.is_none() {
            return true;
        }
        let names: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
        let Some((l2, permit)) = self.l2() else {
            return false;
        };
        let r = l2.get_many(&names, false).await;
        let Some(found) = self.settle(permit, "get_many", r).ok() else {
            return false;
        };
        for ((key, noted), found) in keys.iter().zip(found) {
            let held = found.and_then(|(bytes, _)| value_digest(&bytes));
            if noted.is_none() || held != *noted {
                Arc::clone(&self.inner)
                    .invalidate(Some(key.clone()), InvalidatedBy::Tracking)
                    .await;
            }
        }
        true
    }

    /// The digest of `value`'s encoding.
    fn digest(&self, value: &V) -> Option<u64> {
        self.inner.serializer.encode(value).ok().map(|b| digest(&b))
    }
}

/// The digest of the encoded value L2's `bytes` hold (inside a tagged
/// entry's envelope, if any).
fn value_digest(bytes: &[u8]) -> Option<u64> {
    match crate::tags::open(bytes) {
        Ok(None) => Some(digest(bytes)),
        Ok(Some(e)) => Some(digest(e.body)),
        Err(_) => None,
    }
}

/// 64 bits of SipHash (fixed keys): two encodings that differ share a
/// digest with a chance of about one in 2^64.
fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_close_once_and_report_what_came_before() {
        let j = Journal::new();
        assert!(!j.note("a", || None), "a closed journal notes nothing");
        assert!(j.close(|| panic!("nothing to close")).is_none());
        j.open();
        assert!(j.note("a", || Some(1)) && j.note("b", || Some(2)) && j.note("a", || Some(3)));
        let mut bumped = false;
        match j.close(|| bumped = true) {
            Some(Early::Keys(mut keys)) => {
                keys.sort();
                assert_eq!(
                    keys,
                    [("a".into(), Some(3)), ("b".into(), Some(2))],
                    "the last value noted"
                );
            }
            _ => panic!("the noted keys"),
        }
        assert!(bumped, "the count moves before the notes close");
        assert!(!j.is_open() && !j.note("c", || None), "closed after the check");
        assert!(j.close(|| panic!("closed already")).is_none());
    }

    #[test]
    fn past_the_cap_the_check_clears_instead() {
        let j = Journal::new();
        j.open();
        for i in 0..=CAP {
            assert!(j.note(&format!("k{i}"), || None));
        }
        assert!(j.note("one more", || None), "full still counts as noted");
        assert!(matches!(j.close(|| {}), Some(Early::Full)));
    }
}

#[cfg(all(test, feature = "l1"))]
mod cache_tests {
    use super::super::tests::{bytes_store, l1, settings, L1Only};
    use super::*;

    async fn check(c: &L1Only) {
        L1Only::check_early_entries(Arc::downgrade(&c.inner)).await;
    }

    fn tracked() -> L1Only {
        let c = L1Only::new(Some(l1(60)), Some(bytes_store()), settings()).unwrap();
        c.note_until_covered();
        c
    }

    async fn in_l1(c: &L1Only, key: &str) -> Option<String> {
        let l1 = c.inner.l1.as_ref().unwrap();
        l1.get_with_ttl(key).await.unwrap().map(|(v, _)| (*v).clone())
    }

    /// What L2 holds for `key`, changed behind the cache's back (a change
    /// no notification announced).
    async fn put_l2(c: &L1Only, key: &str, value: &str) {
        let bytes = serde_json::to_vec(value).unwrap();
        c.inner.l2.as_ref().unwrap().set(key, bytes, None).await.unwrap();
    }

    #[tokio::test]
    async fn entries_taken_in_before_coverage_stay_only_if_l2_holds_them() {
        let c = tracked();
        put_l2(&c, "read", "old").await;
        put_l2(&c, "same", "same").await;
        assert_eq!(c.get("read").await.as_deref().map(String::as_str), Some("old"));
        assert_eq!(c.get("same").await.as_deref().map(String::as_str), Some("same"));
        c.set("written", "mine".into()).await;
        c.set("kept", "mine too".into()).await;
        c.set_with_tags("tagged", "with tags".into(), &["t"]).await;
        put_l2(&c, "read", "new").await;
        put_l2(&c, "written", "theirs").await;

        let hits = c.get_stats().await.l1.unwrap().hits;
        check(&c).await;
        assert_eq!(
            c.get_stats().await.l1.unwrap().hits,
            hits,
            "the check is no L1 hit"
        );
        assert_eq!(in_l1(&c, "read").await, None, "changed in L2: evicted");
        assert_eq!(in_l1(&c, "written").await, None, "changed in L2: evicted");
        assert_eq!(in_l1(&c, "same").await.as_deref(), Some("same"));
        assert_eq!(in_l1(&c, "kept").await.as_deref(), Some("mine too"));
        assert_eq!(in_l1(&c, "tagged").await.as_deref(), Some("with tags"));
        assert_eq!(c.get("read").await.as_deref().map(String::as_str), Some("new"));

        // Closed: later entries are not noted, and a second check has nothing to do.
        assert!(!c.inner.journal.is_open() && c.early_since().is_none());
        put_l2(&c, "same", "changed later").await;
        check(&c).await;
        assert_eq!(in_l1(&c, "same").await.as_deref(), Some("same"));
    }

    #[tokio::test]
    async fn an_entry_from_before_the_check_put_in_after_it_is_checked_on_its_own() {
        let c = tracked();
        let l1 = c.inner.l1.as_ref().unwrap();
        let read_began = c.inner.guard.checks();
        let write_began = c.early_since();
        assert!(write_began.is_some());
        check(&c).await;
        assert!(!c.inner.journal.is_pending());

        // Each key checked on its own; kept where L2 holds the value.
        put_l2(&c, "mine", "v").await;
        put_l2(&c, "read", "v").await;
        put_l2(&c, "theirs", "changed").await;
        for (key, since) in [
            ("mine", write_began),
            ("read", Some(read_began)),
            ("theirs", write_began),
        ] {
            c.l1_keep(l1, key, Arc::new("v".into()), None, since).await;
        }
        assert!(c.inner.journal.is_pending(), "three checks under way");
        for _ in 0..100 {
            if !c.inner.journal.is_pending() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!c.inner.journal.is_pending());
        assert_eq!(in_l1(&c, "mine").await.as_deref(), Some("v"));
        assert_eq!(in_l1(&c, "read").await.as_deref(), Some("v"));
        assert_eq!(in_l1(&c, "theirs").await, None);

        // Begun after the check: kept as it is.
        let since = c.early_since();
        c.l1_keep(l1, "late", Arc::new("v".into()), None, since).await;
        assert_eq!(in_l1(&c, "late").await.as_deref(), Some("v"));
        assert!(!c.inner.journal.is_pending());
    }

    #[tokio::test]
    async fn while_l2_does_not_answer_the_entries_stay_and_the_check_waits() {
        let c = tracked();
        c.set("a", "1".into()).await;
        put_l2(&c, "a", "2").await;
        for _ in 0..100 {
            c.inner.breaker.record_failure();
        }
        assert!(c.inner.breaker.is_open());
        let checking = tokio::spawn(L1Only::check_early_entries(Arc::downgrade(&c.inner)));
        tokio::time::sleep(RETRY * 2).await;
        assert_eq!(in_l1(&c, "a").await.as_deref(), Some("1"), "L1 serves meanwhile");
        assert!(c.inner.journal.is_pending() && !checking.is_finished());
        c.inner.breaker.reset();
        checking.await.unwrap();
        assert!(!c.inner.journal.is_pending());
        assert_eq!(in_l1(&c, "a").await, None, "checked once L2 answered");
    }

    #[tokio::test]
    async fn a_dropped_cache_ends_its_check() {
        let c = tracked();
        c.set("a", "1".into()).await;
        for _ in 0..100 {
            c.inner.breaker.record_failure();
        }
        let checking = tokio::spawn(L1Only::check_early_entries(Arc::downgrade(&c.inner)));
        tokio::time::sleep(RETRY).await;
        drop(c);
        tokio::time::timeout(RETRY * 4, checking).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_untracked_cache_notes_nothing() {
        let c = L1Only::new(Some(l1(60)), Some(bytes_store()), settings()).unwrap();
        assert!(c.early_since().is_none());
        c.set("a", "1".into()).await;
        put_l2(&c, "a", "2").await;
        check(&c).await;
        assert_eq!(in_l1(&c, "a").await.as_deref(), Some("1"), "nothing checked");
    }
}
