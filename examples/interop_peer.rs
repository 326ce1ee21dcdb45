//! A Rust instance on one namespace, driven line by line over stdin/stdout:
//! the other side of the Python front's interop tests and benchmark.
//!
//! `cargo run -p resilient-cache --example interop_peer -- NAMESPACE`, with
//! the server in `CACHE_*` variables (`CACHE_REDIS_HOST`, `CACHE_REDIS_PORT`…).
//! The cache uses the `json` serializer, as a Python service sharing the
//! namespace does. Commands, one per line, each answered by one line:
//!
//! | command | answer |
//! |---|---|
//! | `get KEY` | `value JSON` or `none` |
//! | `set KEY JSON` | `ok` |
//! | `watch KEY` | `ready` once KEY is in this instance's L1, then `evicted` when another instance's write removes it (or `timeout` after 5 s) |
//! | `quit` | (exits) |

use std::io::{BufRead, Write};
use std::time::Duration;

use resilient_cache::{CacheEvent, CacheFactoryConfig, CacheOptions, CacheService};
use serde_json::Value;

#[tokio::main]
async fn main() {
    let namespace = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: interop_peer NAMESPACE (server in CACHE_* variables)");
        std::process::exit(2)
    });
    let config = CacheFactoryConfig::from_env().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let service = CacheService::new(config).await.expect("valid configuration");
    let cache = service
        .create_cache::<Value>(
            CacheOptions::new(namespace)
                .l2_ttl(Duration::from_secs(600))
                .serializer("json"),
        )
        .expect("valid options");

    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let say = |text: &str| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    };
    while let Some(line) = lines.recv().await {
        let mut parts = line.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("get"), Some(key), None) => match cache.get(key).await {
                Some(v) => say(&format!("value {v}")),
                None => say("none"),
            },
            (Some("set"), Some(key), Some(json)) => match serde_json::from_str::<Value>(json) {
                Ok(v) => {
                    cache.set(key, v).await;
                    say("ok");
                }
                Err(e) => say(&format!("error {e}")),
            },
            (Some("watch"), Some(key), None) => {
                // Another client's writes reach L1 only once the cache's
                // invalidation sources are set up.
                resilient_cache_testkit::eventually(Duration::from_secs(5), async || {
                    cache.backplane_stats().is_none_or(|b| b.connected)
                })
                .await;
                let mut events = cache.subscribe();
                let _ = cache.get(key).await;
                say("ready");
                let evicted = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Some(event) = events.recv().await {
                        if let CacheEvent::Invalidated { key: k, .. } = event {
                            if k.as_deref().is_none_or(|k| k == key) {
                                return;
                            }
                        }
                    }
                });
                say(if evicted.await.is_ok() {
                    "evicted"
                } else {
                    "timeout"
                });
            }
            (Some("quit"), None, None) => break,
            _ => say(&format!("error unknown command {line:?}")),
        }
    }
}
