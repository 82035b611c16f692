//! The peer protocol's wire: the protobuf messages (package `geecachepb`, see
//! `proto/geecachepb.proto`), the Raft batch, the paths and header names, and the JSON bodies of
//! the membership endpoints. The server side (`http::peer`, `http::membership`) and the one
//! client (`peer::client`) both take them from here.
//!
//! Field numbers of `Response` follow GeeCache's `geecachepb.proto`; ours are only added under
//! new numbers, so a GeeCache (Go) node reads our answers and we read its.

use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::group::Group;
use crate::ring::MemberInfo;

/// The caller's ring epoch on data fetches; an owner's epoch on its `421 stale_epoch` answer.
pub const EPOCH_HEADER: &str = "x-geecache-epoch";
/// The caller's cluster id on membership calls (absent from operators' tools).
pub const CLUSTER_HEADER: &str = "x-geecache-cluster";

/// On a data fetch: only say what you hold (a warm handoff's peek): no load, no forwarding,
/// 404 `not_held` when the key is not in your store.
pub const PEEK_HEADER: &str = "x-geecache-peek";

/// Data fetches: `GET /_geecache/{group}/{key}`.
pub const DATA_PREFIX: &str = "/_geecache/";
/// Raft transport: `POST` a protobuf [`RaftBatch`].
pub const RAFT_MESSAGES: &str = "/_raft/messages";
/// `GET`: the node's [`RaftStatus`].
pub const RAFT_INFO: &str = "/_raft/info";
/// `GET`: the agreed ring, [`RingMembers`] (frontends follow it).
pub const RAFT_MEMBERS: &str = "/_raft/members";
/// `POST` a [`MemberInfo`] (to the leader).
pub const RAFT_JOIN: &str = "/_raft/join";
/// `POST {"id": N}` (to the leader).
pub const RAFT_REMOVE: &str = "/_raft/remove";
/// `POST {"set_weight": {"id", "weight"}}` or `{"purge_group": "name"}` (to the leader).
pub const RAFT_COMMAND: &str = "/_raft/command";

/// Escape everything but RFC 3986's unreserved characters, so `/`, `+` and spaces in keys
/// survive the path intact on our servers and on GeeCache's.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The path of a data fetch, the key percent-encoded.
pub fn data_path(group: Group, key: &str) -> String {
    format!(
        "{DATA_PREFIX}{}/{}",
        group.name(),
        utf8_percent_encode(key, SEGMENT)
    )
}

/// The answer to a data fetch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    #[prost(bytes = "bytes", tag = "1")]
    pub value: Bytes,
    /// Requests per second the owner served for this key over the last minute.
    #[prost(double, tag = "2")]
    pub minute_qps: f64,
    /// The owner's ring epoch (0 with static membership).
    #[prost(uint64, tag = "3")]
    pub epoch: u64,
    /// The owner's purge generation of the group: a caller keeps no copy of a value from an
    /// owner that has not yet applied a purge the caller has.
    #[prost(uint64, tag = "4")]
    pub generation: u64,
    /// How long ago the owner's source answered.
    #[prost(uint64, tag = "5")]
    pub age_ms: u64,
    /// How long the value stays fresh; absent: no ttl.
    #[prost(uint64, optional, tag = "6")]
    pub fresh_ms: Option<u64>,
    /// The owner answered a value past its ttl (revalidating it, or its reload failed).
    #[prost(bool, tag = "7")]
    pub stale: bool,
    /// The group's `Content-Type` at the owner.
    #[prost(string, tag = "8")]
    pub content_type: String,
    /// The owner has applied every change-feed transaction below this one (0: no feed).
    #[prost(uint64, tag = "9")]
    pub feed_xmin: u64,
}

/// `POST` a [`FetchBatch`]: several data fetches in one exchange, answered with a stream of
/// length-delimited [`FetchAnswer`]s, each as soon as it is ready (a hit never waits behind a
/// miss of the same batch). Only GeeCache-rs serves it: a GeeCache (Go) peer answers 404, and
/// is then asked one key per request.
pub const FETCH_BATCH: &str = "/_fetch_batch";
/// Most fetches in one batch.
pub const FETCH_BATCH_MAX: usize = 64;

/// One fetch of a batch: what `GET /_geecache/{group}/{key}` with `x-geecache-epoch` asks.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Fetch {
    #[prost(string, tag = "1")]
    pub group: String,
    #[prost(string, tag = "2")]
    pub key: String,
    /// The caller's ring epoch when it asked.
    #[prost(uint64, tag = "3")]
    pub epoch: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchBatch {
    #[prost(message, repeated, tag = "1")]
    pub fetches: Vec<Fetch>,
}

/// The answer to the fetch at `index` of a batch: the status and body a single fetch would
/// have had (for an error, its JSON `error` code; for 421, the owner's epoch).
#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchAnswer {
    #[prost(uint32, tag = "1")]
    pub index: u32,
    #[prost(uint32, tag = "2")]
    pub status: u32,
    #[prost(message, optional, tag = "3")]
    pub response: Option<Response>,
    #[prost(string, tag = "4")]
    pub error: String,
    #[prost(uint64, tag = "5")]
    pub epoch: u64,
}

