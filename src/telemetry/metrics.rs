//! Prometheus metrics: the recorder, and pre-registered handles for the hot paths.
//!
//! Counter names follow groupcache's `Stats` (gets, cache hits, peer loads, peer errors, loads,
//! loads deduped, local loads, local load errors, server requests), each labelled by group.

use std::sync::OnceLock;

use metrics::{Counter, counter};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::group::{Group, Groups};

const LATENCY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global recorder once per process and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_duration_seconds".into()),
                    &LATENCY_BUCKETS,
                )
                .expect("static, non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests); then ours only renders.
            if metrics::set_global_recorder(recorder).is_ok() {
                describe();
            }
            handle
        })
        .clone()
}

/// Every metric's HELP text (and unit), so that `promtool check metrics` finds none without.
/// `tests/cluster.rs` checks that each family a node exports has one.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    let counters: &[(&'static str, &'static str)] = &[
        (
            "geecache_gets_total",
            "Requests for a key, by clients and peers (groupcache Gets)",
        ),
        (
            "geecache_cache_hits_total",
            "Gets answered from this node's main shard",
        ),
        (
            "geecache_hot_cache_hits_total",
            "Gets answered from the hot cache (copies of keys owned elsewhere)",
        ),
        (
            "geecache_loads_total",
            "Gets that missed both caches and started or joined a load",
        ),
        (
            "geecache_loads_deduped_total",
            "Loads that joined a flight already under way (singleflight)",
        ),
        (
            "geecache_local_load_errors_total",
            "Loads from the source that failed",
        ),
        (
            "geecache_peer_loads_total",
            "Loads answered by the key's owner over the peer port",
        ),
        (
            "geecache_peer_errors_total",
            "Peer fetches that failed (not counting stale-epoch retries)",
        ),
        (
            "geecache_peer_batches_total",
            "Requests to a peer that carried several fetches (--peer-batch)",
        ),
        (
            "geecache_peer_batched_fetches_total",
            "Fetches sent to a peer inside a batch",
        ),
        (
            "geecache_server_requests_total",
            "Peer requests this node served as a key's owner",
        ),
        (
            "geecache_stale_epoch_retries_total",
            "Peer fetches retried once after the owner's newer ring",
        ),
        (
            "geecache_stale_served_total",
            "Values answered past their TTL (stale-while-revalidate or stale-if-error)",
        ),
        (
            "geecache_invalidations_total",
            "Keys invalidated (DELETE or the change feed), by group",
        ),
        (
            "geecache_fills_discarded_total",
            "Loaded values not cached because the key changed while they loaded",
        ),
        (
            "geecache_cache_evictions_total",
            "Entries evicted to keep a store within its bytes",
        ),
        (
            "geecache_feed_replays_total",
            "Feed reconnections after which missed changes were replayed, by cause",
        ),
        (
            "geecache_feed_drops_total",
            "Feed-backed groups dropped because changes could not be replayed, by cause",
        ),
        (
            "geecache_handoff_peeks_total",
            "Peeks asked of a moved key's previous owner, by outcome",
        ),
        (
            "geecache_handoff_peeks_served_total",
            "Peeks this node answered as a previous owner, by outcome",
        ),
        (
            "geecache_handoff_pushed_total",
            "Entries this node sent to their new owners as it left",
        ),
        (
            "geecache_handoff_received_total",
            "Entries a leaving neighbour sent, kept or refused (not as fresh as a load)",
        ),
        (
            "geecache_handoff_used_total",
            "Misses served from what a leaving neighbour sent",
        ),
        (
            "geecache_handoff_copies_dropped_total",
            "Copies in the handoff store of entries the main store holds, dropped to make room for entries held nowhere else",
        ),
        (
            "geecache_raft_entries_skipped_total",
            "Committed Raft entries skipped because they fail validation",
        ),
        (
            "geecache_raft_messages_dropped_total",
            "Raft messages dropped as inadmissible, by reason",
        ),
        (
            "geecache_http_connections_total",
            "TCP connections accepted, by listener",
        ),
        (
            "geecache_tcp_listen_overflows_total",
            "The kernel's listen queue overflows (TcpExtListenOverflows of this network namespace)",
        ),
    ];
    for &(name, help) in counters {
        describe_counter!(name, help);
    }
    describe_counter!(
        "geecache_handoff_bytes_total",
        Unit::Bytes,
        "Value bytes accepted from peeks"
    );
    describe_counter!(
        "geecache_handoff_pushed_bytes_total",
        Unit::Bytes,
        "Value bytes this node sent to their new owners as it left"
    );
    let gauges: &[(&'static str, &'static str)] = &[
        (
            "geecache_cache_items",
            "Entries in a store (main shard, hot cache, a group's own budget)",
        ),
        (
            "geecache_groups_mismatch",
            "1 when a member's group definitions differ from this node's",
        ),
        (
            "geecache_feed_position",
            "The change feed's applied position (the last poll's snapshot xmin)",
        ),
        (
            "geecache_feed_triggers_missing",
            "Triggers a feed-backed group needs that are missing or disabled (the group caches nothing meanwhile)",
        ),
        (
            "geecache_http_connections_open",
            "Open client connections, by listener",
        ),
        (
            "geecache_http_connections_limit",
            "Connections a listener accepts at most (per worker times workers)",
        ),
        (
            "geecache_source_pool_connections",
            "The source's connections, by lane and state",
        ),
        (
            "geecache_source_pool_waiting",
            "Queries waiting for a connection of the source, by lane",
        ),
    ];
    for &(name, help) in gauges {
        describe_gauge!(name, help);
    }
    describe_gauge!("geecache_cache_bytes", Unit::Bytes, "Bytes held by a store");
    describe_gauge!(
        "geecache_feed_lag_seconds",
        Unit::Seconds,
        "Time since the feed's last completed poll"
    );
    let histograms: &[(&'static str, &'static str)] = &[
        (
            "geecache_http_request_duration_seconds",
            "Time to answer a request, by route and status",
        ),
        (
            "geecache_source_duration_seconds",
            "Time of one query at the source, by group",
        ),
        (
            "geecache_feed_delay_seconds",
            "Time from a change's commit to its invalidation here",
        ),
    ];
    for &(name, help) in histograms {
        describe_histogram!(name, Unit::Seconds, help);
    }
}

