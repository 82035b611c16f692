//! Test fixtures: a private PostgreSQL cluster and real `geecache` node processes.
#![allow(dead_code)]

pub mod raft;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The directory of PostgreSQL's server binaries: `$GEECACHE_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout).
pub fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("GEECACHE_PG_BIN") {
        return dir.into();
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql-15), or set GEECACHE_PG_BIN")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
        .expect("no initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// A command run as `postgres` when we are root (initdb refuses root).
fn pg_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The first of `n` consecutive free ports, below the kernel's ephemeral range (so that no
/// `free_port` can take one of them in the meantime). Calls in one test process get disjoint
/// runs: a cursor moves past every run handed out.
pub fn free_port_run(n: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CURSOR: AtomicU32 = AtomicU32::new(0);
    let _ = CURSOR.compare_exchange(
        0,
        20_000 + std::process::id() % 5_000,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let base = CURSOR.fetch_add(u32::from(n), Ordering::SeqCst);
        assert!(base + u32::from(n) < 32_000, "ran out of test ports");
        let base = base as u16;
        let held: Vec<_> = (base..base + n)
            .map_while(|p| TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == n as usize {
            return base;
        }
    }
}

/// A throwaway PostgreSQL cluster on a free port, its socket in its own temp dir.
pub struct Pg {
    dir: TempDir,
    pub port: u16,
}

impl Pg {
    pub fn start() -> Pg {
        let dir = tempfile::Builder::new()
            .prefix("geecache-pg")
            .tempdir()
            .unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown of the test cluster dir failed");
        }
        let data = dir.path().join("data");
        let out = pg_command(&pg_bin().join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             shared_preload_libraries = 'pg_stat_statements'\nfsync = off\n\
             synchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n",
            dir.path().display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        let pg = Pg { dir, port };
        pg.ctl("start");
        pg.psql("postgres", "CREATE DATABASE geecache");
        pg.psql("geecache", "CREATE EXTENSION pg_stat_statements");
        pg
    }

    fn ctl(&self, action: &str) {
        let mut c = pg_command(&pg_bin().join("pg_ctl"));
        c.arg("-D").arg(self.dir.path().join("data"));
        c.args(["-w", "-t", "30", "-m", "fast"]);
        c.arg("-l").arg(self.dir.path().join("server.log"));
        let out = c.arg(action).output().unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop(&self) {
        self.ctl("stop");
    }

    pub fn restart(&self) {
        self.ctl("start");
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/geecache", self.port)
    }

    /// A node on this database (`--source postgres`, its feed included), with `extra` flags.
    pub fn node(&self, extra: &[&str]) -> NodeProc {
        let url = self.url();
        let mut args = vec!["--source", "postgres", "--database-url", &url];
        args.extend_from_slice(extra);
        NodeProc::spawn(&args)
    }

    /// The URL of the same database through another port (a `Proxy`).
    pub fn url_via(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/geecache")
    }

    /// The URL of the test database for another role (trust authentication: no password).
    pub fn url_as(&self, role: &str) -> String {
        format!("postgres://{role}@127.0.0.1:{}/geecache", self.port)
    }

    /// Runs SQL through psql as `role` on the test database: its output, or PostgreSQL's
    /// error.
    pub fn psql_as(&self, role: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(pg_bin().join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", role])
            .args([
                "-d",
                "geecache",
                "-XAtq",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs SQL through psql and returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(pg_bin().join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", db, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// How many times statements matching `pattern` (SQL LIKE) were executed.
    pub fn calls(&self, pattern: &str) -> i64 {
        self.psql(
            "geecache",
            &format!(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query LIKE '{pattern}'"
            ),
        )
        .parse()
        .unwrap()
    }

    pub fn seed(&self, rows: u64) {
        let out = Command::new(env!("CARGO_BIN_EXE_geecache"))
            .args([
                "db",
                "seed",
                "--database-url",
                &self.url(),
                "--rows",
                &rows.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "seed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.psql("geecache", "SELECT pg_stat_statements_reset()");
    }
}

/// Locks `products` in a transaction left open, so that every load waits until `COMMIT`
/// (or `ROLLBACK`) is sent on the returned connection.
pub async fn lock_products(pg: &Pg) -> tokio_postgres::Client {
    let (db, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    db.batch_execute("BEGIN; LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    db
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = pg_command(&pg_bin().join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The tests' HTTP client: a pool large enough for a test's concurrent requests, and a
/// timeout past any deadline a test sets its nodes.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Polls `f` every 100 ms until it holds, for up to `within`; `what` names it if it never does.
pub async fn eventually<F: AsyncFnMut() -> bool>(what: &str, within: Duration, mut f: F) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `url` until it answers 200 with `want`, for up to `within`; how long that took.
pub async fn until(client: &reqwest::Client, url: &str, want: &[u8], within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (status, body) = get(client, url).await;
        if status == 200 && body == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{url} still answers {status} {:?}",
            String::from_utf8_lossy(&body)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// GETs `url` until it is a HIT (`X-Cache`), for up to 5 s; its body.
pub async fn warm(client: &reqwest::Client, url: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = client.get(url).send().await.unwrap();
        let hit = r.headers().get("x-cache").is_some_and(|v| v == "HIT");
        let body = r.bytes().await.unwrap().to_vec();
        if hit {
            return body;
        }
        assert!(Instant::now() < deadline, "{url} never cached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One series of the node at `api` (exact name and labels as `/metrics` prints them; 0 when
/// absent).
pub async fn metric(client: &reqwest::Client, api: &str, series: &str) -> f64 {
    metrics_text(client, api)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A metric of the node at `api`, summed over its label sets.
pub async fn metric_sum(client: &reqwest::Client, api: &str, name: &str) -> f64 {
    metrics_text(client, api)
        .await
        .lines()
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A config file in a directory of its own, removed with it.
pub struct ConfigFile {
    _dir: TempDir,
    pub path: PathBuf,
}

impl ConfigFile {
    /// Its path, as a command-line argument.
    pub fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// Writes `toml` as a node's config file.
pub fn config(toml: &str) -> ConfigFile {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, toml).unwrap();
    ConfigFile { _dir: dir, path }
}

/// `geecache node ARGS` (on ports of its own choosing), which must refuse to start: its
/// stderr, the reason.
pub fn node_refused(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_geecache"))
        .arg("node")
        .args(args)
        .args(["--peer-secret", TEST_SECRET])
        .args(["--api-addr", "127.0.0.1:0", "--peer-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} started:\n{err}");
    err
}

/// The peer secret test nodes share unless a test gives its own.
pub const TEST_SECRET: &str = "geecache-test-secret-0123456789";

/// A `geecache node` process on free 127.0.0.1 ports; killed when dropped.
pub struct NodeProc {
    pub child: Child,
    pub api: String,
    pub peer_port: u16,
    pub log: PathBuf,
    _dir: TempDir,
}

impl NodeProc {
    pub fn spawn(args: &[&str]) -> NodeProc {
        Self::spawn_on(free_port(), free_port(), args)
    }

    pub fn spawn_on(api_port: u16, peer_port: u16, args: &[&str]) -> NodeProc {
        let node = Self::spawn_unready(api_port, peer_port, args);
        node.wait_ready();
        node
    }

    /// [`NodeProc::spawn`] with environment variables set for the process.
    pub fn spawn_env(env: &[(&str, &str)], args: &[&str]) -> NodeProc {
        let node = Self::start(free_port(), free_port(), env, args);
        node.wait_ready();
        node
    }

    /// Starts the process without waiting for `/ready` (nodes that must see each other first).
    /// Every node gets `TEST_SECRET` as its peer secret unless `args` bring their own.
    pub fn spawn_unready(api_port: u16, peer_port: u16, args: &[&str]) -> NodeProc {
        Self::start(api_port, peer_port, &[], args)
    }

    fn start(api_port: u16, peer_port: u16, env: &[(&str, &str)], args: &[&str]) -> NodeProc {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("node.log");
        let own = args.iter().any(|a| {
            [
                "--peer-secret",
                "--peer-secret-file",
                "--insecure-open-peer-port",
            ]
            .contains(a)
        });
        let secret: &[&str] = if own {
            &[]
        } else {
            &["--peer-secret", TEST_SECRET]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_geecache"))
            .arg("node")
            .args(["--api-addr", &format!("127.0.0.1:{api_port}")])
            .args(["--peer-addr", &format!("127.0.0.1:{peer_port}")])
            .args(["--workers", "2"])
            .args(secret)
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        NodeProc {
            child,
            api: format!("http://127.0.0.1:{api_port}"),
            peer_port,
            log,
            _dir: dir,
        }
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("{}/ready", self.api);
        while Instant::now() < deadline {
            if let Ok(200) = blocking_status(&url) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node {} not ready; log:\n{}", self.api, self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of one metric series from `/metrics` (0 when absent).
    pub async fn metric(&self, client: &reqwest::Client, series: &str) -> f64 {
        metric(client, &self.api, series).await
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of a GET over plain std sockets (readiness polling from sync or async code).
pub fn blocking_status(url: &str) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))
}

pub async fn get(client: &reqwest::Client, url: &str) -> (u16, Vec<u8>) {
    let r = client.get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.bytes().await.unwrap().to_vec())
}

/// A node's `/cluster` view, if it answers within a second.
pub async fn cluster_view(client: &reqwest::Client, api: &str) -> Option<serde_json::Value> {
    client
        .get(format!("{api}/cluster"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// The sorted member ids of a `/cluster` view.
pub fn member_ids(view: &serde_json::Value) -> Vec<u64> {
    let mut ids: Vec<u64> = view["members"]
        .as_array()
        .map(|ms| ms.iter().filter_map(|m| m["id"].as_u64()).collect())
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

/// A TCP proxy to a local port that can cut the network: while cut, nothing is forwarded in
/// either direction and new connections hang (a partition, not a refusal).
pub struct Proxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub fn to(target: u16) -> Proxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cut);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let flag = Arc::clone(&flag);
                std::thread::spawn(move || {
                    while flag.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                        return;
                    };
                    let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                        let flag = Arc::clone(&flag);
                        std::thread::spawn(move || {
                            use std::io::{Read, Write};
                            let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
                            let mut buf = [0u8; 16 * 1024];
                            loop {
                                if flag.load(Ordering::SeqCst) {
                                    std::thread::sleep(Duration::from_millis(20));
                                    continue;
                                }
                                match from.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        // A read begun before the cut can return after it:
                                        // what it got waits for the cut to heal (else a
                                        // poll sent just after the cut went through).
                                        while flag.load(Ordering::SeqCst) {
                                            std::thread::sleep(Duration::from_millis(20));
                                        }
                                        if to.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e)
                                        if e.kind() == std::io::ErrorKind::WouldBlock
                                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => break,
                                }
                            }
                            let _ = to.shutdown(std::net::Shutdown::Both);
                        });
                    };
                    pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                    pipe(server, client);
                });
            }
        });
        Proxy { port, cut }
    }

    pub fn cut(&self, on: bool) {
        self.cut.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The Prometheus text of the node whose client API is at `api`.
pub async fn metrics_text(client: &reqwest::Client, api: &str) -> String {
    client
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
