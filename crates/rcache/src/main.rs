//! `rcache`: look inside, seed, repair and clear resilient-cache namespaces.
//!
//! Reads the same `CACHE_*` environment as the library; every key also has a
//! flag (`CACHE_REDIS_HOST` → `--redis-host`), which wins over the
//! environment. Exit codes: 0 ok, 1 error (e.g. key not found — for `get`,
//! `ttl` and `del` alike — or a value that cannot be shown), 2 usage (bad
//! flags, invalid configuration), 3 L2 unavailable.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use resilient_cache::backend::redis::RedisBackend;
use resilient_cache::cache::{Invalidation, MarkerStatus};
use resilient_cache::config::keys;
use resilient_cache::tags::{self, EntryState, Mark};
use resilient_cache::{
    Cache, CacheBackend, CacheFactoryConfig, CacheOptions, CacheService, L2BackendKind, L2Config,
};
use serde_json::{json, Value};

const OK: u8 = 0;
const ERROR: u8 = 1;
const USAGE: u8 = 2;
const UNAVAILABLE: u8 = 3;

#[derive(Parser)]
#[command(
    name = "rcache",
    version,
    about = "Look inside, seed, repair and clear resilient-cache namespaces in Redis/Valkey.",
    after_help = "Configuration: the CACHE_* environment, or one flag per key (CACHE_REDIS_HOST -> --redis-host).\n\
                  Exit codes: 0 ok, 1 error, 2 usage, 3 L2 unavailable."
)]
struct Cli {
    /// Machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Checks that L2 answers (PING) and prints the round trip.
    Ping,
    /// Stats of a namespace: key count, server figures.
    Stats {
        #[arg(long)]
        prefix: String,
    },
    /// Keys of a namespace (without the prefix), sorted.
    Keys {
        #[arg(long)]
        prefix: String,
        /// Only keys starting with this literal text (no glob).
        #[arg(long = "match")]
        starts_with: Option<String>,
    },
    /// A value, printed as JSON (its format, json or msgpack, is told from the stored bytes).
    Get {
        #[arg(long)]
        prefix: String,
        key: String,
    },
    /// Stores a JSON value, encoded with the configured serializer.
    Set {
        #[arg(long)]
        prefix: String,
        key: String,
        /// The value, as JSON (e.g. '{"name":"Ada"}' or '"text"').
        json_value: String,
        /// Time to live in seconds (required: a namespace's TTL is its
        /// application's choice, and this tool does not guess it).
        #[arg(long)]
        ttl: f64,
    },
    /// Remaining time to live of a key, in seconds.
    Ttl {
        #[arg(long)]
        prefix: String,
        key: String,
    },
    /// Deletes a key (and tells running instances to drop their L1 copy).
    Del {
        #[arg(long)]
        prefix: String,
        key: String,
    },
    /// Deletes every key of a namespace (asks first unless --yes).
    Clear {
        #[arg(long)]
        prefix: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Removes every entry carrying TAG, on every running instance and in
    /// L2 (one marker: entries are not scanned).
    RemoveByTag {
        #[arg(long)]
        prefix: String,
        tag: String,
    },
    /// Makes every entry carrying TAG stale: applications reload it, and
    /// keep the old value only as a fail-safe fallback.
    ExpireByTag {
        #[arg(long)]
        prefix: String,
        tag: String,
    },
    /// Makes a key stale: kept in L2 for --fail-safe seconds as a fallback
    /// (the namespace's fail-safe duration), or removed without it.
    Expire {
        #[arg(long)]
        prefix: String,
        key: String,
        /// Seconds the stale value stays readable as a fail-safe fallback.
        #[arg(long)]
        fail_safe: Option<f64>,
    },
    /// Invalidates every entry of a namespace, on every running instance, in
    /// constant time (one marker; `clear` deletes the keys instead).
    InvalidateAll {
        #[arg(long)]
        prefix: String,
    },
    /// Makes every entry of a namespace stale, in constant time.
    ExpireAll {
        #[arg(long)]
        prefix: String,
    },
    /// A guided tour: load, L1 hit, L2 hit, stats; works without Redis (L1 only).
    Demo,
    /// Quick latency benchmark through the cache: set, L2 get (L1 off), L1 get.
    Bench {
        /// Operations per scenario.
        #[arg(long, default_value_t = 10_000)]
        ops: u64,
        /// Concurrent tasks.
        #[arg(long, default_value_t = 1)]
        concurrency: u64,
    },
}

/// Whether an invalidation command removes or expires.
enum Kind {
    Remove,
    Expire,
}

/// One clear line on stderr and an exit code; never a backtrace.
struct Failure(u8, String);

type Outcome = Result<(), Failure>;

fn fail<T>(code: u8, msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure(code, msg.into()))
}

