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
use crate::group::{Group, Groups};
use crate::ring::MemberInfo;

/// A ring and the epoch it belongs to.
#[derive(Debug)]
pub struct RingView {
    pub ring: Ring,
    pub epoch: u64,
    /// The rings before the last few changes of members, newest first: a new owner asks a
    /// moved key's previous owner before the source (warm handoff). More than one, because
    /// nodes leave (and join) in bursts: when two leave together, the ring between the two
    /// changes already gives the first one's keys to their successors, and only the ring
    /// before it still names the node that holds them.
    pub previous: Arc<[Previous]>,
    /// The members as the ring's publisher gave them (ids and URLs; empty for a static ring):
    /// what a frontend's `/cluster` lists.
    pub members: Arc<[MemberInfo]>,
}

/// A ring that was replaced, and when (`clock::now_ms`).
#[derive(Debug, Clone)]
pub struct Previous {
    pub ring: Arc<Ring>,
    pub replaced_ms: u64,
}

/// Replaced rings a view keeps.
const HISTORY: usize = 4;

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
    /// The epoch of each ring published, for those who act on a change (`subscribe`).
    published: tokio::sync::watch::Sender<u64>,
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
                previous: Arc::new([]),
                members: Arc::new([]),
            }),
            groups,
            generations: groups.all().map(|_| AtomicU64::new(0)).collect(),
            published: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Wakes on each ring published after this call (its epoch); a receiver that falls behind
    /// sees the latest.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
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
            let previous = if moved && !before.is_empty() {
                let replaced = Previous {
                    ring: Arc::new(before),
                    replaced_ms: crate::clock::now_ms(),
                };
                std::iter::once(replaced)
                    .chain(current.previous.iter().take(HISTORY - 1).cloned())
                    .collect()
            } else {
                Arc::clone(&current.previous)
            };
            Arc::new(RingView {
                ring: ring.clone(),
                epoch,
                previous,
                members: Arc::clone(&members),
            })
        });
        if published {
            self.published.send_replace(epoch);
        }
        published
    }

    /// The member that owned `key` last before this node did, under the rings replaced less
    /// than `grace_ms` ago: the one member a warm handoff asks. `None` when this node owned it
    /// under all of them.
    pub fn previous_owner(&self, key: &str, grace_ms: u64) -> Option<Arc<str>> {
        let view = self.view.load();
        let now = crate::clock::now_ms();
        previous_owner_in(
            &view.previous,
            self.self_name.as_deref(),
            key,
            now,
            grace_ms,
        )
    }

    /// Members of the rings replaced less than `grace_ms` ago that the current ring no longer
    /// has: nodes that left and may still answer a peek while they drain, so a DELETE must
    /// reach them too.
    pub fn departed(&self, grace_ms: u64) -> Vec<Arc<str>> {
        let view = self.view.load();
        let now = crate::clock::now_ms();
        let mut gone: Vec<Arc<str>> = Vec::new();
        for p in view
            .previous
            .iter()
            .take_while(|p| now < p.replaced_ms.saturating_add(grace_ms))
        {
            for m in p.ring.members() {
                let current = view.ring.members().iter().any(|c| c.name == m.name);
                if !current && !gone.contains(&m.name) {
                    gone.push(Arc::clone(&m.name));
                }
            }
        }
        gone
    }

    pub fn epoch(&self) -> u64 {
        self.view.load().epoch
    }

    /// The group's purge generation: cached values of an older one are misses.
    pub fn generation(&self, group: Group) -> u64 {
        self.generations[group.index()].load(Ordering::Acquire)
    }

    /// Whether this node owns `key`: [`Cluster::route`] without the owner's name (no shared
    /// reference count touched, which the hit path's threads would contend on).
    pub fn owns(&self, key: &str) -> bool {
        let view = self.view.load();
        view.ring
            .owner(key)
            .is_none_or(|m| Some(&m.name) == self.self_name.as_ref())
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

/// A ring that was current for less than this is one of a burst of changes (nodes leaving or
/// joining together, committed milliseconds apart): nobody had time to take keys under it.
const BURST_MS: u64 = 1_000;

/// Newest first, the rings replaced less than `grace_ms` before `now`, skipping the rings of a
/// burst: the first owner of `key` that is not `me`. Without the skip, when two nodes leave
/// together, a key of the first to leave is asked of the member that owned it for the few
/// milliseconds between the two changes, which never held it, instead of the leaver, which
/// does while it drains.
fn previous_owner_in(
    previous: &[Previous],
    me: Option<&str>,
    key: &str,
    now: u64,
    grace_ms: u64,
) -> Option<Arc<str>> {
    for (i, p) in previous.iter().enumerate() {
        if now >= p.replaced_ms.saturating_add(grace_ms) {
            return None;
        }
        // When this ring became current: when the one before it was replaced.
        let made = previous.get(i + 1).map(|older| older.replaced_ms);
        if made.is_some_and(|made| p.replaced_ms.saturating_sub(made) < BURST_MS) {
            continue;
        }
        match p.ring.owner(key) {
            Some(owner) if Some(&*owner.name) != me => return Some(Arc::clone(&owner.name)),
            _ => {}
        }
    }
    None
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
            assert_eq!(a.owns(&k), a.route(&k) == Route::Local, "{k}");
            assert_eq!(b.owns(&k), b.route(&k) == Route::Local, "{k}");
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
        assert!(lone.owns("x"));
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
        assert!(!front.owns("x"));
    }

    fn ring_of(urls: &[&str]) -> Arc<Ring> {
        Arc::new(Ring::new(
            RingHash::Crc32,
            50,
            urls.iter().map(|u| Member::new(u)),
        ))
    }

    /// Nodes d and e leave together (two changes a few ms apart), then, a minute later, the
    /// grace window is over.
    #[test]
    fn a_burst_of_leaves_is_asked_of_the_leavers() {
        let urls = [
            "http://a:1",
            "http://b:1",
            "http://c:1",
            "http://d:1",
            "http://e:1",
        ];
        let (five, four, three) = (ring_of(&urls), ring_of(&urls[..4]), ring_of(&urls[..3]));
        let history = [
            Previous {
                ring: Arc::clone(&four),
                replaced_ms: 10_030,
            }, // d left
            Previous {
                ring: Arc::clone(&five),
                replaced_ms: 10_000,
            }, // e left
            Previous {
                ring: ring_of(&urls[..3]),
                replaced_ms: 0,
            }, // d and e joined
        ];
        let (me, grace) = (Some(urls[0]), 60_000);
        let ask = |k: &str, now| previous_owner_in(&history, me, k, now, grace);
        let mut checked = [0, 0];
        let mut via_d = 0;
        for k in (0..5000).map(|i| i.to_string()) {
            if *three.owner(&k).unwrap().name != *urls[0] {
                continue;
            }
            let held_by = &*five.owner(&k).unwrap().name;
            match held_by {
                // The burst's middle ring is skipped: the leaver that holds the key is asked,
                // also when the middle ring gave it to d for 30 ms.
                "http://d:1" | "http://e:1" => {
                    assert_eq!(ask(&k, 20_000).as_deref(), Some(held_by), "{k}");
                    checked[usize::from(held_by == "http://e:1")] += 1;
                    via_d += usize::from(
                        held_by == "http://e:1" && *four.owner(&k).unwrap().name == *urls[3],
                    );
                }
                // a's own before the burst: nobody to ask (a joined ring before that is
                // past the grace window).
                _ => assert_eq!(ask(&k, 70_000), None),
            }
            assert_eq!(ask(&k, 70_001), None, "past the grace window");
        }
        assert!(checked[0] > 0 && checked[1] > 0, "{checked:?}");
        assert!(via_d > 0, "some of e's keys were d's for the burst's 30 ms");
    }

    /// A ring that lived a while is not a burst: a restarted node asks the member that owned
    /// its keys while it was away (rolling restart).
    #[test]
    fn a_rejoining_node_asks_who_held_its_keys_while_it_was_away() {
        let urls = ["http://a:1", "http://b:1", "http://c:1"];
        let (all, without_a) = (ring_of(&urls), ring_of(&urls[1..]));
        let history = [
            Previous {
                ring: Arc::clone(&without_a),
                replaced_ms: 18_000,
            }, // a back
            Previous {
                ring: all,
                replaced_ms: 10_000,
            }, // a left
        ];
        let k = (0..100)
            .map(|i| i.to_string())
            .find(|k| *ring_of(&urls).owner(k).unwrap().name == *urls[0])
            .unwrap();
        let held_by = without_a.owner(&k).unwrap().name.clone();
        assert_eq!(
            previous_owner_in(&history, Some(urls[0]), &k, 19_000, 60_000),
            Some(held_by)
        );
    }

    #[test]
    fn departed_members_are_told_within_the_grace_window() {
        let urls = [
            "http://a:1",
            "http://b:1",
            "http://c:1",
            "http://d:1",
            "http://e:1",
        ];
        let all: Vec<MemberInfo> = (1..).zip(urls).map(|(id, u)| member(id, u)).collect();
        let c = Cluster::from_static(Some(urls[0]), &[], true, demo(), RingHash::Crc32, 50);
        let none = BTreeMap::new();
        assert!(c.publish(1, &all, &none));
        assert!(c.publish(2, &all[..4], &none), "e leaves");
        assert!(c.publish(3, &all[..3], &none), "then d");
        let mut gone: Vec<String> = c.departed(60_000).iter().map(|u| u.to_string()).collect();
        gone.sort();
        assert_eq!(gone, ["http://d:1", "http://e:1"]);
        assert!(c.departed(0).is_empty(), "past the grace window");
    }

    #[test]
    fn the_history_keeps_the_last_few_rings() {
        let c = Cluster::from_static(Some("http://a:1"), &[], true, demo(), RingHash::Crc32, 10);
        let none = BTreeMap::new();
        for epoch in 1..=10u64 {
            let ms: Vec<MemberInfo> = (1..=epoch)
                .map(|id| member(id, &format!("http://n{id}:1")))
                .chain([member(100, "http://a:1")])
                .collect();
            assert!(c.publish(epoch, &ms, &none));
        }
        assert_eq!(c.view().previous.len(), HISTORY);
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
