//! What a node sends: its values to their new owners as it leaves, what it holds for a node
//! that joins, in batches that fit the receiver's handoff store; and the peeks a leaving node
//! answers after.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::cache::store::{self, Store};
use crate::cache::{Core, Found, fresh_left};
use crate::clock;
use crate::peer::PeerClient;
use crate::peer::wire::HandoffBatch;

/// Handoff batches by the peer base URL of the owner they go to.
pub type OwnersBatches = Vec<(Arc<str>, Vec<crate::peer::wire::HandoffBatch>)>;

/// This node's fresh values whose owners under `ring` pass `to`, cut into batches for
/// those owners, at most `budget` bytes (as a store weighs entries) for each: what
/// `POST /_handoff` sends (see [`super::receive`]). As a node leaves: its main
/// stores, under the ring without it, to every owner. As a node joins: what the others
/// hold for it, from their main and handoff stores, under the new ring. With the batches,
/// whether they hold every such value (none left out for the budget or its size): then,
/// once they are sent, a peek at this node has nothing more to give.
pub fn batches(
    core: &Core,
    ring: &crate::ring::Ring,
    budget: u64,
    with_handoff_store: bool,
    to: impl Fn(&str) -> bool,
) -> (OwnersBatches, bool) {
    use crate::peer::wire::{HANDOFF_BATCH_BYTES, HANDOFF_MAX_VALUE, HandoffBatch, HandoffEntry};
    let now = clock::now_ms();
    let feed_xmin = core.feed.applied_xmin();
    let mut out: Vec<(Arc<str>, Vec<HandoffBatch>, usize, u64)> = Vec::new();
    let mut complete = true;
    let mains = core.groups.all().map(|g| core.stores.main(g));
    let handoff = with_handoff_store.then(|| core.stores.handoff());
    let mut seen: Vec<&Store> = Vec::new();
    for store in mains.chain(handoff) {
        if seen.iter().any(|s| std::ptr::eq(*s, store)) {
            continue; // groups without a budget of their own share the main store
        }
        seen.push(store);
        for (group, key, _) in store.values(core.groups) {
            if handoff.is_some_and(|h| std::ptr::eq(h, store))
                && core.stores.main(group).holds(group, &key)
            {
                continue; // sent from the main store (a handed-off entry's copy)
            }
            let Found::Fresh(entry) = core.find(store, group, &key, now) else {
                continue;
            };
            let Some(value) = entry.value.clone() else {
                continue;
            };
            let Some(owner) = ring.owner(&key) else {
                return (Vec::new(), false);
            };
            if !to(&owner.name) {
                continue;
            }
            if value.len() > HANDOFF_MAX_VALUE {
                complete = false;
                continue;
            }
            // Counted as the receiver's handoff store weighs it (the group's prefix
            // character is 3 bytes), so that what is sent fits there.
            let size = store::entry_weight(key.len() + 3, value.len()) as usize;
            let i = match out.iter().position(|o| o.0 == owner.name) {
                Some(i) => i,
                None => {
                    out.push((Arc::clone(&owner.name), Vec::new(), 0, 0));
                    out.len() - 1
                }
            };
            let o = &mut out[i];
            if o.3 + size as u64 > budget {
                complete = false;
                continue;
            }
            if o.1.is_empty() || o.2 + size > HANDOFF_BATCH_BYTES {
                o.1.push(HandoffBatch {
                    entries: Vec::new(),
                    feed_xmin,
                });
                o.2 = 0;
            }
            o.2 += size;
            o.3 += size as u64;
            o.1.last_mut().expect("a batch").entries.push(HandoffEntry {
                group: group.name().to_owned(),
                age_ms: entry.age_ms(now),
                fresh_ms: fresh_left(&entry, now),
                generation: entry.generation,
                key,
                value,
            });
        }
    }
    let batches = out
        .into_iter()
        .map(|(owner, batches, _, _)| (owner, batches))
        .collect();
    (batches, complete)
}

/// After leaving the ring: sends this node's fresh values to their new owners (within
/// half of `--handoff-drain`), which keep them in their main store while it has room, else
/// for `--handoff-grace` in a store of their own: their misses on those keys are answered
/// from it, and if this node comes back (a rolling restart) they send them back
/// ([`push_on_join`]). True when every value went (see [`batches`]).
pub async fn push_on_leave(core: &Core, peers: &PeerClient, budget: u64, drain: Duration) -> bool {
    if core.handoff_grace_ms.load(Ordering::Relaxed) == 0 {
        return false;
    }
    let started = std::time::Instant::now();
    let ring = match core.cluster.self_name() {
        Some(me) => core.cluster.view().ring.without(me),
        None => return false,
    };
    let (batches, whole) = batches(core, &ring, budget, false, |_| true);
    let sent = send(peers, &batches, started + drain / 2, |_, _| {}).await;
    sent.log(
        "handoff: entries sent to their new owners",
        &batches,
        started,
    );
    whole && sent.complete
}

/// After leaving the ring: the successors now own this node's keys and peek at it for
/// them; answer while they do (until 1 s passes without a peek), until `drain` after
/// `started` (the sending of this node's values came first).
pub async fn answer_peeks(core: &Core, started: std::time::Instant, drain: Duration) {
    let (mut last, mut quiet_since) = (
        core.peeks_served.load(Ordering::Relaxed),
        std::time::Instant::now(),
    );
    while started.elapsed() < drain {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = core.peeks_served.load(Ordering::Relaxed);
        if now != last {
            (last, quiet_since) = (now, std::time::Instant::now());
        } else if quiet_since.elapsed() >= Duration::from_secs(1) {
            break;
        }
    }
    tracing::info!(peeks = last, took = ?started.elapsed(), "handoff drain over");
}

