//! Raft membership with real node processes on 127.0.0.1: formation, leader loss under load,
//! dead-node removal, rejoin from the data dir, graceful leave, 3 -> 5 -> 3.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{NodeProc, free_port_run};
use serde_json::Value;
use tempfile::TempDir;

struct Member {
    api_port: u16,
    peer_port: u16,
    data: PathBuf,
}

struct Raft {
    dir: TempDir,
    seeds: String,
    base: u16,
    expect: usize,
    dead_after: &'static str,
}

impl Raft {
    /// Ports base+1.. for peers and base+101.. for client APIs (room for 8 nodes).
    fn new(expect: usize, dead_after: &'static str) -> Raft {
        // Peers on base+1..=base+8, client APIs on base+101..=base+108.
        let base = free_port_run(108) - 1;
        let seeds = (1..=expect as u16)
            .map(|i| format!("http://127.0.0.1:{}", base + i))
            .collect::<Vec<_>>()
            .join(",");
        Raft {
            dir: tempfile::tempdir().unwrap(),
            seeds,
            base,
            expect,
            dead_after,
        }
    }

    fn member(&self, id: u64) -> Member {
        Member {
            api_port: self.base + 100 + id as u16,
            peer_port: self.base + id as u16,
            data: self.dir.path().join(format!("node{id}")),
        }
    }

    /// Starts node `id` without waiting for it to be ready.
    fn start(&self, id: u64) -> NodeProc {
        let m = self.member(id);
        let me = format!("http://127.0.0.1:{}", m.peer_port);
        let data = m.data.display().to_string();
        let expect = self.expect.to_string();
        let args = [
            "--node-id",
            &id.to_string(),
            "--self",
            &me,
            "--seeds",
            &self.seeds,
            "--bootstrap-expect",
            &expect,
            "--data-dir",
            &data,
            "--dead-after",
            self.dead_after,
            "--embedded-latency-ms",
            "1",
            "--peer-timeout",
            "1s",
        ];
        NodeProc::spawn_unready(m.api_port, m.peer_port, &args)
    }

    /// Starts nodes 1..=n at once and waits until they form one ring; returns them and the leader.
    async fn form(&self, client: &reqwest::Client, n: u64) -> (Vec<NodeProc>, u64) {
        let nodes: Vec<NodeProc> = (1..=n).map(|id| self.start(id)).collect();
        for node in &nodes {
            node.wait_ready();
        }
        let ids: Vec<u64> = (1..=n).collect();
        let leader = converged(client, self, &ids, &ids, Duration::from_secs(10)).await;
        (nodes, leader)
    }

    fn api(&self, id: u64) -> String {
        format!("http://127.0.0.1:{}", self.member(id).api_port)
    }
}

