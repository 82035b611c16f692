//! The ring's replicated state machine: which cluster this is, who is a member, with which URLs
//! and weight, and the per-group purge generations. Every applied change bumps the epoch. Pure;
//! no Raft here.
//!
//! Every change is validated twice: by the leader before it proposes it, and by every node when
//! it applies it. An entry that fails at apply (written by an older version, by hand, or by a
//! leader with a bug) is skipped with the same verdict on every node, because the verdict
//! depends only on the entry and the state before it: a log entry can never crash a node, on
//! first apply or on replay.

use std::collections::BTreeMap;

use prost::Message;

/// Weights are within 1..=MAX_WEIGHT: a member's share of the ring is weight × vnodes points.
pub use crate::ring::MAX_WEIGHT;
/// Members of one ring, voters and learners together.
pub const MAX_MEMBERS: usize = 256;
/// Peer and API URLs are at most this long.
pub const MAX_URL_BYTES: usize = 256;
/// Distinct group names with a purge generation (group names are validated, and a node
/// serves at most 64 groups; the rest is room for renamed groups).
pub const MAX_GENERATIONS: usize = 256;

/// A member of the ring (defined with the ring, which is built from them).
pub use crate::ring::MemberInfo;

/// Why a change is refused (before proposal) or skipped (at apply).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("member id 0 is reserved")]
    ZeroId,
    #[error("weight {0} is outside 1..={MAX_WEIGHT}")]
    Weight(u32),
    #[error("{field} {url:?}: {why}")]
    Url {
        field: &'static str,
        url: String,
        why: &'static str,
    },
    #[error("the ring already has the maximum of {MAX_MEMBERS} members")]
    TooManyMembers,
    #[error("no member with id {0}")]
    UnknownMember(u64),
    #[error("peer URL {0} already belongs to member {1}; remove that member first")]
    UrlInUse(String, u64),
    #[error("bad group name {0:?}: 1 to 64 bytes of a-z, 0-9, '_' and '-'")]
    GroupName(String),
    #[error("at most {MAX_GENERATIONS} groups can have a purge generation")]
    TooManyGroups,
    #[error("the command has no operation")]
    Empty,
    #[error("undecodable entry: {0}")]
    Decode(String),
}

impl Invalid {
    /// A stable label for metrics and API error codes.
    pub fn code(&self) -> &'static str {
        match self {
            Invalid::ZeroId | Invalid::UnknownMember(_) => "bad_member",
            Invalid::Weight(_) => "bad_weight",
            Invalid::Url { .. } => "bad_url",
            Invalid::TooManyMembers => "too_many_members",
            Invalid::UrlInUse(..) => "url_in_use",
            Invalid::GroupName(_) | Invalid::TooManyGroups => "bad_group",
            Invalid::Empty | Invalid::Decode(_) => "bad_entry",
        }
    }
}

/// A base URL as the ring names members: `http(s)://host[:port]`, no path, no whitespace.
pub fn check_base_url(field: &'static str, url: &str) -> Result<(), Invalid> {
    let bad = |why| Invalid::Url {
        field,
        url: url.chars().take(80).collect(),
        why,
    };
    if url.len() > MAX_URL_BYTES {
        return Err(bad("longer than 256 bytes"));
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    if rest.is_empty() || rest.contains('/') {
        return Err(bad("must be scheme://host[:port], without a path"));
    }
    if !rest.bytes().all(|b| b.is_ascii_graphic()) || rest.contains(['?', '#', '@']) {
        return Err(bad("host has characters a URL host cannot have"));
    }
    let host_port = rest;
    // `[v6]:port`, `host:port` or `host`.
    let port = match host_port.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !port.contains(']') => Some((host, port)),
        _ => None,
    };
    if let Some((host, port)) = port {
        if host.is_empty() {
            return Err(bad("host is empty"));
        }
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad("port is not within 1..=65535"));
        }
    }
    Ok(())
}

/// A group name as configured: `[a-z0-9_-]{1,64}`.
pub fn check_group_name(name: &str) -> Result<(), Invalid> {
    crate::group::valid_name(name)
        .then_some(())
        .ok_or_else(|| Invalid::GroupName(name.chars().take(80).collect()))
}

