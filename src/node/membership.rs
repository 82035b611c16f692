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

use crate::actors::raft::{Bootstrap, RaftActor, RemoveMember, Status};
use crate::group::GroupsDigest;
use crate::peer::wire::{RAFT_JOIN, RAFT_REMOVE, RaftStatus};
use crate::peer::{Changed, PeerClient};
use crate::raft::discovery::Discovery;
use crate::ring::Cluster;
use crate::ring::MemberInfo;

/// How often the boot loop and a frontend look again.
const POLL: Duration = Duration::from_millis(250);
/// Polls without a leader after which a member asks the others whether it was removed.
const LEADERLESS_POLLS: u32 = 8;

/// What a member's boot loop needs.
pub struct MemberLoop {
    pub raft: Addr<RaftActor>,
    pub me: MemberInfo,
    pub discovery: Arc<dyn Discovery>,
    pub bootstrap_expect: usize,
    pub peers: PeerClient,
    /// Set at SIGTERM: stop rejoining.
    pub leaving: Arc<AtomicBool>,
    /// Where the node says that it cannot go on.
    pub fatal: mpsc::Sender<String>,
    pub data_dir: PathBuf,
    /// Compared with the leader's now and then.
    pub digest: GroupsDigest,
}

/// What one look at the other candidates decided.
enum Step {
    Wait,
    /// This node cannot take part in the cluster it found (the reason).
    Stop(String),
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

    /// `/_raft/info` of every other candidate that answers: (its URL, its status).
    async fn others(&self) -> Vec<(String, RaftStatus)> {
        let candidates = self.discovery.candidates().await;
        let calls = candidates
            .iter()
            .filter(|c| **c != self.me.peer_url)
            .map(|c| async move { self.peers.raft_info(c).await.ok().map(|i| (c.clone(), i)) });
        join_all(calls).await.into_iter().flatten().collect()
    }

    /// Joins the cluster `url` belongs to (through its leader), unless it is another cluster
    /// than this node's data dir's.
    async fn join(&self, ours: &str, url: &str, info: &RaftStatus) -> Step {
        if !ours.is_empty() && !info.cluster_id.is_empty() && ours != info.cluster_id {
            return Step::Stop(self.foreign(ours, url, &info.cluster_id));
        }
        let leader = info.leader_peer_url.as_deref().unwrap_or(url);
        let body = serde_json::to_value(&self.me).unwrap_or(Value::Null);
        match self.peers.change(leader, RAFT_JOIN, &body, ours).await {
            Changed::Applied(_) => tracing::info!(%leader, "joined the cluster"),
            Changed::Foreign(why) => return Step::Stop(why),
            Changed::Failed(status, v) => {
                tracing::debug!(%leader, status, answer = %v, "join not applied yet")
            }
        }
        Step::Wait
    }

    /// Bootstraps a new cluster when no candidate has one, `bootstrap_expect` see each other,
    /// and this node has the lowest id among them.
    async fn maybe_bootstrap(&self, others: &[(String, RaftStatus)], logged: &mut bool) {
        let mut ids: Vec<u64> = others.iter().map(|(_, i)| i.node_id).collect();
        ids.push(self.me.id);
        ids.sort_unstable();
        ids.dedup();
        if ids.len() >= self.bootstrap_expect && ids[0] == self.me.id {
            match self.raft.send(Bootstrap).await {
                Ok(Ok(())) => tracing::info!(candidates = ids.len(), "formed a new cluster"),
                Ok(Err(e)) => tracing::error!(error = %e, "bootstrap failed"),
                Err(_) => {}
            }
        } else if !*logged {
            tracing::info!(
                visible = ids.len(),
                expect = self.bootstrap_expect,
                "waiting for the cluster to form"
            );
            *logged = true;
        }
    }

