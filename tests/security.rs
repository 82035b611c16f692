//! The peer and Raft port under attack, with real node processes on 127.0.0.1: what a caller
//! without the secret gets, what a forged Raft message changes (nothing), poison-pill log
//! entries, a data dir from another cluster, the last voter's SIGTERM, leaderless readiness and
//! oversized peer answers.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::raft::{Raft, converged};
use common::{NodeProc, TEST_SECRET, free_port, get};
use protobuf::Message as _;
use raft::prelude::{Entry, HardState, Message as RaftMessage, MessageType};
use raft::storage::Storage as _;
use serde_json::{Value, json};

async fn view(client: &reqwest::Client, raft: &Raft, id: u64) -> Value {
    common::cluster_view(client, &raft.api(id)).await.unwrap()
}

/// A Raft batch as `/_raft/messages` takes it.
fn batch(messages: &[RaftMessage], from_url: &str, cluster_id: &str) -> Vec<u8> {
    prost::Message::encode_to_vec(&geecache::peer::wire::RaftBatch {
        messages: messages
            .iter()
            .map(|m| m.write_to_bytes().unwrap())
            .collect(),
        from_url: from_url.into(),
        cluster_id: cluster_id.into(),
    })
}

#[test]
fn a_node_without_a_peer_secret_does_not_start_and_open_mode_warns() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args([
            "node",
            "--api-addr",
            "127.0.0.1:0",
            "--peer-addr",
            "127.0.0.1:0",
        ])
        .env_remove("GEECACHE_PEER_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the peer port needs a secret") && err.contains("--insecure-open-peer-port"),
        "{err}"
    );

    let open = NodeProc::spawn(&["--insecure-open-peer-port"]);
    let log = open.log_text();
    assert!(
        log.contains("the peer port is OPEN") && log.contains("\"level\":\"WARN\""),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_on_the_peer_port_needs_the_secret() {
    let client = common::client();
    let raft = Raft::new(1, "10s");
    let (_nodes, _) = raft.form(&client, 1).await;
    let peer = raft.peer(1);
    let before = view(&client, &raft, 1).await;
    let join = json!({"id": 99, "peer_url": "http://127.0.0.1:8099", "api_url": "", "weight": 1});
    let calls: [(&str, &str, Vec<u8>); 10] = [
        ("POST", "/_raft/join", join.to_string().into_bytes()),
        (
            "POST",
            "/_raft/command",
            br#"{"set_weight":{"id":1,"weight":50}}"#.to_vec(),
        ),
        ("POST", "/_raft/remove", br#"{"id":1}"#.to_vec()),
        ("POST", "/_raft/messages", batch(&[], &peer, "")),
        ("GET", "/_raft/info", Vec::new()),
        ("GET", "/_raft/members", Vec::new()),
        ("GET", "/_geecache/scores/Tom", Vec::new()),
        (
            "POST",
            "/_fetch_batch",
            prost::Message::encode_to_vec(&geecache::peer::wire::FetchBatch {
                fetches: vec![geecache::peer::wire::Fetch {
                    group: "scores".into(),
                    key: "Tom".into(),
                    epoch: 0,
                }],
            }),
        ),
        ("POST", "/_handoff", Vec::new()),
        // Not even a malformed body or an unknown path tells more than 401.
        ("POST", "/_raft/join", b"{not json".to_vec()),
    ];
    for (method, path, body) in &calls {
        for auth in [
            None,
            Some("Bearer wrong-secret-0123456789"),
            Some(TEST_SECRET),
        ] {
            let mut req = client
                .request(method.parse().unwrap(), format!("{peer}{path}"))
                .body(body.clone());
            if let Some(a) = auth {
                req = req.header("authorization", a); // the secret without its scheme
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {auth:?}");
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"], "unauthorized", "{method} {path}");
        }
    }
    let r = client.get(format!("{peer}/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 401, "an unknown path without the secret");

    // Nothing changed: one member, same epoch, Tom still Tom.
    let after = view(&client, &raft, 1).await;
    assert_eq!(common::member_ids(&after), [1]);
    assert_eq!(after["epoch"], before["epoch"]);
    assert_eq!(after["members"][0]["weight"], 1);
    assert_eq!(
        get(&client, &format!("{}/api?key=Tom", raft.api(1))).await,
        (200, b"630".to_vec())
    );

    // The scheme in any case, with the right secret, gets through.
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = client
            .get(format!("{peer}/_raft/info"))
            .header("authorization", format!("{scheme} {TEST_SECRET}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_changes_are_refused_before_they_are_proposed() {
    let client = common::client();
    let raft = Raft::new(1, "10s");
    let (_nodes, _) = raft.form(&client, 1).await;
    let epoch = view(&client, &raft, 1).await["epoch"].clone();
    let cases = [
        (
            "/_raft/command",
            json!({"set_weight": {"id": 1, "weight": 4294967295u32}}),
            400,
            "bad_weight",
        ),
        (
            "/_raft/command",
            json!({"set_weight": {"id": 1, "weight": 0}}),
            400,
            "bad_weight",
        ),
        (
            "/_raft/command",
            json!({"set_weight": {"id": 7, "weight": 2}}),
            404,
            "unknown_member",
        ),
        (
            "/_raft/command",
            json!({"purge_group": "nope"}),
            404,
            "unknown_group",
        ),
        ("/_raft/command", json!({"reboot": true}), 400, "bad_body"),
        ("/_raft/remove", json!({"id": 99}), 404, "unknown_member"),
        ("/_raft/remove", json!({"id": "one"}), 400, "bad_body"),
        (
            "/_raft/join",
            json!({"id": 5, "peer_url": "not a url", "api_url": "", "weight": 1}),
            400,
            "bad_url",
        ),
        (
            "/_raft/join",
            json!({"id": 5, "peer_url": "http://127.0.0.1:1", "api_url": "", "weight": 1000}),
            400,
            "bad_weight",
        ),
        (
            "/_raft/join",
            json!({"id": 0, "peer_url": "http://127.0.0.1:1", "api_url": "", "weight": 1}),
            400,
            "bad_member",
        ),
        (
            "/_raft/join",
            json!({"id": 5, "peer_url": raft.peer(1), "api_url": "", "weight": 1}),
            400,
            "url_in_use",
        ),
    ];
    for (path, body, status, code) in cases {
        let started = Instant::now();
        let (s, v) = raft.post(&client, 1, path, &body).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (status, Some(code)),
            "{path} {body}: {v}"
        );
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path} {body} took {:?}",
            started.elapsed()
        );
    }
    let after = view(&client, &raft, 1).await;
    assert_eq!(after["epoch"], epoch, "nothing was committed");
    // A good change still goes through.
    let (s, _) = raft
        .post(
            &client,
            1,
            "/_raft/command",
            &json!({"set_weight": {"id": 1, "weight": 3}}),
        )
        .await;
    assert_eq!(s, 200);
}

/// Appends `entries` (with the log's current term) to the stopped node's Raft log and commits
/// them, as a log written by an older version or by hand would hold them.
fn append_committed(dir: &std::path::Path, data: &[Vec<u8>]) {
    let mut store = geecache::raft::storage::DiskStorage::open(dir).unwrap();
    let last = store.last_index().unwrap();
    let term = store.initial_state().unwrap().hard_state.term;
    let entries: Vec<Entry> = data
        .iter()
        .enumerate()
        .map(|(i, d)| Entry {
            index: last + 1 + i as u64,
            term,
            data: d.clone().into(),
            ..Default::default()
        })
        .collect();
    store.append(&entries).unwrap();
    let mut hs: HardState = store.initial_state().unwrap().hard_state;
    hs.commit = last + data.len() as u64;
    store.set_hard_state(hs).unwrap();
    store.sync().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_holding_poison_entries_replays_without_a_crash() {
    use geecache::raft::membership::{RingCommand, SetWeight, command};
    let client = common::client();
    let raft = Raft::new(1, "10s");
    let (mut nodes, _) = raft.form(&client, 1).await;
    let epoch = view(&client, &raft, 1).await["epoch"].as_u64().unwrap();
    nodes[0].child.kill().unwrap();
    nodes[0].child.wait().unwrap();

    let huge = RingCommand {
        op: Some(command::Op::SetWeight(SetWeight {
            id: 1,
            weight: u32::MAX,
        })),
    };
    append_committed(
        &raft.member(1).data,
        &[
            prost::Message::encode_to_vec(&huge),
            b"\xff\xfe not a command".to_vec(),
        ],
    );
    // Twice: the first start applies the entries, the second replays a log that holds them.
    for round in 0..2 {
        let node = raft.start(1);
        node.wait_ready();
        converged(&client, &raft, &[1], &[1], Duration::from_secs(10)).await;
        let v = view(&client, &raft, 1).await;
        assert_eq!(v["members"][0]["weight"], 1, "round {round}");
        assert_eq!(v["epoch"].as_u64(), Some(epoch), "round {round}");
        if round == 0 {
            let weight = node
                .metric(
                    &client,
                    "geecache_raft_entries_skipped_total{reason=\"bad_weight\"}",
                )
                .await;
            let garbage = node
                .metric(
                    &client,
                    "geecache_raft_entries_skipped_total{reason=\"bad_entry\"}",
                )
                .await;
            assert_eq!((weight, garbage), (1.0, 1.0));
            assert!(node.log_text().contains("skipped a committed raft entry"));
        }
        assert_eq!(
            get(&client, &format!("{}/api?key=Tom", raft.api(1))).await,
            (200, b"630".to_vec())
        );
        drop(node);
    }
    let node = raft.start(1);
    node.wait_ready();
    converged(&client, &raft, &[1], &[1], Duration::from_secs(10)).await;
    let (s, v) = raft
        .post(
            &client,
            1,
            "/_raft/command",
            &json!({"set_weight": {"id": 1, "weight": 2}}),
        )
        .await;
    assert_eq!((s, v["epoch"].as_u64()), (200, Some(epoch + 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_raft_messages_from_non_members_change_nothing() {
    let client = common::client();
    let raft = Raft::new(3, "3s");
    let (_nodes, leader) = raft.form(&client, 3).await;
    let before = view(&client, &raft, 1).await;
    let (term, cluster) = (
        before["term"].as_u64().unwrap(),
        before["cluster_id"].as_str().unwrap().to_owned(),
    );
    assert_eq!(cluster.len(), 32, "a cluster id: {before}");

    // A fake member joins (with the secret: an insider, or an open port), then only forged
    // heartbeat answers speak for it, from a URL that is not its own.
    let fake = format!("http://127.0.0.1:{}", free_port());
    let (s, _) = raft
        .post(
            &client,
            1,
            "/_raft/join",
            &json!({"id": 99, "peer_url": fake, "api_url": "", "weight": 1}),
        )
        .await;
    assert_eq!(s, 200);
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_secs(6) {
        for id in 1..=3u64 {
            let mut beat = RaftMessage::default();
            beat.set_msg_type(MessageType::MsgHeartbeat);
            (beat.from, beat.to, beat.term) = (42, id, term + 1000);
            let mut alive = RaftMessage::default();
            alive.set_msg_type(MessageType::MsgHeartbeatResponse);
            (alive.from, alive.to, alive.term) = (99, id, term);
            for (m, url, cid) in [
                (&beat, "http://127.0.0.1:1", cluster.as_str()),
                (&alive, "http://127.0.0.1:2", cluster.as_str()),
                (&beat, &raft.peer(1), "another-cluster"),
            ] {
                let r = client
                    .post(format!("{}/_raft/messages", raft.peer(id)))
                    .bearer_auth(TEST_SECRET)
                    .body(batch(std::slice::from_ref(m), url, cid))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 204);
                sent += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The leader removed the silent fake member despite the forged answers; nobody's term or
    // leader moved.
    let same = converged(
        &client,
        &raft,
        &[1, 2, 3],
        &[1, 2, 3],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(same, leader);
    for id in 1..=3 {
        let v = view(&client, &raft, id).await;
        assert_eq!(v["term"].as_u64(), Some(term), "node {id}: {v}");
        assert_eq!(v["cluster_id"].as_str(), Some(cluster.as_str()));
    }
    let mut dropped = 0.0;
    for id in 1..=3 {
        let node_api = raft.api(id);
        let text = client
            .get(format!("{node_api}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        dropped += text
            .lines()
            .filter(|l| l.starts_with("geecache_raft_messages_dropped_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert!(
        dropped >= sent as f64,
        "dropped {dropped} of {sent} forged messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_data_dir_is_from_another_cluster_is_refused() {
    let client = common::client();
    let raft = Raft::new(1, "10s");
    // Cluster A: nodes 1 and 2.
    let (mut nodes, _) = raft.form(&client, 1).await;
    let two = raft.start(2);
    two.wait_ready();
    converged(&client, &raft, &[1, 2], &[1, 2], Duration::from_secs(10)).await;
    let a = view(&client, &raft, 2).await["cluster_id"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(two);
    drop(nodes.remove(0));

    // Cluster B: node 1 again, on the same address, with an empty data dir.
    std::fs::remove_dir_all(&raft.member(1).data).unwrap();
    let one = raft.start(1);
    one.wait_ready();
    converged(&client, &raft, &[1], &[1], Duration::from_secs(10)).await;
    let b_view = view(&client, &raft, 1).await;
    let b = b_view["cluster_id"].as_str().unwrap().to_owned();
    assert_ne!(a, b);

    // Node 2 comes back with cluster A's data dir: it says so and stops.
    let mut two = raft.start(2);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = two.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 kept running: {}",
            two.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!status.success());
    let log = two.log_text();
    assert!(
        log.contains(&format!("belongs to cluster {a}"))
            && log.contains(&b)
            && log.contains("empty --data-dir"),
        "{log}"
    );
    let after = view(&client, &raft, 1).await;
    assert_eq!(common::member_ids(&after), [1]);
    assert_eq!(after["term"], b_view["term"]);
    assert_eq!(after["cluster_id"].as_str(), Some(b.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_voter_survives_sigterm_and_restart() {
    let client = common::client();
    let raft = Raft::new(1, "10s");
    let (mut nodes, _) = raft.form(&client, 1).await;
    let epoch = view(&client, &raft, 1).await["epoch"].as_u64().unwrap();
    nodes[0].signal("TERM");
    let status = nodes[0].child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        nodes[0]
            .log_text()
            .contains("the last voter stays in the ring")
    );

    let node = raft.start(1);
    node.wait_ready();
    let leader = converged(&client, &raft, &[1], &[1], Duration::from_secs(10)).await;
    assert_eq!(leader, 1);
    let (s, v) = raft
        .post(
            &client,
            1,
            "/_raft/command",
            &json!({"set_weight": {"id": 1, "weight": 2}}),
        )
        .await;
    assert_eq!((s, v["epoch"].as_u64()), (200, Some(epoch + 1)), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_a_leader_is_not_ready() {
    let client = common::client();
    let raft = Raft::new(3, "30s");
    let (mut nodes, _) = raft.form(&client, 3).await;
    for n in &mut nodes[1..] {
        n.child.kill().unwrap();
        n.child.wait().unwrap();
    }
    let ready = format!("{}/ready", raft.api(1));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = client.get(&ready).send().await.unwrap();
        if r.status() == 503 {
            assert!(r.text().await.unwrap().contains("no raft leader"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 stayed ready without a leader"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // It still answers what it holds or can load.
    assert_eq!(
        get(&client, &format!("{}/api?key=Tom", raft.api(1)))
            .await
            .0,
        200
    );
}

/// A peer that answers every GET with a 200 whose body is `size` bytes, without a
/// Content-Length (read until the connection closes), so only reading can find its size.
fn oversized_peer(size: usize) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\nconnection: close\r\n\r\n",
            );
            // A batch of fetches is answered with length-delimited answers: one that says it
            // is `size` bytes long.
            if buf[..n].starts_with(b"POST /_fetch_batch ") {
                let mut head = Vec::new();
                prost::encode_length_delimiter(size, &mut head).unwrap();
                let _ = conn.write_all(&head);
            }
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = size;
            while left > 0 {
                let n = left.min(chunk.len());
                if conn.write_all(&chunk[..n]).is_err() {
                    break;
                }
                left -= n;
            }
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_answer_over_the_value_bound_is_refused() {
    let client = common::client();
    let fake = format!("http://127.0.0.1:{}", oversized_peer(8 << 20));
    let peer_port = free_port();
    let me = format!("http://127.0.0.1:{peer_port}");
    let peers = format!("{me},{fake}");
    let node = NodeProc::spawn_on(
        free_port(),
        peer_port,
        &[
            "--self",
            &me,
            "--peers",
            &peers,
            "--max-value-bytes",
            "4096",
            "--embedded-latency",
            "0ms",
        ],
    );
    let ring = geecache::ring::Ring::new(
        geecache::ring::RingHash::Crc32,
        150,
        [&me, &fake].map(|p| geecache::ring::Member::new(p)),
    );
    let key = (1..)
        .map(|i: u64| i.to_string())
        .find(|k| *ring.owner(k).unwrap().name == *fake)
        .unwrap();
    let started = Instant::now();
    let (status, body) = get(&client, &format!("{}/api/products/{key}", node.api)).await;
    // The owner's answer is refused as a peer error; the node loads the key itself.
    assert_eq!(status, 200);
    assert_eq!(
        body,
        geecache::source::demo::product_value(key.parse().unwrap()).into_bytes()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    let errors = node
        .metric(&client, "geecache_peer_errors_total{group=\"products\"}")
        .await;
    assert_eq!(errors, 1.0);
    assert!(
        node.log_text().contains("peer answer is larger than"),
        "{}",
        node.log_text()
    );
}

#[test]
fn secret_init_makes_a_private_random_secret_once() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("peer-secret");
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
            .args(["secret", "init"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::read_to_string(&file).unwrap()
    };
    let first = run();
    let secret = first.trim();
    assert_eq!(secret.len(), 64);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(run(), first, "an existing secret is kept");
    let other = dir.path().join("other");
    std::fs::write(&other, "").unwrap();
    std::fs::remove_file(&other).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_geecache"))
        .args(["secret", "init"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_ne!(std::fs::read_to_string(&other).unwrap(), first, "random");
}
