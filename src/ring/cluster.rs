//! Membership as the request path sees it: the current ring, its epoch, the groups' purge
//! generations, and who "self" is.
//!
//! This is the one seam between routing and how membership is decided: static flags, the Raft
//! actor's applied state, a frontend following a member, or a caller catching up after a peer
//! said its ring is stale all publish here. Publication is monotonic in the epoch, so that a
//! late publisher can never take the node back to an older ring.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::{Member, Ring, RingHash};
use crate::cache::group::{Group, Groups};
use crate::raft::membership::MemberInfo;

/// A ring and the epoch it belongs to.
#[derive(Debug)]
pub struct RingView {
    pub ring: Ring,
    pub epoch: u64,
    /// The ring before the last change of members, and when it changed (`clock::now_ms`): a
    /// new owner asks a moved key's previous owner before the source (warm handoff).
    pub previous: Option<Arc<Ring>>,
    pub changed_ms: u64,
    /// The members as the ring's publisher gave them (ids and URLs; empty for a static ring):
    /// what a frontend's `/cluster` lists.
    pub members: Arc<[MemberInfo]>,
}

/// Where a key is served from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node owns the key (or there is no ring: a lone node owns everything).
    Local,
    /// Another member owns it: its peer base URL.
    Remote(Arc<str>),
}

pub struct Cluster {
    self_name: Option<Arc<str>>,
    hash: RingHash,
    vnodes: usize,
    view: ArcSwap<RingView>,
    groups: Groups,
    /// Purge generation of each group, by `Group::index`; bumped by a committed purge.
    generations: Vec<AtomicU64>,
}

impl Cluster {
    pub fn new(
        self_name: Option<&str>,
        groups: Groups,
        hash: RingHash,
        vnodes: usize,
        ring: Ring,
    ) -> Cluster {
        Cluster {
            self_name: self_name.map(Arc::from),
            hash,
            vnodes,
            view: ArcSwap::from_pointee(RingView {
                ring,
                epoch: 0,
                previous: None,
                changed_ms: 0,
                members: Arc::new([]),
            }),
            groups,
            generations: groups.all().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Static membership from flags: `peers`, plus this node unless it is a frontend.
    pub fn from_static(
        self_url: Option<&str>,
        peers: &[String],
        holds_shard: bool,
        groups: Groups,
        hash: RingHash,
        vnodes: usize,
    ) -> Cluster {
        let mut members: Vec<Member> = peers
            .iter()
            .map(|p| p.trim_end_matches('/'))
            .filter(|p| !p.is_empty())
            .map(Member::new)
            .collect();
        let self_url = self_url.map(|s| s.trim_end_matches('/'));
        match self_url {
            Some(me) if holds_shard => members.push(Member::new(me)),
            Some(me) => members.retain(|m| &*m.name != me),
            None => {}
        }
        let ring = Ring::new(hash, vnodes, members);
        Cluster::new(self_url, groups, hash, vnodes, ring)
    }

    pub fn self_name(&self) -> Option<&str> {
        self.self_name.as_deref()
    }

    pub fn view(&self) -> Arc<RingView> {
        self.view.load_full()
    }

    /// Publishes the membership of `epoch`, if it is newer than the one published; true when
    /// it was.
    pub fn publish<'a>(
        &self,
        epoch: u64,
        members: impl IntoIterator<Item = &'a MemberInfo>,
        generations: &BTreeMap<String, u64>,
    ) -> bool {
        if epoch <= self.epoch() && epoch != 0 {
            return false;
        }
        let members: Arc<[MemberInfo]> = members.into_iter().cloned().collect();
        let ring = Ring::new(
            self.hash,
            self.vnodes,
            members.iter().map(|m| Member {
                name: m.peer_url.as_str().into(),
                weight: m.weight,
            }),
        );
        // The generations first: a request that sees the new epoch also sees its purges.
        for group in self.groups.all() {
            let generation = generations.get(group.name()).copied().unwrap_or(0);
            self.generations[group.index()].fetch_max(generation, Ordering::SeqCst);
        }
        let mut published = false;
        self.view.rcu(|current| {
            published = epoch > current.epoch || (epoch == 0 && current.epoch == 0);
            if !published {
                return Arc::clone(current);
            }
            let moved = current.ring.members() != ring.members();
            // A node's first agreed ring (epoch 0 is the ring of flags, before membership):
            // before it, the keys it owns were the others' (it joined).
            let before = if current.epoch == 0 || current.ring.is_empty() {
                let others = ring
                    .members()
                    .iter()
                    .filter(|m| Some(&m.name) != self.self_name.as_ref())
                    .cloned();
                Ring::new(self.hash, self.vnodes, others)
            } else {
                current.ring.clone()
            };
            Arc::new(RingView {
                ring: ring.clone(),
                epoch,
                previous: if moved && !before.is_empty() {
                    Some(Arc::new(before))
                } else {
                    current.previous.clone()
                },
                changed_ms: if moved {
                    crate::cache::clock::now_ms()
                } else {
                    current.changed_ms
                },
                members: Arc::clone(&members),
            })
        });
        published
    }

    /// The member that owned `key` before the ring last changed, if that was less than
    /// `grace_ms` ago and it was another member than this node.
    pub fn previous_owner(&self, key: &str, grace_ms: u64) -> Option<Arc<str>> {
        let view = self.view.load();
        let previous = view.previous.as_ref()?;
        if crate::cache::clock::now_ms() >= view.changed_ms.saturating_add(grace_ms) {
            return None;
        }
        let owner = previous.owner(key)?;
        (Some(&owner.name) != self.self_name.as_ref()).then(|| Arc::clone(&owner.name))
    }

    pub fn epoch(&self) -> u64 {
        self.view.load().epoch
    }

    /// The group's purge generation: cached values of an older one are misses.
    pub fn generation(&self, group: Group) -> u64 {
        self.generations[group.index()].load(Ordering::Acquire)
    }

    pub fn route(&self, key: &str) -> Route {
        let view = self.view.load();
        match view.ring.owner(key) {
            None => Route::Local,
            Some(m) if Some(&m.name) == self.self_name.as_ref() => Route::Local,
            Some(m) => Route::Remote(Arc::clone(&m.name)),
        }
    }
}

/// Frontends that follow this member's ring (they say so when they poll it), so that a DELETE
/// reaches their hot caches too.
#[derive(Default)]
pub struct Frontends {
    seen: Mutex<HashMap<String, Instant>>,
}

impl Frontends {
    /// How long a frontend counts after its last poll (it polls every 500 ms).
    const FORGET_AFTER: Duration = Duration::from_secs(10);

