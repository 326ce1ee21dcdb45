//! Fenced writes gathered across tasks.
//!
//! A fenced `set` is two commands: `HDEL` of the key's load lease (a field
//! of the server's lease hash), then the `SET` itself. Sent as one pipeline
//! per write, the fence doubles the commands Redis dispatches and the
//! replies the client reads: with the
//! `redis` crate alone, a pipeline of `DEL` + `SET` ran at a median 0.76×
//! of a plain `SET`'s throughput at 64 tasks on our test machine (load
//! generator, `raw_fenced_set`). So while
//! [`ALONE_IN_FLIGHT`] fenced writes are already on their way, a later one
//! waits here, and the waiting writes leave together when one of those
//! returns: one pipeline, a single `HDEL` of all their leases, then their
//! `SET`s in arrival order. A write that finds fewer on their way goes out
//! at once, as before: one task writing alone never waits.
//!
//! What stays true:
//! - each write's lease is gone before its `SET` runs (the batch's `HDEL`
//!   comes first), so a load in flight cannot store over it;
//! - a write that starts after another returned reaches Redis after it
//!   (only writes that overlap are gathered, and they overlap in any order);
//! - a write waits no longer than the operation timeout in all, the time it
//!   spends waiting included;
//! - each write learns its own outcome: a server error on one `SET` fails
//!   that write only, a failed batch fails each of its writes, and the
//!   cache queues each for the replay, as it does any write L2 failed.
//!
//! Not used on a cluster, where each lease is a key in its data key's slot
//! and one `DEL` of keys of several slots is refused.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::FromRedisValue;
use tokio::sync::oneshot;

use super::{end_leases_cmd, lock, reply, Stored};
use crate::error::{ConnectionErrorKind as Kind, Error, Result};

/// What the writes go out on: the service's shared connection.
pub(crate) trait Channel: Clone + Send + Sync + 'static {
    /// The bound on one operation, which also bounds a write's wait here.
    fn op_timeout(&self) -> Duration;
    /// Where the writes go, for error messages.
    fn endpoint(&self) -> &str;
    /// Sends a pipeline, bounded by the operation timeout.
    fn send<T: FromRedisValue + Send>(&self, p: &redis::Pipeline) -> impl Future<Output = Result<T>> + Send;
}

/// Fenced writes that may be on their way at once, sent alone or as a
/// batch, before later ones wait to be gathered. With one, Redis idles
/// while the client handles a batch's replies; 2 to 4 did best at 64 tasks
/// on two cores; with more, fewer writes are gathered.
const ALONE_IN_FLIGHT: usize = 4;

/// At most this many writes leave in one batch (a bound on its size when
/// very many tasks write at once); the rest leave with the next.
const MAX_BATCH: usize = 256;

/// The gathering point of one connection's fenced writes.
#[derive(Default)]
pub(crate) struct Gather {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Requests on their way: writes sent alone, and batches.
    in_flight: usize,
    waiting: Vec<Waiting>,
}

/// How a write goes: alone, or in the next batch.
enum Entry {
    Alone(redis::Cmd),
    Wait(oneshot::Receiver<Result<()>>),
}

/// A write waiting for the next batch. Its lease is named from its `SET`'s
/// key when the batch is built: nothing is built for it while it waits.
struct Waiting {
    set: redis::Cmd,
    done: oneshot::Sender<Result<()>>,
}

/// The place of a request on its way. Released when it ends, however it
/// ends: a caller that gives up on its write must not strand the writes
/// waiting behind it.
struct Place<'a, C: Channel> {
    gather: &'a Arc<Gather>,
    conn: &'a C,
}

impl<C: Channel> Drop for Place<'_, C> {
    fn drop(&mut self) {
        self.gather.release(self.conn);
    }
}

/// [`Place`] of a batch, owned by the task that sends it.
struct BatchPlace<C: Channel> {
    gather: Arc<Gather>,
    conn: C,
}

impl<C: Channel> Drop for BatchPlace<C> {
    fn drop(&mut self) {
        self.gather.release(&self.conn);
    }
}

impl Gather {
    /// `HDEL` of the lease of `set`'s key, then `set` (a `SET key …`): sent
    /// at once as the pipeline `alone` makes of it, or gathered with the
    /// writes that overlap it.
    pub(crate) async fn fenced_set<C: Channel>(
        self: &Arc<Self>,
        conn: &C,
        set: redis::Cmd,
        alone: impl FnOnce(redis::Cmd) -> redis::Pipeline,
    ) -> Result<()> {
        match self.enter(set) {
            Entry::Alone(set) => {
                let _place = Place { gather: self, conn };
                conn.send::<()>(&alone(set)).await
            }
            Entry::Wait(rx) => wait(conn, rx).await,
        }
    }

    /// Takes a place on the way if one is free and nobody waits; else joins
    /// the waiting writes.
    fn enter(&self, set: redis::Cmd) -> Entry {
        let mut st = lock(&self.state);
        if st.in_flight < ALONE_IN_FLIGHT && st.waiting.is_empty() {
            st.in_flight += 1;
            return Entry::Alone(set);
        }
        let (done, rx) = oneshot::channel();
        st.waiting.push(Waiting { set, done });
        Entry::Wait(rx)
    }