/// `CACHE_REDIS_HOST` → `redis-host`.
fn flag_name(key: &str) -> String {
    key.trim_start_matches("CACHE_")
        .to_ascii_lowercase()
        .replace('_', "-")
}

fn command() -> clap::Command {
    let mut cmd = Cli::command();
    for key in keys::ALL {
        let name: &'static str = Box::leak(flag_name(key).into_boxed_str());
        cmd = cmd.arg(
            clap::Arg::new(name)
                .long(name)
                .global(true)
                .value_name("VALUE")
                .help(format!("Overrides {key}"))
                .hide_short_help(true),
        );
    }
    cmd
}

fn config(matches: &ArgMatches) -> Result<CacheFactoryConfig, Failure> {
    let mut map: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("CACHE_"))
        .collect();
    for key in keys::ALL {
        if let Some(v) = matches.get_one::<String>(&flag_name(key)) {
            map.insert(key.to_string(), v.clone());
        }
    }
    CacheFactoryConfig::from_map(map).or_else(|e| fail(USAGE, e.to_string()))
}

fn main() -> ExitCode {
    let matches = command().get_matches(); // usage errors exit with 2
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let result = config(&matches).and_then(|config| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .or_else(|e| fail(ERROR, format!("cannot start the runtime: {e}")))?;
        rt.block_on(run(cli, config))
    });
    match result {
        Ok(()) => ExitCode::from(OK),
        Err(Failure(code, msg)) => {
            eprintln!("rcache: {msg}");
            ExitCode::from(code)
        }
    }
}

struct Ctx {
    service: CacheService,
    config: CacheFactoryConfig,
    json: bool,
}

impl Ctx {
    /// Fails with exit code 3 unless L2 answers.
    async fn require_l2(&self) -> Result<Duration, Failure> {
        match self.service.ping().await {
            Ok(rtt) => Ok(rtt),
            Err(e) => fail(
                UNAVAILABLE,
                format!("L2 unavailable at {}: {e}", self.config.redis.endpoint()),
            ),
        }
    }

    /// The namespace as a cache: L2 with the configured serializer, a
    /// one-entry L1 (so writes announce themselves to running instances).
    fn cache(&self, prefix: &str, ttl: Duration) -> Result<Cache<Value>, Failure> {
        self.cache_with(CacheOptions::new(prefix).l2_ttl(ttl))
    }

    fn cache_with(&self, options: CacheOptions) -> Result<Cache<Value>, Failure> {
        self.service
            .create_cache::<Value>(options.l1_maxsize(1).backplane(true))
            .or_else(|e| fail(USAGE, e.to_string()))
    }

    /// Reports an invalidation by marker; exit 3 unless L2 recorded it.
    async fn invalidated(&self, cache: &Cache<Value>, r: Invalidation) -> Outcome {
        if r.l2 != MarkerStatus::Recorded {
            return fail(UNAVAILABLE, format!("L2 did not record the marker ({:?})", r.l2));
        }
        flush_backplane(cache).await;
        let what = match &r.tag {
            Some(tag) => format!("entries tagged {tag:?}"),
            None => "every entry".to_string(),
        };
        let done = if r.kind == "remove" { "removed" } else { "expired" };
        let prefix = cache.key_prefix().to_string();
        self.print(serde_json::to_value(&r).unwrap_or_default(), || {
            println!("{done} {what} of {prefix}:* on every instance")
        });
        Ok(())
    }

