//! `RaftActor`: owns the Raft node of this member (its `RawNode`, durable storage and the
//! membership state machine), ticks it, runs its `Ready` loop, sends its messages to peers,
//! and publishes every new ring to the request path (`Cluster`). It runs on an arbiter of its
//! own, so the log's fsyncs never stall the arbiters that serve requests.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use protobuf::Message as PbMessage;
use raft::prelude::Message as RaftMessage;
use tokio::sync::oneshot;

use crate::peer::wire::{MemberStatus, RaftBatch, RaftStatus, RingMembers};
use crate::peer::{PeerClient, PeerSettings};
use crate::raft::admission::{Batch, inadmissible};
use crate::raft::membership::{Invalid, MemberInfo, Membership, RingCommand};
use crate::raft::node::RaftNode;
use crate::ring::Cluster;

pub const TICK: Duration = Duration::from_millis(100);

/// A member without a leader for longer than this is not ready (raft-rs draws its election
/// timeout from [10, 20) ticks, so a healthy election ends before it).
pub const LEADERLESS_GRACE: Duration = Duration::from_secs(2);

#[derive(Message)]
#[rtype(result = "()")]
pub struct Step {
    pub messages: Vec<RaftMessage>,
    pub from_url: String,
    pub cluster_id: String,
    /// The address the batch came from (checked against a member URL's IP literal).
    pub from_ip: Option<std::net::IpAddr>,
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
    /// The change fails validation (it is not proposed).
    Invalid(Invalid),
    /// The caller belongs to another cluster.
    ForeignCluster {
        ours: String,
        theirs: String,
    },
    Failed(String),
}

/// Adds a member (leader only); answers once the change is applied here.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AddMember {
    pub info: MemberInfo,
    /// The joiner's cluster id, "" for a node with an empty data dir.
    pub cluster_id: String,
    pub reply: oneshot::Sender<Result<u64, ChangeError>>,
}

/// Removes a member (leader only); answers once the change is applied here.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemoveMember {
    pub id: u64,
    /// The caller's cluster id when it has one ("" from operators' tools).
    pub cluster_id: String,
    pub reply: oneshot::Sender<Result<u64, ChangeError>>,
}

/// Proposes a normal command (`SetWeight`, `PurgeGroup`; leader only); answers once applied
/// here, with the new epoch.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Propose {
    pub command: RingCommand,
    pub cluster_id: String,
    pub reply: oneshot::Sender<Result<u64, ChangeError>>,
}

#[derive(Message)]
#[rtype(result = "RaftStatus")]
pub struct Status;

/// The applied ring: members, epoch, purge generations (what frontends follow).
#[derive(Message)]
#[rtype(result = "RingMembers")]
pub struct RingMembersOf;

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
    peers: Arc<PeerClient>,
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
    /// Shared with `/ready`: true while this member has had no leader for `LEADERLESS_GRACE`.
    leaderless: Arc<AtomicBool>,
    leaderless_since: Option<Instant>,
}

/// How a `RaftActor` talks to its peers.
pub struct RaftSettings {
    pub peers: PeerSettings,
    pub dead_after: Duration,
    /// Set while this member has no leader (read by `/ready`).
    pub leaderless: Arc<AtomicBool>,
}

impl RaftActor {
    pub fn new(
        node: RaftNode,
        me: MemberInfo,
        cluster: Arc<Cluster>,
        settings: RaftSettings,
    ) -> Result<Self, reqwest::Error> {
        let mut actor = RaftActor {
            node,
            me,
            cluster,
            peers: Arc::new(PeerClient::new(&settings.peers)?),
            addresses: HashMap::new(),
            last_seen: HashMap::new(),
            was_leader: false,
            last_leader: 0,
            dead_after: settings.dead_after,
            removing: HashSet::new(),
            waiters: Vec::new(),
            queued: std::collections::VecDeque::new(),
            failed: false,
            leaderless: settings.leaderless,
            leaderless_since: None,
        };
        actor.publish();
        Ok(actor)
    }

