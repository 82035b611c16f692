//! One member's Raft state: raft-rs's `RawNode` over `DiskStorage`, and the membership it
//! applies. No actix and no network: the actor and the test harness drive it the same way
//! (tick, step, propose, `advance` to process a `Ready`).

use std::path::Path;

use protobuf::Message as PbMessage;
use raft::prelude::{ConfChange, ConfChangeType, ConfState, Entry, EntryType, Message, Snapshot};
use raft::{Config, RawNode, StateRole, Storage};

use super::membership::{Invalid, MemberInfo, Membership, RingCommand};
use super::storage::{DiskStorage, WalError};

/// Up to this many voters; further members join as learners (they still own keys).
pub const MAX_VOTERS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error(transparent)]
    Storage(#[from] WalError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("bad entry: {0}")]
    Decode(String),
}

/// A slog drain that hands raft-rs's logs to tracing.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, r: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match r.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", r.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", r.msg()),
            slog::Level::Info => tracing::info!(target: "raft", "{}", r.msg()),
            _ => tracing::debug!(target: "raft", "{}", r.msg()),
        }
        Ok(())
    }
}

/// Why a committed entry was not applied.
enum Skip {
    Invalid(Invalid),
    Raft(raft::Error),
    /// Not a skip: the disk failed, and the node stops.
    Storage(RaftError),
}

/// Logs and counts a committed entry that every node skips alike.
fn skipped(entry: &Entry, reason: &'static str, why: &str) {
    tracing::error!(
        index = entry.index,
        term = entry.term,
        reason,
        error = why,
        "skipped a committed raft entry that fails validation"
    );
    metrics::counter!("geecache_raft_entries_skipped_total", "reason" => reason).increment(1);
}

/// What processing one `Ready` produced.
#[derive(Debug, Default)]
pub struct Output {
    pub messages: Vec<Message>,
    /// The membership changed (a new epoch to publish).
    pub changed: bool,
}

pub struct RaftNode {
    pub id: u64,
    raw: RawNode<DiskStorage>,
    membership: Membership,
}

fn config(id: u64, applied: u64) -> Config {
    Config {
        id,
        election_tick: 10,
        heartbeat_tick: 2,
        applied,
        pre_vote: true,
        check_quorum: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        ..Default::default()
    }
}

impl RaftNode {
    /// Opens the node's storage in `dir`: resumes its place when there is state, else starts
    /// empty (to be bootstrapped or to join).
    pub fn open(id: u64, dir: &Path) -> Result<RaftNode, RaftError> {
        let storage = DiskStorage::open(dir)?;
        let (applied, data) = storage.applied();
        let membership = if data.is_empty() {
            Membership::default()
        } else {
            Membership::decode(data).map_err(|e| RaftError::Decode(e.to_string()))?
        };
        let logger = slog::Logger::root(slog::Drain::fuse(TracingDrain), slog::o!());
        let raw = RawNode::new(&config(id, applied), storage, &logger)?;
        Ok(RaftNode {
            id,
            raw,
            membership,
        })
    }

    /// True once this node has Raft state (bootstrapped, joined, or restarted).
    pub fn initialized(&self) -> bool {
        !self.raw.store().is_empty()
    }

    /// Makes this (empty) node the first member of a new cluster, named `cluster_id`.
    pub fn bootstrap(&mut self, me: MemberInfo, cluster_id: String) -> Result<(), RaftError> {
        let mut m = Membership {
            cluster_id,
            ..Membership::default()
        };
        m.add(me).map_err(|e| RaftError::Decode(e.to_string()))?;
        let data = m.encode();
        self.raw
            .mut_store()
            .bootstrap(ConfState::from((vec![self.id], vec![])), data)?;
        // Reload raft's view of the storage we just initialised.
        let id = self.id;
        let dir_node = RaftNode::open(id, &self.dir())?;
        *self = dir_node;
        self.raw.campaign()?;
        Ok(())
    }

    /// The id of the cluster this node belongs to ("" before it joins one).
    pub fn cluster_id(&self) -> &str {
        &self.membership.cluster_id
    }

    fn dir(&self) -> std::path::PathBuf {
        self.raw.store().dir().to_owned()
    }

    pub fn tick(&mut self) {
        self.raw.tick();
    }

    pub fn step(&mut self, msg: Message) -> Result<(), RaftError> {
        Ok(self.raw.step(msg)?)
    }

