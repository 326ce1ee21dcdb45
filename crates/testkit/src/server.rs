//! The `redis-server` helper: starts a real server on a free 127.0.0.1 port,
//! with no persistence, killed when dropped; tests can kill it, freeze it
//! (SIGSTOP), thaw it (SIGCONT) and restart it on the same port. Shared by the
//! integration tests of the library and of the `rcache` CLI.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use resilient_cache::CacheFactoryConfig;

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    /// A config file passed first (sentinels need one they can rewrite).
    config_file: Option<PathBuf>,
}

/// A free loopback port, never one handed out before in this process: tests
/// run in parallel, and the OS may offer a just-released port twice, so two
/// servers could race for it and a test could end up talking to another
/// test's server (which that test then kills).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind 127.0.0.1:0")
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl RedisServer {
    /// Starts a fresh server. Panics (never skips) when `redis-server` is missing:
    /// the test command installs it.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("resilient-cache-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Self {
            child: None,
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            config_file: None,
        };
        s.spawn();
        s
    }

    /// A Sentinel (`redis-server <conf> --sentinel`) with the given configuration.
    pub fn start_sentinel(conf: &str) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("resilient-cache-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sentinel.conf");
        std::fs::write(&file, conf).unwrap();
        let mut s = Self {
            child: None,
            port,
            dir,
            extra: vec!["--sentinel".to_string()],
            config_file: Some(file),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        if let Some(file) = &self.config_file {
            cmd.arg(file);
        }
        let child = cmd
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args([
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
                "--loglevel",
                "warning",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}). The tests need a real Redis: run the README's test \
                     command (scripts/test.sh), which installs it, or `apt-get install -y redis-server`."
                )
            });
        self.child = Some(child);
        wait_for_port(self.port);
        // A server restarted with its data answers LOADING until it has read it.
        wait_until(
            &format!("the server on port {} to load its data", self.port),
            1000,
            Duration::from_millis(10),
            || {
                let Some(mut c) = self.try_conn() else {
                    return false;
                };
                let r = redis::cmd("PING").query::<redis::Value>(&mut c);
                !matches!(&r, Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading))
            },
        );
        // The port answers; make sure it is this server that answers.
        let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        assert!(
            exited.is_none(),
            "redis-server on port {} exited at start ({exited:?})",
            self.port
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Service config pointing at this server, with short timeouts for tests.
    pub fn config(&self) -> CacheFactoryConfig {
        let mut c = CacheFactoryConfig::default();
        c.redis.host = "127.0.0.1".into();
        c.redis.port = self.port;
        c.redis.connect_timeout = Duration::from_millis(500);
        c.redis.socket_timeout = Duration::from_millis(500);
        c
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("server is not running").id() as i32
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// SIGSTOP: the port stays open, nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL and wait: connections are refused afterwards.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// A connection, or `None` when the server does not answer within 2 s.
    pub fn try_conn(&self) -> Option<redis::Connection> {
        let c = redis::Client::open(self.url())
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(2))
            .ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        Some(c)
    }

    /// A plain synchronous connection for inspecting the server from the test.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to test redis")
    }

    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut self.conn())
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    pub fn set_raw(&self, key: &str, bytes: &[u8]) {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(bytes)
            .query(&mut self.conn())
            .unwrap();
    }

    pub fn get_raw(&self, key: &str) -> Option<Vec<u8>> {
        redis::cmd("GET").arg(key).query(&mut self.conn()).unwrap()
    }

    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.cmd(&["KEYS", "*"]);
        k.sort();
        k
    }

    /// `calls` of each command since start or the last `CONFIG RESETSTAT`
    /// (see [`from_timers`] for those no cache call sends).
    pub fn command_calls(&self) -> std::collections::BTreeMap<String, u64> {
        let info: String = self.cmd(&["INFO", "commandstats"]);
        info.lines()
            .filter_map(|l| l.strip_prefix("cmdstat_"))
            .filter_map(|l| {
                let (name, rest) = l.split_once(':')?;
                let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?;
                Some((name.to_string(), calls.parse().ok()?))
            })
            .collect()
    }

    pub fn reset_stats(&self) {
        let _: () = self.cmd(&["CONFIG", "RESETSTAT"]);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A frozen server ignores SIGKILL's effect only until it is thawed: thaw, then kill.
            let _ = Command::new("kill")
                .args(["-CONT", &self.pid().to_string()])
                .status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until something listens on 127.0.0.1:`port` (a server starting up);
/// panics with a clear message after about 10 s of nothing.
pub fn wait_for_port(port: u16) {
    wait_until(
        &format!("a server on 127.0.0.1:{port}"),
        1000,
        Duration::from_millis(10),
        || TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
}

/// Polls `ok` every `pause`, `attempts` times at most, then panics naming
/// `what`. (A bounded wait for a state, never a speed check.)
pub fn wait_until(what: &str, attempts: u32, pause: Duration, mut ok: impl FnMut() -> bool) {
    for _ in 0..attempts {
        if ok() {
            return;
        }
        std::thread::sleep(pause);
    }
    panic!("gave up waiting for {what}");
}

/// The server given by `--redis-url`, or a fresh one started here; and its URL.
pub fn server_or_url(url: Option<&str>) -> (Option<RedisServer>, String) {
    match url {
        Some(url) => (None, url.to_string()),
        None => {
            let server = RedisServer::start();
            let url = server.url();
            (Some(server), url)
        }
    }
}

/// Service config for a server given by URL (the harnesses' `--redis-url`).
pub fn config_for(url: &str) -> CacheFactoryConfig {
    CacheFactoryConfig::from_map([("CACHE_REDIS_URL", url)]).unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `f` until it is true or `timeout` passes; returns whether it became true.
/// (For eventual conditions; never a speed assertion.)
/// Whether the command named `name` in `INFO commandstats` (`ping`,
/// `client|trackinginfo`, …) is one a service sends on timers, whatever its
/// caches do: the subscribers' keep-alives, tracking's checks and the
/// writers' question whether anyone wants per-key messages. Command counts
/// of cache calls leave these out.
pub fn from_timers(name: &str) -> bool {
    matches!(name, "ping" | "pubsub|numsub") || name.starts_with("client|")
}

pub async fn eventually(timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two services (as two processes would be) on one server, each with a
/// cache built from `options`, both backplane subscribers connected (when
/// the options turn the backplane on) before the test starts writing.
pub async fn service_pair<V: resilient_cache::two_level::CacheValue>(
    config: &CacheFactoryConfig,
    options: resilient_cache::CacheOptions,
) -> (
    resilient_cache::CacheService,
    resilient_cache::Cache<V>,
    resilient_cache::CacheService,
    resilient_cache::Cache<V>,
) {
    let a = resilient_cache::CacheService::new(config.clone()).await.unwrap();
    let b = resilient_cache::CacheService::new(config.clone()).await.unwrap();
    let ca = a.create_cache::<V>(options.clone()).unwrap();
    let cb = b.create_cache::<V>(options).unwrap();
    for c in [&ca, &cb] {
        let Some(_) = c.get_stats().await.backplane else {
            continue;
        };
        let up = eventually(Duration::from_secs(5), async || {
            c.get_stats().await.backplane.is_some_and(|b| b.connected)
        })
        .await;
        assert!(up, "subscriber connected");
    }
    (a, ca, b, cb)
}
