//! The in-process Raft harness from an integration test (`--features harness`): membership
//! logic without processes or sockets, next to the process-level tests of `raft_cluster.rs`.
#![cfg(feature = "harness")]

use geecache::raft::harness::Harness;

#[test]
fn a_restarted_member_rejoins_the_ring_it_left() {
    let mut h = Harness::formed(3);
    let leader = h.leader().expect("a leader");
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    h.restart(follower);
    h.run(200);
    assert_eq!(h.members(follower), vec![1, 2, 3]);
    assert_eq!(h.epoch(follower), h.epoch(leader));
}
