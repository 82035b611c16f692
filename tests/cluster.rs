//! Three real node processes with static membership and a real PostgreSQL: agreement on owners
//! and values, cluster-wide singleflight, failure of a node, the peer port's guard, `up`.

mod common;

use std::time::{Duration, Instant};

use common::{NodeProc, Pg, free_port, get};
use futures_util::future::join_all;
use futures_util::stream::{self, StreamExt};
use geecache::ring::{Member, Ring, RingHash};

const SECRET: &str = common::TEST_SECRET;

struct Cluster {
    nodes: Vec<NodeProc>,
    peers: Vec<String>,
}

fn start_cluster(pg: Option<&Pg>, extra: &[&str]) -> Cluster {
    let peer_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: Vec<String> = peer_ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let list = peers.join(",");
    let url = pg.map(|pg| pg.url());
    let nodes = peers
        .iter()
        .zip(&peer_ports)
        .map(|(me, &port)| {
            let mut args = vec!["--self", me, "--peers", &list, "--peer-secret", SECRET];
            if let Some(url) = &url {
                args.extend(["--source", "postgres", "--database-url", url]);
            }
            args.extend_from_slice(extra);
            NodeProc::spawn_on(free_port(), port, &args)
        })
        .collect();
    Cluster { nodes, peers }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_agree_on_owners_and_values() {
    let pg = Pg::start();
    pg.seed(1000);
    let c = start_cluster(Some(&pg), &[]);
    let client = common::client();

    // Every node answers every key with the same bytes (and the embedded rows' bytes).
    for id in (1..=1000).step_by(7).chain([1001, 0]) {
        let expected = if (1..=1000).contains(&id) {
            (200, geecache::source::demo::product_value(id).into_bytes())
        } else {
            (404, Vec::new())
        };
        for n in &c.nodes {
            let (s, body) = get(&client, &format!("{}/api/products/{id}", n.api)).await;
            assert_eq!(s, expected.0, "{} key {id}", n.api);
            if s == 200 {
                assert_eq!(body, expected.1);
            }
        }
    }
    for n in &c.nodes {
        assert_eq!(
            get(&client, &format!("{}/api?key=Tom", n.api)).await,
            (200, b"630".to_vec())
        );
    }

    // All nodes agree on each of 10,000 owners, and with the library's ring.
    let ring = Ring::new(RingHash::Crc32, 150, c.peers.iter().map(|p| Member::new(p)));
    let checks = stream::iter(0..10_000)
        .map(|i| {
            let client = client.clone();
            let apis: Vec<String> = c.nodes.iter().map(|n| n.api.clone()).collect();
            let expected = ring.owner(&format!("k{i}")).unwrap().name.to_string();
            async move {
                for api in apis {
                    let (s, body) = get(&client, &format!("{api}/cluster/owner?key=k{i}")).await;
                    assert_eq!(s, 200);
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(v["owner"], expected.as_str(), "k{i} at {api}");
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>();
    checks.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_hundred_misses_over_three_nodes_cost_one_query() {
    let pg = Pg::start();
    pg.seed(1000);
    let c = start_cluster(
        Some(&pg),
        // The table stays locked until all 600 have arrived: the one query waits that long.
        &[
            "--request-timeout",
            "30s",
            "--peer-timeout",
            "30s",
            "--statement-timeout",
            "30s",
        ],
    );
    // Each node's startup ran each query once (the check that it does not write).
    pg.psql("geecache", "SELECT pg_stat_statements_reset()");
    let client = common::client();
    let db = common::lock_products(&pg).await;

    let requests: Vec<_> = (0..600)
        .map(|i| {
            let url = format!("{}/api/products/321", c.nodes[i % 3].api);
            let client = client.clone();
            tokio::spawn(async move { get(&client, &url).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut gets = 0.0;
        for n in &c.nodes {
            gets += n
                .metric(&client, "geecache_gets_total{group=\"products\"}")
                .await;
        }
        if gets >= 600.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {gets} of 600 requests arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // let the peer requests land too
    db.batch_execute("COMMIT").await.unwrap();

    let expected = geecache::source::demo::product_value(321).into_bytes();
    for r in join_all(requests).await {
        assert_eq!(r.unwrap(), (200, expected.clone()));
    }
    assert_eq!(
        pg.calls("%FROM products WHERE id%"),
        1,
        "queries at PostgreSQL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_does_not_fail_its_keys() {
    let pg = Pg::start();
    pg.seed(1000);
    let mut c = start_cluster(Some(&pg), &["--peer-timeout", "1s"]);
    let client = common::client();
    let ring = Ring::new(RingHash::Crc32, 150, c.peers.iter().map(|p| Member::new(p)));
    let victim = c.peers[2].clone();
    let owned: Vec<u64> = (1..=1000)
        .filter(|id| *ring.owner(&id.to_string()).unwrap().name == *victim)
        .take(50)
        .collect();
    assert_eq!(owned.len(), 50);

    c.nodes[2].child.kill().unwrap();
    c.nodes[2].child.wait().unwrap();
    for id in &owned {
        for n in &c.nodes[..2] {
            let (s, body) = get(&client, &format!("{}/api/products/{id}", n.api)).await;
            assert_eq!(
                (s, body),
                (200, geecache::source::demo::product_value(*id).into_bytes())
            );
        }
    }
    let errors = c.nodes[0]
        .metric(&client, "geecache_peer_errors_total{group=\"products\"}")
        .await;
    assert!(errors >= 50.0, "peer errors counted: {errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_is_guarded_and_strict() {
    let c = start_cluster(None, &["--embedded-latency", "0ms"]);
    let client = common::client();
    let peer = &c.peers[0];
    let url = format!("{peer}/_geecache/scores/Tom");

    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    let wrong = client.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let ok = client.get(&url).bearer_auth(SECRET).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let body = ok.bytes().await.unwrap();
    let r = <geecache::peer::wire::Response as prost::Message>::decode(body).unwrap();
    assert_eq!(r.value, "630");

    let long = "k".repeat(3000);
    let cases = [
        ("/_geecache/scores/".to_owned(), 400),
        (format!("/_geecache/scores/{long}"), 400),
        ("/_geecache/scores/%zz".to_owned(), 400),
        ("/_geecache/nope/Tom".to_owned(), 404),
        ("/_geecache/scores/Nobody".to_owned(), 404),
        // Under the data prefix but not /{group}/{key}: malformed, said so.
        ("/_geecache/scores".to_owned(), 400),
        ("/_geecache".to_owned(), 400),
        ("/_geecachex/scores/Tom".to_owned(), 404),
    ];
    for (path, status) in cases {
        let r = client
            .get(format!("{peer}{path}"))
            .bearer_auth(SECRET)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
    }
    let post = client.post(&url).bearer_auth(SECRET).send().await.unwrap();
    assert_eq!(post.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_remote_key_is_served_from_the_hot_cache() {
    let c = start_cluster(None, &["--embedded-latency", "0ms", "--hot-min-qps", "5"]);
    let client = common::client();
    let ring = Ring::new(RingHash::Crc32, 150, c.peers.iter().map(|p| Member::new(p)));
    let remote = (1..)
        .map(|i: u64| i.to_string())
        .find(|k| *ring.owner(k).unwrap().name != *c.peers[0])
        .unwrap();
    let url = format!("{}/api/products/{remote}", c.nodes[0].api);
    for _ in 0..100 {
        assert_eq!(get(&client, &url).await.0, 200);
    }
    let hot = c.nodes[0]
        .metric(&client, "geecache_hot_cache_hits_total{group=\"products\"}")
        .await;
    let peer_loads = c.nodes[0]
        .metric(&client, "geecache_peer_loads_total{group=\"products\"}")
        .await;
    assert!(hot >= 80.0, "hot hits {hot}");
    assert!(peer_loads < 20.0, "peer loads {peer_loads}");
}

/// The peer client keeps its connections alive: 300 remote misses from one node open a
/// connection per loader at the owner, not one per request (`geecache_http_connections_total`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_loads_reuse_the_peer_connections() {
    let c = start_cluster(
        None,
        &["--embedded-latency", "0ms", "--hot-min-qps", "1e12"],
    );
    let client = common::client();
    let ring = Ring::new(RingHash::Crc32, 150, c.peers.iter().map(|p| Member::new(p)));
    let owned_by_1: Vec<String> = (1..5000)
        .map(|i: u64| i.to_string())
        .filter(|k| *ring.owner(k).unwrap().name == *c.peers[1])
        .take(300)
        .collect();
    let series = "geecache_http_connections_total{listener=\"peer\"}";
    let before = c.nodes[1].metric(&client, series).await;
    for key in &owned_by_1 {
        let url = format!("{}/api/products/{key}", c.nodes[0].api);
        assert_eq!(get(&client, &url).await.0, 200, "{key}");
    }
    let opened = c.nodes[1].metric(&client, series).await - before;
    let peer_loads = c.nodes[0]
        .metric(&client, "geecache_peer_loads_total{group=\"products\"}")
        .await;
    assert_eq!(peer_loads, 300.0);
    assert!(opened <= 4.0, "{opened} connections for 300 peer loads");
}

/// HEAD is GET without the body, on the data paths and the operational ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_like_get_without_a_body() {
    let node = NodeProc::spawn(&["--embedded-latency", "0ms"]);
    let client = common::client();
    for path in [
        "/api/products/7",
        "/api?key=Tom",
        "/health",
        "/ready",
        "/metrics",
        "/cluster",
    ] {
        let url = format!("{}{path}", node.api);
        let got = client.get(&url).send().await.unwrap();
        let (status, length) = (got.status(), got.bytes().await.unwrap().len());
        let head = client.head(&url).send().await.unwrap();
        assert_eq!(head.status(), status, "HEAD {path}");
        if path.starts_with("/api") {
            let declared = head.headers()["content-length"]
                .to_str()
                .unwrap()
                .to_owned();
            assert_eq!(declared, length.to_string(), "HEAD {path}");
        }
        assert!(
            head.bytes().await.unwrap().is_empty(),
            "HEAD {path} sent a body"
        );
    }
    let post = client
        .post(format!("{}/api/products/7", node.api))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers()["allow"], "GET, HEAD, DELETE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_a_local_cluster_behind_a_frontend() {
    // All eight ports from one run below the ephemeral range: nothing else in the tests can
    // take them in the meantime.
    let base = common::free_port_run(8);
    let (port, peer_port, api_port) = (base + 6, base, base + 3);
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("up.log");
    // Stopped (SIGTERM: `up` stops its nodes) on drop too, so that a failed assertion does not
    // leave a cluster running.
    struct Up(std::process::Child);
    impl Up {
        fn stop(&mut self) -> std::process::ExitStatus {
            if let Ok(Some(status)) = self.0.try_wait() {
                return status;
            }
            let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            self.0.wait().unwrap()
        }
    }
    impl Drop for Up {
        fn drop(&mut self) {
            self.stop();
        }
    }
    let mut up = Up(std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args(["up", "--nodes", "3", "--log-format", "json"])
        .args(["--port", &port.to_string()])
        .args(["--frontend-peer-port", &(base + 7).to_string()])
        .args(["--peer-port", &peer_port.to_string()])
        .args(["--api-port", &api_port.to_string()])
        .stdout(std::fs::File::create(&log_path).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap());
    let front = format!("http://127.0.0.1:{port}");
    // Generous: on a loaded CI machine four debug processes may take a while to form.
    let deadline = Instant::now() + Duration::from_secs(90);
    while common::blocking_status(&format!("{front}/ready")).ok() != Some(200) {
        assert!(
            Instant::now() < deadline,
            "frontend not ready; up's output:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let client = common::client();
    assert_eq!(
        get(&client, &format!("{front}/api?key=Tom")).await,
        (200, b"630".to_vec())
    );
    for id in 1..=30 {
        assert_eq!(
            get(&client, &format!("{front}/api/products/{id}")).await.0,
            200
        );
    }
    // up made a secret of its own for the cluster and said where it is; the peer port wants it.
    let out = std::fs::read_to_string(&log_path).unwrap();
    // Quiet: its banner, and from the nodes only warnings (RUST_LOG unset), no colour codes
    // in a file.
    assert!(out.contains("GeeCache-rs local cluster up"), "{out}");
    assert!(!out.contains("\"level\":\"INFO\""), "{out}");
    assert!(!out.contains('\x1b'), "{out}");
    let secret_file = out
        .lines()
        .find_map(|l| l.strip_prefix("Peer secret (made for this cluster): "))
        .expect("up prints where the secret is")
        .trim()
        .to_owned();
    let secret = std::fs::read_to_string(&secret_file).unwrap();
    let peer = format!("http://127.0.0.1:{peer_port}/_geecache/scores/Tom");
    assert_eq!(client.get(&peer).send().await.unwrap().status(), 401);
    let with = client
        .get(&peer)
        .bearer_auth(secret.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), 200);
    // The frontend follows the agreed ring: all three members within a few polls.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, cluster) = get(&client, &format!("{front}/cluster")).await;
        let v: serde_json::Value = serde_json::from_slice(&cluster).unwrap();
        assert_eq!(v["role"], "frontend");
        if v["members"].as_array().unwrap().len() == 3 {
            // The documented fields, as the members published them.
            for m in v["members"].as_array().unwrap() {
                assert!(
                    m["id"].as_u64().is_some_and(|id| (1..=3).contains(&id)),
                    "{v}"
                );
                assert!(
                    m["peer_url"]
                        .as_str()
                        .unwrap()
                        .starts_with("http://127.0.0.1:"),
                    "{v}"
                );
                assert!(
                    m["api_url"]
                        .as_str()
                        .unwrap()
                        .starts_with("http://127.0.0.1:"),
                    "{v}"
                );
                assert_eq!(m["state"], "followed", "{v}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "the frontend's ring: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // `cluster status` against the frontend prints a table of them, not of `-`.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args(["cluster", "status", "--addr", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{status:?}");
    // A reader that is gone before it prints (`| head` that exited) ends it quietly.
    let mut gone = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args(["cluster", "status", "--addr", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(gone.stdout.take());
    let ended = gone.wait_with_output().unwrap();
    assert!(
        ended.status.success(),
        "{}",
        String::from_utf8_lossy(&ended.stderr)
    );
    // Pointed at a peer port, it says which port it wants.
    let wrong = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args([
            "cluster",
            "status",
            "--addr",
            &format!("127.0.0.1:{peer_port}"),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        !wrong.status.success() && err.contains("peer port") && err.contains("client API"),
        "{err}"
    );
    for i in 0..3 {
        let row = table
            .lines()
            .find(|l| l.contains(&format!("http://127.0.0.1:{} ", peer_port + i)))
            .unwrap_or_else(|| panic!("no row for peer {i}: {table}"));
        assert!(row.starts_with(&(i + 1).to_string()), "{table}");
        assert!(
            row.contains(&format!("http://127.0.0.1:{}", api_port + i)),
            "{table}"
        );
    }

    // A node that dies leaves the others running: up says which, and how to start it again.
    let up_pid = up.0.id();
    let node2 = children(up_pid)
        .into_iter()
        .find(|(_, cmd)| cmd.contains(" --node-id 2 "))
        .expect("up's node2");
    let pid = |p: i32| nix::unistd::Pid::from_raw(p);
    nix::sys::signal::kill(pid(node2.0), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let said = loop {
        let out = std::fs::read_to_string(&log_path).unwrap();
        if out.contains("Start it again with: ") {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "up said nothing of node2:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(said.contains("node2 exited (signal: 9"), "{said}");
    assert!(said.contains(" --node-id 2 "), "the restart line: {said}");
    assert!(
        up.0.try_wait().unwrap().is_none(),
        "up stopped with one node gone"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&client, &format!("{front}/api?key=Tom")).await.0 != 200 {
        assert!(Instant::now() < deadline, "the frontend stopped answering");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // up SIGKILLed: its nodes die with it instead of keeping the next cluster's ports.
    let left: Vec<i32> = children(up_pid).into_iter().map(|(p, _)| p).collect();
    assert_eq!(left.len(), 3, "node1, node3 and the frontend");
    up.0.kill().unwrap();
    up.0.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while left
        .iter()
        .any(|&p| nix::sys::signal::kill(pid(p), None).is_ok() && !zombie(p))
    {
        assert!(Instant::now() < deadline, "up's nodes outlived it");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The processes whose parent is `parent`, with their command lines (arguments space-joined).
fn children(parent: u32) -> Vec<(i32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
            (ppid == parent).then(|| (pid, cmd.replace('\0', " ")))
        })
        .collect()
}

fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

#[test]
fn up_refuses_ports_that_are_taken() {
    let base = common::free_port_run(8);
    let taken = std::net::TcpListener::bind(("127.0.0.1", base + 4)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args(["up", "--nodes", "3"])
        .args(["--port", &(base + 6).to_string()])
        .args(["--frontend-peer-port", &(base + 7).to_string()])
        .args(["--peer-port", &base.to_string()])
        .args(["--api-port", &(base + 3).to_string()])
        .output()
        .unwrap();
    drop(taken);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        err.contains(&format!("port 127.0.0.1:{} is not free", base + 4)),
        "{err}"
    );
}

/// Keys of `products` (ids from `from`) that `owner` owns on the ring of `peers`.
fn owned_by(peers: &[String], owner: &str, from: u64, n: usize) -> Vec<String> {
    let ring = Ring::new(RingHash::Crc32, 150, peers.iter().map(|p| Member::new(p)));
    (from..)
        .map(|i| i.to_string())
        .filter(|k| *ring.owner(k).unwrap().name == *owner)
        .take(n)
        .collect()
}

/// The batch protocol as a caller sees it: one `POST /_fetch_batch`, each fetch answered with
/// what its `GET` would have been, by index; the hits first and at once, a load when it lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_batch_answers_each_fetch_and_a_hit_does_not_wait_for_a_load() {
    use geecache::peer::wire::{Fetch, FetchAnswer, FetchBatch};
    use prost::Message;
    let c = start_cluster(None, &["--embedded-latency", "1500ms"]);
    let client = common::client();
    let owner = &c.nodes[1];
    let keys = owned_by(&c.peers, &c.peers[1], 1, 2);
    let (warm, cold) = (&keys[0], &keys[1]);
    assert_eq!(
        get(&client, &format!("{}/api/products/{warm}", owner.api))
            .await
            .0,
        200
    );
    let fetch = |group: &str, key: &str| Fetch {
        group: group.into(),
        key: key.into(),
        epoch: 0,
    };
    let batch = FetchBatch {
        fetches: vec![
            fetch("products", cold),
            fetch("products", warm),
            fetch("nope", "1"),
            fetch("products", &"k".repeat(3000)),
        ],
    };
    let started = Instant::now();
    let mut res = client
        .post(format!("{}/_fetch_batch", c.peers[1]))
        .bearer_auth(SECRET)
        .body(batch.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut buf = bytes::BytesMut::new();
    let mut answers: Vec<(FetchAnswer, Duration)> = Vec::new();
    while let Some(chunk) = res.chunk().await.unwrap() {
        buf.extend_from_slice(&chunk);
        while let Ok(a) = FetchAnswer::decode_length_delimited(&mut buf.clone().freeze()) {
            let used = a.encoded_len() + prost::length_delimiter_len(a.encoded_len());
            let _ = buf.split_to(used);
            answers.push((a, started.elapsed()));
        }
    }
    let at = |i: u32| answers.iter().find(|(a, _)| a.index == i).unwrap();
    assert_eq!(answers.len(), 4, "{answers:?}");
    let (hit, hit_took) = at(1);
    assert_eq!(hit.status, 200);
    let value = geecache::source::demo::product_value(warm.parse().unwrap());
    assert_eq!(hit.response.as_ref().unwrap().value, value.as_bytes());
    assert!(*hit_took < Duration::from_millis(1000), "{hit_took:?}");
    let (load, load_took) = at(0);
    assert_eq!(load.status, 200);
    assert!(*load_took >= Duration::from_millis(1400), "{load_took:?}");
    assert_eq!(
        (at(2).0.status, at(2).0.error.as_str()),
        (404, "unknown_group")
    );
    assert_eq!((at(3).0.status, at(3).0.error.as_str()), (400, "bad_key"));
    // Too many fetches, a body that is no batch, a NUL in a key: 400 with a reason.
    let many = FetchBatch {
        fetches: (0..65).map(|i| fetch("products", &i.to_string())).collect(),
    };
    for body in [many.encode_to_vec(), b"\xff\xff\xff".to_vec()] {
        let r = client
            .post(format!("{}/_fetch_batch", c.peers[1]))
            .bearer_auth(SECRET)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("bad_batch"));
    }
    let nul = FetchBatch {
        fetches: vec![fetch("products", "1\0")],
    };
    let r = client
        .post(format!("{}/_fetch_batch", c.peers[1]))
        .bearer_auth(SECRET)
        .body(nul.encode_to_vec())
        .send()
        .await
        .unwrap();
    let body = r.bytes().await.unwrap();
    let a = FetchAnswer::decode_length_delimited(body).unwrap();
    assert_eq!((a.status, a.error.as_str()), (400, "bad_key"));
    // Without the secret, nothing.
    let open = client
        .post(format!("{}/_fetch_batch", c.peers[1]))
        .body(batch.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 401);
}

/// Remote fetches that wait for the same owner share requests (and each gets its own
/// answer), and hits for that owner do not queue behind its slow loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_for_a_busy_owner_share_requests_and_hits_pass_its_loads() {
    let c = start_cluster(
        None,
        &["--embedded-latency", "1500ms", "--hot-min-qps", "1e12"],
    );
    let client = &common::client();
    let (asker, owner) = (&c.nodes[0], &c.nodes[1]);
    let keys = owned_by(&c.peers, &c.peers[1], 1, 240);
    let missing = owned_by(&c.peers, &c.peers[1], 2_000_000, 10);
    let (warm, cold) = keys.split_at(200);
    let value = |k: &str| geecache::source::demo::product_value(k.parse().unwrap()).into_bytes();
    // The owner loads the warm keys (1.5 s, all at once).
    let warmed = join_all(
        warm.iter()
            .map(|k| async move { get(client, &format!("{}/api/products/{k}", owner.api)).await }),
    );
    assert!(warmed.await.iter().all(|(s, _)| *s == 200));

    // 50 loads the owner needs 1.5 s for, through the asker; then the warm keys.
    let slow = tokio::spawn({
        let (client, api) = (client.clone(), asker.api.clone());
        let keys: Vec<String> = cold.iter().chain(&missing).cloned().collect();
        async move {
            let (client, api) = (&client, &api);
            let asked = keys
                .iter()
                .map(|k| async move { get(client, &format!("{api}/api/products/{k}")).await });
            join_all(asked).await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let hits = join_all(warm.iter().map(|k| async move {
        let answer = get(client, &format!("{}/api/products/{k}", asker.api)).await;
        (answer, started.elapsed())
    }))
    .await;
    for (k, ((status, body), took)) in warm.iter().zip(&hits) {
        assert_eq!((*status, body), (200, &value(k)), "{k}");
        assert!(
            *took < Duration::from_millis(900),
            "{k} took {took:?} behind the loads"
        );
    }
    let loads = slow.await.unwrap();
    for (k, (status, body)) in cold.iter().zip(&loads) {
        assert_eq!((*status, body), (200, &value(k)), "{k}");
    }
    assert!(loads[cold.len()..].iter().all(|(s, _)| *s == 404));

    let batches = asker.metric(client, "geecache_peer_batches_total").await;
    let batched = asker
        .metric(client, "geecache_peer_batched_fetches_total")
        .await;
    assert!(
        batches >= 1.0 && batched >= 2.0 * batches,
        "{batches} batches of {batched}"
    );
    let errors = asker
        .metric(client, "geecache_peer_errors_total{group=\"products\"}")
        .await;
    assert_eq!(errors, 0.0);
}

/// A peer that does not serve batches (a GeeCache (Go) node: only `GET /_geecache/...`) is
/// asked one key per request, and every fetch still gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_batches_is_asked_one_key_at_a_time() {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let go = format!("http://{}", listener.local_addr().unwrap());
    let gets = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = gets.clone();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            HttpServer::new(move || {
                let counted = counted.clone();
                App::new().route(
                    "/_geecache/products/{key}",
                    web::get().to(move |key: web::Path<String>| {
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let body = geecache::peer::wire::Response {
                            value: format!("go-{key}").into(),
                            ..Default::default()
                        };
                        async move {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            HttpResponse::Ok().body(prost::Message::encode_to_vec(&body))
                        }
                    }),
                )
            })
            .workers(1)
            .listen(listener)
            .unwrap()
            .run()
            .await
            .unwrap()
        })
    });
    let me = format!("http://127.0.0.1:{}", free_port());
    let port: u16 = me.rsplit(':').next().unwrap().parse().unwrap();
    let peers = [me.clone(), go.clone()];
    let node = NodeProc::spawn_on(
        free_port(),
        port,
        &[
            "--self",
            &me,
            "--peers",
            &peers.join(","),
            "--insecure-open-peer-port",
            "--hot-min-qps",
            "1e12",
        ],
    );
    let client = &common::client();
    let keys = owned_by(&peers, &go, 1, 100);
    let node = &node;
    for round in 0..2 {
        let answers =
            join_all(keys.iter().map(|k| async move {
                get(client, &format!("{}/api/products/{k}", node.api)).await
            }))
            .await;
        for (k, (status, body)) in keys.iter().zip(&answers) {
            assert_eq!(
                (*status, body.as_slice()),
                (200, format!("go-{k}").as_bytes()),
                "round {round}"
            );
        }
    }
    // Every key asked by its own GET, twice (the hot cache is off).
    assert_eq!(
        gets.load(std::sync::atomic::Ordering::SeqCst),
        2 * keys.len()
    );
    assert!(node.log_text().contains("does not serve batched fetches"));
    let errors = node
        .metric(client, "geecache_peer_errors_total{group=\"products\"}")
        .await;
    assert_eq!(errors, 0.0);
}

/// `--peer-batch 1`: one request per fetch, however many wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_batch_one_sends_every_fetch_alone() {
    let c = start_cluster(
        None,
        &[
            "--embedded-latency",
            "50ms",
            "--hot-min-qps",
            "1e12",
            "--peer-batch",
            "1",
        ],
    );
    let client = &common::client();
    let keys = owned_by(&c.peers, &c.peers[1], 1, 200);
    let api = &c.nodes[0].api;
    for _ in 0..2 {
        let answers = join_all(
            keys.iter()
                .map(|k| async move { get(client, &format!("{api}/api/products/{k}")).await }),
        )
        .await;
        assert!(answers.iter().all(|(s, _)| *s == 200));
    }
    let batches = c.nodes[0]
        .metric(client, "geecache_peer_batches_total")
        .await;
    assert_eq!(batches, 0.0);
    let served = c.nodes[1]
        .metric(client, "geecache_server_requests_total{group=\"products\"}")
        .await;
    assert!(served >= 400.0, "{served}");
}