    /// A request is done: the writes waiting leave now, as one batch that
    /// takes over its place.
    fn release<C: Channel>(self: &Arc<Self>, conn: &C) {
        let batch = {
            let mut st = lock(&self.state);
            if st.waiting.is_empty() {
                st.in_flight -= 1;
                return;
            }
            let n = st.waiting.len().min(MAX_BATCH);
            st.waiting.drain(..n).collect::<Vec<_>>()
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // Dropped outside any runtime: nothing can send the batch.
            for w in batch {
                let _ = w
                    .done
                    .send(Err(Error::connection(Kind::Io, "no runtime to send the write")));
            }
            return self.release(conn);
        };
        // The batch owns its place from here: released when it is sent, or
        // when its task is dropped unrun (a runtime shutting down).
        let place = BatchPlace {
            gather: self.clone(),
            conn: conn.clone(),
        };
        drop(rt.spawn(async move { send(&place.conn, batch).await }));
    }
}

/// A gathered write's outcome, within the operation timeout.
async fn wait<C: Channel>(conn: &C, rx: oneshot::Receiver<Result<()>>) -> Result<()> {
    match tokio::time::timeout(conn.op_timeout(), rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(Error::connection(Kind::Io, "the batch of this write was dropped")),
        Err(_) => Err(Error::connection(
            Kind::Timeout,
            format!(
                "no answer within {:?} from {} (write gathered into a batch)",
                conn.op_timeout(),
                conn.endpoint()
            ),
        )),
    }
}

/// The key a `SET` writes: its first argument after the name (every `SET`
/// the backend builds has one).
fn key_of(set: &redis::Cmd) -> &[u8] {
    match set.args_iter().nth(1) {
        Some(redis::Arg::Simple(key)) => key,
        _ => {
            debug_assert!(false, "a SET without a key");
            b""
        }
    }
}

/// One pipeline for the batch: `HDEL` of every lease, then each `SET`; each
/// write is told its own outcome.
async fn send<C: Channel>(conn: &C, batch: Vec<Waiting>) {
    let mut p = redis::Pipeline::with_capacity(batch.len() + 1);
    // Each lease's field is its data key as stored (`RedisBackend::lease_field`),
    // which is the `SET`'s key: nothing else of the write is kept here.
    p.add_command(end_leases_cmd(batch.iter().map(|w| Stored([key_of(&w.set)]))));
    let mut done = Vec::with_capacity(batch.len());
    for w in batch {
        p.add_command(w.set);
        done.push(w.done);
    }
    let mut replies = match conn.send::<Vec<redis::Value>>(&p).await {
        Ok(replies) => replies.into_iter(),
        Err(e) => return fail(done, &e),
    };
    if let Err(e) = reply::<redis::Value>(replies.next()) {
        // No lease ended: the writes are reported failed, as a lone write's
        // would be (the cache then queues each for the replay).
        return fail(done, &e);
    }
    for d in done {
        let _ = d.send(reply::<redis::Value>(replies.next()).map(drop));
    }
}