    /// Hands the current membership's ring to the request path.
    fn publish(&mut self) {
        let m = self.node.membership();
        for info in m.members.values() {
            self.addresses.insert(info.id, info.peer_url.clone());
        }
        if !m.members.is_empty() {
            self.cluster
                .publish(m.epoch, m.members.values(), &m.generations);
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
            let batch = RaftBatch {
                messages,
                from_url: self.me.peer_url.clone(),
                cluster_id: self.node.cluster_id().to_owned(),
            };
            let (me, peers, url) = (ctx.address(), Arc::clone(&self.peers), url.clone());
            actix_rt::spawn(async move {
                if peers.send_raft(&url, &batch).await.is_err() {
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

    /// Tracks how long this member has been without a leader, for `/ready`.
    fn track_leader(&mut self) {
        let without = self.node.initialized() && self.node.leader_id() == 0;
        let since = match (without, self.leaderless_since) {
            (false, _) => None,
            (true, None) => Some(Instant::now()),
            (true, since) => since,
        };
        self.leaderless_since = since;
        let long = since.is_some_and(|t| t.elapsed() > LEADERLESS_GRACE);
        if self.leaderless.swap(long, Ordering::Relaxed) != long {
            if long {
                tracing::warn!(after = ?LEADERLESS_GRACE, "no raft leader: not ready");
            } else {
                tracing::info!(leader = self.node.leader_id(), "raft leader known again");
            }
        }
    }

    /// The error for a caller from another cluster, if it is one.
    fn foreign(&self, theirs: &str) -> Option<ChangeError> {
        let ours = self.node.cluster_id();
        (!theirs.is_empty() && !ours.is_empty() && theirs != ours).then(|| {
            ChangeError::ForeignCluster {
                ours: ours.to_owned(),
                theirs: theirs.to_owned(),
            }
        })
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
            act.track_leader();
            act.remove_dead();
            act.propose_queued();
            act.process(ctx);
        });
    }
}

impl Handler<Step> for RaftActor {
    type Result = ();
    fn handle(&mut self, mut msg: Step, ctx: &mut Self::Context) {
        let now = Instant::now();
        let joining = self.node.membership().members.is_empty();
        let messages = std::mem::take(&mut msg.messages);
        let batch = Batch {
            from_url: &msg.from_url,
            cluster_id: &msg.cluster_id,
            from_ip: msg.from_ip,
        };
        for m in messages {
            let membership = self.node.membership();
            if let Some(reason) = inadmissible(&m, self.node.id, membership, &batch) {
                tracing::debug!(from = m.from, url = %msg.from_url, reason, "raft message dropped");
                metrics::counter!("geecache_raft_messages_dropped_total", "reason" => reason)
                    .increment(1);
                continue;
            }
            self.last_seen.insert(m.from, now);
            if joining && !msg.from_url.is_empty() {
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
        let cluster_id = new_cluster_id().map_err(|e| e.to_string())?;
        self.node
            .bootstrap(self.me.clone(), cluster_id)
            .map_err(|e| e.to_string())?;
        tracing::info!(
            id = self.me.id,
            cluster_id = self.node.cluster_id(),
            "bootstrapped a new cluster"
        );
        self.publish();
        self.process(ctx);
        Ok(())
    }
}

/// raft-rs's role, as `/_raft/info` and `/cluster` name it.
fn role_name(role: raft::StateRole) -> &'static str {
    match role {
        raft::StateRole::Leader => "leader",
        raft::StateRole::Follower => "follower",
        raft::StateRole::Candidate => "candidate",
        raft::StateRole::PreCandidate => "precandidate",
    }
}

/// 128 random bits, as 32 hex digits.
fn new_cluster_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Handler<AddMember> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: AddMember, ctx: &mut Self::Context) {
        if let Some(e) = self.foreign(&msg.cluster_id) {
            let _ = msg.reply.send(Err(e));
            return;
        }
        let info = msg.info;
        if let Err(e) = self.node.membership().check_add(&info) {
            let _ = msg.reply.send(Err(ChangeError::Invalid(e)));
            return;
        }
        if self.node.is_leader() {
            self.addresses.insert(info.id, info.peer_url.clone());
            self.last_seen.insert(info.id, Instant::now());
        }
        let want = info.clone();
        self.change(
            ConfOp::Add(info),
            Box::new(move |m| m.members.get(&want.id) == Some(&want)),
            msg.reply,
            ctx,
        );
    }
}

impl Handler<RemoveMember> for RaftActor {
    type Result = ();
    fn handle(&mut self, msg: RemoveMember, ctx: &mut Self::Context) {
        if let Some(e) = self.foreign(&msg.cluster_id) {
            let _ = msg.reply.send(Err(e));
            return;
        }
        let id = msg.id;
        if !self.node.membership().members.contains_key(&id) {
            let _ = msg
                .reply
                .send(Err(ChangeError::Invalid(Invalid::UnknownMember(id))));
            return;
        }
        if self.node.is_leader() {
            self.removing.insert(id);
        }
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
        if let Some(e) = self.foreign(&msg.cluster_id) {
            let _ = msg.reply.send(Err(e));
            return;
        }
        if !self.node.is_leader() {
            let _ = msg
                .reply
                .send(Err(ChangeError::NotLeader(self.leader_url())));
            return;
        }
        let mut after = self.node.membership().clone();
        match after.apply(&msg.command) {
            Err(e) => {
                let _ = msg.reply.send(Err(ChangeError::Invalid(e)));
                return;
            }
            // Already so (a weight set twice): nothing to wait for.
            Ok(false) => {
                let _ = msg.reply.send(Ok(after.epoch));
                return;
            }
            Ok(true) => {}
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

impl Handler<RingMembersOf> for RaftActor {
    type Result = MessageResult<RingMembersOf>;
    fn handle(&mut self, _: RingMembersOf, _: &mut Self::Context) -> Self::Result {
        let m = self.node.membership();
        MessageResult(RingMembers {
            cluster_id: m.cluster_id.clone(),
            epoch: m.epoch,
            members: m.members.values().cloned().collect(),
            generations: m.generations.clone(),
            groups_digest: String::new(),
        })
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
                }
                .to_owned(),
                state: if info.id == self.node.id {
                    "self"
                } else if self.node.is_leader() {
                    match self.last_seen.get(&info.id) {
                        Some(t) if t.elapsed() < Duration::from_secs(2) => "alive",
                        _ => "unreachable",
                    }
                } else {
                    "member"
                }
                .to_owned(),
            })
            .collect();
        MessageResult(RaftStatus {
            node_id: self.node.id,
            cluster_id: self.node.cluster_id().to_owned(),
            initialized: self.node.initialized(),
            leader_id: self.node.leader_id(),
            leader_peer_url: self.leader_url(),
            term: self.node.term(),
            epoch: m.epoch,
            state: role_name(self.node.role()).to_owned(),
            members,
            groups_digest: String::new(),
        })
    }
}
