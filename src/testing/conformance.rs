//! The conformance suite: the rules every [`CacheBackend`] keeps, checked
//! against a backend you hand it.
//!
//! The cache relies on these rules and never looks inside a backend, so a
//! backend that breaks one breaks the cache in ways that are hard to trace
//! (a `clear` that reaches another namespace, two winners of a
//! `set_if_not_exist`, a value loaded before a write stored over it). Run the
//! suite in your backend's tests:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use resilient_cache::testing::conformance::{self, Options};
//! # async fn your_backend_test() {
//! # let my_backend = resilient_cache::testing::MemoryL2::new();
//! let report = conformance::check(Arc::new(my_backend), Options::default(), |i| i.to_be_bytes().to_vec()).await;
//! report.assert_ok(); // panics with every broken rule, each with what was seen
//! # }
//! ```
//!
//! The suite **clears the backend** before each rule: give it a namespace of
//! its own. Each rule runs in its own task, so a panicking backend fails that
//! rule (a backend must return errors, never panic) and the others still run.
//! A backend whose TTLs are bounded by its own (an L1) must allow at least
//! 10 s.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::CacheBackend;

/// What the suite may expect of the backend.
#[derive(Debug, Clone)]
pub struct Options {
    /// Whether entries expire (per-call and default TTLs, `get_ttl`). `false`
    /// for a backend without expiry (the `lru` L1): then `get_ttl` must
    /// answer `None`.
    pub expires: bool,
    /// How many tasks race for one key in the `set_if_not_exist` rule.
    pub racers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            expires: true,
            racers: 16,
        }
    }
}

/// A rule the backend broke, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The rule's name (see [`RULES`]).
    pub rule: &'static str,
    /// What the backend did, and what the rule wants.
    pub message: String,
}

/// The outcome of [`check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Rules kept.
    pub passed: Vec<&'static str>,
    /// Rules broken.
    pub failed: Vec<Failure>,
}

impl Report {
    /// Whether every rule was kept.
    pub fn is_ok(&self) -> bool {
        self.failed.is_empty()
    }

    /// Panics, listing every broken rule, unless every rule was kept.
    #[track_caller]
    pub fn assert_ok(&self) {
        assert!(self.is_ok(), "{self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conformance: {} rules kept, {} broken",
            self.passed.len(),
            self.failed.len()
        )?;
        for failure in &self.failed {
            write!(f, "\n  - {}: {}", failure.rule, failure.message)?;
        }
        Ok(())
    }
}

/// Every rule, in the order [`check`] runs them.
pub const RULES: &[&str] = &[
    "round_trip",
    "caller_keys",
    "literal_list_keys",
    "delete",
    "clear",
    "atomic_set_if_not_exist",
    "ttl",
    "get_with_ttl",
    "leases",
    "markers",
    "expire_in",
    "errors_not_panics",
    "stats",
];

type Outcome = Result<(), String>;

/// How much longer than given `get_with_ttl_now` may report an entry's time
/// left: the lag of a clock kept by a ticker thread.
const NOW_CLOCK_LAG: Duration = Duration::from_millis(50);

/// Fails the rule with `message` unless `ok`.
fn ensure(ok: bool, message: impl FnOnce() -> String) -> Outcome {
    if ok {
        Ok(())
    } else {
        Err(message())
    }
}

/// A backend call that must succeed.
fn call<T, E: fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, String> {
    r.map_err(|e| format!("{what} failed: {e}"))
}