    pub fn record(&self, peer_url: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() < 1024 || seen.contains_key(peer_url) {
            seen.insert(peer_url.to_owned(), Instant::now());
        }
        seen.retain(|_, t| t.elapsed() < Self::FORGET_AFTER);
    }

    /// The frontends seen lately.
    pub fn current(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter()
            .filter(|(_, t)| t.elapsed() < Self::FORGET_AFTER)
            .map(|(url, _)| url.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Groups {
        Groups::demo()
    }

    fn member(id: u64, url: &str) -> MemberInfo {
        MemberInfo {
            id,
            peer_url: url.into(),
            api_url: String::new(),
            weight: 1,
        }
    }

    #[test]
    fn routes_by_the_ring() {
        let peers = ["http://a:8001".to_string(), "http://b:8001/".to_string()];
        let a = Cluster::from_static(
            Some("http://a:8001"),
            &peers,
            true,
            demo(),
            RingHash::Crc32,
            50,
        );
        let b = Cluster::from_static(
            Some("http://b:8001"),
            &peers,
            true,
            demo(),
            RingHash::Crc32,
            50,
        );
        let mut local = 0;
        for i in 0..1000 {
            let k = i.to_string();
            match (a.route(&k), b.route(&k)) {
                (Route::Local, Route::Remote(o)) => {
                    assert_eq!(&*o, "http://a:8001");
                    local += 1;
                }
                (Route::Remote(o), Route::Local) => assert_eq!(&*o, "http://b:8001"),
                other => panic!("disagree on {k}: {other:?}"),
            }
        }
        assert!(local > 200 && local < 800);
    }

    #[test]
    fn a_lone_node_serves_everything_and_a_frontend_nothing() {
        let lone = Cluster::from_static(None, &[], true, demo(), RingHash::Crc32, 150);
        assert_eq!(lone.route("x"), Route::Local);
        let peers = ["http://a:8001".to_string()];
        let front = Cluster::from_static(
            Some("http://f:8001"),
            &peers,
            false,
            demo(),
            RingHash::Crc32,
            150,
        );
        assert_eq!(front.route("x"), Route::Remote("http://a:8001".into()));
    }

    #[test]
    fn publication_only_moves_forward_and_carries_purges() {
        let c = Cluster::from_static(
            Some("http://a:8001"),
            &[],
            true,
            demo(),
            RingHash::Crc32,
            10,
        );
        let (a, b) = (member(1, "http://a:8001"), member(2, "http://b:8001"));
        let purged = BTreeMap::from([("products".to_owned(), 2)]);
        assert!(c.publish(3, [&a, &b], &purged));
        assert_eq!((c.epoch(), c.view().ring.members().len()), (3, 2));
        let group = |n| demo().get(n).unwrap();
        assert_eq!(c.generation(group("products")), 2);
        assert_eq!(c.generation(group("scores")), 0);
        // An older ring (a late publisher) changes nothing.
        assert!(!c.publish(2, [&a], &BTreeMap::new()));
        assert_eq!((c.epoch(), c.view().ring.members().len()), (3, 2));
        assert_eq!(c.generation(group("products")), 2);
        assert!(c.publish(4, [&a], &BTreeMap::new()));
        assert_eq!(c.view().ring.members().len(), 1);
    }
}
