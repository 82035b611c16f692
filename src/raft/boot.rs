//! How a node finds its cluster: bootstrap a new one, join an existing one, rejoin after being
//! removed, leave on shutdown; and how a frontend follows the agreed ring without voting.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::Addr;
use futures_util::future::join_all;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::discovery::Discovery;
use super::membership::{MemberInfo, Membership};
use crate::actors::raft::{Bootstrap, RaftActor, Remove, Status};
use crate::cluster::Cluster;
use crate::http::raft::CLUSTER_HEADER;
use crate::ring::RingHash;

/// HTTP to other members' peer ports, with the peer secret.
#[derive(Clone)]
pub struct PeerHttp {
    client: reqwest::Client,
    auth: Option<String>,
}

impl PeerHttp {
    pub fn new(secret: Option<&str>) -> PeerHttp {
        PeerHttp {
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(12))
                .build()
                .unwrap_or_default(),
            auth: secret.map(|s| format!("Bearer {s}")),
        }
    }

    async fn get(&self, url: &str) -> Option<Value> {
        let mut req = self.client.get(url).timeout(Duration::from_secs(1));
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
        }
        let res = req.send().await.ok()?;
        if !res.status().is_success() {
            return None;
        }
        res.json().await.ok()
    }

    async fn post(&self, url: &str, body: &Value, cluster_id: &str) -> Option<(u16, Value)> {
        let mut req = self.client.post(url).json(body);
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
        }
        if !cluster_id.is_empty() {
            req = req.header(CLUSTER_HEADER, cluster_id);
        }
        let res = req.send().await.ok()?;
        let status = res.status().as_u16();
        Some((status, res.json().await.unwrap_or(Value::Null)))
    }

    /// `/_raft/info` of every candidate that answers: (its URL, its status).
    async fn infos(&self, candidates: &[String]) -> Vec<(String, Value)> {
        let calls = candidates.iter().map(|c| async move {
            self.get(&format!("{c}/_raft/info"))
                .await
                .map(|v| (c.clone(), v))
        });
        join_all(calls).await.into_iter().flatten().collect()
    }

    /// Asks the cluster that `via` belongs to, following redirects to its leader, to apply
    /// `path` (`join` or `remove`) with `body`, on behalf of a member of `cluster_id`.
    async fn change(&self, via: &str, path: &str, body: &Value, cluster_id: &str) -> Changed {
        let mut target = via.to_owned();
        for _ in 0..3 {
            match self
                .post(&format!("{target}/_raft/{path}"), body, cluster_id)
                .await
            {
                Some((200, _)) => return Changed::Applied,
                Some((421, v)) => match v["leader"].as_str() {
                    Some(leader) => target = leader.to_owned(),
                    None => return Changed::Failed,
                },
                Some((409, v)) => {
                    return Changed::Foreign(v["message"].as_str().unwrap_or("").to_owned());
                }
                _ => return Changed::Failed,
            }
        }
        Changed::Failed
    }
}

/// What became of a membership change asked of the cluster.
enum Changed {
    Applied,
    /// The cluster is another one than this node's data dir belongs to.
    Foreign(String),
    Failed,
}

fn leader_of(url: &str, info: &Value) -> String {
    info["leader_peer_url"].as_str().unwrap_or(url).to_owned()
}

/// What a member's boot loop needs.
pub struct MemberLoop {
    pub raft: Addr<RaftActor>,
    pub me: MemberInfo,
    pub discovery: Arc<dyn Discovery>,
    pub bootstrap_expect: usize,
    pub http: PeerHttp,
    /// Set at SIGTERM: stop rejoining.
    pub leaving: Arc<AtomicBool>,
    /// Where the node says that it cannot go on.
    pub fatal: mpsc::Sender<String>,
    pub data_dir: PathBuf,
}

impl MemberLoop {
    fn foreign(&self, ours: &str, url: &str, theirs: &str) -> String {
        format!(
            "the data dir {dir} belongs to cluster {ours}, but {url} is in cluster {theirs}: this \
             node cannot join it. To add it to {theirs}, start it with an empty --data-dir (or \
             delete {dir}); to go back to {ours}, point --seeds at that cluster's members",
            dir = self.data_dir.display()
        )
    }
}

