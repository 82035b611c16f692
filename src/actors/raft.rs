//! `RaftActor`: owns the Raft node of this member (its `RawNode`, durable storage and the
//! membership state machine), ticks it, runs its `Ready` loop, sends its messages to peers,
//! and publishes every new ring to the request path (`Cluster`). It runs on an arbiter of its
//! own, so the log's fsyncs never stall the arbiters that serve requests.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use protobuf::Message as PbMessage;
use raft::prelude::Message as RaftMessage;
use tokio::sync::oneshot;

use crate::cluster::Cluster;
use crate::raft::membership::{Command, MemberInfo, Membership};
use crate::raft::node::RaftNode;
use crate::ring::RingHash;

pub const TICK: Duration = Duration::from_millis(100);

/// A batch of raft messages on the wire (`POST /_raft/messages`): each one protobuf-encoded
/// `eraftpb::Message`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftBatch {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub messages: Vec<Vec<u8>>,
    /// The sender's peer URL, so that a node that is still joining can answer the leader.
    #[prost(string, tag = "2")]
    pub from_url: String,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Step {
    pub messages: Vec<RaftMessage>,
    pub from_url: String,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Unreachable(u64);

/// Starts a new cluster with this node as its only member.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Bootstrap;

#[derive(Debug)]
pub enum ChangeError {
    /// Not the leader; the leader's peer URL when known.
    NotLeader(Option<String>),
    Failed(String),
}

/// Adds a member (leader only); answers once the change is applied here.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Join {
    pub info: MemberInfo,
    pub reply: oneshot::Sender<Result<u64, ChangeError>>,
}

/// Removes a member (leader only); answers once the change is applied here.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Remove {
    pub id: u64,
    pub reply: oneshot::Sender<Result<u64, ChangeError>>,
}

/// Proposes a normal command (`SetWeight`, `PurgeGroup`; leader only); answers once applied
/// here, with the new epoch.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Propose {
    pub command: Command,
    pub reply: oneshot::Sender<Result<u64, ChangeError>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberStatus {
    #[serde(flatten)]
    pub info: MemberInfo,
    pub role: &'static str,
    pub state: &'static str,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RaftStatus {
    pub node_id: u64,
    pub initialized: bool,
    pub leader_id: u64,
    pub leader_peer_url: Option<String>,
    pub term: u64,
    pub epoch: u64,
    pub state: String,
    pub members: Vec<MemberStatus>,
}

#[derive(Message)]
#[rtype(result = "RaftStatus")]
pub struct Status;

/// A membership change waiting for its turn (raft-rs applies one conf change at a time).
#[derive(Debug, Clone)]
enum ConfOp {
    Add(MemberInfo),
    Remove(u64),
}

type Done = Box<dyn Fn(&Membership) -> bool + Send>;
type Waiter = (Done, oneshot::Sender<Result<u64, ChangeError>>);

pub struct RaftActor {
    node: RaftNode,
    me: MemberInfo,
    cluster: Arc<Cluster>,
    ring_hash: RingHash,
    vnodes: usize,
    client: reqwest::Client,
    auth: Option<String>,
    /// Peer URLs by id: the membership's, plus nodes being added.
    addresses: HashMap<u64, String>,
    last_seen: HashMap<u64, Instant>,
    was_leader: bool,
    /// The leader as of the last tick: when this node takes over, that one's silence started
    /// at its last heartbeat, not at this node's election.
    last_leader: u64,
    dead_after: Duration,
    removing: HashSet<u64>,
    waiters: Vec<Waiter>,
    queued: std::collections::VecDeque<ConfOp>,
    failed: bool,
}

