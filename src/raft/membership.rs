//! The ring's replicated state machine: who is a member, with which URLs and weight, and the
//! per-group purge generations. Every applied change bumps the epoch. Pure; no Raft here.

use std::collections::BTreeMap;

use prost::Message;

use crate::ring::{Member, Ring, RingHash};

#[derive(Clone, PartialEq, Eq, prost::Message, serde::Serialize, serde::Deserialize)]
pub struct MemberInfo {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub peer_url: String,
    #[prost(string, tag = "3")]
    pub api_url: String,
    #[prost(uint32, tag = "4")]
    pub weight: u32,
}

/// A normal (non conf-change) command. Adding and removing nodes travel as Raft conf changes
/// carrying a `MemberInfo`, so that Raft's voter set and the ring change in the same entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Command {
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
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    pub members: BTreeMap<u64, MemberInfo>,
    pub epoch: u64,
    pub generations: BTreeMap<String, u64>,
}

impl Membership {
    /// Adds or updates a member; false when nothing changed.
    pub fn add(&mut self, info: MemberInfo) -> bool {
        if self.members.get(&info.id) == Some(&info) {
            return false;
        }
        self.members.insert(info.id, info);
        self.epoch += 1;
        true
    }

    pub fn remove(&mut self, id: u64) -> bool {
        let removed = self.members.remove(&id).is_some();
        self.epoch += removed as u64;
        removed
    }

    pub fn apply(&mut self, cmd: &Command) -> bool {
        match &cmd.op {
            Some(command::Op::SetWeight(w)) => match self.members.get_mut(&w.id) {
                Some(m) if m.weight != w.weight && w.weight > 0 => {
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
        }
    }

    pub fn ring(&self, hash: RingHash, vnodes: usize) -> Ring {
        Ring::new(
            hash,
            vnodes,
            self.members.values().map(|m| Member {
                name: m.peer_url.as_str().into(),
                weight: m.weight.max(1),
            }),
        )
    }

    pub fn encode(&self) -> Vec<u8> {
        Encoded {
            members: self.members.values().cloned().collect(),
            epoch: self.epoch,
            generations: self.generations.clone().into_iter().collect(),
        }
        .encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Membership, prost::DecodeError> {
        let e = Encoded::decode(bytes)?;
        Ok(Membership {
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

    #[test]
    fn every_change_bumps_the_epoch_and_no_op_does_not() {
        let mut m = Membership::default();
        assert!(m.add(info(1)));
        assert!(!m.add(info(1)));
        assert!(m.add(info(2)));
        assert_eq!(m.epoch, 2);
        let w = Command {
            op: Some(command::Op::SetWeight(SetWeight { id: 2, weight: 3 })),
        };
        assert!(m.apply(&w));
        assert!(!m.apply(&w));
        assert!(m.apply(&Command {
            op: Some(command::Op::PurgeGroup(PurgeGroup {
                group: "products".into()
            }))
        }));
        assert!(m.remove(1));
        assert!(!m.remove(1));
        assert_eq!(m.epoch, 5);
        assert_eq!(m.generations["products"], 1);
        assert_eq!(m.ring(RingHash::Crc32, 10).members().len(), 1);
        assert_eq!(Membership::decode(&m.encode()).unwrap(), m);
    }
}
