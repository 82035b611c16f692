//! A deterministic in-process cluster for the Raft membership logic: real `RaftNode`s on
//! temporary data dirs, a simulated network that can drop messages and partition nodes.

use std::collections::{BTreeSet, HashMap, VecDeque};

use raft::prelude::Message;
use tempfile::TempDir;

use super::membership::{MemberInfo, PurgeGroup, RingCommand, command};
use super::node::RaftNode;

pub struct Harness {
    pub nodes: HashMap<u64, RaftNode>,
    dirs: HashMap<u64, TempDir>,
    queue: VecDeque<Message>,
    /// Nodes cut off from everyone else.
    pub isolated: BTreeSet<u64>,
    /// Drop every n-th message (0: none), deterministically.
    pub drop_every: usize,
    sent: usize,
}

pub fn info(id: u64) -> MemberInfo {
    MemberInfo {
        id,
        peer_url: format!("http://10.0.0.{id}:8001"),
        api_url: format!("http://10.0.0.{id}:9999"),
        weight: 1,
    }
}

impl Harness {
    /// `n` empty nodes; node 1 bootstraps and the others are added one by one.
    pub fn formed(n: u64) -> Harness {
        let mut h = Harness {
            nodes: HashMap::new(),
            dirs: HashMap::new(),
            queue: VecDeque::new(),
            isolated: BTreeSet::new(),
            drop_every: 0,
            sent: 0,
        };
        for id in 1..=n {
            let dir = tempfile::tempdir().unwrap();
            h.nodes.insert(id, RaftNode::open(id, dir.path()).unwrap());
            h.dirs.insert(id, dir);
        }
        h.nodes
            .get_mut(&1)
            .unwrap()
            .bootstrap(info(1), "test-cluster".into())
            .unwrap();
        h.run(50);
        for id in 2..=n {
            let leader = h.leader().unwrap();
            h.nodes
                .get_mut(&leader)
                .unwrap()
                .propose_add(&info(id))
                .unwrap();
            h.run(50);
        }
        h
    }

