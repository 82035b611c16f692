//! `geecache up`: a local cluster of real node processes on 127.0.0.1, and a frontend.
//!
//! Each node is this same binary run as `geecache node`, agreeing on the ring by Raft, with a
//! peer secret made for the cluster; their output is prefixed with their name. Ctrl-C (or
//! SIGTERM) stops them all gracefully. A node that dies leaves the others running (`up` says
//! which one and how to start it again); the nodes die with `up` (a parent-death signal), and
//! `up` refuses to start on ports that something else holds.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::UpArgs;
use super::config::SourceKind;
use super::tools::init_secret;

/// The variable through which `up` asks its nodes to die with it.
pub const PARENT_ENV: &str = "GEECACHE_PARENT_PID";

struct Proc {
    name: String,
    api: String,
    child: Child,
    /// Its command line after `geecache node`, to say how to start it again.
    args: Vec<String>,
    /// Whether `up` already said that it exited.
    reported: bool,
}

/// The nodes' log filter under `up` when `RUST_LOG` is not set.
const UP_LOG_FILTER: &str = "warn";

fn spawn(name: &str, args: Vec<String>, api: String) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe().context("cannot find my own executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("node")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // If `up` dies (even by SIGKILL), its nodes get SIGTERM and drain instead of keeping
    // every port of the next `up` (`node::die_with_parent`).
    cmd.env(PARENT_ENV, std::process::id().to_string());
    // Quiet unless asked: the banner first, then only what goes wrong (`RUST_LOG=info` for
    // the nodes' whole logs).
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", UP_LOG_FILTER);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let prefix = format!("[{name}]");
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("{prefix:<11} {line}");
            }
        });
    }
    Ok(Proc {
        name: name.to_owned(),
        api,
        child,
        args,
        reported: false,
    })
}

/// Fails, naming it, if a port `up` would use is taken (a previous cluster's node, say).
fn check_ports_free(ports: &[u16]) -> anyhow::Result<()> {
    for &port in ports {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            anyhow::bail!(
                "port 127.0.0.1:{port} is not free ({e}): another cluster may still be running \
                 (`ss -ltnp 'sport = :{port}'` shows who holds it); stop it or choose other \
                 ports (--port, --api-port, --peer-port, --frontend-peer-port)"
            );
        }
    }
    Ok(())
}