/// Runs every rule against `backend`, which it clears before each; `value(i)`
/// makes the `i`-th distinct test value.
pub async fn check<B, F>(backend: Arc<B>, options: Options, value: F) -> Report
where
    B: CacheBackend,
    B::Value: PartialEq + fmt::Debug,
    F: Fn(u32) -> B::Value + Send + Sync + 'static,
{
    let value = Arc::new(value);
    let mut report = Report::default();
    for &rule in RULES {
        let (b, v, o) = (backend.clone(), value.clone(), options.clone());
        let task = tokio::spawn(async move {
            call("clear", b.clear().await)?;
            run_rule(rule, b, o, move |i| v(i)).await
        });
        let outcome = match task.await {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => Err(format!(
                "the backend panicked ({}); a backend returns errors, never panics",
                panic_message(e.into_panic())
            )),
            Err(e) => Err(format!("the rule's task ended: {e}")),
        };
        match outcome {
            Ok(()) => report.passed.push(rule),
            Err(message) => report.failed.push(Failure { rule, message }),
        }
    }
    let _ = backend.clear().await;
    report
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

async fn run_rule<B, F>(rule: &str, b: Arc<B>, o: Options, v: F) -> Outcome
where
    B: CacheBackend,
    B::Value: PartialEq + fmt::Debug,
    F: Fn(u32) -> B::Value + Send + Sync + 'static,
{
    match rule {
        "round_trip" => round_trip(&*b, &v).await,
        "caller_keys" => caller_keys(&*b, &v).await,
        "literal_list_keys" => literal_list_keys(&*b, &v).await,
        "delete" => delete(&*b, &v).await,
        "clear" => clear(&*b, &v).await,
        "atomic_set_if_not_exist" => atomic_set_if_not_exist(b, &o, v).await,
        "ttl" => ttl(&*b, &o, &v).await,
        "get_with_ttl" => get_with_ttl(&*b, &o, &v).await,
        "leases" => leases(&*b, &v).await,
        "markers" => markers(&*b).await,
        "expire_in" => expire_in(&*b, &o, &v).await,
        "errors_not_panics" => errors_not_panics(&*b, &v).await,
        "stats" => stats(&*b).await,
        other => Err(format!("unknown rule {other}")),
    }
}

async fn round_trip<B: CacheBackend>(b: &B, v: &impl Fn(u32) -> B::Value) -> Outcome
where
    B::Value: PartialEq + fmt::Debug,
{
    let absent = call("get", b.get("absent").await)?;
    ensure(absent.is_none(), || {
        format!("get of an absent key returned {absent:?}")
    })?;
    call("set", b.set("k", v(1), None).await)?;
    let got = call("get", b.get("k").await)?;
    ensure(got.as_ref() == Some(&v(1)), || {
        format!("get after set returned {got:?}, not {:?}", v(1))
    })?;
    call("set", b.set("k", v(2), None).await)?;
    let got = call("get", b.get("k").await)?;
    ensure(got.as_ref() == Some(&v(2)), || {
        format!(
            "a second set did not replace the value: get returned {got:?}, not {:?}",
            v(2)
        )
    })?;
    ensure(call("exists", b.exists("k").await)?, || {
        "exists is false for a stored key".into()
    })?;
    ensure(!call("exists", b.exists("absent").await)?, || {
        "exists is true for an absent key".into()
    })
}

async fn caller_keys<B: CacheBackend>(b: &B, v: &impl Fn(u32) -> B::Value) -> Outcome {
    let keys = ["a", "b:c", "ünïcode", "with space", "x:y:z"];
    for (i, k) in keys.iter().enumerate() {
        call("set", b.set(k, v(i as u32), None).await)?;
    }
    let listed: BTreeSet<String> = call("list_keys", b.list_keys(None).await)?.into_iter().collect();
    let wanted: BTreeSet<String> = keys.iter().map(|k| k.to_string()).collect();
    ensure(listed == wanted, || {
        format!(
            "list_keys(None) returned {listed:?} for the keys {wanted:?}: keys are the caller's, \
             without the backend's namespace"
        )
    })?;
    let size = call("get_size", b.get_size().await)?;
    ensure(size == keys.len() as u64, || {
        format!("get_size is {size} with {} keys stored", keys.len())
    })
}

async fn literal_list_keys<B: CacheBackend>(b: &B, v: &impl Fn(u32) -> B::Value) -> Outcome {
    let keys = ["a*b", "aXb", "a?c", "aYc", "a[1]", "a1", "a\\d", "ad"];
    for (i, k) in keys.iter().enumerate() {
        call("set", b.set(k, v(i as u32), None).await)?;
    }
    for (prefix, wanted) in [("a*", "a*b"), ("a?", "a?c"), ("a[", "a[1]"), ("a\\", "a\\d")] {
        let mut listed = call("list_keys", b.list_keys(Some(prefix)).await)?;
        listed.sort();
        ensure(listed == [wanted], || {
            format!(
                "list_keys(Some({prefix:?})) returned {listed:?}, not [{wanted:?}]: prefixes match \
                 literally (escape glob characters for a server that matches patterns)"
            )
        })?;
    }
    Ok(())
}

async fn delete<B: CacheBackend>(b: &B, v: &impl Fn(u32) -> B::Value) -> Outcome
where
    B::Value: fmt::Debug,
{
    call("set", b.set("d", v(1), None).await)?;
    ensure(call("delete", b.delete("d").await)?, || {
        "delete of a stored key returned false (it must say the key was there)".into()
    })?;
    ensure(!call("delete", b.delete("d").await)?, || {
        "delete of an absent key returned true".into()
    })?;
    let got = call("get", b.get("d").await)?;
    ensure(got.is_none(), || format!("get after delete returned {got:?}"))
}

async fn clear<B: CacheBackend>(b: &B, v: &impl Fn(u32) -> B::Value) -> Outcome {
    for i in 0..3 {
        call("set", b.set(&format!("c{i}"), v(i), None).await)?;
    }
    let removed = call("clear", b.clear().await)?;
    ensure(removed == 3, || format!("clear of 3 keys returned {removed}"))?;
    let left = call("list_keys", b.list_keys(None).await)?;
    ensure(left.is_empty(), || format!("keys left after clear: {left:?}"))?;
    let size = call("get_size", b.get_size().await)?;
    ensure(size == 0, || format!("get_size after clear is {size}"))
}

async fn atomic_set_if_not_exist<B, F>(b: Arc<B>, o: &Options, v: F) -> Outcome
where
    B: CacheBackend,
    B::Value: PartialEq + fmt::Debug,
    F: Fn(u32) -> B::Value + Send + Sync + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(o.racers));
    let mut racers = Vec::new();
    for i in 0..o.racers as u32 {
        let (b, barrier, value) = (b.clone(), barrier.clone(), v(100 + i));
        racers.push(tokio::spawn(async move {
            barrier.wait().await;
            b.set_if_not_exist("nx", value, None).await.map(|won| (i, won))
        }));
    }
    let mut winners = Vec::new();
    for r in racers {
        let (i, won) = call("set_if_not_exist", r.await.map_err(|e| e.to_string())?)?;
        if won {
            winners.push(i);
        }
    }
    ensure(winners.len() == 1, || {
        format!(
            "{} of {} racing set_if_not_exist calls won ({winners:?}): exactly one may \
             (one atomic step: a server command, or a decision under one lock)",
            winners.len(),
            o.racers
        )
    })?;
    let got = call("get", b.get("nx").await)?;
    let wanted = v(100 + winners[0]);
    ensure(got.as_ref() == Some(&wanted), || {
        format!("the winner stored {wanted:?}, but get returns {got:?}")
    })?;
    ensure(
        !call("set_if_not_exist", b.set_if_not_exist("nx", v(1), None).await)?,
        || "set_if_not_exist on a present key returned true".into(),
    )
}

