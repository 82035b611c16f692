//! `geecache up`: a local cluster of real node processes on 127.0.0.1, and a frontend.
//!
//! Each node is this same binary run as `geecache node` with static membership; their output
//! is prefixed with their name. Ctrl-C (or SIGTERM) stops them all gracefully.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::cli::UpArgs;
use crate::config::SourceKind;

struct Proc {
    name: String,
    api: String,
    child: Child,
}

fn spawn(name: &str, args: Vec<String>, api: String) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe().context("cannot find my own executable")?;
    let mut child = Command::new(exe)
        .arg("node")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
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
    })
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

/// Writes a new random peer secret (32 random bytes as hex, mode 0600) to `path` unless it
/// exists; true when it wrote one.
pub fn init_secret(path: &Path) -> anyhow::Result<bool> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if path.exists() {
        return Ok(false);
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for the secret: {e}"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| writeln!(f, "{hex}"))
        .with_context(|| format!("cannot write the peer secret to {}", path.display()))?;
    Ok(true)
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes >= 1, "--nodes must be at least 1");
    if args.source == SourceKind::Postgres && args.database_url.is_none() {
        anyhow::bail!("--source postgres needs --database-url");
    }
    let peer_urls: Vec<String> = (0..args.nodes)
        .map(|i| format!("http://127.0.0.1:{}", args.peer_port + i))
        .collect();
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
    let secret = cluster_secret(&data_root, &args.node_args)?;
    let common = {
        let mut a = vec![
            "--seeds".to_owned(),
            peer_urls.join(","),
            "--source".to_owned(),
            format!("{:?}", args.source).to_lowercase(),
            "--log-format".to_owned(),
            format!("{:?}", args.log_format).to_lowercase(),
        ];
        if let Some(url) = &args.database_url {
            a.extend(["--database-url".to_owned(), url.clone()]);
        }
        if let Some(path) = &secret {
            a.extend(["--peer-secret-file".to_owned(), path.display().to_string()]);
        }
        a
    };
    let mut procs = Vec::new();
    let started = Instant::now();
    for (i, peer) in peer_urls.iter().enumerate() {
        let api = format!("127.0.0.1:{}", args.api_port + i as u16);
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
            data_root
                .join(format!("node{}", i + 1))
                .display()
                .to_string(),
            "--bootstrap-expect".to_owned(),
            args.nodes.to_string(),
        ];
        a.extend(common.iter().cloned());
        a.extend(args.node_args.iter().cloned());
        procs.push(spawn(
            &format!("node{}", i + 1),
            a,
            format!("http://{api}"),
        )?);
    }
    let front_api = format!("127.0.0.1:{}", args.port);
    let mut a = vec![
        "--role".to_owned(),
        "frontend".to_owned(),
        "--api-addr".to_owned(),
        front_api.clone(),
        "--peer-addr".to_owned(),
        "127.0.0.1:0".to_owned(),
    ];
    a.extend(common.iter().cloned());
    a.extend(args.node_args.iter().cloned());
    procs.push(spawn("frontend", a, format!("http://{front_api}"))?);

    if let Err(e) = wait_ready(&mut procs).await {
        stop_all(&mut procs).await;
        return Err(e);
    }
    println!(
        "\nGeeCache-rs local cluster up in {} ms: {} node(s) agreed by Raft, {:?} source",
        started.elapsed().as_millis(),
        args.nodes,
        args.source
    );
    for (p, peer) in procs.iter().zip(peer_urls.iter().map(Some).chain([None])) {
        match peer {
            Some(peer) => println!("  {:<9} client API {:<24} peer {peer}", p.name, p.api),
            None => println!("  {:<9} client API {}", p.name, p.api),
        }
    }
    println!(
        "Try: curl '{}/api?key=Tom'   (Ctrl-C stops them all)",
        procs.last().map_or("", |p| &p.api)
    );
    if let Some(path) = &secret {
        println!("Peer secret (made for this cluster): {}", path.display());
    }
    println!(
        "Add a node: geecache node --node-id {n} --self http://127.0.0.1:{p} --peer-addr 127.0.0.1:{p} --api-addr 127.0.0.1:{a} --data-dir {dir} --seeds {seeds}{auth}\n",
        n = args.nodes + 1,
        p = args.peer_port + args.nodes,
        a = args.api_port + args.nodes,
        dir = data_root.join(format!("node{}", args.nodes + 1)).display(),
        seeds = peer_urls.join(","),
        auth = secret
            .as_ref()
            .map(|p| format!(" --peer-secret-file {}", p.display()))
            .unwrap_or_default(),
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let reason = tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C".to_owned(),
        _ = term.recv() => "SIGTERM".to_owned(),
        name = async {
            loop {
                for p in procs.iter_mut() {
                    if let Ok(Some(status)) = p.child.try_wait() {
                        return format!("{} exited ({status})", p.name);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        } => name,
    };
    println!("\n{reason}: stopping the cluster");
    stop_all(&mut procs).await;
    drop(temp);
    Ok(())
}
