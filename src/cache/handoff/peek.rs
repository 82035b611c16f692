//! A new owner's miss on a key the ring just moved here: from the handoff store, else a peek
//! at the previous owner; and a previous owner's answer to such a peek.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Offered, may_keep};
use crate::cache::store::Entry;
use crate::cache::{Core, Found, Lease, Loaded, PeerHit, fresh_left};
use crate::clock;
use crate::group::{Group, validate_key};
use crate::peer::PeerClient;

/// Previous owners whose last peek failed: a node that left and has exited, or one cut off. They
/// are not asked again for [`PeekBackoff::BACKOFF_MS`], so that after a scale-in the rest of the
/// grace window does not cost every miss on the leaver's keys a connection attempt (up to the
/// peek's 250 ms where a gone address drops the SYN, as in a VPC, instead of refusing it).
#[derive(Default)]
pub struct PeekBackoff {
    until_ms: std::sync::Mutex<std::collections::HashMap<Arc<str>, u64>>,
}

impl PeekBackoff {
    pub const BACKOFF_MS: u64 = 5_000;

    pub(crate) fn skips(&self, peer: &str, now: u64) -> bool {
        let until = self.until_ms.lock().unwrap_or_else(|e| e.into_inner());
        until.get(peer).is_some_and(|&u| now < u)
    }

    pub(crate) fn failed(&self, peer: &Arc<str>, now: u64) {
        let mut until = self.until_ms.lock().unwrap_or_else(|e| e.into_inner());
        if until.len() >= 1024 {
            until.retain(|_, u| *u > now);
        }
        until.insert(Arc::clone(peer), now.saturating_add(Self::BACKOFF_MS));
    }
}

/// A peek (a warm handoff's question): the value this node's main store holds of the
/// key, fresh, without a load; `None` when it holds none.
pub fn answer(core: &Core, group: Group, key: &str) -> Option<PeerHit> {
    validate_key(key).ok()?;
    let now = clock::now_ms();
    let held = match core.find(core.stores.main(group), group, key, now) {
        Found::Fresh(entry) => Found::Fresh(entry),
        // What a neighbour handed this node as it left, for that neighbour when it is
        // back (a rolling restart) as much as for this node's own misses.
        _ => core.find(core.stores.handoff(), group, key, now),
    };
    let hit = match held {
        Found::Fresh(entry) => {
            let (age_ms, fresh_ms) = (entry.age_ms(now), fresh_left(&entry, now));
            entry.value.map(|value| PeerHit {
                loaded: Loaded {
                    value,
                    age_ms,
                    fresh_ms,
                    stale: false,
                },
                minute_qps: 0.0,
                generation: core.cluster.generation(group),
            })
        }
        _ => None,
    };
    let outcome = if hit.is_some() {
        "answered"
    } else {
        "not_held"
    };
    metrics::counter!("geecache_handoff_peeks_served_total", "outcome" => outcome).increment(1);
    core.peeks_served.fetch_add(1, Ordering::Relaxed);
    hit
}

/// The key from the handoff store (a neighbour sent it as it left, or as this node
/// joined), copied to the main store.
pub fn from_handoff_store(core: &Core, group: Group, key: &str, lease: Lease) -> Option<Loaded> {
    let now = clock::now_ms();
    let Found::Fresh(entry) = core.find(core.stores.handoff(), group, key, now) else {
        return None;
    };
    let value = entry.value.clone()?;
    let loaded = Loaded {
        value,
        age_ms: entry.age_ms(now),
        fresh_ms: fresh_left(&entry, now),
        stale: false,
    };
    metrics::counter!("geecache_handoff_used_total", "group" => group.name()).increment(1);
    let entry = Entry {
        generation: lease.generation,
        ..entry
    };
    // The handoff store keeps its copy for the grace: the main store may evict this entry
    // again before its sketch knows the key (see `handoff::receive`).
    core.fill(core.stores.main(group), group, key, entry, lease);
    Some(loaded)
}

/// Peeks at the key's previous owner (under the ring before the last change, within the
/// grace window), and takes its value only if it is as fresh as a load would be: within its
/// ttl, not from before a purge we have, and, for a feed-backed group, from an owner that
/// has applied every change to the key this node has seen.
pub async fn ask_previous_owner(
    core: &Core,
    peers: &PeerClient,
    group: Group,
    key: &str,
    lease: Lease,
) -> Option<Loaded> {
    let grace = core.handoff_grace_ms.load(Ordering::Relaxed);
    if grace == 0 {
        return None;
    }
    let previous = core.cluster.previous_owner(key, grace)?;
    let outcome = |o: &'static str| {
        metrics::counter!("geecache_handoff_peeks_total", "group" => group.name(), "outcome" => o)
            .increment(1);
    };
    if core.peek_backoff.skips(&previous, clock::now_ms()) {
        outcome("skipped");
        return None;
    }
    let asked_ms = clock::now_ms();
    let answer = match peers.peek(&previous, group, key).await {
        Ok(Some(answer)) => answer,
        Ok(None) => {
            outcome("not_held");
            return None;
        }
        Err(e) => {
            tracing::debug!(%previous, error = %e, "handoff peek failed");
            core.peek_backoff.failed(&previous, clock::now_ms());
            outcome("failed");
            return None;
        }
    };
    let offered = Offered {
        age_ms: answer.age_ms,
        fresh_ms: answer.fresh_ms,
        generation: answer.generation,
        stale: answer.stale,
        feed_xmin: answer.feed_xmin,
    };
    if !may_keep(core, group, key, lease, &offered, asked_ms) {
        outcome("refused_stale");
        return None;
    }
    outcome("accepted");
    metrics::counter!("geecache_handoff_bytes_total", "group" => group.name())
        .increment(answer.value.len() as u64);
    let now = clock::now_ms();
    let loaded = Loaded {
        value: answer.value,
        age_ms: answer.age_ms,
        fresh_ms: answer.fresh_ms,
        stale: false,
    };
    let entry = super::entry(loaded.value.clone(), &offered, lease, now);
    core.fill(core.stores.main(group), group, key, entry, lease);
    Some(loaded)
}