/// Runs for the node's life: forms or joins the cluster, then rejoins whenever the agreed
/// membership no longer holds this node (removed while unreachable), until `leaving`. A node
/// whose data dir belongs to another cluster than the one it finds says so and stops.
pub async fn run_member(m: MemberLoop) {
    let body = serde_json::to_value(&m.me).unwrap_or(Value::Null);
    let mut logged = false;
    let mut leaderless = 0;
    while !m.leaving.load(Ordering::SeqCst) {
        let Ok(status) = m.raft.send(Status).await else {
            return;
        };
        let member = status.members.iter().any(|s| s.info.id == m.me.id);
        leaderless = if status.leader_id == 0 {
            leaderless + 1
        } else {
            0
        };
        // A member that hears from a leader is settled. One that has heard from none for a
        // while may have been removed while it was away: ask the others below.
        if status.initialized && member && leaderless < 8 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        let candidates: Vec<String> = m
            .discovery
            .candidates()
            .await
            .into_iter()
            .filter(|c| *c != m.me.peer_url)
            .collect();
        let infos = m.http.infos(&candidates).await;
        let existing = infos
            .iter()
            .find(|(_, i)| i["initialized"] == true && i["leader_id"].as_u64().unwrap_or(0) != 0);
        let listed = |info: &Value| {
            info["members"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|s| s["id"].as_u64() == Some(m.me.id)))
        };
        let ours = status.cluster_id.as_str();
        if let Some((url, info)) = existing {
            let theirs = info["cluster_id"].as_str().unwrap_or_default();
            if !ours.is_empty() && !theirs.is_empty() && ours != theirs {
                let _ = m.fatal.send(m.foreign(ours, url, theirs)).await;
                return;
            }
        }
        if let Some((url, info)) = existing.filter(|(_, i)| !(member && listed(i))) {
            let leader = leader_of(url, info);
            match m.http.change(&leader, "join", &body, ours).await {
                Changed::Applied => tracing::info!(%leader, "joined the cluster"),
                Changed::Foreign(why) => {
                    let _ = m.fatal.send(why).await;
                    return;
                }
                Changed::Failed => {}
            }
        } else if !status.initialized && infos.iter().all(|(_, i)| i["initialized"] != true) {
            let mut ids: Vec<u64> = infos
                .iter()
                .filter_map(|(_, i)| i["node_id"].as_u64())
                .collect();
            ids.push(m.me.id);
            ids.sort_unstable();
            ids.dedup();
            if ids.len() >= m.bootstrap_expect && ids[0] == m.me.id {
                match m.raft.send(Bootstrap).await {
                    Ok(Ok(())) => tracing::info!(candidates = ids.len(), "formed a new cluster"),
                    Ok(Err(e)) => tracing::error!(error = %e, "bootstrap failed"),
                    Err(_) => return,
                }
            } else if !logged {
                tracing::info!(
                    visible = ids.len(),
                    expect = m.bootstrap_expect,
                    "waiting for the cluster to form"
                );
                logged = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Removes this node from the agreed membership (SIGTERM), waiting up to `timeout`. The last
/// voter stays: removing it would leave a cluster that can never elect a leader again, so it
/// stops as a member and resumes its cluster when restarted.
pub async fn leave(raft: &Addr<RaftActor>, id: u64, http: &PeerHttp, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        let Ok(status) = raft.send(Status).await else {
            return false;
        };
        if !status.members.iter().any(|m| m.info.id == id) {
            return true;
        }
        let voters: Vec<u64> = status
            .members
            .iter()
            .filter(|m| m.role == "voter")
            .map(|m| m.info.id)
            .collect();
        if voters == [id] {
            tracing::info!("the last voter stays in the ring; restart it to resume the cluster");
            return false;
        }
        let done = if status.leader_id == id {
            let (tx, rx) = oneshot::channel();
            raft.try_send(Remove {
                id,
                cluster_id: status.cluster_id.clone(),
                reply: tx,
            })
            .is_ok()
                && matches!(
                    tokio::time::timeout(Duration::from_secs(3), rx).await,
                    Ok(Ok(Ok(_)))
                )
        } else if let Some(leader) = &status.leader_peer_url {
            let body = serde_json::json!({ "id": id });
            matches!(
                http.change(leader, "remove", &body, &status.cluster_id)
                    .await,
                Changed::Applied
            )
        } else {
            false
        };
        if done {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// A frontend's view of the ring: polls members' `/_raft/members` and adopts newer epochs, of
/// the first cluster it finds (answers from another cluster id are ignored).
pub async fn follow_ring(
    cluster: Arc<Cluster>,
    discovery: Arc<dyn Discovery>,
    http: PeerHttp,
    hash: RingHash,
    vnodes: usize,
) {
    let mut following = String::new();
    loop {
        // Ask every candidate and adopt the newest ring any of them has: a member that lags
        // (or is cut off) must not hold the frontend back.
        let candidates = discovery.candidates().await;
        let answers = join_all(candidates.iter().map(|c| {
            let http = &http;
            async move { http.get(&format!("{c}/_raft/members")).await }
        }))
        .await;
        let newest = answers
            .into_iter()
            .flatten()
            .filter(|v| {
                let id = v["cluster_id"].as_str().unwrap_or_default();
                following.is_empty() || id.is_empty() || id == following
            })
            .max_by_key(|v| v["epoch"].as_u64().unwrap_or(0));
        if let Some(v) = newest {
            let epoch = v["epoch"].as_u64().unwrap_or(0);
            let members: Vec<MemberInfo> =
                serde_json::from_value(v["members"].clone()).unwrap_or_default();
            if epoch > cluster.epoch() && !members.is_empty() {
                let mut m = Membership::default();
                for info in members {
                    if let Err(e) = m.add(info) {
                        tracing::warn!(error = %e, "ignoring an invalid member of the ring");
                    }
                }
                cluster.set(m.ring(hash, vnodes), epoch);
                if following.is_empty() {
                    following = v["cluster_id"].as_str().unwrap_or_default().to_owned();
                }
                tracing::info!(epoch, cluster_id = %following, "following a new ring");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
