//! What this process knows of the namespace's invalidation markers
//! ([`Markers`]), how an entry is judged against them ([`EntryState`]), and
//! which L1 keys carry which tag ([`TagIndex`]).
//!
//! The table is loaded from L2 before the first L2 read needs it, kept
//! current by the backplane (every instance's markers arrive as messages)
//! and loaded again whenever messages may have been missed (the backplane
//! reconnected or overflowed) — or, with no backplane, when it is more than
//! [`UNSHARED_REFRESH`] old. Judging an entry takes no I/O.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use crate::clock::now_ms;
use crate::tags::{judge, EntryState, Mark, Scope};

/// How long a marker table loaded from L2 is trusted when no backplane
/// brings other instances' markers.
pub(crate) const UNSHARED_REFRESH: Duration = Duration::from_secs(1);

/// `[removed, expired]` stamps.
type Stamps = [u64; 2];

pub(crate) struct Markers {
    /// Whether any marker is known: while not, every entry is live and
    /// judging costs one load.
    any: AtomicBool,
    tags: RwLock<HashMap<String, Stamps>>,
    all: [AtomicU64; 2],
    /// `now_ms` of the last load from L2 (0: never, or to be done again).
    loaded_ms: AtomicU64,
    lifetime: Duration,
}

impl Markers {
    pub(crate) fn new(lifetime: Duration) -> Self {
        Self {
            any: AtomicBool::new(false),
            tags: RwLock::default(),
            all: [AtomicU64::new(0), AtomicU64::new(0)],
            loaded_ms: AtomicU64::new(0),
            lifetime,
        }
    }

    /// How long markers are kept, and the longest a tagged entry lives.
    pub(crate) fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Takes `mark` into the table (an older one than known changes nothing).
    pub(crate) fn apply(&self, mark: &Mark) {
        match &mark.scope {
            Scope::All => {
                self.all[mark.kind.slot()].fetch_max(mark.at_us, SeqCst);
            }
            Scope::Tag(tag) => {
                let mut tags = self.tags.write().unwrap_or_else(|p| p.into_inner());
                let s = &mut tags.entry(tag.clone()).or_default()[mark.kind.slot()];
                *s = (*s).max(mark.at_us);
            }
        }
        self.any.store(true, SeqCst);
    }

    /// Whether any marker is known.
    pub(crate) fn any(&self) -> bool {
        self.any.load(Relaxed)
    }

    /// Whether a namespace-wide marker is younger than the marker lifetime:
    /// writes then carry their stamp, so that readers can tell them from the
    /// entries it covers. Reads no clock while there is no such marker.
    pub(crate) fn all_live(&self) -> bool {
        self.any.load(Relaxed) && judge(None, self.all_stamps(), self.lifetime) != EntryState::Live
    }

    fn all_stamps(&self) -> Stamps {
        [self.all[0].load(SeqCst), self.all[1].load(SeqCst)]
    }

    /// What an entry written at `written_us` (`None`: untagged, written
    /// before any namespace-wide marker it might meet) carrying `tags` is,
    /// by the one rule ([`judge`]).
    pub(crate) fn judge(&self, written_us: Option<u64>, tags: &[&str]) -> EntryState {
        if !self.any.load(SeqCst) {
            return EntryState::Live;
        }
        let mut latest = self.all_stamps();
        if written_us.is_some() && !tags.is_empty() {
            let known = self.tags.read().unwrap_or_else(|p| p.into_inner());
            for t in tags {
                if let Some(s) = known.get(*t) {
                    latest = [latest[0].max(s[0]), latest[1].max(s[1])];
                }
            }
        }
        judge(written_us, latest, self.lifetime)
    }

    /// Whether the table must be (re)loaded from L2 before judging an L2 entry.
    #[inline]
    pub(crate) fn needs_load(&self, shared: bool) -> bool {
        match self.loaded_ms.load(Relaxed) {
            0 => true,
            at => !shared && now_ms().saturating_sub(at) > UNSHARED_REFRESH.as_millis() as u64,
        }
    }

    /// Takes the markers read from L2 (unknown fields are skipped).
    pub(crate) fn loaded(&self, fields: impl IntoIterator<Item = (String, u64)>) {
        for (field, at) in fields {
            if let Some(mark) = Mark::from_field(&field, at) {
                self.apply(&mark);
            }
        }
        self.loaded_ms.store(now_ms().max(1), Relaxed);
    }

    /// Messages may have been missed: load again before the next L2 read.
    pub(crate) fn forget_loaded(&self) {
        self.loaded_ms.store(0, Relaxed);
    }