async fn ttl<B: CacheBackend>(b: &B, o: &Options, v: &impl Fn(u32) -> B::Value) -> Outcome
where
    B::Value: fmt::Debug,
{
    let absent = call("get_ttl", b.get_ttl("absent").await)?;
    ensure(absent.is_none(), || {
        format!("get_ttl of an absent key is {absent:?}")
    })?;
    call("set", b.set("t", v(1), Some(Duration::from_secs(10))).await)?;
    let t = call("get_ttl", b.get_ttl("t").await)?;
    if !o.expires {
        return ensure(t.is_none(), || {
            format!("a backend without expiry answered get_ttl {t:?}: it must be None")
        });
    }
    ensure(ttl_fits(o, t, Duration::from_secs(10)), || {
        format!("get_ttl after a 10 s set is {t:?}: the real remaining time, in (0, 10 s]")
    })?;
    call("set", b.set("default", v(2), None).await)?;
    let d = call("get_ttl", b.get_ttl("default").await)?;
    ensure(d.is_some(), || {
        "a set with ttl None kept the key without expiry: None means the configured default TTL".into()
    })?;
    call(
        "set",
        b.set("short", v(3), Some(Duration::from_millis(200))).await,
    )?;
    let gone = eventually(Duration::from_secs(5), || async {
        matches!(b.get("short").await, Ok(None))
    })
    .await;
    ensure(gone, || {
        "a key set with a 200 ms TTL was still there after 5 s".into()
    })?;
    let later = call("get_ttl", b.get_ttl("t").await)?;
    ensure(later.is_some_and(|l| Some(l) < t), || {
        format!("get_ttl did not decrease over time ({t:?}, then {later:?}): it is the real remaining time")
    })
}

/// Whether `t` is a time left a backend may report for an entry given at
/// most `limit`: in (0, limit] when entries expire, `None` when they do not.
fn ttl_fits(o: &Options, t: Option<Duration>, limit: Duration) -> bool {
    if o.expires {
        t.is_some_and(|t| t > Duration::ZERO && t <= limit)
    } else {
        t.is_none()
    }
}