    /// The namespace's L2 backend alone: reads without side effects (the
    /// cache would drop a key that does not decode; an operator tool must not).
    fn backend(&self, prefix: &str) -> Result<RedisBackend, Failure> {
        resilient_cache::config::validate_prefix(prefix).or_else(|e| fail(USAGE, e.to_string()))?;
        let l2 = L2Config {
            backend: L2BackendKind::Redis,
            key_prefix: prefix.to_string(),
            ttl: Duration::from_secs(3600),
            lease_fence: true,
        };
        Ok(RedisBackend::new(
            self.service.factory().connection().clone(),
            &l2,
            &self.config.serializer,
        ))
    }

    fn print(&self, value: Value, human: impl FnOnce()) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
        } else {
            human();
        }
    }
}

fn l2_err(e: resilient_cache::Error) -> Failure {
    if e.is_connection() {
        Failure(UNAVAILABLE, format!("L2 unavailable: {e}"))
    } else {
        Failure(ERROR, e.to_string())
    }
}

fn table(rows: &[(String, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:width$}  {v}");
    }
}

async fn run(cli: Cli, config: CacheFactoryConfig) -> Outcome {
    let service = CacheService::new(config.clone())
        .await
        .map_err(|e| Failure(USAGE, e.to_string()))?;
    let ctx = Ctx {
        service,
        config,
        json: cli.json,
    };
    let cli_kind = match cli.command {
        Cmd::ExpireByTag { .. } | Cmd::ExpireAll { .. } => Kind::Expire,
        _ => Kind::Remove,
    };
    match cli.command {
        Cmd::Ping => {
            let rtt = ctx.require_l2().await?;
            let ms = rtt.as_secs_f64() * 1000.0;
            let endpoint = ctx.config.redis.endpoint();
            ctx.print(json!({"ok": true, "endpoint": endpoint, "rtt_ms": ms}), || {
                println!("PONG from {endpoint} in {ms:.2} ms")
            });
        }
        Cmd::Stats { prefix } => {
            ctx.require_l2().await?;
            let backend = ctx.backend(&prefix)?;
            let stats = backend.get_stats().await.map_err(l2_err)?;
            let mut value = serde_json::to_value(&stats).unwrap_or_default();
            // The backend's default TTL is this tool's own setting, not the namespace's.
            if let Some(map) = value.as_object_mut() {
                map.remove("ttl");
            }
            ctx.print(value, || {
                let mut rows = vec![
                    ("namespace".to_string(), format!("{prefix}:*")),
                    (
                        "keys".to_string(),
                        stats.size.map(|n| n.to_string()).unwrap_or_default(),
                    ),
                    ("endpoint".to_string(), stats.endpoint.clone()),
                    ("serializer".to_string(), stats.serializer.clone()),
                ];
                rows.extend(stats.server.iter().map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_string),
                    )
                }));
                table(&rows);
            });
        }
        Cmd::Keys { prefix, starts_with } => {
            ctx.require_l2().await?;
            let keys = ctx
                .backend(&prefix)?
                .list_keys(starts_with.as_deref())
                .await
                .map_err(l2_err)?;
            ctx.print(json!(keys), || {
                for k in &keys {
                    println!("{k}");
                }
            });
        }
        Cmd::Get { prefix, key } => {
            ctx.require_l2().await?;
            let bytes = ctx.backend(&prefix)?.get(&key).await.map_err(l2_err)?;
            let Some(bytes) = bytes else {
                return fail(ERROR, format!("{prefix}:{key} not found"));
            };
            let backend = ctx.backend(&prefix)?;
            let marks: Vec<Mark> = backend
                .load_markers()
                .await
                .map_err(l2_err)?
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(field, at)| Mark::from_field(&field, at))
                .collect();
            match tags::entry_state(&marks, &bytes, tags::MIN_MARKER_LIFETIME) {
                Ok(EntryState::Removed) => {
                    return fail(
                        ERROR,
                        format!("{prefix}:{key} not found (removed by an invalidation marker)"),
                    )
                }
                Ok(EntryState::Stale) => {
                    eprintln!("{prefix}:{key} is stale (expired by an invalidation marker)")
                }
                _ => {}
            }
            let value = decode_any(&bytes).or_else(|why| {
                fail(
                    ERROR,
                    format!("{prefix}:{key} ({} bytes) cannot be shown: {why}", bytes.len()),
                )
            })?;
            println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
        }
        Cmd::Set {
            prefix,
            key,
            json_value,
            ttl,
        } => {
            let value: Value = serde_json::from_str(&json_value)
                .or_else(|e| fail(USAGE, format!("JSON_VALUE is not valid JSON: {e}")))?;
            if !(ttl.is_finite() && ttl >= 1.0) {
                return fail(
                    USAGE,
                    format!("--ttl {ttl} is not allowed: a number of seconds >= 1"),
                );
            }
            ctx.require_l2().await?;
            let cache = ctx.cache(&prefix, Duration::from_secs_f64(ttl))?;
            cache
                .try_set(&key, value)
                .await
                .or_else(|e| fail(ERROR, e.to_string()))?;
            // The cache keeps a write it could not deliver for later; a CLI has no later.
            if ctx.backend(&prefix)?.get(&key).await.map_err(l2_err)?.is_none() {
                return fail(UNAVAILABLE, "L2 did not take the write");
            }
            flush_backplane(&cache).await;
            ctx.print(json!({"stored": true, "key": key, "ttl_s": ttl}), || {
                println!("stored {prefix}:{key} for {ttl} s")
            });
        }
        Cmd::Ttl { prefix, key } => {
            ctx.require_l2().await?;
            let backend = ctx.backend(&prefix)?;
            if !backend.exists(&key).await.map_err(l2_err)? {
                return fail(ERROR, format!("{prefix}:{key} not found"));
            }
            let ttl = backend.get_ttl(&key).await.map_err(l2_err)?;
            let secs = ttl.map(|d| d.as_secs_f64());
            ctx.print(json!({"key": key, "ttl_s": secs}), || match secs {
                Some(s) => println!("{s:.3}"),
                None => println!("no expiry"),
            });
        }
        Cmd::Del { prefix, key } => {
            ctx.require_l2().await?;
            let cache = ctx.cache(&prefix, Duration::from_secs(3600))?;
            let backend = ctx.backend(&prefix)?;
            let existed = backend.exists(&key).await.map_err(l2_err)?;
            cache.delete(&key).await;
            if backend.exists(&key).await.map_err(l2_err)? {
                return fail(UNAVAILABLE, "L2 did not take the delete");
            }
            flush_backplane(&cache).await;
            // One rule for every command that names a key: absent is exit 1.
            // (Running instances were still told to drop their L1 copies.)
            if !existed {
                return fail(ERROR, format!("{prefix}:{key} not found"));
            }
            ctx.print(json!({"deleted": true, "key": key}), || println!("deleted"));
        }
        Cmd::Clear { prefix, yes } => {
            ctx.require_l2().await?;
            let total = ctx.backend(&prefix)?.get_size().await.map_err(l2_err)?;
            if !yes && !confirm(&prefix, total)? {
                return fail(ERROR, "clear cancelled");
            }
            let cache = ctx.cache(&prefix, Duration::from_secs(3600))?;
            let bar = Arc::new(if total >= 1000 && !ctx.json && std::io::stderr().is_terminal() {
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template("{bar:40} {pos}/{len} keys ({per_sec}, eta {eta})")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar
            } else {
                ProgressBar::hidden()
            });
            let progress = {
                let bar = bar.clone();
                move |n: u64| bar.set_position(n)
            };
            let report = cache.clear_with_progress(&progress).await;
            bar.finish_and_clear();
            if !report.l2_cleared {
                return fail(UNAVAILABLE, format!("L2 not cleared ({:?})", report.l2_status));
            }
            flush_backplane(&cache).await;
            let n = report.l2_items_removed;
            ctx.print(json!({"cleared": true, "prefix": prefix, "removed": n}), || {
                println!(
                    "removed {n} {} from {prefix}:*",
                    if n == 1 { "key" } else { "keys" }
                )
            });
        }
        Cmd::RemoveByTag { prefix, tag } | Cmd::ExpireByTag { prefix, tag } => {
            let remove = matches!(cli_kind, Kind::Remove);
            ctx.require_l2().await?;
            let cache = ctx.cache(&prefix, Duration::from_secs(3600))?;
            let r = if remove {
                cache.remove_by_tag(&tag).await
            } else {
                cache.expire_by_tag(&tag).await
            };
            let r = r.or_else(|e| fail(USAGE, e.to_string()))?;
            ctx.invalidated(&cache, r).await?;
        }
        Cmd::InvalidateAll { prefix } | Cmd::ExpireAll { prefix } => {
            ctx.require_l2().await?;
            let cache = ctx.cache(&prefix, Duration::from_secs(3600))?;
            let r = if matches!(cli_kind, Kind::Remove) {
                cache.invalidate_all().await
            } else {
                cache.expire_all().await
            };
            ctx.invalidated(&cache, r).await?;
        }
        Cmd::Expire {
            prefix,
            key,
            fail_safe,
        } => {
            let mut options = CacheOptions::new(&prefix).l2_ttl(Duration::from_secs(3600));
            if let Some(s) = fail_safe {
                if !(s.is_finite() && s >= 0.001) {
                    return fail(
                        USAGE,
                        format!("--fail-safe {s} is not allowed: a number of seconds >= 0.001"),
                    );
                }
                options = options.fail_safe_max_duration(Duration::from_secs_f64(s));
            }
            ctx.require_l2().await?;
            let cache = ctx.cache_with(options)?;
            let backend = ctx.backend(&prefix)?;
            if !backend.exists(&key).await.map_err(l2_err)? {
                return fail(ERROR, format!("{prefix}:{key} not found"));
            }
            cache.expire(&key).await;
            let left = backend.get_ttl(&key).await.map_err(l2_err)?;
            let taken = match fail_safe {
                Some(s) => left.is_some_and(|t| t.as_secs_f64() <= s),
                None => !backend.exists(&key).await.map_err(l2_err)?,
            };
            if !taken {
                return fail(UNAVAILABLE, "L2 did not take the expiry");
            }
            flush_backplane(&cache).await;
            let kept = left.map(|t| t.as_secs_f64());
            ctx.print(
                json!({"expired": true, "key": key, "fallback_s": kept}),
                || match kept {
                    Some(s) => println!("expired; kept {s:.0} s as a fail-safe fallback"),
                    None => println!("expired (removed: no --fail-safe)"),
                },
            );
        }
        Cmd::Demo => demo(&ctx).await?,
        Cmd::Bench { ops, concurrency } => {
            ctx.require_l2().await?;
            bench(&ctx, ops.max(1), concurrency.clamp(1, 1024)).await?;
        }
    }
    Ok(())
}