    /// How many markers are known (tags, plus one per namespace-wide kind).
    pub(crate) fn count(&self) -> u64 {
        let tags = self.tags.read().unwrap_or_else(|p| p.into_inner()).len() as u64;
        tags + self.all.iter().filter(|a| a.load(Relaxed) > 0).count() as u64
    }
}

/// Which L1 keys were stored with which tag, so that a tag's invalidation
/// reaches L1 without looking at every entry. Only tagged writes touch it.
/// A key evicted from L1 may stay listed (its invalidation is then a no-op);
/// past [`TagIndex::MAX_PAIRS`] listings, the keys L1 no longer holds are
/// dropped, and only if that is not enough is the index dropped and L1
/// cleared (counted), so it cannot grow without bound.
pub(crate) struct TagIndex {
    state: Mutex<IndexState>,
    pairs: AtomicU64,
    pruning: AtomicBool,
}

#[derive(Default)]
struct IndexState {
    by_tag: HashMap<String, HashSet<String>>,
    /// While a prune runs: keys listed since it took its snapshot (they may
    /// be back in L1, so the prune must not forget them).
    relisted: Option<HashSet<String>>,
}

impl TagIndex {
    pub(crate) const MAX_PAIRS: u64 = 1 << 20;

    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::default(),
            pairs: AtomicU64::new(0),
            pruning: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IndexState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists `key` under each of `tags`; `false` when the index is full
    /// (the caller prunes it, or clears L1 and the index).
    pub(crate) fn add<S: AsRef<str>>(&self, key: &str, tags: &[S]) -> bool {
        let mut state = self.lock();
        for t in tags {
            let listed = state.by_tag.entry(t.as_ref().to_string()).or_default();
            if listed.insert(key.to_string()) {
                self.pairs.fetch_add(1, Relaxed);
            }
        }
        if let Some(relisted) = &mut state.relisted {
            relisted.insert(key.to_string());
        }
        self.pairs.load(Relaxed) <= Self::MAX_PAIRS
    }

    /// The keys listed under `tag`, which is no longer listed.
    pub(crate) fn take(&self, tag: &str) -> Vec<String> {
        let keys = self.lock().by_tag.remove(tag).unwrap_or_default();
        self.pairs.fetch_sub(keys.len() as u64, Relaxed);
        keys.into_iter().collect()
    }

    /// The keys listed under `tag`, which stay listed (an expired entry
    /// stays in L1 as a fallback, and a later removal must still reach it).
    pub(crate) fn keys(&self, tag: &str) -> Vec<String> {
        self.lock()
            .by_tag
            .get(tag)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Starts a prune: every listed key, once, and the prune to end (with
    /// [`Prune::end`]); `None` when another prune is running.
    pub(crate) fn begin_prune(&self) -> Option<(Vec<String>, Prune<'_>)> {
        if self.pruning.swap(true, SeqCst) {
            return None;
        }
        let mut state = self.lock();
        state.relisted = Some(HashSet::new());
        let keys: HashSet<&String> = state.by_tag.values().flatten().collect();
        Some((keys.into_iter().cloned().collect(), Prune(self)))
    }

    pub(crate) fn clear(&self) {
        self.lock().by_tag.clear();
        self.pairs.store(0, Relaxed);
    }
}

/// A prune of the tag index in progress; dropped without [`end`](Self::end)
/// (its task cancelled), it forgets nothing and lets the next one start.
pub(crate) struct Prune<'a>(&'a TagIndex);

impl Prune<'_> {
    /// Stops listing `gone` (keys L1 no longer holds), except those listed
    /// again meanwhile. `true` if the index is back well within bounds (three
    /// quarters, so that pruning is not redone at every write).
    pub(crate) fn end(self, gone: &HashSet<String>) -> bool {
        let index = self.0;
        let mut state = index.lock();
        let relisted = state.relisted.take().unwrap_or_default();
        let mut pairs = 0;
        state.by_tag.retain(|_, keys| {
            keys.retain(|k| !gone.contains(k) || relisted.contains(k));
            pairs += keys.len() as u64;
            !keys.is_empty()
        });
        index.pairs.store(pairs, Relaxed);
        pairs <= TagIndex::MAX_PAIRS / 4 * 3
    }
}

