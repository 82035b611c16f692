//! Consistent hashing with virtual nodes, compatible with GeeCache and groupcache.
//!
//! Each member owns `vnodes × weight` points on the ring; the point of virtual node `i` of a
//! member is `hash(decimal(i) + name)`, a key's point is `hash(key)`, and its owner is the
//! member of the first point at or after it, wrapping. With crc32-IEEE (the default) and the
//! same names (peer base URLs) and vnodes, this is GeeCache's `consistenthash.Map`, so mixed
//! clusters agree on owners. Lookup is a binary search in a sorted array.

use std::sync::Arc;

/// A member as the agreed membership records it: its Raft id, peer and client URLs, and its
/// weight on the ring (validated where membership changes are applied, `raft::membership`).
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

pub mod cluster;

pub use cluster::{Cluster, Frontends, RingView, Route};

/// The hash that places points on the ring.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum RingHash {
    /// crc32-IEEE, as GeeCache and groupcache: compatible, but clumpy for similar names.
    #[default]
    Crc32,
    /// xxh3-64: better spread for the same vnodes; only for clusters of GeeCache-rs nodes.
    Xxh3,
}

impl RingHash {
    pub fn hash(self, bytes: &[u8]) -> u64 {
        match self {
            RingHash::Crc32 => u64::from(crc32fast::hash(bytes)),
            RingHash::Xxh3 => xxhash_rust::xxh3::xxh3_64(bytes),
        }
    }
}

/// A member of the ring: its name (peer base URL) and weight (vnodes multiplier).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    pub name: Arc<str>,
    pub weight: u32,
}

impl Member {
    pub fn new(name: &str) -> Member {
        Member {
            name: name.into(),
            weight: 1,
        }
    }
}

/// Points on one ring at most (16 bytes each: 32 MiB). Weights are bounded by the membership
/// state machine, vnodes by the config; this bounds what their product can allocate, whatever
/// reaches `Ring::new`.
pub const MAX_POINTS: usize = 1 << 21;

/// A member's weight counts up to this (the membership state machine refuses more).
pub const MAX_WEIGHT: u32 = 100;

/// An immutable ring; membership changes build a new one.
#[derive(Debug, Clone)]
pub struct Ring {
    hash: RingHash,
    vnodes: usize,
    members: Vec<Member>,
    /// (point, index into `members`), sorted by point.
    points: Vec<(u64, u32)>,
}