    /// Delivers messages and ticks everyone, `rounds` times.
    pub fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in &ids {
                self.nodes.get_mut(id).unwrap().tick();
            }
            for _ in 0..20 {
                for id in &ids {
                    let out = self.nodes.get_mut(id).unwrap().advance().unwrap();
                    self.queue.extend(out.messages);
                }
                if self.queue.is_empty() {
                    break;
                }
                while let Some(m) = self.queue.pop_front() {
                    self.sent += 1;
                    let cut = self.isolated.contains(&m.from) != self.isolated.contains(&m.to);
                    let dropped = self.drop_every > 0 && self.sent.is_multiple_of(self.drop_every);
                    if cut || dropped {
                        continue;
                    }
                    if let Some(node) = self.nodes.get_mut(&m.to) {
                        let _ = node.step(m);
                    }
                }
            }
        }
    }

    /// The leader that a majority follows, if any.
    pub fn leader(&self) -> Option<u64> {
        self.nodes
            .values()
            .find(|n| n.is_leader() && !self.isolated.contains(&n.id))
            .map(|n| n.id)
    }

    pub fn epoch(&self, id: u64) -> u64 {
        self.nodes[&id].membership().epoch
    }

    pub fn members(&self, id: u64) -> Vec<u64> {
        self.nodes[&id]
            .membership()
            .members
            .keys()
            .copied()
            .collect()
    }

    /// Stops and reopens a node from its data dir.
    pub fn restart(&mut self, id: u64) {
        self.nodes.remove(&id);
        let node = RaftNode::open(id, self.dirs[&id].path()).unwrap();
        self.nodes.insert(id, node);
    }

    pub fn purge(&mut self, at: u64, group: &str) {
        let cmd = RingCommand {
            op: Some(command::Op::PurgeGroup(PurgeGroup {
                group: group.into(),
            })),
        };
        self.nodes.get_mut(&at).unwrap().propose(&cmd).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_nodes_form_one_ring() {
        let h = Harness::formed(3);
        let leader = h.leader().expect("a leader");
        for id in 1..=3 {
            assert_eq!(h.members(id), vec![1, 2, 3], "node {id}");
            assert_eq!(h.epoch(id), h.epoch(leader));
        }
        assert_eq!(h.nodes[&leader].conf().0.len(), 3);
    }

    #[test]
    fn past_five_voters_nodes_join_as_learners() {
        let h = Harness::formed(7);
        let leader = h.leader().unwrap();
        let (voters, learners) = h.nodes[&leader].conf();
        assert_eq!((voters.len(), learners.len()), (5, 2));
        assert_eq!(h.members(7).len(), 7, "learners own keys too");
    }

    #[test]
    fn an_isolated_node_commits_nothing_and_converges_after_healing() {
        let mut h = Harness::formed(3);
        let leader = h.leader().unwrap();
        let loner = (1..=3).find(|&id| id != leader).unwrap();
        h.isolated.insert(loner);
        let before = h.epoch(loner);
        // The loner tries on its own: nothing commits.
        let _ = h.nodes.get_mut(&loner).unwrap().propose_remove(leader);
        h.run(100);
        assert_eq!(h.epoch(loner), before);
        // The majority keeps changing membership.
        let leader = h.leader().unwrap();
        h.purge(leader, "products");
        h.run(30);
        assert!(h.epoch(leader) > before);
        assert_eq!(h.members(leader), vec![1, 2, 3]);
        // Healed: the loner catches up to the majority's epoch.
        h.isolated.clear();
        h.run(100);
        assert_eq!(h.epoch(loner), h.epoch(h.leader().unwrap()));
        assert_eq!(h.members(loner), vec![1, 2, 3]);
    }

    #[test]
    fn losing_the_leader_elects_another_that_removes_it() {
        let mut h = Harness::formed(3);
        let old = h.leader().unwrap();
        h.isolated.insert(old);
        h.run(60);
        let new = h.leader().expect("a new leader");
        assert_ne!(new, old);
        h.nodes.get_mut(&new).unwrap().propose_remove(old).unwrap();
        h.run(30);
        let rest: Vec<u64> = (1..=3).filter(|&i| i != old).collect();
        for id in &rest {
            assert_eq!(h.members(*id), rest);
        }
    }

    #[test]
    fn lossy_network_still_converges() {
        let mut h = Harness::formed(3);
        h.drop_every = 3;
        let leader = h.leader().unwrap();
        h.purge(leader, "scores");
        h.run(200);
        h.drop_every = 0;
        h.run(50);
        let e = h.epoch(h.leader().unwrap());
        assert!((1..=3).all(|id| h.epoch(id) == e));
    }

    /// Entries that fail validation at apply (an older version's, or a hand's) are skipped the
    /// same way on every node, on first apply and on replay after a restart; later entries
    /// still apply.
    #[test]
    fn poison_entries_are_skipped_alike_and_replay_without_a_crash() {
        use super::super::membership::SetWeight;
        use raft::prelude::{ConfChange, ConfChangeType};
        let mut h = Harness::formed(3);
        let leader = h.leader().unwrap();
        let before: Vec<_> = (1..=3)
            .map(|id| h.nodes[&id].membership().clone())
            .collect();
        let huge = RingCommand {
            op: Some(command::Op::SetWeight(SetWeight {
                id: 2,
                weight: u32::MAX,
            })),
        };
        let node = h.nodes.get_mut(&leader).unwrap();
        node.propose(&huge).unwrap();
        node.propose_raw(b"\xff\xff not protobuf".to_vec()).unwrap();
        node.propose(&RingCommand { op: None }).unwrap();
        h.run(20);
        let mut bad = info(9);
        bad.peer_url = "not a url".into();
        let mut cc = ConfChange {
            node_id: 9,
            ..Default::default()
        };
        cc.set_change_type(ConfChangeType::AddNode);
        cc.context = prost::Message::encode_to_vec(&bad).into();
        h.nodes
            .get_mut(&leader)
            .unwrap()
            .propose_conf_raw(cc)
            .unwrap();
        h.run(30);
        for id in 1..=3u64 {
            assert_eq!(
                h.nodes[&id].membership(),
                &before[id as usize - 1],
                "node {id} applied a poison entry"
            );
            assert_eq!(h.nodes[&id].conf().0, vec![1, 2, 3], "node {id}'s voters");
        }
        for id in 1..=3 {
            h.restart(id);
        }
        h.run(60);
        let leader = h.leader().expect("a leader after the restarts");
        h.purge(leader, "products");
        h.run(30);
        for id in 1..=3u64 {
            assert_eq!(h.nodes[&id].membership().generations["products"], 1);
            assert_eq!(h.members(id), vec![1, 2, 3]);
        }
    }

    #[test]
    fn a_restarted_node_resumes_its_place() {
        let mut h = Harness::formed(3);
        let leader = h.leader().unwrap();
        let other = (1..=3).find(|&id| id != leader).unwrap();
        let epoch = h.epoch(other);
        let last = h.nodes[&other].last_index();
        h.restart(other);
        assert_eq!(h.epoch(other), epoch);
        assert_eq!(h.nodes[&other].last_index(), last);
        h.purge(h.leader().unwrap(), "products");
        h.run(50);
        assert_eq!(h.epoch(other), h.epoch(h.leader().unwrap()));
    }
}
