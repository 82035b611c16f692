//! Raft membership with real node processes on 127.0.0.1: formation, leader loss under load,
//! dead-node removal, rejoin from the data dir, graceful leave, 3 -> 5 -> 3.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::NodeProc;
use common::raft::{Raft, converged};

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
    let (status, _) = raft
        .post(
            &client,
            2,
            "/_raft/command",
            &serde_json::json!({"set_weight": {"id": 4, "weight": 2}}),
        )
        .await;
    assert_eq!(status, 200);
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