/// Polls `ok` until it holds or `limit` passes.
async fn eventually<Fut: Future<Output = bool>>(limit: Duration, mut ok: impl FnMut() -> Fut) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if ok().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn get_with_ttl<B: CacheBackend>(b: &B, o: &Options, v: &impl Fn(u32) -> B::Value) -> Outcome
where
    B::Value: PartialEq + fmt::Debug,
{
    let absent = call("get_with_ttl", b.get_with_ttl("absent").await)?;
    ensure(absent.is_none(), || {
        format!("get_with_ttl of an absent key returned {absent:?}")
    })?;
    call("set", b.set("w", v(7), Some(Duration::from_secs(10))).await)?;
    let got = call("get_with_ttl", b.get_with_ttl("w").await)?;
    let ten = Duration::from_secs(10);
    ensure(
        matches!(&got, Some((value, t)) if *value == v(7) && ttl_fits(o, *t, ten)),
        || {
            format!(
                "get_with_ttl returned {got:?}: the value and its real remaining TTL, as get and get_ttl say"
            )
        },
    )?;
    if let Some(now) = b.get_with_ttl_now("w") {
        // The answer without I/O may read a clock that lags by a tick or two
        // (the built-in L1 does, to keep a hit to one clock load).
        ensure(
            matches!(&now, Some((value, t)) if *value == v(7) && ttl_fits(o, *t, ten + NOW_CLOCK_LAG)),
            || format!("get_with_ttl_now returned {now:?}, not what get_with_ttl says"),
        )?;
    }
    Ok(())
}

/// Markers are optional; a backend that keeps them keeps the latest stamp
/// of each field, and one that does not says so on both methods.
async fn markers<B: CacheBackend>(b: &B) -> Outcome {
    // A field of its own: markers outlive `clear` (they cover only older entries).
    let field = format!("r:conformance-{}", std::process::id());
    let keep = Duration::from_secs(3600);
    let base = 1_000_000_000_000_000 + u64::from(std::process::id());
    let kept = call("put_marker", b.put_marker(&field, base + 5, keep).await)?;
    let loaded = call("load_markers", b.load_markers().await)?;
    if !kept {
        return ensure(loaded.is_none(), || {
            format!("put_marker said markers are not kept, but load_markers returned {loaded:?}")
        });
    }
    let stamp = |loaded: Option<crate::backend::MarkerFields>| {
        loaded.and_then(|fields| fields.into_iter().find(|(f, _)| *f == field).map(|(_, at)| at))
    };
    let at = stamp(loaded);
    ensure(at.is_some_and(|at| at >= base + 5), || {
        format!("after put_marker({field}, {}), load_markers has {at:?}", base + 5)
    })?;
    call("put_marker", b.put_marker(&field, base + 3, keep).await)?;
    let at = stamp(call("load_markers", b.load_markers().await)?);
    ensure(at.is_some_and(|at| at >= base + 5), || {
        format!("an older stamp replaced a newer one: {at:?}")
    })?;
    call(
        "put_marker",
        b.put_marker(&field, base + 9_000_000_000, keep).await,
    )?;
    let at = stamp(call("load_markers", b.load_markers().await)?);
    ensure(at == Some(base + 9_000_000_000), || {
        format!("a newer stamp was not kept: {at:?}")
    })
}

/// `expire_in` shortens a key's life and says whether the key exists.
async fn expire_in<B: CacheBackend>(b: &B, o: &Options, v: &impl Fn(u32) -> B::Value) -> Outcome
where
    B::Value: PartialEq + fmt::Debug,
{
    call("set", b.set("k", v(1), Some(Duration::from_secs(600))).await)?;
    let existed = call("expire_in", b.expire_in("k", Duration::from_secs(5)).await)?;
    ensure(existed, || "expire_in of a present key returned false".into())?;
    let left = call("get_ttl", b.get_ttl("k").await)?;
    ensure(
        !o.expires || left.is_some_and(|t| t <= Duration::from_secs(5) + NOW_CLOCK_LAG),
        || format!("after expire_in(5 s), get_ttl is {left:?}"),
    )?;
    let value = call("get", b.get("k").await)?;
    ensure(value == Some(v(1)), || {
        format!("expire_in changed the value: {value:?}")
    })?;
    let absent = call("expire_in", b.expire_in("absent", Duration::from_secs(5)).await)?;
    ensure(!absent, || "expire_in of an absent key returned true".into())
}