/// `POST` a [`HandoffBatch`]: entries a leaving node hands to their new owner.
pub const HANDOFF: &str = "/_handoff";
/// A handoff batch is cut at this many value and key bytes (one larger entry goes alone)...
pub const HANDOFF_BATCH_BYTES: usize = 1 << 20;
/// ... and no entry of a value larger than this is handed off: the receiver reads at most
/// `HANDOFF_MAX_BODY` of a batch.
pub const HANDOFF_MAX_VALUE: usize = 2 << 20;
pub const HANDOFF_MAX_BODY: usize = HANDOFF_BATCH_BYTES + HANDOFF_MAX_VALUE + (64 << 10);

/// One entry a leaving node hands off: what a peek would answer for it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HandoffEntry {
    #[prost(string, tag = "1")]
    pub group: String,
    #[prost(string, tag = "2")]
    pub key: String,
    #[prost(bytes = "bytes", tag = "3")]
    pub value: Bytes,
    /// Milliseconds since the value was read from the source, when the batch was sent.
    #[prost(uint64, tag = "4")]
    pub age_ms: u64,
    /// Milliseconds of freshness left; absent: no ttl.
    #[prost(uint64, optional, tag = "5")]
    pub fresh_ms: Option<u64>,
    /// The group's purge generation at the sender.
    #[prost(uint64, tag = "6")]
    pub generation: u64,
}

/// Entries for one new owner, with the sender's change-feed position.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HandoffBatch {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<HandoffEntry>,
    #[prost(uint64, tag = "2")]
    pub feed_xmin: u64,
}

/// A batch of raft messages on the wire: each one a protobuf-encoded `eraftpb::Message`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftBatch {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub messages: Vec<Vec<u8>>,
    /// The sender's peer URL: it must be the URL its member id has in the membership, and a
    /// node that is still joining learns from it where to answer the leader.
    #[prost(string, tag = "2")]
    pub from_url: String,
    /// The sender's cluster id ("" while it has not joined one): a message from another
    /// cluster is dropped.
    #[prost(string, tag = "3")]
    pub cluster_id: String,
}

/// A member as `/_raft/info` lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemberStatus {
    #[serde(flatten)]
    pub info: MemberInfo,
    /// `voter` or `learner`.
    pub role: String,
    /// `self`, `alive`, `unreachable` (as the leader sees it) or `member`.
    pub state: String,
}

/// A member's view of its Raft group (`GET /_raft/info`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RaftStatus {
    pub node_id: u64,
    pub cluster_id: String,
    pub initialized: bool,
    pub leader_id: u64,
    pub leader_peer_url: Option<String>,
    pub term: u64,
    pub epoch: u64,
    /// `leader`, `follower`, `candidate` or `precandidate`.
    pub state: String,
    pub members: Vec<MemberStatus>,
    /// This member's digest of its group definitions.
    #[serde(default)]
    pub groups_digest: String,
}

/// The agreed ring (`GET /_raft/members`): what a frontend follows.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RingMembers {
    pub cluster_id: String,
    pub epoch: u64,
    pub members: Vec<MemberInfo>,
    /// Purge generations by group name.
    #[serde(default)]
    pub generations: std::collections::BTreeMap<String, u64>,
    /// The answering member's digest of its group definitions.
    #[serde(default)]
    pub groups_digest: String,
}

/// A frontend polling `/_raft/members` says where its peer port is, so that DELETEs reach its
/// hot cache.
pub const FRONTEND_HEADER: &str = "x-geecache-frontend";

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn golden_bytes() {
        // What GeeCache's Go code writes for Response{Value: []byte("630")}.
        let plain = Response {
            value: Bytes::from_static(b"630"),
            ..Default::default()
        };
        assert_eq!(plain.encode_to_vec(), [0x0a, 0x03, b'6', b'3', b'0']);
        // Our extra fields, under new numbers: a GeeCache node skips them.
        let full = Response {
            value: Bytes::from_static(b"630"),
            minute_qps: 1.5,
            epoch: 7,
            generation: 2,
            ..Default::default()
        };
        assert_eq!(
            full.encode_to_vec(),
            [
                0x0a, 0x03, b'6', b'3', b'0', // 1: value
                0x11, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f, // 2: minute_qps = 1.5 (fixed64)
                0x18, 0x07, // 3: epoch = 7
                0x20, 0x02, // 4: generation = 2
            ]
        );
        assert_eq!(Response::decode(&full.encode_to_vec()[..]).unwrap(), full);
        // Only field 1, as GeeCache sends it, decodes with defaults for the rest.
        let from_go = Response::decode(&[0x0a, 0x02, b'h', b'i'][..]).unwrap();
        assert_eq!((from_go.value.as_ref(), from_go.epoch), (&b"hi"[..], 0));
    }

    #[test]
    fn paths_escape_what_would_change_meaning() {
        let demo = crate::group::Groups::demo();
        let (scores, products) = (demo.get("scores").unwrap(), demo.get("products").unwrap());
        assert_eq!(data_path(scores, "Tom"), "/_geecache/scores/Tom");
        assert_eq!(
            data_path(scores, "a b+c/d%"),
            "/_geecache/scores/a%20b%2Bc%2Fd%25"
        );
        assert_eq!(data_path(products, "€"), "/_geecache/products/%E2%82%AC");
    }
}
