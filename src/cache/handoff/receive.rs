//! A batch another node sent (`POST /_handoff`): what is kept, and where.

use std::sync::atomic::Ordering;

use super::{Offered, may_keep};
use crate::cache::Core;
use crate::cache::store::{self, Store};
use crate::clock;

/// Entries a neighbour sent (`POST /_handoff`) as it left, or as this node joined. Each
/// goes into the handoff store, for this node's misses and for the peeks of the
/// neighbour if it comes back, and also into the key's main store while that has room (a
/// node that just joined: its store is empty, and moka admits freely below its bound).
/// Not into a full main store: that would refuse it (moka admits a key over a resident
/// only if it was asked for more often) or evict this node's own entries for it. An entry is
/// kept only if it is as fresh as a load would be, by [`may_keep`]; the
/// batch may have been under way up to `transit_ms`, which counts against its age. With
/// `--handoff-grace 0s`, nothing is kept. Returns (kept, refused).
///
/// The handoff store's room goes first to entries held nowhere else on this node (a
/// leaving neighbour's, for keys its full main store cannot take), then to copies (of
/// entries its main store holds). A copy is not inserted into a full handoff store, and
/// when a sole entry does not fit, the copies there are dropped first: a node that rejoined
/// holds a copy of everything it was sent back, and without this a neighbour's restart within
/// the grace lost what it sent there (its copies held nowhere else).
pub fn receive(
    core: &Core,
    entries: impl IntoIterator<Item = crate::peer::wire::HandoffEntry>,
    feed_xmin: u64,
    transit_ms: u64,
) -> (u64, u64) {
    let (mut kept, mut refused) = (0, 0);
    let now = clock::now_ms();
    let off = core.handoff_grace_ms.load(Ordering::Relaxed) == 0;
    // The room of each main store as of now, less what this batch put there.
    let mut room: Vec<(*const Store, u64)> = Vec::new();
    let handoff = core.stores.handoff();
    handoff.maintain();
    let mut handoff_left = handoff.room();
    let mut copies_dropped = false;
    for e in entries {
        let Some(group) = core.groups.get(&e.group) else {
            refused += 1;
            continue;
        };
        let lease = core.lease(group, &e.key);
        let offered = Offered {
            age_ms: e.age_ms,
            fresh_ms: e.fresh_ms,
            generation: e.generation,
            stale: false,
            feed_xmin,
        };
        // The batch may have been under way up to `transit_ms`: it counts against the age.
        let asked_ms = now.saturating_sub(transit_ms);
        if off || !may_keep(core, group, &e.key, lease, &offered, asked_ms) {
            refused += 1;
            continue;
        }
        let weight = u64::from(store::entry_weight(e.key.len() + 3, e.value.len()));
        let entry = super::entry(e.value, &offered, lease, now);
        let main = core.stores.main(group);
        let left = match room.iter_mut().find(|(p, _)| std::ptr::eq(*p, main)) {
            Some((_, left)) => left,
            None => {
                main.maintain();
                room.push((main, main.room()));
                &mut room.last_mut().expect("just pushed").1
            }
        };
        let in_main = *left >= weight;
        let store = if in_main {
            *left -= weight;
            main
        } else {
            if handoff_left < weight && !copies_dropped {
                copies_dropped = true;
                handoff_left = drop_copies(core);
            }
            handoff_left = handoff_left.saturating_sub(weight);
            handoff
        };
        // A copy in the handoff store too (the value's bytes are shared), for the grace:
        // the main store's TinyLFU sketch is as new as the node and knows none of these
        // keys, so the first keys asked for once outweigh them and moka evicts handed-off
        // entries before their first read. From the handoff store, a miss takes them back
        // without a query (`handoff::from_handoff_store`).
        let copy = (in_main && handoff_left >= weight).then(|| entry.clone());
        if core.fill(store, group, &e.key, entry, lease) {
            kept += 1;
            if let Some(copy) = copy {
                handoff_left -= weight;
                core.fill(handoff, group, &e.key, copy, lease);
            }
        } else {
            refused += 1;
        }
    }
    metrics::counter!("geecache_handoff_received_total", "outcome" => "kept").increment(kept);
    metrics::counter!("geecache_handoff_received_total", "outcome" => "refused").increment(refused);
    (kept, refused)
}

