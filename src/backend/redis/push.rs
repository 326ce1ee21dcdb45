//! Push connections: the dedicated RESP3 connections on which Redis pushes
//! messages to this service — the backplane's subscriber and tracking's
//! invalidation connections. Both workers open them, read them and retry
//! them the same way; this file is that way.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{PushInfo, RedisResult};

use crate::clock::now_ms;

/// Push messages buffered between a push connection and its worker.
const BUFFER: usize = 4096;

/// A RESP3 connection whose push messages arrive, bounded, on `rx`.
pub(super) struct PushConnection {
    pub(super) conn: MultiplexedConnection,
    pub(super) rx: tokio::sync::mpsc::Receiver<PushInfo>,
    /// Set when a message did not fit in the buffer and was dropped: the
    /// worker must then clear what the lost message could have evicted.
    pub(super) lost: Arc<AtomicBool>,
}

impl PushConnection {
    /// Connects `client`, every step bounded by `op_timeout`.
    pub(super) async fn open(client: &redis::Client, op_timeout: Duration) -> RedisResult<Self> {
        let (tx, rx) = tokio::sync::mpsc::channel::<PushInfo>(BUFFER);
        let lost = Arc::new(AtomicBool::new(false));
        let lost_in_sender = lost.clone();
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(Some(op_timeout))
            .set_push_sender(move |info: PushInfo| {
                forward(&tx, &lost_in_sender, info);
                Ok::<(), redis::aio::SendError>(())
            });
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Self { conn, rx, lost })
    }

    /// Whether a message was dropped since the last call.
    pub(super) fn take_lost(&self) -> bool {
        self.lost.swap(false, Relaxed)
    }

    /// `PING`, bounded by `op_timeout`: `Err` when the connection answered
    /// with an error, `Ok(false)` when it did not answer in time (a frozen
    /// or slow server is not a lost connection), `Ok(true)` when it answered.
    pub(super) async fn ping(&mut self, op_timeout: Duration) -> RedisResult<bool> {
        match tokio::time::timeout(
            op_timeout,
            redis::cmd("PING").query_async::<redis::Value>(&mut self.conn),
        )
        .await
        {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) if e.is_timeout() => Ok(false),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(false),
        }
    }
}

/// How long to wait after `failures` failed connection attempts in a row:
/// 100 ms doubling to 5 s, plus up to 50 % jitter (instances that lost
/// Redis together do not all knock again in the same instant).
pub(super) fn backoff(failures: u32) -> Duration {
    let base = (100u64 << failures.min(6)).min(5000);
    let jitter = now_ms().wrapping_mul(0x9E37_79B9) % (base / 2 + 1);
    Duration::from_millis(base + jitter)
}

/// Hands one push message to the worker through the bounded buffer; a
/// message that does not fit is dropped and `lost` remembers it, so memory
/// stays bounded under a flood and the worker clears instead.
pub(super) fn forward<T>(tx: &tokio::sync::mpsc::Sender<T>, lost: &AtomicBool, item: T) {
    if tx.try_send(item).is_err() {
        lost.store(true, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_five_seconds_with_at_most_half_again_of_jitter() {
        for failures in 0..20 {
            let base = (100u64 << failures.min(6)).min(5000);
            let b = backoff(failures).as_millis() as u64;
            assert!((base..=base + base / 2).contains(&b), "{failures}: {b} ms");
        }
        assert!(backoff(20) >= Duration::from_secs(5));
    }

    #[test]
    fn a_message_that_does_not_fit_is_counted_as_lost() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let lost = AtomicBool::new(false);
        forward(&tx, &lost, 1);
        assert!(!lost.load(Relaxed));
        forward(&tx, &lost, 2);
        assert!(lost.load(Relaxed), "the second did not fit");
        assert_eq!(rx.try_recv().ok(), Some(1));
    }
}