impl Drop for Prune<'_> {
    fn drop(&mut self) {
        self.0.lock().relisted = None;
        self.0.pruning.store(false, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::stamp_us;
    use crate::tags::MarkKind;

    fn mark(scope: Scope, kind: MarkKind, at_us: u64) -> Mark {
        Mark { scope, kind, at_us }
    }

    #[test]
    fn entries_written_before_a_marker_are_covered_and_later_ones_are_not() {
        let m = Markers::new(Duration::from_secs(3600));
        assert_eq!(m.judge(Some(10), &["a"]), EntryState::Live);
        m.apply(&mark(Scope::Tag("a".into()), MarkKind::Remove, 100));
        m.apply(&mark(Scope::Tag("a".into()), MarkKind::Remove, 50));
        assert_eq!(m.judge(Some(99), &["b", "a"]), EntryState::Removed);
        assert_eq!(
            m.judge(Some(100), &["a"]),
            EntryState::Removed,
            "same stamp: covered"
        );
        assert_eq!(
            m.judge(Some(101), &["a"]),
            EntryState::Live,
            "an older marker changes nothing"
        );
        assert_eq!(m.judge(Some(99), &["b"]), EntryState::Live, "another tag");
        m.apply(&mark(Scope::Tag("b".into()), MarkKind::Expire, 200));
        assert_eq!(m.judge(Some(150), &["b"]), EntryState::Stale);
        assert_eq!(
            m.judge(Some(50), &["a", "b"]),
            EntryState::Removed,
            "removal beats expiry"
        );
        assert_eq!(m.count(), 2);
    }

    #[test]
    fn namespace_markers_cover_every_entry_and_plain_ones_while_alive() {
        let m = Markers::new(Duration::from_secs(3600));
        assert!(!m.all_live());
        assert_eq!(m.judge(None, &[]), EntryState::Live);
        let now = stamp_us();
        m.apply(&mark(Scope::All, MarkKind::Expire, now));
        assert!(m.all_live());
        assert_eq!(m.judge(None, &[]), EntryState::Stale);
        assert_eq!(m.judge(Some(now - 1), &[]), EntryState::Stale);
        assert_eq!(m.judge(Some(stamp_us()), &[]), EntryState::Live);
        m.apply(&mark(Scope::All, MarkKind::Remove, stamp_us()));
        assert_eq!(m.judge(None, &[]), EntryState::Removed);
        // A namespace marker older than the lifetime no longer covers plain entries.
        let old = Markers::new(Duration::from_secs(1));
        old.apply(&mark(Scope::All, MarkKind::Remove, now - 5_000_000));
        assert!(!old.all_live());
        assert_eq!(old.judge(None, &[]), EntryState::Live);
    }

    #[test]
    fn loading_takes_known_fields_and_is_redone_when_forgotten() {
        let m = Markers::new(Duration::from_secs(3600));
        assert!(m.needs_load(true));
        m.loaded([("r:x".to_string(), 7), ("bogus".to_string(), 9)]);
        assert!(!m.needs_load(true));
        assert_eq!(m.judge(Some(6), &["x"]), EntryState::Removed);
        assert_eq!(m.count(), 1);
        m.forget_loaded();
        assert!(m.needs_load(true));
    }

    #[test]
    fn the_tag_index_lists_hands_over_and_prunes_keys() {
        let idx = TagIndex::new();
        assert!(idx.add("k1", &["a", "b"]));
        assert!(idx.add("k2", &["a"]));
        assert!(idx.add("k2", &["a"]), "listed once");
        let mut keys = idx.take("a");
        keys.sort();
        assert_eq!(keys, ["k1", "k2"]);
        assert!(idx.take("a").is_empty());
        assert_eq!(idx.keys("b"), ["k1"]);
        assert_eq!(idx.take("b"), ["k1"], "still listed after `keys`");
        assert_eq!(idx.pairs.load(Relaxed), 0);
        idx.add("k1", &["a", "b"]);
        idx.add("k2", &["b"]);
        idx.add("k3", &["b"]);
        let (mut listed, prune) = idx.begin_prune().unwrap();
        listed.sort();
        assert_eq!(listed, ["k1", "k2", "k3"]);
        assert!(idx.begin_prune().is_none(), "one prune at a time");
        idx.add("k3", &["b"]); // written again while the prune looked at L1
        let gone = HashSet::from(["k1".to_string(), "k3".to_string()]);
        assert!(prune.end(&gone));
        let mut b = idx.take("b");
        b.sort();
        assert_eq!(
            (idx.take("a"), b),
            (vec![], vec!["k2".to_string(), "k3".to_string()])
        );
        let (_, cancelled) = idx.begin_prune().expect("the next prune may start");
        drop(cancelled);
        assert!(
            idx.begin_prune().is_some(),
            "a cancelled prune does not block the next"
        );
    }
}
