//! Cross-instance L1 invalidation: two services (separate connections, as two
//! processes would have) on one real redis-server.

use resilient_cache_testkit as common;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, RedisServer};
use resilient_cache::{Cache, CacheOptions, CacheSerializer, CacheService, Error};

fn opts(prefix: &str) -> CacheOptions {
    CacheOptions::new(prefix)
        .l2_ttl(Duration::from_secs(300))
        .l1_ttl(Duration::from_secs(300)) // long: only the backplane can make B forget
        .serializer("json")
        // The backplane alone: with tracking too, B may hear of a write from
        // Redis before the backplane message comes, and these tests count those.
        .invalidation(resilient_cache::InvalidationSources::Backplane)
}

async fn pair(
    redis: &RedisServer,
    o: CacheOptions,
) -> (CacheService, Cache<String>, CacheService, Cache<String>) {
    common::service_pair(&redis.config(), o).await
}

async fn sees(c: &Cache<String>, key: &str, want: Option<&str>) -> bool {
    eventually(Duration::from_secs(5), async || {
        c.get(key).await.as_deref().map(String::as_str) == want
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_delete_and_clear_on_a_reach_the_l1_of_b() {
    let redis = RedisServer::start();
    let (_a, ca, _b, cb) = pair(&redis, opts("bp")).await;
    ca.set("k", "v1".into()).await;
    ca.set("other", "o1".into()).await;
    assert_eq!(cb.get("k").await.as_deref().map(String::as_str), Some("v1")); // now in B's L1
    assert_eq!(cb.get("other").await.as_deref().map(String::as_str), Some("o1"));

    ca.set("k", "v2".into()).await;
    assert!(sees(&cb, "k", Some("v2")).await, "update propagated");
    ca.delete("k").await;
    assert!(sees(&cb, "k", None).await, "delete propagated");
    ca.clear().await;
    assert!(sees(&cb, "other", None).await, "clear propagated");

    let sa = ca.get_stats().await.backplane.unwrap();
    let sb = cb.get_stats().await.backplane.unwrap();
    assert!(sa.messages_sent >= 5, "five writes announced: {sa:?}");
    // Announcements that follow each other within the publisher's gathering
    // window share one message; the update, the delete and the clear were
    // each awaited on B before the next write, so they are at least three.
    assert!(sb.messages_received >= 3 && sb.messages_applied >= 3, "{sb:?}");
    assert!(sb.last_message_age_s.is_some());
    assert_ne!(sa.instance_id, sb.instance_id);
    // A ignored its own messages and kept its own (fresh) L1 entries meanwhile.
    assert!(sa.own_ignored >= 1, "{sa:?}");
    assert_eq!(sa.messages_received, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_messages_do_not_evict_own_l1() {
    let redis = RedisServer::start();
    // The backplane alone: with tracking, the FLUSHALL below would (rightly) clear A's L1.
    let backplane_only = opts("own").invalidation(resilient_cache::InvalidationSources::Backplane);
    let (_a, ca, _b, _cb) = pair(&redis, backplane_only).await;
    ca.set("k", "mine".into()).await;
    assert!(
        eventually(Duration::from_secs(5), async || ca
            .get_stats()
            .await
            .backplane
            .unwrap()
            .own_ignored
            >= 1)
        .await
    );
    redis.cmd::<()>(&["FLUSHALL"]);
    assert_eq!(
        ca.get("k").await.as_deref().map(String::as_str),
        Some("mine"),
        "still in A's L1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_without_the_backplane_keeps_its_l1() {
    let redis = RedisServer::start();
    let (_a, ca, _b, cb) = pair(&redis, opts("nobp")).await;
    let b2 = CacheService::new(redis.config()).await.unwrap();
    let off = b2
        .create_cache::<String>(opts("nobp").invalidation(resilient_cache::InvalidationSources::None))
        .unwrap();
    assert!(off.get_stats().await.backplane.is_none());
    ca.set("k", "v1".into()).await;
    assert_eq!(off.get("k").await.as_deref().map(String::as_str), Some("v1"));
    assert_eq!(cb.get("k").await.as_deref().map(String::as_str), Some("v1"));
    ca.set("k", "v2".into()).await;
    assert!(sees(&cb, "k", Some("v2")).await);
    assert_eq!(
        off.get("k").await.as_deref().map(String::as_str),
        Some("v1"),
        "stale until its L1 TTL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_reconnect_clears_l1() {
    let mut redis = RedisServer::start();
    let (_a, ca, _b, cb) = pair(&redis, opts("reconnect")).await;
    ca.set("k", "v1".into()).await;
    // A's announcement must not evict what B reads next.
    assert!(
        eventually(Duration::from_secs(5), async || cb
            .get_stats()
            .await
            .backplane
            .unwrap()
            .messages_received
            >= 1)
        .await
    );
    assert!(cb.get("k").await.is_some());
    assert_eq!(cb.get_stats().await.l1.unwrap().size, 1);
    redis.kill();
    redis.restart();
    let cleared = eventually(Duration::from_secs(15), async || {
        cb.get_stats()
            .await
            .backplane
            .is_some_and(|b| b.reconnect_clears >= 1 && b.connected)
    })
    .await;
    assert!(cleared, "{:?}", cb.get_stats().await.backplane);
    assert_eq!(
        cb.get_stats().await.l1.unwrap().size,
        0,
        "messages may have been lost: L1 cleared"
    );
}

/// JSON whose decoding can be held at a gate, to freeze a read between its L2
/// fetch and its promotion into L1.
struct GatedJson {
    armed: AtomicBool,
    entered: AtomicBool,
    released: AtomicBool,
}

impl CacheSerializer for GatedJson {
    fn name(&self) -> &str {
        "gated-json"
    }
    fn encode(&self, v: &serde_json::Value) -> Result<Vec<u8>, Error> {
        serde_json::to_vec(v).map_err(|e| Error::Serialization(e.to_string()))
    }
    fn decode(&self, bytes: &[u8]) -> Result<serde_json::Value, Error> {
        if self.armed.load(SeqCst) {
            self.entered.store(true, SeqCst);
            // Bounded, so that a failing test cannot park a runtime thread forever.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !self.released.load(SeqCst) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        serde_json::from_slice(bytes).map_err(|e| Error::Serialization(e.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_racing_an_invalidation_does_not_promote_the_old_value() {
    let redis = RedisServer::start();
    let a = CacheService::new(redis.config()).await.unwrap();
    let b = CacheService::new(redis.config()).await.unwrap();
    let gate = Arc::new(GatedJson {
        armed: AtomicBool::new(false),
        entered: AtomicBool::new(false),
        released: AtomicBool::new(false),
    });
    let ca = a.create_cache::<String>(opts("race")).unwrap();
    let cb = b
        .create_cache::<String>(opts("race").serializer_instance(gate.clone()))
        .unwrap();
    for c in [&ca, &cb] {
        assert!(
            eventually(Duration::from_secs(5), async || c
                .get_stats()
                .await
                .backplane
                .is_some_and(|b| b.connected))
            .await
        );
    }
    ca.set("k", "old".into()).await;
    // Whatever happens below, never leave a runtime thread parked at the gate.
    struct Release(Arc<GatedJson>);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.armed.store(false, SeqCst);
            self.0.released.store(true, SeqCst);
        }
    }
    let _release = Release(gate.clone());
    let received_before = cb.get_stats().await.backplane.unwrap().messages_received;

    gate.armed.store(true, SeqCst);
    // The held read runs on a thread of its own: parked on a runtime worker, it
    // could also hold up tasks queued behind it there (the subscriber's).
    let reader = {
        let cb = cb.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move { cb.get("k").await })
        })
    };
    assert!(
        eventually(Duration::from_secs(5), async || gate.entered.load(SeqCst)).await,
        "B fetched 'old' from L2"
    );
    ca.set("k", "new".into()).await; // the invalidation races B's promotion
    let received = eventually(Duration::from_secs(10), async || {
        cb.get_stats().await.backplane.unwrap().messages_received > received_before
    })
    .await;
    assert!(received, "B got the invalidation while its read was in flight");
    gate.armed.store(false, SeqCst);
    gate.released.store(true, SeqCst);
    assert_eq!(
        reader.join().unwrap().as_deref().map(String::as_str),
        Some("old"),
        "that read began before the update"
    );
    assert_eq!(
        cb.get("k").await.as_deref().map(String::as_str),
        Some("new"),
        "the old value was not promoted into B's L1 after the invalidation"
    );
}

/// Both sources on (the default): every instance's tracking hears of the
/// writes, so none asks for per-key messages.
fn both(prefix: &str) -> CacheOptions {
    opts(prefix).invalidation(resilient_cache::InvalidationSources::Both)
}

/// Writes `key` on `c` until one write goes unannounced (its writer has
/// found that no instance wants per-key messages); returns the value written.
async fn write_unannounced(c: &Cache<String>, key: &str, tag: &str) -> String {
    let mut n = 0;
    loop {
        n += 1;
        let value = format!("{tag}{n}");
        let skipped = c.backplane_stats().unwrap().messages_skipped;
        c.set(key, value.clone()).await;
        if c.backplane_stats().unwrap().messages_skipped > skipped {
            return value;
        }
        assert!(
            n < 500,
            "writes never went unannounced: {:?}",
            c.backplane_stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `writer` sets `key` to `value` and announces it on the backplane, and
/// `reader` sees it.
async fn write_announced(writer: &Cache<String>, reader: &Cache<String>, key: &str, value: &str) {
    let sent = writer.backplane_stats().unwrap().messages_sent;
    writer.set(key, value.into()).await;
    assert!(sees(reader, key, Some(value)).await, "{value} reached the reader");
    assert!(
        writer.backplane_stats().unwrap().messages_sent > sent,
        "{value} was announced: {:?}",
        writer.backplane_stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tracking_everywhere_writes_go_unannounced_and_every_l1_still_hears_of_them() {
    let redis = RedisServer::start();
    let (_a, ca, _b, cb) = pair(&redis, both("quiet")).await;
    ca.set("k", "v0".into()).await;
    assert_eq!(cb.get("k").await.as_deref().map(String::as_str), Some("v0")); // in B's L1
    let v = write_unannounced(&ca, "k", "v").await;
    assert!(sees(&cb, "k", Some(&v)).await, "tracking told B");
    ca.delete("k").await;
    assert!(sees(&cb, "k", None).await, "the delete too");
    let sa = ca.backplane_stats().unwrap();
    assert!(sa.messages_skipped >= 2, "{sa:?}");
    assert_eq!(
        sa.subscribe_clears, 0,
        "nobody asked for per-key messages: {sa:?}"
    );
    // Clears are always announced.
    let sent = sa.messages_sent;
    cb.set("other", "o".into()).await;
    assert_eq!(ca.get("other").await.as_deref().map(String::as_str), Some("o"));
    cb.clear().await;
    assert!(sees(&ca, "other", None).await);
    assert_eq!(ca.backplane_stats().unwrap().messages_sent, sent);
    assert!(cb.backplane_stats().unwrap().messages_sent >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_without_tracking_asks_for_per_key_messages_and_hears_every_write() {
    let redis = RedisServer::start();
    let (_a, ca, _b, _cb) = pair(&redis, both("ask")).await;
    ca.set("k", "v0".into()).await;
    write_unannounced(&ca, "k", "v").await;

    // C tracks nothing: it asks for per-key messages. What it reads before
    // writers see the request is cleared once they must have.
    let c = CacheService::new(redis.config()).await.unwrap();
    let cc = c.create_cache::<String>(opts("ask")).unwrap();
    let before = cc.get("k").await.unwrap();
    let skipped = ca.backplane_stats().unwrap().messages_skipped;
    ca.set("k", "while-asking".into()).await;
    let was_skipped = ca.backplane_stats().unwrap().messages_skipped > skipped;
    assert!(
        sees(&cc, "k", Some("while-asking")).await,
        "the write made as C asked reached C (read before: {before}, announced: {})",
        !was_skipped
    );
    let settled = eventually(Duration::from_secs(10), async || {
        cc.backplane_stats().is_some_and(|b| b.connected)
    })
    .await;
    let sc = cc.backplane_stats().unwrap();
    assert!(settled && sc.subscribe_clears >= 1, "{sc:?}");

    // From now on A announces: C hears of each write from the backplane.
    assert_eq!(
        cc.get("k").await.as_deref().map(String::as_str),
        Some("while-asking")
    );
    write_announced(&ca, &cc, "k", "announced").await;
    assert!(cc.backplane_stats().unwrap().messages_applied >= 1);

    // C leaves: A stops announcing again.
    drop(cc);
    drop(c);
    write_unannounced(&ca, "k", "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_asking_for_one_namespace_leaves_the_others_unannounced() {
    let redis = RedisServer::start();
    let a = CacheService::new(redis.config()).await.unwrap();
    let quiet = a.create_cache::<String>(both("one-quiet")).unwrap();
    let loud = a.create_cache::<String>(both("one-loud")).unwrap();
    // C tracks nothing: it asks for per-key messages of `one-loud` only.
    let c = CacheService::new(redis.config()).await.unwrap();
    let cl = c.create_cache::<String>(opts("one-loud")).unwrap();
    let settled = eventually(Duration::from_secs(10), async || {
        cl.backplane_stats().is_some_and(|b| b.connected)
    })
    .await;
    assert!(settled, "{:?}", cl.backplane_stats());

    // A announces its writes to `one-loud`: C, holding the key, hears of each.
    loud.set("k", "first".into()).await;
    assert!(sees(&cl, "k", Some("first")).await);
    write_announced(&loud, &cl, "k", "second").await;

    // Its writes to `one-quiet`, which nobody asks for, go unannounced.
    write_unannounced(&quiet, "k", "q").await;

    // And the namespace asked for still is announced.
    write_announced(&loud, &cl, "k", "third").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_tracking_gets_per_key_messages_instead() {
    const USER: &str = "no-tracking";
    const PASSWORD: &str = "pw";
    let redis = RedisServer::start_with(&[
        "--user",
        USER,
        "on",
        &format!(">{PASSWORD}"),
        "~*",
        "&*",
        "+@all",
        "-client|tracking",
    ]);
    let a = CacheService::new(redis.config()).await.unwrap();
    let ca = a.create_cache::<String>(both("refused")).unwrap();
    ca.set("k", "v0".into()).await;
    write_unannounced(&ca, "k", "v").await;

    let mut limited = redis.config();
    limited.redis.username = Some(resilient_cache::Secret::new(USER));
    limited.redis.password = Some(resilient_cache::Secret::new(PASSWORD));
    let b = CacheService::new(limited).await.unwrap();
    let cb = b.create_cache::<String>(both("refused")).unwrap();
    // B's tracking never comes up; after a grace period it asks for per-key messages.
    let asked = eventually(Duration::from_secs(10), async || {
        cb.backplane_stats()
            .is_some_and(|s| s.connected && s.subscribe_clears >= 1)
    })
    .await;
    assert!(asked, "{:?} {:?}", cb.backplane_stats(), cb.tracking_stats());
    assert!(!cb.tracking_stats().unwrap().connected);
    assert!(cb.get("k").await.is_some()); // in B's L1
    ca.set("k", "new".into()).await;
    assert!(sees(&cb, "k", Some("new")).await, "{:?}", ca.backplane_stats());
    assert!(cb.backplane_stats().unwrap().messages_applied >= 1);
}