impl MemberInfo {
    /// What a member must be, whatever the state: a non-zero id, URLs that parse, a weight in
    /// bounds.
    pub fn check(&self) -> Result<(), Invalid> {
        if self.id == 0 {
            return Err(Invalid::ZeroId);
        }
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            return Err(Invalid::Weight(self.weight));
        }
        check_base_url("peer_url", &self.peer_url)?;
        if !self.api_url.is_empty() {
            check_base_url("api_url", &self.api_url)?;
        }
        Ok(())
    }
}

/// A normal (non conf-change) command. Adding and removing nodes travel as Raft conf changes
/// carrying a `MemberInfo`, so that Raft's voter set and the ring change in the same entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RingCommand {
    #[prost(oneof = "command::Op", tags = "1, 2")]
    pub op: Option<command::Op>,
}

pub mod command {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Op {
        #[prost(message, tag = "1")]
        SetWeight(super::SetWeight),
        #[prost(message, tag = "2")]
        PurgeGroup(super::PurgeGroup),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SetWeight {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint32, tag = "2")]
    pub weight: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PurgeGroup {
    #[prost(string, tag = "1")]
    pub group: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Encoded {
    #[prost(message, repeated, tag = "1")]
    members: Vec<MemberInfo>,
    #[prost(uint64, tag = "2")]
    epoch: u64,
    #[prost(map = "string, uint64", tag = "3")]
    generations: std::collections::HashMap<String, u64>,
    #[prost(string, tag = "4")]
    cluster_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Made at bootstrap, replicated to every member (snapshots carry it), persisted with the
    /// applied state in the data dir: it binds a data dir to its cluster. Empty on a node that
    /// has not joined one yet.
    pub cluster_id: String,
    pub members: BTreeMap<u64, MemberInfo>,
    pub epoch: u64,
    pub generations: BTreeMap<String, u64>,
}

impl Membership {
    /// Whether `info` may be added (or updated) now.
    pub fn check_add(&self, info: &MemberInfo) -> Result<(), Invalid> {
        info.check()?;
        if let Some(other) = self
            .members
            .values()
            .find(|m| m.peer_url == info.peer_url && m.id != info.id)
        {
            return Err(Invalid::UrlInUse(info.peer_url.clone(), other.id));
        }
        if !self.members.contains_key(&info.id) && self.members.len() >= MAX_MEMBERS {
            return Err(Invalid::TooManyMembers);
        }
        Ok(())
    }

    /// Adds or updates a member; false when nothing changed.
    pub fn add(&mut self, info: MemberInfo) -> Result<bool, Invalid> {
        self.check_add(&info)?;
        if self.members.get(&info.id) == Some(&info) {
            return Ok(false);
        }
        self.members.insert(info.id, info);
        self.epoch += 1;
        Ok(true)
    }

    pub fn remove(&mut self, id: u64) -> bool {
        let removed = self.members.remove(&id).is_some();
        self.epoch += removed as u64;
        removed
    }

    /// Whether `cmd` may be applied now.
    pub fn check(&self, cmd: &RingCommand) -> Result<(), Invalid> {
        match &cmd.op {
            Some(command::Op::SetWeight(w)) => {
                if !(1..=MAX_WEIGHT).contains(&w.weight) {
                    return Err(Invalid::Weight(w.weight));
                }
                if !self.members.contains_key(&w.id) {
                    return Err(Invalid::UnknownMember(w.id));
                }
                Ok(())
            }
            Some(command::Op::PurgeGroup(p)) => {
                check_group_name(&p.group)?;
                if !self.generations.contains_key(&p.group)
                    && self.generations.len() >= MAX_GENERATIONS
                {
                    return Err(Invalid::TooManyGroups);
                }
                Ok(())
            }
            None => Err(Invalid::Empty),
        }
    }

    /// Applies a checked command; false when nothing changed.
    pub fn apply(&mut self, cmd: &RingCommand) -> Result<bool, Invalid> {
        self.check(cmd)?;
        Ok(match &cmd.op {
            Some(command::Op::SetWeight(w)) => match self.members.get_mut(&w.id) {
                Some(m) if m.weight != w.weight => {
                    m.weight = w.weight;
                    self.epoch += 1;
                    true
                }
                _ => false,
            },
            Some(command::Op::PurgeGroup(p)) => {
                *self.generations.entry(p.group.clone()).or_insert(0) += 1;
                self.epoch += 1;
                true
            }
            None => false,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        Encoded {
            members: self.members.values().cloned().collect(),
            epoch: self.epoch,
            generations: self.generations.clone().into_iter().collect(),
            cluster_id: self.cluster_id.clone(),
        }
        .encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Membership, prost::DecodeError> {
        let e = Encoded::decode(bytes)?;
        Ok(Membership {
            cluster_id: e.cluster_id,
            members: e.members.into_iter().map(|m| (m.id, m)).collect(),
            epoch: e.epoch,
            generations: e.generations.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u64) -> MemberInfo {
        MemberInfo {
            id,
            peer_url: format!("http://n{id}:8001"),
            api_url: format!("http://n{id}:9999"),
            weight: 1,
        }
    }

    fn weight(id: u64, weight: u32) -> RingCommand {
        RingCommand {
            op: Some(command::Op::SetWeight(SetWeight { id, weight })),
        }
    }

    fn purge(group: &str) -> RingCommand {
        RingCommand {
            op: Some(command::Op::PurgeGroup(PurgeGroup {
                group: group.into(),
            })),
        }
    }

    #[test]
    fn every_change_bumps_the_epoch_and_no_op_does_not() {
        let mut m = Membership::default();
        assert_eq!(m.add(info(1)), Ok(true));
        assert_eq!(m.add(info(1)), Ok(false));
        assert_eq!(m.add(info(2)), Ok(true));
        assert_eq!(m.epoch, 2);
        let w = weight(2, 3);
        assert_eq!(m.apply(&w), Ok(true));
        assert_eq!(m.apply(&w), Ok(false));
        assert_eq!(m.apply(&purge("products")), Ok(true));
        assert!(m.remove(1));
        assert!(!m.remove(1));
        assert_eq!(m.epoch, 5);
        assert_eq!(m.generations["products"], 1);
        assert_eq!(m.members.len(), 1);
        m.cluster_id = "c0ffee".into();
        assert_eq!(Membership::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn invalid_changes_are_refused_and_change_nothing() {
        let mut m = Membership::default();
        m.add(info(1)).unwrap();
        let before = m.clone();
        for w in [0, MAX_WEIGHT + 1, u32::MAX] {
            assert_eq!(m.apply(&weight(1, w)), Err(Invalid::Weight(w)));
        }
        assert_eq!(m.apply(&weight(9, 2)), Err(Invalid::UnknownMember(9)));
        assert_eq!(m.apply(&RingCommand { op: None }), Err(Invalid::Empty));
        for g in ["", "Products", "a b", &"x".repeat(65), "prod\0"] {
            assert!(m.apply(&purge(g)).is_err(), "{g:?}");
        }
        let mut bad = info(2);
        bad.weight = 1000;
        assert_eq!(m.add(bad), Err(Invalid::Weight(1000)));
        let mut zero = info(2);
        zero.id = 0;
        assert_eq!(m.add(zero), Err(Invalid::ZeroId));
        let mut same_url = info(3);
        same_url.peer_url = info(1).peer_url;
        assert_eq!(
            m.add(same_url),
            Err(Invalid::UrlInUse("http://n1:8001".into(), 1))
        );
        for url in [
            "",
            "n1:8001",
            "ftp://n1",
            "http://",
            "http://n1:8001/path",
            "http://n1:0",
            "http://n1:99999",
            "http://n 1:8001",
            "http://n1:8001?x",
            &format!("http://{}:1", "h".repeat(300)),
        ] {
            let mut m2 = info(4);
            m2.peer_url = url.into();
            assert!(
                matches!(m.add(m2), Err(Invalid::Url { .. })),
                "{url:?} accepted"
            );
        }
        assert_eq!(m, before, "a refused change changes nothing");
        for url in [
            "http://10.0.0.1:8001",
            "https://node.geecache.local",
            "http://[::1]:8001",
        ] {
            assert_eq!(check_base_url("peer_url", url), Ok(()), "{url}");
        }
    }

    #[test]
    fn the_state_is_bounded() {
        let mut m = Membership::default();
        for id in 1..=MAX_MEMBERS as u64 {
            m.add(info(id)).unwrap();
        }
        assert_eq!(m.add(info(10_000)), Err(Invalid::TooManyMembers));
        for i in 0..MAX_GENERATIONS {
            m.apply(&purge(&format!("g{i}"))).unwrap();
        }
        assert_eq!(m.apply(&purge("one-more")), Err(Invalid::TooManyGroups));
        assert_eq!(
            m.apply(&purge("g0")),
            Ok(true),
            "a known group still purges"
        );
    }
}