impl RaftActor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: RaftNode,
        me: MemberInfo,
        cluster: Arc<Cluster>,
        ring_hash: RingHash,
        vnodes: usize,
        secret: Option<&str>,
        dead_after: Duration,
    ) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap_or_default();
        let mut actor = RaftActor {
            node,
            me,
            cluster,
            ring_hash,
            vnodes,
            client,
            auth: secret.map(|s| format!("Bearer {s}")),
            addresses: HashMap::new(),
            last_seen: HashMap::new(),
            was_leader: false,
            last_leader: 0,
            dead_after,
            removing: HashSet::new(),
            waiters: Vec::new(),
            queued: std::collections::VecDeque::new(),
            failed: false,
        };
        actor.publish();
        actor
    }

    /// Hands the current membership's ring to the request path.
    fn publish(&mut self) {
        let m = self.node.membership();
        for info in m.members.values() {
            self.addresses.insert(info.id, info.peer_url.clone());
        }
        if !m.members.is_empty() {
            self.cluster
                .set(m.ring(self.ring_hash, self.vnodes), m.epoch);
        }
        let waiters = std::mem::take(&mut self.waiters);
        for (done, reply) in waiters {
            if done(m) {
                let _ = reply.send(Ok(m.epoch));
            } else if !reply.is_closed() {
                self.waiters.push((done, reply));
            }
        }
        self.removing.retain(|id| m.members.contains_key(id));
    }

    fn process(&mut self, ctx: &mut Context<Self>) {
        if self.failed {
            return;
        }
        loop {
            let out = match self.node.advance() {
                Ok(out) => out,
                Err(e) => {
                    // A storage failure: stop taking part rather than risk acknowledging what
                    // is not on disk. The node keeps serving its last ring.
                    tracing::error!(error = %e, "raft storage failed; this node stops taking part in membership");
                    self.failed = true;
                    return;
                }
            };
            if out.messages.is_empty() && !out.changed {
                break;
            }
            if out.changed {
                let m = self.node.membership();
                tracing::info!(epoch = m.epoch, members = ?m.members.keys().collect::<Vec<_>>(), "ring changed");
                self.publish();
                self.propose_queued();
            }
            self.send(out.messages, ctx);
        }
    }

    fn send(&mut self, messages: Vec<RaftMessage>, ctx: &mut Context<Self>) {
        let mut batches: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
        for m in messages {
            if let Ok(bytes) = m.write_to_bytes() {
                batches.entry(m.to).or_default().push(bytes);
            }
        }
        for (to, messages) in batches {
            let Some(url) = self.addresses.get(&to) else {
                self.node.report_unreachable(to);
                continue;
            };
            let body = prost::Message::encode_to_vec(&RaftBatch {
                messages,
                from_url: self.me.peer_url.clone(),
            });
            let mut req = self
                .client
                .post(format!("{url}/_raft/messages"))
                .header("content-type", "application/x-protobuf")
                .body(body);
            if let Some(auth) = &self.auth {
                req = req.header("authorization", auth);
            }
            let me = ctx.address();
            actix_rt::spawn(async move {
                let ok = req.send().await.is_ok_and(|r| r.status().is_success());
                if !ok {
                    me.do_send(Unreachable(to));
                }
            });
        }
    }

    /// The leader removes members it has not heard from for `dead_after`.
    fn remove_dead(&mut self) {
        let leader = self.node.is_leader();
        if leader && !self.was_leader {
            let now = Instant::now();
            for id in self.node.membership().members.keys() {
                if *id != self.last_leader || !self.last_seen.contains_key(id) {
                    self.last_seen.insert(*id, now);
                }
            }
        }
        self.was_leader = leader;
        if self.node.leader_id() != 0 {
            self.last_leader = self.node.leader_id();
        }
        if !leader {
            return;
        }
        let dead: Vec<u64> = self
            .node
            .membership()
            .members
            .keys()
            .filter(|&&id| id != self.node.id && !self.removing.contains(&id))
            .filter(|id| {
                self.last_seen
                    .get(id)
                    .is_none_or(|t| t.elapsed() > self.dead_after)
            })
            .copied()
            .collect();
        for id in dead {
            tracing::warn!(id, after = ?self.dead_after, "member unresponsive; removing it from the ring");
            self.removing.insert(id);
            self.queued.push_back(ConfOp::Remove(id));
        }
    }

    /// Proposes the next queued change once the previous one is applied.
    fn propose_queued(&mut self) {
        if !self.node.is_leader() {
            self.queued.clear();
            return;
        }
        while !self.node.has_pending_conf() {
            let Some(op) = self.queued.pop_front() else {
                return;
            };
            let m = self.node.membership();
            let result = match &op {
                ConfOp::Add(info) if m.members.get(&info.id) == Some(info) => continue,
                ConfOp::Remove(id) if !m.members.contains_key(id) => continue,
                ConfOp::Add(info) => self.node.propose_add(info),
                ConfOp::Remove(id) => self.node.propose_remove(*id),
            };
            if let Err(e) = result {
                tracing::warn!(?op, error = %e, "membership change not proposed");
            }
        }
    }

    fn leader_url(&self) -> Option<String> {
        self.addresses.get(&self.node.leader_id()).cloned()
    }

    fn change(
        &mut self,
        op: ConfOp,
        done: Done,
        reply: oneshot::Sender<Result<u64, ChangeError>>,
        ctx: &mut Context<Self>,
    ) {
        if !self.node.is_leader() {
            let _ = reply.send(Err(ChangeError::NotLeader(self.leader_url())));
            return;
        }
        if done(self.node.membership()) {
            let _ = reply.send(Ok(self.node.membership().epoch));
            return;
        }
        self.queued.push_back(op);
        self.waiters.push((done, reply));
        self.propose_queued();
        self.process(ctx);
    }
}