    /// One look at the others, for a node that is not (or may no longer be) a member.
    async fn look(&self, status: &RaftStatus, logged: &mut bool) -> Step {
        let member = status.members.iter().any(|s| s.info.id == self.me.id);
        let others = self.others().await;
        let existing = others
            .iter()
            .find(|(_, i)| i.initialized && i.leader_id != 0);
        let ours = status.cluster_id.as_str();
        if let Some((url, info)) = existing {
            let listed = info.members.iter().any(|m| m.info.id == self.me.id);
            let same = ours.is_empty() || info.cluster_id.is_empty() || ours == info.cluster_id;
            if !(same && member && listed) {
                return self.join(ours, url, info).await;
            }
        } else if !status.initialized && others.iter().all(|(_, i)| !i.initialized) {
            self.maybe_bootstrap(&others, logged).await;
        }
        Step::Wait
    }
}

/// Runs for the node's life: forms or joins the cluster, then rejoins whenever the agreed
/// membership no longer holds this node (removed while unreachable), until `leaving`. A node
/// whose data dir belongs to another cluster than the one it finds says so and stops.
pub async fn run_member(m: MemberLoop) {
    let mut logged = false;
    let mut leaderless = 0;
    let mut polls: u32 = 0;
    while !m.leaving.load(Ordering::SeqCst) {
        polls = polls.wrapping_add(1);
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
        // while may have been removed while it was away: ask the others.
        let settled = status.initialized && member && leaderless < LEADERLESS_POLLS;
        if !settled && let Step::Stop(why) = m.look(&status, &mut logged).await {
            let _ = m.fatal.send(why).await;
            return;
        }
        // Every 5 s: does this node carry the leader's groups?
        if settled && polls.is_multiple_of(20) {
            match status.leader_peer_url.as_deref() {
                Some(leader) if status.leader_id != m.me.id => {
                    if let Ok(info) = m.peers.raft_info(leader).await {
                        m.digest.compare(&info.groups_digest);
                    }
                }
                _ => m.digest.compare(m.digest.mine()),
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Removes this node from the agreed membership (SIGTERM), waiting up to `timeout`. The last
/// voter stays: removing it would leave a cluster that can never elect a leader again, so it
/// stops as a member and resumes its cluster when restarted.
pub async fn leave(raft: &Addr<RaftActor>, id: u64, peers: &PeerClient, timeout: Duration) -> bool {
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
            raft.try_send(RemoveMember {
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
                peers
                    .change(leader, RAFT_REMOVE, &body, &status.cluster_id)
                    .await,
                Changed::Applied(_)
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
/// the first cluster it finds (answers from another cluster id are ignored). With a peer URL of
/// its own (`me`), it says so, and DELETEs on the members reach it.
pub async fn follow_ring(
    cluster: Arc<Cluster>,
    discovery: Arc<dyn Discovery>,
    peers: PeerClient,
    me: Option<String>,
    digest: GroupsDigest,
) {
    let mut following = String::new();
    loop {
        // Ask every candidate and adopt the newest ring any of them has: a member that lags
        // (or is cut off) must not hold the frontend back.
        let candidates = discovery.candidates().await;
        let answers = join_all(
            candidates
                .iter()
                .map(|c| peers.ring_members(c, me.as_deref())),
        )
        .await;
        if let Some(theirs) = answers.iter().flatten().map(|r| &r.groups_digest).next() {
            digest.compare(theirs);
        }
        let newest = answers
            .into_iter()
            .flatten()
            .filter(|r| {
                following.is_empty() || r.cluster_id.is_empty() || r.cluster_id == following
            })
            .filter(|r| !r.members.is_empty())
            .max_by_key(|r| r.epoch);
        if let Some(ring) = newest
            && cluster.publish(ring.epoch, &ring.members, &ring.generations)
        {
            if following.is_empty() {
                following = ring.cluster_id.clone();
            }
            tracing::info!(epoch = ring.epoch, cluster_id = %following, "following a new ring");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
