//! Prometheus metrics: the recorder, and pre-registered handles for the hot paths.
//!
//! Counter names follow groupcache's `Stats` (gets, cache hits, peer loads, peer errors, loads,
//! loads deduped, local loads, local load errors, server requests), each labelled by group.

use std::sync::OnceLock;

use metrics::{Counter, counter};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::cache::group::{Group, Groups};

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
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
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