/// The quickstart as a command: what each level does, timed. Never fails
/// because Redis is down: that is the point of the cache.
async fn demo(ctx: &Ctx) -> Outcome {
    let l2 = ctx.service.ping().await.ok();
    let endpoint = ctx.config.redis.endpoint();
    let prefix = format!("rcache-demo-{}", std::process::id());
    // The L2-only reader plays a second instance: one service has one cache per namespace.
    let other = CacheService::new(ctx.config.clone())
        .await
        .map_err(|e| Failure(USAGE, e.to_string()))?;
    let make = |service: &CacheService, l1: bool| {
        service
            .create_cache::<Value>(
                CacheOptions::new(&prefix)
                    .l2_ttl(Duration::from_secs(60))
                    .l1_enabled(l1)
                    .circuit_breaker_threshold(1),
            )
            .map_err(|e| Failure(USAGE, e.to_string()))
    };
    let (cache, l2_only) = (make(&ctx.service, true)?, make(&other, false)?);
    let mut steps: Vec<(String, String)> = Vec::new();
    let mut step = |what: &str, took: Duration, result: String| {
        let line = (
            what.to_string(),
            format!("{:>10.1} us  {result}", took.as_secs_f64() * 1e6),
        );
        if !ctx.json {
            println!("{:<34} {}", line.0, line.1);
        }
        steps.push(line);
    };
    if !ctx.json {
        match l2 {
            Some(rtt) => println!(
                "L2 {endpoint}: reachable (PING {:.2} ms)
",
                rtt.as_secs_f64() * 1e3
            ),
            None => println!(
                "L2 {endpoint}: unreachable — running on L1 only, degraded but alive
"
            ),
        }
    }
    let t = Instant::now();
    let user = cache
        .get_or_load("user:42", || async {
            tokio::time::sleep(Duration::from_millis(50)).await; // a slow database
            Ok::<_, std::io::Error>(json!({"id": 42, "name": "Ada Lovelace"}))
        })
        .await
        .map_err(|e| Failure(ERROR, e.to_string()))?;
    step("get_or_load (miss: 50 ms loader)", t.elapsed(), user.to_string());
    let t = Instant::now();
    let hit = cache.get("user:42").await;
    step("get (L1 hit)", t.elapsed(), format!("{}", hit.is_some()));
    let t = Instant::now();
    let l2_hit = l2_only.get("user:42").await;
    step(
        "get with L1 off (L2 hit)",
        t.elapsed(),
        if l2_hit.is_some() {
            "true".into()
        } else {
            "miss: L2 unavailable".into()
        },
    );
    let t = Instant::now();
    let deleted = cache.delete("user:42").await;
    step("delete (both levels)", t.elapsed(), format!("{deleted}"));
    let stats = cache.get_stats().await;
    let summary = json!({
        "l2_reachable": l2.is_some(),
        "endpoint": endpoint,
        "l1_hits": stats.l1.as_ref().map(|s| s.hits),
        "l2_hits": l2_only.get_stats().await.l2_hits,
        "loads": stats.loader.loads,
        "breaker": stats.circuit_breaker.state,
        "steps": steps.iter().map(|(k, v)| json!({"step": k, "result": v.trim()})).collect::<Vec<_>>(),
    });
    cache.clear().await;
    ctx.print(summary, || {
        println!(
            "\nbreaker {:?}; L1 hits {}; loads {}. Namespace {prefix}:* removed.",
            stats.circuit_breaker.state,
            stats.l1.as_ref().map_or(0, |s| s.hits),
            stats.loader.loads
        )
    });
    Ok(())
}