/// Fails every write of a batch with `e`.
fn fail(done: Vec<oneshot::Sender<Result<()>>>, e: &Error) {
    for d in done {
        let _ = d.send(Err(match e {
            Error::Connection(c) => Error::Connection(c.clone()),
            other => Error::connection(Kind::Io, other.to_string()),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    /// A connection that records each pipeline, holds its answer until the
    /// test lets it through, and fails the `SET` of one key (or the `DEL`).
    #[derive(Clone)]
    struct Fake {
        sent: Arc<Mutex<Vec<Vec<Vec<String>>>>>,
        gate: Arc<tokio::sync::Semaphore>,
        fail: Option<&'static str>,
        answered: Arc<AtomicUsize>,
    }

    impl Fake {
        fn new(fail: Option<&'static str>) -> Self {
            Self {
                sent: Default::default(),
                gate: Arc::new(tokio::sync::Semaphore::new(0)),
                fail,
                answered: Default::default(),
            }
        }

        fn sent(&self) -> Vec<Vec<Vec<String>>> {
            lock(&self.sent).clone()
        }
    }

    impl Channel for Fake {
        fn op_timeout(&self) -> Duration {
            Duration::from_secs(30)
        }

        fn endpoint(&self) -> &str {
            "fake"
        }

        fn send<T: FromRedisValue + Send>(
            &self,
            p: &redis::Pipeline,
        ) -> impl Future<Output = Result<T>> + Send {
            let cmds: Vec<Vec<String>> = p
                .cmd_iter()
                .map(|c| {
                    c.args_iter()
                        .map(|a| match a {
                            redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                            _ => String::new(),
                        })
                        .collect()
                })
                .collect();
            lock(&self.sent).push(cmds.clone());
            let this = self.clone();
            async move {
                this.gate.acquire().await.unwrap().forget();
                let error = || redis::parse_redis_value(b"-ERR refused\r\n").unwrap();
                let replies = cmds
                    .iter()
                    .map(|c| match (c[0].as_str(), this.fail) {
                        ("HDEL", Some("HDEL")) => error(),
                        ("HDEL", _) => redis::Value::Int(0),
                        (_, Some(k)) if c[1] == k => error(),
                        _ => redis::Value::Okay,
                    })
                    .collect();
                this.answered.fetch_add(1, SeqCst);
                redis::from_redis_value(redis::Value::Array(replies))
                    .map_err(|e| Error::Serialization(e.to_string()))
            }
        }
    }

    /// The `HDEL` that ends the leases of keys `k{i}`.
    fn end_leases(keys: impl IntoIterator<Item = usize>) -> Vec<String> {
        let fields = keys.into_iter().map(|i| format!("k{i}"));
        strings(&["HDEL", "rc:leases"])
            .into_iter()
            .chain(fields)
            .collect()
    }

    fn write(gather: &Arc<Gather>, fake: &Fake, i: usize) -> tokio::task::JoinHandle<Result<()>> {
        let (gather, fake) = (gather.clone(), fake.clone());
        tokio::spawn(async move {
            let mut set = redis::cmd("SET");
            set.arg(format!("k{i}")).arg(format!("v{i}"));
            let alone = |set| {
                let mut p = redis::pipe();
                p.cmd("HDEL").arg("rc:leases").arg(format!("k{i}"));
                p.add_command(set);
                p
            };
            gather.fenced_set(&fake, set, alone).await
        })
    }

    /// Lets the other tasks run until `check` holds (a stuck gather fails
    /// the test instead of hanging it).
    async fn until(mut check: impl FnMut() -> bool) {
        let wait = async {
            while !check() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("the gather never got there");
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn writes_behind_a_full_way_leave_as_one_batch_even_when_a_lone_one_is_dropped() {
        let (gather, fake) = (Arc::new(Gather::default()), Fake::new(None));
        let mut lone: Vec<_> = (0..ALONE_IN_FLIGHT).map(|i| write(&gather, &fake, i)).collect();
        until(|| fake.sent().len() == ALONE_IN_FLIGHT).await;
        let n = ALONE_IN_FLIGHT + 3;
        let waiting: Vec<_> = (ALONE_IN_FLIGHT..n).map(|i| write(&gather, &fake, i)).collect();
        until(|| lock(&gather.state).waiting.len() == 3).await;
        assert_eq!(
            fake.sent().len(),
            ALONE_IN_FLIGHT,
            "nothing more sent while the way is full"
        );

        // The caller of a lone write gives up: its place goes to the batch.
        let first = lone.remove(0);
        first.abort();
        assert!(first.await.is_err());
        until(|| fake.sent().len() == ALONE_IN_FLIGHT + 1).await;
        let batch = fake.sent().pop().unwrap();
        let mut expected = vec![end_leases(ALONE_IN_FLIGHT..n)];
        for i in ALONE_IN_FLIGHT..n {
            expected.push(strings(&["SET", &format!("k{i}"), &format!("v{i}")]));
        }
        assert_eq!(
            batch, expected,
            "one HDEL of every lease first, then the SETs in arrival order"
        );

        fake.gate.add_permits(100);
        for w in lone.into_iter().chain(waiting) {
            assert!(w.await.unwrap().is_ok());
        }
        until(|| lock(&gather.state).in_flight == 0).await;
        // Once the way is clear, a write goes alone again.
        assert!(write(&gather, &fake, 99).await.unwrap().is_ok());
        assert_eq!(fake.sent().last().unwrap()[0], end_leases([99]));
    }

    async fn batch_outcomes(fail: &'static str) -> Vec<Result<()>> {
        let (gather, fake) = (Arc::new(Gather::default()), Fake::new(Some(fail)));
        let lone: Vec<_> = (0..ALONE_IN_FLIGHT)
            .map(|i| write(&gather, &fake, 100 + i))
            .collect();
        until(|| fake.sent().len() == ALONE_IN_FLIGHT).await;
        let waiting: Vec<_> = (0..3).map(|i| write(&gather, &fake, i)).collect();
        until(|| lock(&gather.state).waiting.len() == 3).await;
        fake.gate.add_permits(100);
        for w in lone {
            w.await.unwrap().unwrap();
        }
        let mut out = Vec::new();
        for w in waiting {
            out.push(w.await.unwrap());
        }
        assert_eq!(fake.answered.load(SeqCst), ALONE_IN_FLIGHT + 1, "one batch");
        out
    }

    #[tokio::test]
    async fn each_gathered_write_gets_its_own_outcome() {
        let out = batch_outcomes("k1").await;
        assert!(out[0].is_ok() && out[2].is_ok(), "{out:?}");
        assert!(
            matches!(&out[1], Err(Error::Connection(c)) if c.kind == Kind::Server),
            "{out:?}"
        );
        // A failed fence fails every write of the batch.
        let out = batch_outcomes("HDEL").await;
        assert!(out.iter().all(|r| r.is_err()), "{out:?}");
    }
}
