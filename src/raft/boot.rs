//! How a node finds its cluster: bootstrap a new one, join an existing one, rejoin after being
//! removed, leave on shutdown; and how a frontend follows the agreed ring without voting.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::Addr;
use futures_util::future::join_all;
use serde_json::Value;
use tokio::sync::oneshot;

use super::discovery::Discovery;
use super::membership::{MemberInfo, Membership};
use crate::actors::raft::{Bootstrap, RaftActor, Remove, Status};
use crate::cluster::Cluster;
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

    async fn post(&self, url: &str, body: &Value) -> Option<(u16, Value)> {
        let mut req = self.client.post(url).json(body);
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
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
    /// `path` (`join` or `remove`) with `body`. True once applied.
    async fn change(&self, via: &str, path: &str, body: &Value) -> bool {
        let mut target = via.to_owned();
        for _ in 0..3 {
            match self.post(&format!("{target}/_raft/{path}"), body).await {
                Some((200, _)) => return true,
                Some((421, v)) => match v["leader"].as_str() {
                    Some(leader) => target = leader.to_owned(),
                    None => return false,
                },
                _ => return false,
            }
        }
        false
    }
}

fn leader_of(url: &str, info: &Value) -> String {
    info["leader_peer_url"].as_str().unwrap_or(url).to_owned()
}

/// Runs for the node's life: forms or joins the cluster, then rejoins whenever the agreed
/// membership no longer holds this node (removed while unreachable), until `leaving`.
pub async fn run_member(
    raft: Addr<RaftActor>,
    me: MemberInfo,
    discovery: Arc<dyn Discovery>,
    bootstrap_expect: usize,
    http: PeerHttp,
    leaving: Arc<AtomicBool>,
) {
    let body = serde_json::to_value(&me).unwrap_or(Value::Null);
    let mut logged = false;
    let mut leaderless = 0;
    while !leaving.load(Ordering::SeqCst) {
        let Ok(status) = raft.send(Status).await else {
            return;
        };
        let member = status.members.iter().any(|m| m.info.id == me.id);
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
        let candidates: Vec<String> = discovery
            .candidates()
            .await
            .into_iter()
            .filter(|c| *c != me.peer_url)
            .collect();
        let infos = http.infos(&candidates).await;
        let existing = infos
            .iter()
            .find(|(_, i)| i["initialized"] == true && i["leader_id"].as_u64().unwrap_or(0) != 0);
        let listed = |info: &Value| {
            info["members"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|m| m["id"].as_u64() == Some(me.id)))
        };
        if let Some((url, info)) = existing.filter(|(_, i)| !(member && listed(i))) {
            let leader = leader_of(url, info);
            if http.change(&leader, "join", &body).await {
                tracing::info!(%leader, "joined the cluster");
            }
        } else if !status.initialized && infos.iter().all(|(_, i)| i["initialized"] != true) {
            let mut ids: Vec<u64> = infos
                .iter()
                .filter_map(|(_, i)| i["node_id"].as_u64())
                .collect();
            ids.push(me.id);
            ids.sort_unstable();
            ids.dedup();
            if ids.len() >= bootstrap_expect && ids[0] == me.id {
                match raft.send(Bootstrap).await {
                    Ok(Ok(())) => tracing::info!(candidates = ids.len(), "formed a new cluster"),
                    Ok(Err(e)) => tracing::error!(error = %e, "bootstrap failed"),
                    Err(_) => return,
                }
            } else if !logged {
                tracing::info!(
                    visible = ids.len(),
                    expect = bootstrap_expect,
                    "waiting for the cluster to form"
                );
                logged = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Removes this node from the agreed membership (SIGTERM), waiting up to `timeout`.
pub async fn leave(raft: &Addr<RaftActor>, id: u64, http: &PeerHttp, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        let Ok(status) = raft.send(Status).await else {
            return false;
        };
        if !status.members.iter().any(|m| m.info.id == id) {
            return true;
        }
        let done = if status.leader_id == id {
            let (tx, rx) = oneshot::channel();
            raft.try_send(Remove { id, reply: tx }).is_ok()
                && matches!(
                    tokio::time::timeout(Duration::from_secs(3), rx).await,
                    Ok(Ok(Ok(_)))
                )
        } else if let Some(leader) = &status.leader_peer_url {
            http.change(leader, "remove", &serde_json::json!({ "id": id }))
                .await
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

/// A frontend's view of the ring: polls a member's `/_raft/members` and adopts newer epochs.
pub async fn follow_ring(
    cluster: Arc<Cluster>,
    discovery: Arc<dyn Discovery>,
    http: PeerHttp,
    hash: RingHash,
    vnodes: usize,
) {
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
            .max_by_key(|v| v["epoch"].as_u64().unwrap_or(0));
        if let Some(v) = newest {
            let epoch = v["epoch"].as_u64().unwrap_or(0);
            let members: Vec<MemberInfo> =
                serde_json::from_value(v["members"].clone()).unwrap_or_default();
            if epoch > cluster.epoch() && !members.is_empty() {
                let mut m = Membership::default();
                for info in members {
                    m.add(info);
                }
                cluster.set(m.ring(hash, vnodes), epoch);
                tracing::info!(epoch, "following a new ring");
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