async fn leases<B: CacheBackend>(b: &B, v: &impl Fn(u32) -> B::Value) -> Outcome
where
    B::Value: PartialEq + fmt::Debug,
{
    let hold = Duration::from_secs(5);
    let Some(first) = call("lease", b.lease("l", 1, hold, true).await)? else {
        return Ok(()); // no leases: loads are coordinated in-process only
    };
    ensure(first, || "an exclusive lease of a free key was refused".into())?;
    let second = call("lease", b.lease("l", 2, hold, true).await)?;
    ensure(second == Some(false), || {
        format!("a second exclusive lease of a held key returned {second:?}, not Some(false)")
    })?;
    let wrong = call(
        "store_if_leased",
        b.store_if_leased("l", 2, v(1), None, false).await,
    )?;
    ensure(wrong == Some(false), || {
        format!("store_if_leased with a token that does not hold the lease returned {wrong:?}")
    })?;
    let right = call(
        "store_if_leased",
        b.store_if_leased("l", 1, v(1), None, false).await,
    )?;
    ensure(right == Some(true), || {
        format!("store_if_leased by the lease's holder returned {right:?}, not Some(true)")
    })?;
    let got = call("get", b.get("l").await)?;
    ensure(got.as_ref() == Some(&v(1)), || {
        format!("the leased store is not readable: get returned {got:?}")
    })?;
    let writes = [
        (3, "set"),
        (4, "delete"),
        (5, "clear"),
        (10, "set_many"),
        (11, "delete_many"),
    ];
    for (token, write) in writes {
        call("lease", b.lease("l", token, hold, false).await)?;
        match write {
            "set" => call("set", b.set("l", v(2), None).await)?,
            "delete" => {
                call("delete", b.delete("l").await)?;
            }
            "set_many" => call(
                "set_many",
                b.set_many(vec![("l2", v(4), None), ("l", v(2), None)]).await,
            )?,
            "delete_many" => {
                call("delete_many", b.delete_many(&["l2", "l"]).await)?;
            }
            _ => {
                call("clear", b.clear().await)?;
            }
        }
        let stored = call(
            "store_if_leased",
            b.store_if_leased("l", token, v(9), None, false).await,
        )?;
        ensure(stored == Some(false), || {
            format!(
                "a value loaded under a lease was stored after a {write} of its key ({stored:?}): \
                 every set, delete and clear (and their batch forms) ends the key's lease"
            )
        })?;
    }
    call("set", b.set("l", v(3), None).await)?;
    call("lease", b.lease("l", 6, hold, true).await)?;
    let over = call(
        "store_if_leased",
        b.store_if_leased("l", 6, v(9), None, true).await,
    )?;
    ensure(over == Some(false), || {
        format!("store_if_leased with only_if_absent wrote over a present key ({over:?})")
    })?;
    call("release_lease", b.release_lease("l", 6).await)?;
    let free = call("lease", b.lease("l", 7, hold, true).await)?;
    ensure(free == Some(true), || {
        format!("after release_lease, an exclusive lease returned {free:?}, not Some(true)")
    })?;
    call("release_lease", b.release_lease("l", 7).await)?;
    let again = call("lease", b.lease("l", 8, hold, true).await)?;
    ensure(again == Some(true), || {
        format!("after release_lease, an exclusive lease returned {again:?}, not Some(true)")
    })
}

async fn errors_not_panics<B: CacheBackend>(b: &B, v: &impl Fn(u32) -> B::Value) -> Outcome {
    // Odd input may be refused with an error; it must not panic (the task
    // running this rule reports a panic as a failure).
    let long = "k".repeat(4096);
    for key in ["", "\u{0}", "*", "?", "[", "\\", "a b\nc", long.as_str()] {
        let _ = b.set(key, v(1), Some(Duration::from_secs(5))).await;
        let _ = b.get(key).await;
        let _ = b.get_with_ttl(key).await;
        let _ = b.exists(key).await;
        let _ = b.get_ttl(key).await;
        let _ = b.set_if_not_exist(key, v(2), None).await;
        let _ = b.list_keys(Some(key)).await;
        let _ = b.delete(key).await;
    }
    let _ = b.set("tiny", v(1), Some(Duration::from_nanos(1))).await;
    Ok(())
}

async fn stats<B: CacheBackend>(b: &B) -> Outcome {
    let _ = b.describe();
    call("get_stats", b.get_stats().await).map(|_| ())
}