/// Waits until every listed node reports exactly `want` as members, one common epoch and a
/// leader among them; returns that leader.
async fn converged(
    client: &reqwest::Client,
    raft: &Raft,
    on: &[u64],
    want: &[u64],
    within: Duration,
) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let mut views = Vec::new();
        for id in on {
            views.push(common::cluster_view(client, &raft.api(*id)).await);
        }
        let ok = views
            .iter()
            .all(|v| v.as_ref().is_some_and(|v| common::member_ids(v) == want));
        if ok {
            let all: Vec<&Value> = views.iter().flatten().collect();
            let epoch = &all[0]["epoch"];
            let leader = all[0]["leader_id"].as_u64().unwrap_or(0);
            if leader != 0
                && want.contains(&leader)
                && all
                    .iter()
                    .all(|v| &v["epoch"] == epoch && v["leader_id"].as_u64() == Some(leader))
            {
                return leader;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no convergence on {want:?}: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Client load against `targets` until `finish`, which asserts that no request failed.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(targets: Vec<String>) -> Load {
        let (stop, done, failed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let tasks = (0..4)
            .map(|t| {
                let (targets, stop, done, failed, client) = (
                    targets.clone(),
                    stop.clone(),
                    done.clone(),
                    failed.clone(),
                    client.clone(),
                );
                tokio::spawn(async move {
                    let mut i: u64 = t;
                    while !stop.load(Ordering::SeqCst) {
                        i += 4;
                        let url = format!(
                            "{}/api/products/{}",
                            targets[i as usize % targets.len()],
                            1 + i % 3000
                        );
                        let ok = client
                            .get(&url)
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success());
                        done.fetch_add(1, Ordering::SeqCst);
                        if !ok {
                            failed.fetch_add(1, Ordering::SeqCst);
                            eprintln!("failed: {url}");
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            done,
            failed,
            tasks,
        }
    }

    async fn finish(self, during: &str) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let (done, failed) = (
            self.done.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        );
        eprintln!("{done} requests during {during}, {failed} failed");
        assert!(done > 100, "the load ran: {done}");
        assert_eq!(failed, 0);
    }
}

fn data_of(p: &Path) -> bool {
    p.join("raft.wal").exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_started_at_once_form_exactly_one_ring() {
    let client = reqwest::Client::new();
    for round in 0..3 {
        let raft = Raft::new(3, "10s");
        let started = Instant::now();
        let (_nodes, leader) = raft.form(&client, 3).await;
        eprintln!(
            "round {round}: formed in {:?}, leader {leader}",
            started.elapsed()
        );
        for id in 1..=3 {
            assert!(data_of(&raft.member(id).data));
            let (s, body) = common::get(&client, &format!("{}/api?key=Tom", raft.api(id))).await;
            assert_eq!((s, body), (200, b"630".to_vec()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_leader_under_load_fails_no_request() {
    let client = reqwest::Client::new();
    let raft = Raft::new(3, "2s");
    let (mut nodes, leader) = raft.form(&client, 3).await;
    let survivors: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();

    let load = Load::start(survivors.iter().map(|&i| raft.api(i)).collect());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let killed_at = Instant::now();
    let victim = &mut nodes[leader as usize - 1];
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let new_leader = converged(
        &client,
        &raft,
        &survivors,
        &survivors,
        Duration::from_secs(15),
    )
    .await;
    eprintln!(
        "leader {leader} killed: new leader {new_leader}, ring updated in {:?}",
        killed_at.elapsed()
    );
    assert_ne!(new_leader, leader);

    // Restarted with its data dir, it rejoins.
    nodes[leader as usize - 1] = raft.start(leader);
    converged(
        &client,
        &raft,
        &[1, 2, 3],
        &[1, 2, 3],
        Duration::from_secs(15),
    )
    .await;

    load.finish("the failover").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_five_and_leave_back_to_three_under_load() {
    let client = reqwest::Client::new();
    let raft = Raft::new(3, "10s");
    let (_nodes, _) = raft.form(&client, 3).await;

    let load = Load::start(vec![raft.api(1), raft.api(2)]);

    let started = Instant::now();
    let mut extra: Vec<NodeProc> = (4..=5).map(|id| raft.start(id)).collect();
    for n in &extra {
        n.wait_ready();
    }
    converged(
        &client,
        &raft,
        &[1, 2, 3, 4, 5],
        &[1, 2, 3, 4, 5],
        Duration::from_secs(15),
    )
    .await;
    eprintln!("3 -> 5 in {:?}", started.elapsed());
    let v = common::cluster_view(&client, &raft.api(1)).await.unwrap();
    let voters = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "voter")
        .count();
    assert_eq!(voters, 5);
    tokio::time::sleep(Duration::from_secs(1)).await; // serve with five for a while

    // Operator commands go through the log too: a weight change bumps every node's epoch.
    let before = common::cluster_view(&client, &raft.api(1)).await.unwrap()["epoch"]
        .as_u64()
        .unwrap();
    let r = client
        .post(format!(
            "http://127.0.0.1:{}/_raft/command",
            raft.member(2).peer_port
        ))
        .json(&serde_json::json!({"set_weight": {"id": 4, "weight": 2}}))
        .send()
        .await
        .unwrap();
    assert!(r.status() == 200 || r.status() == 421, "{}", r.status());
    if r.status() == 421 {
        let leader: Value = r.json().await.unwrap();
        let url = leader["leader"].as_str().unwrap().to_owned();
        let r = client
            .post(format!("{url}/_raft/command"))
            .json(&serde_json::json!({"set_weight": {"id": 4, "weight": 2}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    converged(
        &client,
        &raft,
        &[1, 2, 3, 4, 5],
        &[1, 2, 3, 4, 5],
        Duration::from_secs(5),
    )
    .await;
    let v = common::cluster_view(&client, &raft.api(3)).await.unwrap();
    assert_eq!(v["epoch"].as_u64().unwrap(), before + 1);
    let m4 = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == 4)
        .unwrap()
        .clone();
    assert_eq!(m4["weight"], 2);

    for n in extra.iter_mut().rev() {
        n.signal("TERM");
        let status = n.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
    }
    converged(
        &client,
        &raft,
        &[1, 2, 3],
        &[1, 2, 3],
        Duration::from_secs(15),
    )
    .await;

    load.finish("3 -> 5 -> 3").await;
}