async fn wait_ready(procs: &mut [Proc]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in procs.iter_mut() {
        loop {
            if let Some(status) = p.child.try_wait()? {
                anyhow::bail!(
                    "{} exited during start-up ({status}); see its output above",
                    p.name
                );
            }
            let ready = client
                .get(format!("{}/ready", p.api))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!("{} did not become ready within 30 s", p.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

async fn stop_all(procs: &mut [Proc]) {
    for p in procs.iter() {
        if let Some(pid) = p.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for p in procs.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(12), p.child.wait())
            .await
            .is_err()
        {
            let _ = p.child.kill().await;
        }
    }
}

/// The cluster's peer secret: `peer-secret` in the data root, made (32 random bytes, hex,
/// readable by this user only) unless it exists (a kept `--data-dir` keeps its cluster's) or
/// the node flags after `--` bring their own.
fn cluster_secret(root: &Path, node_args: &[String]) -> anyhow::Result<Option<PathBuf>> {
    let own = [
        "--peer-secret",
        "--peer-secret-file",
        "--insecure-open-peer-port",
    ];
    if node_args.iter().any(|a| {
        own.iter()
            .any(|o| a == o || a.starts_with(&format!("{o}=")))
    }) {
        return Ok(None);
    }
    std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    let path = root.join("peer-secret");
    init_secret(&path)?;
    Ok(Some(path))
}

/// What `up` starts: where, with which flags.
struct Plan {
    peer_urls: Vec<String>,
    data_root: PathBuf,
    secret: Option<PathBuf>,
    /// Flags every process gets.
    common: Vec<String>,
}

impl Plan {
    fn new(args: &UpArgs, data_root: PathBuf) -> anyhow::Result<Plan> {
        let peer_urls: Vec<String> = (0..args.nodes)
            .map(|i| format!("http://127.0.0.1:{}", args.peer_port + i))
            .collect();
        let secret = cluster_secret(&data_root, &args.node_args)?;
        let mut common = vec![
            "--seeds".to_owned(),
            peer_urls.join(","),
            "--source".to_owned(),
            args.source.as_str().to_owned(),
            "--log-format".to_owned(),
            args.log_format.as_str().to_owned(),
        ];
        if let Some(url) = &args.database_url {
            common.extend(["--database-url".to_owned(), url.clone()]);
        }
        if let Some(path) = &secret {
            common.extend(["--peer-secret-file".to_owned(), path.display().to_string()]);
        }
        Ok(Plan {
            peer_urls,
            data_root,
            secret,
            common,
        })
    }

    /// Flags of node `i` (from 0), then the common ones, then the user's.
    fn node(&self, args: &UpArgs, i: usize) -> (String, Vec<String>) {
        let api = format!("127.0.0.1:{}", args.api_port + i as u16);
        let peer = &self.peer_urls[i];
        let mut a = vec![
            "--api-addr".to_owned(),
            api.clone(),
            "--peer-addr".to_owned(),
            peer.trim_start_matches("http://").to_owned(),
            "--self".to_owned(),
            peer.clone(),
            "--node-id".to_owned(),
            (i + 1).to_string(),
            "--data-dir".to_owned(),
            self.data_dir(i + 1),
            "--bootstrap-expect".to_owned(),
            args.nodes.to_string(),
        ];
        a.extend(self.common.iter().cloned());
        a.extend(args.node_args.iter().cloned());
        (format!("http://{api}"), a)
    }

    fn frontend(&self, args: &UpArgs) -> (String, Vec<String>) {
        let api = format!("127.0.0.1:{}", args.port);
        let peer = format!("127.0.0.1:{}", args.frontend_peer_port);
        let mut a = vec![
            "--role".to_owned(),
            "frontend".to_owned(),
            "--api-addr".to_owned(),
            api.clone(),
            "--peer-addr".to_owned(),
            peer.clone(),
            "--self".to_owned(),
            format!("http://{peer}"),
        ];
        a.extend(self.common.iter().cloned());
        a.extend(args.node_args.iter().cloned());
        (format!("http://{api}"), a)
    }

    /// Node `n`'s data dir: inside this cluster's root, so that no later cluster reuses it.
    fn data_dir(&self, n: usize) -> String {
        self.data_root
            .join(format!("node{n}"))
            .display()
            .to_string()
    }

    fn print_banner(&self, args: &UpArgs, procs: &[Proc], started: Instant) {
        println!(
            "\nGeeCache-rs local cluster up in {} ms: {} node(s) agreed by Raft, {} source",
            started.elapsed().as_millis(),
            args.nodes,
            args.source.as_str()
        );
        for (p, peer) in procs
            .iter()
            .zip(self.peer_urls.iter().map(Some).chain([None]))
        {
            match peer {
                Some(peer) => println!("  {:<9} client API {:<24} peer {peer}", p.name, p.api),
                None => println!("  {:<9} client API {}", p.name, p.api),
            }
        }
        println!(
            "Try: curl '{}/api?key=Tom'   (Ctrl-C stops them all)",
            procs.last().map_or("", |p| &p.api)
        );
        if let Some(path) = &self.secret {
            println!("Peer secret (made for this cluster): {}", path.display());
        }
        if std::env::var_os("RUST_LOG").is_none() {
            println!("Logs: warnings and errors below; RUST_LOG=info geecache up for everything");
        }
        let n = args.nodes as usize + 1;
        println!(
            "Add a node: geecache node --node-id {n} --self http://127.0.0.1:{p} --peer-addr 127.0.0.1:{p} --api-addr 127.0.0.1:{a} --data-dir {dir} --seeds {seeds}{auth}\n",
            p = args.peer_port + args.nodes,
            a = args.api_port + args.nodes,
            dir = self.data_dir(n),
            seeds = self.peer_urls.join(","),
            auth = self
                .secret
                .as_ref()
                .map(|p| format!(" --peer-secret-file {}", p.display()))
                .unwrap_or_default(),
        );
    }
}

/// Waits for Ctrl-C or SIGTERM, or until every process has exited. A process that exits
/// leaves the others running: `up` says which one, and how to start it again.
async fn wait_for_stop(procs: &mut [Proc]) -> anyhow::Result<String> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C".to_owned(),
        _ = term.recv() => "SIGTERM".to_owned(),
        name = async {
            loop {
                for p in procs.iter_mut() {
                    if p.reported {
                        continue;
                    }
                    if let Ok(Some(status)) = p.child.try_wait() {
                        p.reported = true;
                        println!("\n{} exited ({status}); the others keep running.", p.name);
                        println!("Start it again with: {}\n", restart_line(&p.args));
                    }
                }
                if procs.iter().all(|p| p.reported) {
                    return "every process exited".to_owned();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        } => name,
    })
}

/// `geecache node ARGS`, quoted for a shell where needed.
fn restart_line(args: &[String]) -> String {
    let quote = |a: &String| {
        if a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@".contains(c))
        {
            a.clone()
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    let exe = std::env::current_exe()
        .map(|e| e.display().to_string())
        .unwrap_or_else(|_| "geecache".into());
    std::iter::once(exe)
        .chain(std::iter::once("node".to_owned()))
        .chain(args.iter().map(quote))
        .collect::<Vec<_>>()
        .join(" ")
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes >= 1, "--nodes must be at least 1");
    if args.source == SourceKind::Postgres && args.database_url.is_none() {
        anyhow::bail!("--source postgres needs --database-url");
    }
    // Raft logs in a fresh directory, removed when the cluster stops (unless --data-dir).
    let temp = match &args.data_dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("geecache-up-").tempdir()?),
    };
    let data_root = args
        .data_dir
        .clone()
        .or_else(|| temp.as_ref().map(|t| t.path().to_owned()))
        .unwrap_or_default();
    let mut ports: Vec<u16> = (0..args.nodes)
        .flat_map(|i| [args.api_port + i, args.peer_port + i])
        .collect();
    ports.extend([args.port, args.frontend_peer_port]);
    check_ports_free(&ports)?;
    let plan = Plan::new(&args, data_root)?;
    let started = Instant::now();
    let mut procs = Vec::new();
    for i in 0..args.nodes as usize {
        let (api, flags) = plan.node(&args, i);
        procs.push(spawn(&format!("node{}", i + 1), flags, api)?);
    }
    let (api, flags) = plan.frontend(&args);
    procs.push(spawn("frontend", flags, api)?);

    if let Err(e) = wait_ready(&mut procs).await {
        stop_all(&mut procs).await;
        return Err(e);
    }
    plan.print_banner(&args, &procs, started);
    let reason = wait_for_stop(&mut procs).await?;
    println!("\n{reason}: stopping the cluster");
    stop_all(&mut procs).await;
    drop(temp);
    anyhow::ensure!(
        reason != "every process exited",
        "every process of the cluster exited"
    );
    Ok(())
}