    pub fn report_unreachable(&mut self, id: u64) {
        self.raw.report_unreachable(id);
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    pub fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    /// True while a conf change is proposed but not yet applied (raft-rs takes one at a time).
    pub fn has_pending_conf(&self) -> bool {
        self.raw.raft.pending_conf_index > self.raw.raft.raft_log.applied
    }

    /// The current voters and learners.
    pub fn conf(&self) -> (Vec<u64>, Vec<u64>) {
        let cs = self.raw.raft.prs().conf().to_conf_state();
        (cs.voters, cs.learners)
    }

    /// Proposes adding `info` (a voter while there are fewer than `MAX_VOTERS`).
    pub fn propose_add(&mut self, info: &MemberInfo) -> Result<(), RaftError> {
        let mut cc = ConfChange {
            node_id: info.id,
            ..Default::default()
        };
        cc.set_change_type(if self.conf().0.len() < MAX_VOTERS {
            ConfChangeType::AddNode
        } else {
            ConfChangeType::AddLearnerNode
        });
        cc.context = prost::Message::encode_to_vec(info).into();
        Ok(self.raw.propose_conf_change(Vec::new(), cc)?)
    }

    pub fn propose_remove(&mut self, id: u64) -> Result<(), RaftError> {
        let mut cc = ConfChange {
            node_id: id,
            ..Default::default()
        };
        cc.set_change_type(ConfChangeType::RemoveNode);
        Ok(self.raw.propose_conf_change(Vec::new(), cc)?)
    }

    pub fn propose(&mut self, cmd: &RingCommand) -> Result<(), RaftError> {
        Ok(self
            .raw
            .propose(Vec::new(), prost::Message::encode_to_vec(cmd))?)
    }

    /// Proposes raw entry bytes, bypassing every check: how tests put what an older version, or
    /// a hand, could have written into the log.
    #[cfg(test)]
    pub fn propose_raw(&mut self, data: Vec<u8>) -> Result<(), RaftError> {
        Ok(self.raw.propose(Vec::new(), data)?)
    }

    /// Proposes a conf change with any context, bypassing every check (tests).
    #[cfg(test)]
    pub fn propose_conf_raw(&mut self, cc: ConfChange) -> Result<(), RaftError> {
        Ok(self.raw.propose_conf_change(Vec::new(), cc)?)
    }

    fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<bool, RaftError> {
        let mut changed = false;
        let mut last = None;
        for entry in entries {
            last = Some(entry.index);
            if entry.data.is_empty() {
                continue; // a new leader's empty entry
            }
            match self.apply_entry(&entry) {
                Ok(c) => changed |= c,
                Err(Skip::Invalid(why)) => skipped(&entry, why.code(), &why.to_string()),
                Err(Skip::Raft(e)) => skipped(&entry, "conf_change_refused", &e.to_string()),
                Err(Skip::Storage(e)) => return Err(e),
            }
        }
        if let Some(index) = last {
            let data = self.membership.encode();
            self.raw.mut_store().set_applied(index, data)?;
        }
        Ok(changed)
    }

    /// Applies one committed entry. What it refuses depends only on the entry and the state
    /// before it, so every node skips the same entries.
    fn apply_entry(&mut self, entry: &Entry) -> Result<bool, Skip> {
        let decode = |e: &dyn std::fmt::Display| Skip::Invalid(Invalid::Decode(e.to_string()));
        match entry.get_entry_type() {
            EntryType::EntryConfChange => {
                let cc = ConfChange::parse_from_bytes(&entry.data).map_err(|e| decode(&e))?;
                let info = match cc.get_change_type() {
                    ConfChangeType::RemoveNode => None,
                    _ => {
                        let info: MemberInfo =
                            prost::Message::decode(&cc.context[..]).map_err(|e| decode(&e))?;
                        if info.id != cc.node_id {
                            return Err(Skip::Invalid(Invalid::Decode(format!(
                                "conf change for node {} carries member {}",
                                cc.node_id, info.id
                            ))));
                        }
                        self.membership.check_add(&info).map_err(Skip::Invalid)?;
                        Some(info)
                    }
                };
                // raft-rs refuses what would break its configuration (removing the last voter).
                let cs = self.raw.apply_conf_change(&cc).map_err(Skip::Raft)?;
                self.raw
                    .mut_store()
                    .set_conf_state(cs)
                    .map_err(|e| Skip::Storage(e.into()))?;
                Ok(match info {
                    None => self.membership.remove(cc.node_id),
                    Some(info) => self.membership.add(info).map_err(Skip::Invalid)?,
                })
            }
            EntryType::EntryNormal => {
                let cmd: RingCommand =
                    prost::Message::decode(&entry.data[..]).map_err(|e| decode(&e))?;
                self.membership.apply(&cmd).map_err(Skip::Invalid)
            }
            EntryType::EntryConfChangeV2 => Err(Skip::Invalid(Invalid::Decode(
                "conf change v2 is not used".into(),
            ))),
        }
    }

    /// Processes a `Ready` in the order raft-rs documents: messages, snapshot, committed
    /// entries, entries, hard state, persisted messages, advance, light ready, advance apply.
    pub fn advance(&mut self) -> Result<Output, RaftError> {
        let mut out = Output::default();
        if !self.raw.has_ready() {
            return Ok(out);
        }
        let mut ready = self.raw.ready();
        out.messages.extend(ready.take_messages());
        if *ready.snapshot() != Snapshot::default() {
            let snap = ready.snapshot().clone();
            let m = Membership::decode(snap.get_data())
                .map_err(|e| RaftError::Decode(e.to_string()))?;
            self.raw.mut_store().apply_snapshot(snap)?;
            out.changed |= m != self.membership;
            self.membership = m;
        }
        out.changed |= self.apply_committed(ready.take_committed_entries())?;
        if !ready.entries().is_empty() {
            self.raw.mut_store().append(ready.entries())?;
        }
        if let Some(hs) = ready.hs() {
            self.raw.mut_store().set_hard_state(hs.clone())?;
        }
        // Entries and hard state must be on disk before persisted messages go out.
        self.raw.mut_store().sync()?;
        out.messages.extend(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
            self.raw.mut_store().sync()?;
        }
        out.messages.extend(light.take_messages());
        out.changed |= self.apply_committed(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.raw.mut_store().maybe_rewrite()?;
        Ok(out)
    }

    /// The last index this node has in its log (for tests and status).
    pub fn last_index(&self) -> u64 {
        self.raw.store().last_index().unwrap_or(0)
    }
}