impl Actor for RaftActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        ctx.run_interval(TICK, |act, ctx| {
            act.node.tick();
            act.remove_dead();
            act.propose_queued();
            act.process(ctx);
        });
    }
}

impl Handler<Step> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: Step, ctx: &mut Self::Context) {
        let now = Instant::now();
        for m in msg.messages {
            self.last_seen.insert(m.from, now);
            if !msg.from_url.is_empty() {
                self.addresses
                    .entry(m.from)
                    .or_insert_with(|| msg.from_url.clone());
            }
            if let Err(e) = self.node.step(m) {
                tracing::debug!(error = %e, "raft message dropped");
            }
        }
        self.process(ctx);
    }
}

impl Handler<Unreachable> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: Unreachable, _: &mut Self::Context) {
        self.node.report_unreachable(msg.0);
    }
}

impl Handler<Bootstrap> for RaftActor {
    type Result = Result<(), String>;
    fn handle(&mut self, _: Bootstrap, ctx: &mut Self::Context) -> Self::Result {
        if self.node.initialized() {
            return Ok(());
        }
        self.node
            .bootstrap(self.me.clone())
            .map_err(|e| e.to_string())?;
        tracing::info!(id = self.me.id, "bootstrapped a new cluster");
        self.publish();
        self.process(ctx);
        Ok(())
    }
}

impl Handler<Join> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: Join, ctx: &mut Self::Context) {
        let info = msg.info;
        self.addresses.insert(info.id, info.peer_url.clone());
        self.last_seen.insert(info.id, Instant::now());
        let want = info.clone();
        self.change(
            ConfOp::Add(info),
            Box::new(move |m| m.members.get(&want.id) == Some(&want)),
            msg.reply,
            ctx,
        );
    }
}

impl Handler<Remove> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: Remove, ctx: &mut Self::Context) {
        let id = msg.id;
        self.removing.insert(id);
        self.change(
            ConfOp::Remove(id),
            Box::new(move |m| !m.members.contains_key(&id)),
            msg.reply,
            ctx,
        );
    }
}

impl Handler<Propose> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: Propose, ctx: &mut Self::Context) {
        if !self.node.is_leader() {
            let _ = msg
                .reply
                .send(Err(ChangeError::NotLeader(self.leader_url())));
            return;
        }
        let target = self.node.membership().epoch + 1;
        match self.node.propose(&msg.command) {
            Ok(()) => self
                .waiters
                .push((Box::new(move |m| m.epoch >= target), msg.reply)),
            Err(e) => {
                let _ = msg.reply.send(Err(ChangeError::Failed(e.to_string())));
            }
        }
        self.process(ctx);
    }
}

impl Handler<Status> for RaftActor {
    type Result = MessageResult<Status>;
    fn handle(&mut self, _: Status, _: &mut Self::Context) -> Self::Result {
        let (voters, _) = self.node.conf();
        let m = self.node.membership();
        let members = m
            .members
            .values()
            .map(|info| MemberStatus {
                info: info.clone(),
                role: if voters.contains(&info.id) {
                    "voter"
                } else {
                    "learner"
                },
                state: if info.id == self.node.id {
                    "self"
                } else if self.node.is_leader() {
                    match self.last_seen.get(&info.id) {
                        Some(t) if t.elapsed() < Duration::from_secs(2) => "alive",
                        _ => "unreachable",
                    }
                } else {
                    "member"
                },
            })
            .collect();
        MessageResult(RaftStatus {
            node_id: self.node.id,
            initialized: self.node.initialized(),
            leader_id: self.node.leader_id(),
            leader_peer_url: self.leader_url(),
            term: self.node.term(),
            epoch: m.epoch,
            state: format!("{:?}", self.node.role()).to_lowercase(),
            members,
        })
    }
}