/// Removes from the handoff store every entry whose key the main store holds too (a
/// joiner's copy, or a handed-off entry a miss has taken into the main store) and returns
/// the handoff store's room after it (see [`receive`]).
fn drop_copies(core: &Core) -> u64 {
    let handoff = core.stores.handoff();
    let mut dropped = 0u64;
    for (group, key, _) in handoff.values(core.groups) {
        if core.stores.main(group).holds(group, &key) {
            handoff.remove(group, &key);
            dropped += 1;
        }
    }
    handoff.maintain();
    metrics::counter!("geecache_handoff_copies_dropped_total").increment(dropped);
    handoff.room()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use bytes::Bytes;

    use super::*;
    use crate::cache::store::Entry;

    fn core() -> Core {
        Core::alone()
    }

    /// Everything a neighbour with the same --cache-bytes sends from its full main store to
    /// this node, whose main store is full too, is kept until it goes back: with the handoff
    /// store at half of --cache-bytes, moka evicted part of it.
    #[test]
    fn a_full_neighbours_handoff_fits_beside_a_full_main_store() {
        let c = core();
        c.handoff_grace_ms.store(60_000, Ordering::Relaxed);
        let g = c.groups.get("products").unwrap();
        let v = Bytes::from(vec![b'x'; 1000]);
        let weight = u64::from(store::entry_weight(8 + 3, v.len()));
        // What fills a main store (7/8 of the 1 MiB cache; the rest is the hot cache).
        let main_bytes = (1u64 << 20) - (1 << 20) / 8;
        let n = (main_bytes / weight) as usize;
        for i in 0..n + 50 {
            let key = format!("own{i:05}");
            let lease = c.lease(g, &key);
            let e = Entry::loaded(Some(v.clone()), 0, clock::now_ms(), None);
            c.fill(c.stores.main(g), g, &key, e, lease);
        }
        c.stores.main(g).maintain();
        assert!(c.stores.main(g).room() < weight, "the main store is full");
        let sent = (0..n).map(|i| crate::peer::wire::HandoffEntry {
            group: "products".into(),
            key: format!("got{i:05}"),
            value: v.clone(),
            age_ms: 10,
            fresh_ms: None,
            generation: 0,
        });
        let (kept, refused) = receive(&c, sent, 0, 0);
        assert_eq!((kept, refused), (n as u64, 0));
        c.stores.handoff().maintain();
        let held = (0..n)
            .filter(|i| {
                c.stores
                    .handoff()
                    .recheck(g, &format!("got{i:05}"))
                    .is_some()
            })
            .count();
        assert_eq!(
            held, n,
            "entries handed off were evicted before they could go back"
        );
    }

    /// A node that rejoined holds a copy of what it was sent back in its handoff store; when
    /// a neighbour leaves within the grace, its entries (which this node's full main store
    /// cannot take, and which no other node holds) take the room of those copies, not lose
    /// to them (see [`receive`]).
    #[test]
    fn a_leaving_neighbours_entries_displace_a_joiners_copies() {
        let c = core();
        c.handoff_grace_ms.store(60_000, Ordering::Relaxed);
        let g = c.groups.get("products").unwrap();
        let v = Bytes::from(vec![b'x'; 1000]);
        let weight = u64::from(store::entry_weight(8 + 3, v.len()));
        let entries = |prefix: &'static str, n: usize| {
            let v = v.clone();
            (0..n).map(move |i| crate::peer::wire::HandoffEntry {
                group: "products".into(),
                key: format!("{prefix}{i:05}"),
                value: v.clone(),
                age_ms: 10,
                fresh_ms: None,
                generation: 0,
            })
        };
        // Rejoined: sent back what fills its main store (7/8 of the 1 MiB cache), each entry
        // into the main store and a copy into the handoff store (1 MiB).
        let main_bytes = (1u64 << 20) - (1 << 20) / 8;
        let back = (main_bytes / weight) as usize - 2;
        assert_eq!(receive(&c, entries("bck", back), 0, 0), (back as u64, 0));
        c.stores.handoff().maintain();
        assert!(
            c.stores.handoff().room() < (back as u64 / 2) * weight,
            "the copies fill most of the handoff store"
        );
        // Its neighbour leaves: half a handoff store of entries for a full main store.
        let left = ((1u64 << 20) / weight / 2) as usize;
        let (kept, refused) = receive(&c, entries("nbr", left), 0, 0);
        assert_eq!((kept, refused), (left as u64, 0));
        c.stores.handoff().maintain();
        // (The main store's last room takes the first two.)
        let held = (0..left)
            .map(|i| format!("nbr{i:05}"))
            .filter(|k| c.stores.handoff().recheck(g, k).is_some() || c.stores.main(g).holds(g, k))
            .count();
        assert_eq!(held, left, "the neighbour's entries lost to copies");
        let in_main = (0..back)
            .filter(|i| c.stores.main(g).holds(g, &format!("bck{i:05}")))
            .count();
        assert_eq!(
            in_main, back,
            "only the copies went, not the main store's entries"
        );
    }

    /// What a node is sent as it joins goes into its main store and, for the grace, into
    /// its handoff store too (see [`receive`]); when it hands off in turn, each
    /// key goes once.
    #[test]
    fn a_joiners_entries_are_kept_twice_and_sent_once() {
        let c = core();
        c.handoff_grace_ms.store(60_000, Ordering::Relaxed);
        let g = c.groups.get("products").unwrap();
        let sent = (0..40).map(|i| crate::peer::wire::HandoffEntry {
            group: "products".into(),
            key: format!("k{i}"),
            value: Bytes::from_static(b"v"),
            age_ms: 10,
            fresh_ms: None,
            generation: 0,
        });
        assert_eq!(receive(&c, sent, 0, 0), (40, 0));
        for i in 0..40 {
            let key = format!("k{i}");
            assert!(c.stores.main(g).recheck(g, &key).is_some(), "{key} in main");
            assert!(
                c.stores.handoff().recheck(g, &key).is_some(),
                "{key} in handoff"
            );
        }
        let ring = crate::ring::Ring::new(
            crate::ring::RingHash::Crc32,
            150,
            [crate::ring::Member::new("http://other")],
        );
        let (batches, complete) =
            crate::cache::handoff::batches(&c, &ring, u64::MAX, true, |_| true);
        assert!(complete);
        let mut keys: Vec<String> = batches
            .iter()
            .flat_map(|(_, b)| {
                b.iter()
                    .flat_map(|b| b.entries.iter().map(|e| e.key.clone()))
            })
            .collect();
        keys.sort();
        keys.dedup();
        let count: usize = batches
            .iter()
            .flat_map(|(_, b)| b.iter().map(|b| b.entries.len()))
            .sum();
        assert_eq!((keys.len(), count), (40, 40), "each key sent once");
    }
}