/// Decodes stored bytes in the format that wrote them, told from the bytes
/// themselves (the binary formats carry a header; anything else must be
/// JSON), so any namespace reads without naming its serializer.
fn decode_any(bytes: &[u8]) -> Result<Value, String> {
    let bytes = match tags::open(bytes) {
        Ok(Some(entry)) => entry.body,
        Ok(None) => bytes,
        Err(e) => return Err(e.to_string()),
    };
    match resilient_cache::serializer::detect_format(bytes) {
        Some("postcard") => Err("it is postcard, which cannot be shown without its Rust type".into()),
        Some(name) => resilient_cache::get_serializer(name)
            .and_then(|s| s.decode(bytes))
            .map_err(|e| e.to_string()),
        None => Err(
            "it was not written by a built-in serializer (no msgpack or postcard header, not JSON)".into(),
        ),
    }
}

/// Asks on the terminal; refuses (usage error) when there is none to ask on.
fn confirm(prefix: &str, total: u64) -> Result<bool, Failure> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return fail(
            USAGE,
            "refusing to clear without --yes: stdin is not a terminal to confirm on",
        );
    }
    eprint!("Delete {total} keys of namespace {prefix}:* ? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure(ERROR, e.to_string()))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// Waits (at most 1 s) until the backplane has sent this process's
/// invalidations, so running instances drop their L1 copies before we exit
/// (or has left a write out: every running instance hears of it from Redis).
async fn flush_backplane(cache: &Cache<Value>) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match cache.backplane_stats() {
            Some(b) if b.messages_sent + b.messages_skipped > 0 => return,
            Some(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            None => return,
        }
    }
}

