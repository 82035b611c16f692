//! A node at its descriptor limit: a slowloris of 2,000 connections under `RLIMIT_NOFILE`
//! 1,024 (soft and hard, so the node cannot raise it) must not make `accept` fail with EMFILE,
//! nor slow a client's keep-alive connection; a new connection is served once the slow ones
//! time out (`--client-request-timeout`). Bounded to about 30 s. And idle keep-alive
//! connections stay open as long as `--keep-alive` says.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{NodeProc, blocking_status, free_port};
use tokio::io::AsyncWriteExt;

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_at_the_descriptor_limit_leaves_the_node_serving() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    // This test's own side needs more than 2,000 descriptors.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard >= 4096,
        "the test needs a hard limit of 4096 descriptors, has {hard}"
    );

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("node.log");
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let _node = Killed(
        Command::new("prlimit")
            .arg("--nofile=1024:1024")
            .arg(env!("CARGO_BIN_EXE_geecache"))
            .args(["node", "--api-addr", &format!("127.0.0.1:{port}")])
            .args(["--peer-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--workers", "2", "--insecure-open-peer-port"])
            .args([
                "--client-request-timeout",
                "1s",
                "--embedded-latency",
                "0ms",
            ])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while blocking_status(&format!("{api}/ready")).ok() != Some(200) {
        assert!(Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let url = format!("{api}/api?key=Tom");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);

    // 2,000 connections that send half a request head and hold it.
    let mut slow = Vec::new();
    for _ in 0..2000 {
        let connect = tokio::net::TcpStream::connect(("127.0.0.1", port));
        if let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
            let _ = s
                .write_all(b"GET /api?key=Tom HTTP/1.1\r\nHost: x\r\n")
                .await;
            slow.push(s);
        }
    }
    assert!(
        slow.len() > 1024,
        "only {} slow connections opened",
        slow.len()
    );

    // The keep-alive connection opened before keeps answering at once.
    let mut worst = Duration::ZERO;
    for _ in 0..40 {
        let t = Instant::now();
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        worst < Duration::from_millis(250),
        "a keep-alive request took {worst:?}"
    );

    // A new connection is served once the slow ones time out, while they are still held.
    let fresh = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let t = Instant::now();
    let r = fresh.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(15));

    let text = common::metrics_text(&client, &api).await;
    let limit = text
        .lines()
        .find(|l| l.starts_with("geecache_http_connections_limit{listener=\"api\"}"))
        .expect("the limit gauge");
    assert!(limit.ends_with(" 256"), "{limit}");
    drop(slow);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        !log.contains("Too many open files") && !log.contains("\"level\":\"ERROR\""),
        "{log}"
    );
}

/// One `GET /health` on a kept-alive connection: its status, or `None` if the node closed it.
fn health_on(s: &mut std::net::TcpStream) -> Option<u16> {
    use std::io::{Read, Write};
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if got.len() >= end + 4 + length {
                return text.get(9..12)?.parse().ok();
            }
        }
    }
}

/// A load balancer pools its connections to a node (an ALB for 60 s): if the node closed an
/// idle one sooner (actix's default is 5 s), a request sent as it closes fails (a client's
/// `IncompleteMessage`, an ALB's 502). By default an idle connection outlives 5 s; with
/// `--keep-alive 1s` it is closed after a second.
#[test]
fn idle_connections_stay_open_for_the_keep_alive() {
    let default = NodeProc::spawn(&[]);
    let short = NodeProc::spawn(&["--keep-alive", "1s"]);
    let connect = |n: &NodeProc| {
        let s = std::net::TcpStream::connect(n.api.trim_start_matches("http://")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    };
    let (mut long_lived, mut short_lived) = (connect(&default), connect(&short));
    assert_eq!(health_on(&mut long_lived), Some(200));
    assert_eq!(health_on(&mut short_lived), Some(200));
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        health_on(&mut long_lived),
        Some(200),
        "idle for 6 s under the default --keep-alive"
    );
    assert_eq!(
        health_on(&mut short_lived),
        None,
        "idle for 6 s under --keep-alive 1s: closed"
    );
}