/// What a handoff sent.
struct Sent {
    entries: u64,
    kept: u64,
    bytes: u64,
    /// Every batch arrived.
    complete: bool,
}

impl Sent {
    const NOTHING: Sent = Sent {
        entries: 0,
        kept: 0,
        bytes: 0,
        complete: true,
    };

    fn log(&self, what: &'static str, batches: &OwnersBatches, started: std::time::Instant) {
        metrics::counter!("geecache_handoff_pushed_total").increment(self.entries);
        metrics::counter!("geecache_handoff_pushed_bytes_total").increment(self.bytes);
        tracing::info!(
            entries = self.entries,
            kept = self.kept,
            bytes = self.bytes,
            owners = batches.len(),
            complete = self.complete,
            took = ?started.elapsed(),
            "{what}"
        );
    }
}

/// Sends each owner's batches in order, the owners at once, until `deadline`; calls `arrived`
/// with each batch its owner took, and how many of its entries the owner kept.
async fn send(
    peers: &PeerClient,
    batches: &OwnersBatches,
    deadline: std::time::Instant,
    arrived: impl Fn(&HandoffBatch, u64),
) -> Sent {
    let arrived = &arrived;
    let sends = batches.iter().map(|(owner, batches)| async move {
        let mut sent = Sent::NOTHING;
        for batch in batches {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let answer = match tokio::time::timeout(left, peers.hand_off(owner, batch)).await {
                Ok(answer) => answer,
                Err(_) => Err(crate::peer::PeerError::Transport("out of time".into())),
            };
            match answer {
                Ok(k) => {
                    arrived(batch, k);
                    sent.entries += batch.entries.len() as u64;
                    sent.kept += k;
                    sent.bytes += batch
                        .entries
                        .iter()
                        .map(|e| e.value.len() as u64)
                        .sum::<u64>();
                }
                Err(e) => {
                    tracing::warn!(%owner, error = %e, "handoff: a batch failed");
                    sent.complete = false;
                    break;
                }
            }
        }
        sent
    });
    let mut total = Sent::NOTHING;
    for s in futures_util::future::join_all(sends).await {
        total.entries += s.entries;
        total.kept += s.kept;
        total.bytes += s.bytes;
        total.complete &= s.complete;
    }
    total
}

/// How long after a node joined the others wait before they send it what they hold for it:
/// the feed position a batch carries must come from a poll begun after the joiner's first
/// one (it polls before it joins, every `--feed-poll`), or the joiner refuses the batch as
/// possibly older than its record of changes (`Core::caught_up`).
const JOIN_PUSH_DELAY: Duration = Duration::from_millis(200);

/// A member's side of a node joining (or coming back, in a rolling restart): once the ring
/// gives keys to a node it did not have, send that node the fresh values this node holds for
/// them, from its main store and from its handoff store (what the node sent as it left), and
/// drop them here, where they now only take the room of this node's own keys. Without it, the
/// joiner peeks at this node for each key it is asked for (within `--handoff-grace`); what
/// nobody asks for meanwhile is lost, and what moved into this node's main store while the
/// other was away evicted entries of this node's own. Woken by each ring published.
pub async fn push_on_join(core: Arc<Core>, peers: PeerClient, budget: u64, drain: Duration) {
    let mut last = core.cluster.view();
    let mut published = core.cluster.subscribe();
    loop {
        if published.changed().await.is_err() {
            return; // the cluster is gone: the node is stopping
        }
        let view = core.cluster.view();
        if view.epoch == last.epoch {
            continue;
        }
        let before = std::mem::replace(&mut last, Arc::clone(&view));
        let Some(me) = core.cluster.self_name() else {
            return;
        };
        let has =
            |ring: &crate::ring::Ring, name: &str| ring.members().iter().any(|m| &*m.name == name);
        if before.epoch == 0 || !has(&before.ring, me) || !has(&view.ring, me) {
            continue; // this node's own join or leave, or its first agreed ring
        }
        let joined: Vec<Arc<str>> = view
            .ring
            .members()
            .iter()
            .filter(|m| !has(&before.ring, &m.name))
            .map(|m| Arc::clone(&m.name))
            .collect();
        if joined.is_empty() || core.handoff_grace_ms.load(Ordering::Relaxed) == 0 {
            continue;
        }
        tokio::time::sleep(JOIN_PUSH_DELAY).await;
        let started = std::time::Instant::now();
        let ring = &core.cluster.view().ring;
        let (batches, _) = batches(&core, ring, budget, true, |owner| {
            joined.iter().any(|j| **j == *owner)
        });
        // Only a batch the joiner kept whole: an entry it refused (not as fresh as a load, by
        // the feed positions of that moment) may still be taken by its peek a moment later,
        // when its position has moved on; dropped here, it would be a query there.
        let drop_here = |batch: &HandoffBatch, kept: u64| {
            if kept < batch.entries.len() as u64 {
                return;
            }
            for e in &batch.entries {
                if let Some(group) = core.groups.get(&e.group) {
                    core.stores.main(group).remove(group, &e.key);
                    core.stores.handoff().remove(group, &e.key);
                }
            }
        };
        let sent = send(&peers, &batches, started + drain, drop_here).await;
        sent.log(
            "handoff: entries sent to a node that joined",
            &batches,
            started,
        );
    }
}
