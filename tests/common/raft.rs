//! A Raft cluster of real node processes on 127.0.0.1 ports, for the tests that form, break and
//! change one.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::{NodeProc, TEST_SECRET, free_port_run};

pub struct Member {
    pub api_port: u16,
    pub peer_port: u16,
    pub data: PathBuf,
}

pub struct Raft {
    dir: TempDir,
    seeds: String,
    base: u16,
    expect: usize,
    dead_after: &'static str,
}

impl Raft {
    /// Ports base+1.. for peers and base+101.. for client APIs (room for 8 nodes).
    pub fn new(expect: usize, dead_after: &'static str) -> Raft {
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

    pub fn member(&self, id: u64) -> Member {
        Member {
            api_port: self.base + 100 + id as u16,
            peer_port: self.base + id as u16,
            data: self.dir.path().join(format!("node{id}")),
        }
    }

    /// Starts node `id` without waiting for it to be ready.
    pub fn start(&self, id: u64) -> NodeProc {
        self.start_with(id, &[])
    }

    /// Starts node `id` with more flags, without waiting for it to be ready.
    pub fn start_with(&self, id: u64, extra: &[&str]) -> NodeProc {
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
            "--embedded-latency",
            "1ms",
            "--peer-timeout",
            "1s",
        ];
        let args: Vec<&str> = args.iter().chain(extra).copied().collect();
        NodeProc::spawn_unready(m.api_port, m.peer_port, &args)
    }

    /// Starts nodes 1..=n at once and waits until they form one ring; returns them and the leader.
    pub async fn form(&self, client: &reqwest::Client, n: u64) -> (Vec<NodeProc>, u64) {
        let nodes: Vec<NodeProc> = (1..=n).map(|id| self.start(id)).collect();
        for node in &nodes {
            node.wait_ready();
        }
        let ids: Vec<u64> = (1..=n).collect();
        let leader = converged(client, self, &ids, &ids, Duration::from_secs(10)).await;
        (nodes, leader)
    }

    pub fn api(&self, id: u64) -> String {
        format!("http://127.0.0.1:{}", self.member(id).api_port)
    }
}

/// Waits until every listed node reports exactly `want` as members, one common epoch and a
/// leader among them; returns that leader.
pub async fn converged(
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
            views.push(super::cluster_view(client, &raft.api(*id)).await);
        }
        let ok = views
            .iter()
            .all(|v| v.as_ref().is_some_and(|v| super::member_ids(v) == want));
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

impl Raft {
    pub fn peer(&self, id: u64) -> String {
        format!("http://127.0.0.1:{}", self.member(id).peer_port)
    }

    /// POSTs JSON to a Raft endpoint of node `id` with the peer secret, following a 421 to the
    /// leader; returns the last status and body.
    pub async fn post(
        &self,
        client: &reqwest::Client,
        id: u64,
        path: &str,
        body: &Value,
    ) -> (u16, Value) {
        let mut url = format!("{}{path}", self.peer(id));
        for _ in 0..3 {
            let r = client
                .post(&url)
                .bearer_auth(TEST_SECRET)
                .json(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            match (status, v["leader"].as_str()) {
                (421, Some(leader)) => url = format!("{leader}{path}"),
                _ => return (status, v),
            }
        }
        panic!("no leader answered {path}");
    }
}