async fn bench(ctx: &Ctx, ops: u64, concurrency: u64) -> Outcome {
    let prefix = format!("rcache-bench-{}", std::process::id());
    let with_l1 = ctx
        .service
        .create_cache::<Value>(
            CacheOptions::new(&prefix)
                .l2_ttl(Duration::from_secs(300))
                .l1_maxsize(10_000),
        )
        .map_err(|e| Failure(USAGE, e.to_string()))?;
    // A second service: one service has one cache per namespace.
    let other = CacheService::new(ctx.config.clone())
        .await
        .map_err(|e| Failure(USAGE, e.to_string()))?;
    let l2_only = other
        .create_cache::<Value>(
            CacheOptions::new(&prefix)
                .l2_ttl(Duration::from_secs(300))
                .l1_enabled(false),
        )
        .map_err(|e| Failure(USAGE, e.to_string()))?;
    let value = json!({"id": 42, "name": "Ada Lovelace", "email": "ada@example.com", "active": true});
    let keys = 1000.min(ops);
    let mut rows = Vec::new();
    for scenario in ["set", "l2_get", "l1_get"] {
        let cache = if scenario == "l2_get" { &l2_only } else { &with_l1 };
        let bar = if ctx.json || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(ops).with_message(scenario)
        };
        let started = Instant::now();
        let per_task = ops.div_ceil(concurrency);
        let tasks: Vec<_> = (0..concurrency)
            .map(|t| {
                let (cache, value, bar) = (cache.clone(), value.clone(), bar.clone());
                tokio::spawn(async move {
                    let mut hist =
                        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
                    for i in 0..per_task {
                        let key = format!("k{}", (t * per_task + i) % keys);
                        let t0 = Instant::now();
                        match scenario {
                            "set" => cache.set(&key, value.clone()).await,
                            _ => {
                                cache.get(&key).await;
                            }
                        }
                        hist.saturating_record(t0.elapsed().as_nanos() as u64);
                        bar.inc(1);
                    }
                    hist
                })
            })
            .collect();
        let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for t in tasks {
            let h = t.await.map_err(|e| Failure(ERROR, e.to_string()))?;
            let _ = hist.add(h);
        }
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        rows.push(json!({
            "scenario": scenario,
            "concurrency": concurrency,
            "ops": hist.len(),
            "ops_per_sec": (hist.len() as f64 / secs).round(),
            "p50_us": hist.value_at_quantile(0.5) as f64 / 1000.0,
            "p99_us": hist.value_at_quantile(0.99) as f64 / 1000.0,
        }));
    }
    with_l1.clear().await;
    ctx.print(json!(rows), || {
        println!(
            "{:<8} {:>4} {:>12} {:>10} {:>10}",
            "scenario", "c", "ops/s", "p50 us", "p99 us"
        );
        for r in &rows {
            println!(
                "{:<8} {:>4} {:>12} {:>10.2} {:>10.2}",
                r["scenario"].as_str().unwrap_or(""),
                r["concurrency"],
                r["ops_per_sec"],
                r["p50_us"].as_f64().unwrap_or(0.0),
                r["p99_us"].as_f64().unwrap_or(0.0)
            );
        }
        println!(
            "(raw baselines beside each scenario: cargo run --release -p resilient-cache --example loadgen)"
        );
    });
    Ok(())
}