/// The counters of one group, registered once so that the request path does no lookups.
#[derive(Clone)]
pub struct GroupCounters {
    pub gets: Counter,
    pub cache_hits: Counter,
    pub hot_cache_hits: Counter,
    pub loads: Counter,
    pub loads_deduped: Counter,
    pub local_load_errors: Counter,
    pub peer_loads: Counter,
    pub peer_errors: Counter,
    pub server_requests: Counter,
    /// Peer fetches retried once because the owner's ring was newer.
    pub stale_epoch_retries: Counter,
    /// Answers with a value past its ttl (stale-while-revalidate, stale-if-error).
    pub stale_served: Counter,
    /// Keys invalidated here (DELETE, the change feed).
    pub invalidations: Counter,
    /// Loads whose fill was refused: the key was invalidated, or its group purged, meanwhile.
    pub fills_discarded: Counter,
}

impl GroupCounters {
    fn new(group: Group) -> Self {
        let g = group.name();
        GroupCounters {
            gets: counter!("geecache_gets_total", "group" => g),
            cache_hits: counter!("geecache_cache_hits_total", "group" => g),
            hot_cache_hits: counter!("geecache_hot_cache_hits_total", "group" => g),
            loads: counter!("geecache_loads_total", "group" => g),
            loads_deduped: counter!("geecache_loads_deduped_total", "group" => g),
            local_load_errors: counter!("geecache_local_load_errors_total", "group" => g),
            peer_loads: counter!("geecache_peer_loads_total", "group" => g),
            peer_errors: counter!("geecache_peer_errors_total", "group" => g),
            server_requests: counter!("geecache_server_requests_total", "group" => g),
            stale_epoch_retries: counter!("geecache_stale_epoch_retries_total", "group" => g),
            stale_served: counter!("geecache_stale_served_total", "group" => g),
            invalidations: counter!("geecache_invalidations_total", "group" => g),
            fills_discarded: counter!("geecache_fills_discarded_total", "group" => g),
        }
    }
}

/// Counters of every group, indexed by `Group::index`.
#[derive(Clone)]
pub struct Counters(Vec<GroupCounters>);

impl Counters {
    pub fn new(groups: Groups) -> Self {
        Counters(groups.all().map(GroupCounters::new).collect())
    }

    pub fn group(&self, group: Group) -> &GroupCounters {
        &self.0[group.index()]
    }
}
