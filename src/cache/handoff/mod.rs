//! Warm handoff: when the ring moves a key, its new owner takes the value from the previous
//! owner instead of loading it again, and never a value older than a load would be.
//!
//! ```text
//! a node leaves        send::push_on_leave   its fresh values, in batches, to their new owners
//!                      send::answer_peeks    then it answers their peeks until they stop
//! a node joins         send::push_on_join    every member sends it what it holds for it
//! a batch arrives      receive::receive      kept in the main store while it has room, and in
//!                                            the handoff store (for the grace, and to go back)
//! a new owner misses   peek::from_handoff_store, then peek::ask_previous_owner (within
//!                      --handoff-grace), then the source (`Loader::as_owner`)
//! a peek arrives       peek::answer          the main store's fresh value, else the handoff
//!                                            store's
//! ```
//!
//! One rule decides whether a value another node offers may be kept ([`may_keep`]): as fresh
//! as a load would be. Batches, peeks and copies all go through it.

mod peek;
mod receive;
mod send;

pub use peek::{PeekBackoff, answer, ask_previous_owner, from_handoff_store};
pub use receive::receive;
pub use send::{OwnersBatches, answer_peeks, batches, push_on_join, push_on_leave};

use bytes::Bytes;

use crate::cache::store::Entry;
use crate::cache::{Core, Lease};
use crate::group::{Group, validate_key};

/// What another node says of a value it offers (in a batch or a peek's answer).
#[derive(Debug, Clone, Copy)]
pub struct Offered {
    /// Since the source answered it, as the other node counted when it sent it.
    pub age_ms: u64,
    /// How much longer it is fresh (`None`: no ttl).
    pub fresh_ms: Option<u64>,
    /// The group's purge generation it was filled under.
    pub generation: u64,
    /// Past its ttl (answered from a stale window).
    pub stale: bool,
    /// The other node's feed position: every change below it applied there.
    pub feed_xmin: u64,
}

/// Whether a value another node offers for `key` may be kept here: as fresh as a load would
/// be. Within its ttl and not stale; not from before a purge this node has (`lease`); read
/// from the source after this node's last invalidation of the key (the other node may have
/// missed a DELETE: it left, or was unreachable, and the fan-out to nodes that left is best
/// effort); and, for a feed-backed group, from a node that has applied every change to the
/// key this node has seen. `asked_ms` is no later than when the other node counted the age,
/// so the fill time it gives here (`asked_ms - age`) is no later than the real one: this errs
/// towards "no".
pub fn may_keep(
    core: &Core,
    group: Group,
    key: &str,
    lease: Lease,
    offered: &Offered,
    asked_ms: u64,
) -> bool {
    validate_key(key).is_ok()
        && !offered.stale
        && offered.fresh_ms.is_none_or(|f| f > 0)
        && offered.generation >= lease.generation
        && core.read_after_invalidation(group, key, asked_ms, offered.age_ms)
        && core.caught_up(group, key, offered.feed_xmin)
}

/// The entry an offered value fills here, at `now`: its age and freshness carried over.
fn entry(value: Bytes, offered: &Offered, lease: Lease, now: u64) -> Entry {
    Entry {
        value: Some(value),
        generation: lease.generation,
        filled_ms: now.saturating_sub(offered.age_ms),
        fresh_until_ms: offered.fresh_ms.map_or(u64::MAX, |f| now.saturating_add(f)),
    }
}