impl Ring {
    /// Builds a ring. Members are sorted by name first, so the ring does not depend on the
    /// order they were listed in; of two points that collide, the later name wins.
    pub fn new(hash: RingHash, vnodes: usize, members: impl IntoIterator<Item = Member>) -> Ring {
        let mut members: Vec<Member> = members.into_iter().collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members.dedup_by(|a, b| a.name == b.name);
        let weight = |m: &Member| m.weight.clamp(1, MAX_WEIGHT) as usize;
        let total_weight: usize = members.iter().map(weight).sum();
        // Past MAX_POINTS every member gets proportionally fewer points: the same ring on every
        // node with the same settings, only coarser.
        let per_weight = vnodes.min(MAX_POINTS / total_weight.max(1)).max(1);
        let mut points = Vec::with_capacity((total_weight * per_weight).min(MAX_POINTS));
        for (idx, m) in members.iter().enumerate() {
            for i in 0..(per_weight * weight(m)).min(MAX_POINTS - points.len()) {
                let label = format!("{i}{}", m.name);
                points.push((hash.hash(label.as_bytes()), idx as u32));
            }
        }
        // Stable sort keeps the later member last among equal points; keep that one.
        points.sort_by_key(|p| p.0);
        points.reverse();
        points.dedup_by_key(|p| p.0);
        points.reverse();
        Ring {
            hash,
            vnodes,
            members,
            points,
        }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The same ring without `name` (what a leaving node's keys map to).
    pub fn without(&self, name: &str) -> Ring {
        let rest = self.members.iter().filter(|m| &*m.name != name).cloned();
        Ring::new(self.hash, self.vnodes, rest)
    }

    pub fn vnodes(&self) -> usize {
        self.vnodes
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The owner of `key`, or `None` on an empty ring.
    pub fn owner(&self, key: &str) -> Option<&Member> {
        if self.points.is_empty() {
            return None;
        }
        let h = self.hash.hash(key.as_bytes());
        let i = self.points.partition_point(|p| p.0 < h);
        let (_, idx) = self.points[if i == self.points.len() { 0 } else { i }];
        Some(&self.members[idx as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(hash: RingHash, vnodes: usize, n: usize) -> Ring {
        Ring::new(
            hash,
            vnodes,
            (0..n).map(|i| Member::new(&format!("http://10.0.1.{}:8001", 100 + i))),
        )
    }

    /// Owners under GeeCache's rule, computed independently with Python's zlib.crc32
    /// (scripts/geecache_ring.py) for peers http://10.0.1.100:8001, ...101, ...102.
    #[test]
    fn golden_owners_match_geecache() {
        let r = ring(RingHash::Crc32, 150, 3);
        let golden = include_str!("../../tests/golden/ring_owners.txt");
        let mut checked = 0;
        for line in golden.lines().filter(|l| !l.is_empty()) {
            let (key, owner) = line.split_once('\t').unwrap();
            assert_eq!(&*r.owner(key).unwrap().name, owner, "key {key}");
            checked += 1;
        }
        assert!(checked >= 100);
    }

    #[test]
    fn empty_ring_has_no_owner_and_one_member_owns_all() {
        assert!(ring(RingHash::Crc32, 150, 0).owner("k").is_none());
        let r = ring(RingHash::Crc32, 150, 1);
        assert!(
            (0..100).all(|i| &*r.owner(&i.to_string()).unwrap().name == "http://10.0.1.100:8001")
        );
    }

    #[test]
    fn member_order_does_not_matter() {
        let a = Ring::new(
            RingHash::Crc32,
            50,
            ["http://b", "http://a", "http://c"].map(Member::new),
        );
        let b = Ring::new(
            RingHash::Crc32,
            50,
            ["http://c", "http://b", "http://a", "http://a"].map(Member::new),
        );
        for i in 0..1000 {
            let k = format!("key-{i}");
            assert_eq!(a.owner(&k), b.owner(&k));
        }
    }

    #[test]
    fn huge_weights_and_vnodes_stay_within_the_point_bound() {
        let members = (0..4).map(|i| Member {
            name: format!("http://n{i}:8001").into(),
            weight: u32::MAX,
        });
        let r = Ring::new(RingHash::Crc32, usize::MAX, members);
        assert!(r.points.len() <= MAX_POINTS, "{}", r.points.len());
        assert!(r.owner("k").is_some());
    }

    #[test]
    fn weight_scales_the_share() {
        let mut members: Vec<Member> = (0..4)
            .map(|i| Member::new(&format!("http://n{i}:8001")))
            .collect();
        members[0].weight = 3;
        let r = Ring::new(RingHash::Xxh3, 150, members);
        let heavy = (0..60_000)
            .filter(|i| &*r.owner(&i.to_string()).unwrap().name == "http://n0:8001")
            .count() as f64
            / 60_000.0;
        assert!((0.40..0.60).contains(&heavy), "weight 3 of 6 got {heavy}");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn members(n: usize, octet: u8) -> Vec<Member> {
        (0..n)
            .map(|i| {
                Member::new(&format!(
                    "http://10.{octet}.{}.{}:8001",
                    i / 250,
                    i % 250 + 1
                ))
            })
            .collect()
    }

    proptest! {
        // A fixed seed: the same 24 cases on every run, so CI never flakes on a tail draw.
        #![proptest_config(ProptestConfig {
            cases: 24,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x6765_6563_6163_6865),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// A joining node takes keys only from others (none move between old nodes); with xxh3
        /// it takes about its fair share: within ±20 % of 1/(N+1). crc32 does not hold that
        /// bound for every set of names (e.g. 7 -> 8 nodes named http://10.100.0.x:8001 moves
        /// 1.5x the fair share), which is why xxh3 is offered; see the README's ring table.
        #[test]
        fn joining_moves_only_to_the_new_node(
            n in 3usize..12,
            octet in 0u8..=255,
            hash in prop_oneof![Just(RingHash::Crc32), Just(RingHash::Xxh3)],
        ) {
            let all = members(n + 1, octet);
            let newcomer = all[n].name.clone();
            let before = Ring::new(hash, 150, all[..n].to_vec());
            let after = Ring::new(hash, 150, all);
            let mut moved = 0;
            for i in 0..20_000 {
                let k = format!("key-{i}");
                let (a, b) = (before.owner(&k).unwrap(), after.owner(&k).unwrap());
                if a != b {
                    prop_assert_eq!(&b.name, &newcomer);
                    moved += 1;
                }
            }
            let fair = 20_000.0 / (n + 1) as f64;
            if hash == RingHash::Xxh3 {
                prop_assert!((moved as f64 - fair).abs() <= 0.2 * fair, "moved {} of fair {}", moved, fair);
            }
        }

        /// The balanced setting, xxh3 with 1000 vnodes, keeps every node within 15 % of the
        /// mean over any names (typically within 10 %: ~3 % placement noise per node, plus key
        /// sampling). At 150 vnodes no hash does: placement noise alone is ~8 % per node; the
        /// README's ring table has the figures.
        #[test]
        fn xxh3_with_1000_vnodes_balances_within_15_percent(n in 3usize..=12, octet in 0u8..=255) {
            let ring = Ring::new(RingHash::Xxh3, 1000, members(n, octet));
            let mut counts = std::collections::HashMap::new();
            for i in 0..50_000 {
                *counts.entry(ring.owner(&i.to_string()).unwrap().name.clone()).or_insert(0) += 1;
            }
            let max = *counts.values().max().unwrap() as f64;
            prop_assert!(max / (50_000.0 / n as f64) <= 1.15, "max/mean {}", max / (50_000.0 / n as f64));
        }
    }
}
