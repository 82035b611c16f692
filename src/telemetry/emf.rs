//! CloudWatch Embedded Metric Format: with `--emf`, a node prints one JSON line a minute on
//! stdout, next to its logs; the awslogs driver ships it and CloudWatch turns it into metrics
//! in namespace `GeeCache` (no dimensions, so the alarms in terraform/ see the whole cluster).
//!
//! The figures are deltas of the Prometheus counters since the previous line; the request
//! latency goes as a distribution (`Values`/`Counts`) so that CloudWatch computes p50/p99.

use std::collections::BTreeMap;

use serde_json::{Value, json};

pub const NAMESPACE: &str = "GeeCache";

/// Prometheus counter -> EMF metric name.
const COUNTERS: [(&str, &str); 7] = [
    ("geecache_gets_total", "Gets"),
    ("geecache_cache_hits_total", "CacheHits"),
    ("geecache_hot_cache_hits_total", "HotCacheHits"),
    ("geecache_loads_total", "Loads"),
    ("geecache_loads_deduped_total", "LoadsDeduped"),
    ("geecache_peer_loads_total", "PeerLoads"),
    ("geecache_peer_errors_total", "PeerErrors"),
];

const LATENCY: &str = "geecache_http_request_duration_seconds_bucket";

/// Totals read from one Prometheus rendering.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Snapshot {
    counters: BTreeMap<&'static str, f64>,
    /// Client API latency: cumulative count per bucket bound (seconds; +Inf as f64::INFINITY).
    latency: Vec<(f64, f64)>,
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(&labels[start..end])
}

impl Snapshot {
    pub fn parse(text: &str) -> Snapshot {
        let mut s = Snapshot::default();
        let mut buckets: BTreeMap<u64, f64> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            if let Some((_, emf)) = COUNTERS.iter().find(|(p, _)| *p == name) {
                *s.counters.entry(emf).or_default() += value;
            } else if name == LATENCY
                && label(labels, "route").is_some_and(|r| r.starts_with("/api"))
            {
                let le = match label(labels, "le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => v.parse().unwrap_or(f64::INFINITY),
                    None => continue,
                };
                *buckets.entry(le.to_bits()).or_default() += value;
            }
        }
        s.latency = buckets
            .into_iter()
            .map(|(bits, n)| (f64::from_bits(bits), n))
            .collect();
        s.latency.sort_by(|a, b| a.0.total_cmp(&b.0));
        s
    }
}

/// One EMF line: what happened between `before` and `now`.
pub fn line(before: &Snapshot, now: &Snapshot, timestamp_ms: u64) -> Value {
    let mut doc = serde_json::Map::new();
    let mut metrics = Vec::new();
    for (_, name) in COUNTERS {
        let delta = now.counters.get(name).copied().unwrap_or(0.0)
            - before.counters.get(name).copied().unwrap_or(0.0);
        doc.insert(name.into(), json!(delta.max(0.0)));
        metrics.push(json!({"Name": name, "Unit": "Count"}));
    }
    // Per-bucket counts of this interval; each bucket reported at its upper bound (the last,
    // unbounded one at twice the largest finite bound), in milliseconds.
    let cumulative = |s: &Snapshot, le: f64| {
        s.latency
            .iter()
            .find(|(b, _)| *b == le)
            .map_or(0.0, |(_, n)| *n)
    };
    let largest = now
        .latency
        .iter()
        .rev()
        .find(|(b, _)| b.is_finite())
        .map_or(1.0, |(b, _)| *b);
    let (mut values, mut counts, mut below) = (Vec::new(), Vec::new(), 0.0);
    for (le, _) in &now.latency {
        let total = (cumulative(now, *le) - cumulative(before, *le)).max(0.0);
        let in_bucket = (total - below).max(0.0);
        below = total;
        if in_bucket > 0.0 {
            let bound = if le.is_finite() { *le } else { largest * 2.0 };
            values.push(json!(bound * 1000.0));
            counts.push(json!(in_bucket));
        }
    }
    if !values.is_empty() {
        doc.insert(
            "RequestLatency".into(),
            json!({"Values": values, "Counts": counts}),
        );
        metrics.push(json!({"Name": "RequestLatency", "Unit": "Milliseconds"}));
    }
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [[]],
                "Metrics": metrics,
            }],
        }),
    );
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# TYPE geecache_gets_total counter
geecache_gets_total{group="scores"} 10
geecache_gets_total{group="products"} 90
geecache_cache_hits_total{group="products"} 50
geecache_http_request_duration_seconds_bucket{route="/api",status="200",le="0.001"} 80
geecache_http_request_duration_seconds_bucket{route="/api",status="200",le="0.01"} 95
geecache_http_request_duration_seconds_bucket{route="/api",status="200",le="+Inf"} 100
geecache_http_request_duration_seconds_bucket{route="/metrics",status="200",le="+Inf"} 7
"#;
    const AFTER: &str = r#"geecache_gets_total{group="scores"} 20
geecache_gets_total{group="products"} 180
geecache_cache_hits_total{group="products"} 140
geecache_loads_total{group="products"} 30
geecache_http_request_duration_seconds_bucket{route="/api",status="200",le="0.001"} 170
geecache_http_request_duration_seconds_bucket{route="/api",status="200",le="0.01"} 195
geecache_http_request_duration_seconds_bucket{route="/api",status="200",le="+Inf"} 200
geecache_http_request_duration_seconds_bucket{route="/api/{group}/{key:.*}",status="404",le="+Inf"} 3
geecache_http_request_duration_seconds_bucket{route="/metrics",status="200",le="+Inf"} 9
"#;

    /// The format's required fields: `_aws` with a millisecond `Timestamp` and a
    /// `CloudWatchMetrics` array of directives, each with a `Namespace`, `Dimensions` (an array
    /// of dimension sets, at most 30 names each, every name a member of the document) and
    /// `Metrics` (`Name` required, `Unit` optional); every metric a member of the document,
    /// a number or a `Values`/`Counts` distribution of equal lengths (at most 100 values).
    fn check_emf(doc: &Value) {
        let aws = doc["_aws"].as_object().expect("_aws object");
        assert!(aws["Timestamp"].is_u64(), "Timestamp in ms");
        let directives = aws["CloudWatchMetrics"]
            .as_array()
            .expect("CloudWatchMetrics array");
        assert!(!directives.is_empty());
        for d in directives {
            assert!(
                d["Namespace"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty() && n.len() <= 1024)
            );
            for set in d["Dimensions"].as_array().expect("Dimensions array") {
                let set = set.as_array().expect("a dimension set is an array");
                assert!(set.len() <= 30);
                for dim in set {
                    assert!(doc[dim.as_str().unwrap()].is_string());
                }
            }
            let metrics = d["Metrics"].as_array().expect("Metrics array");
            assert!(!metrics.is_empty() && metrics.len() <= 100);
            for m in metrics {
                let name = m["Name"].as_str().expect("Name");
                let unit = m.get("Unit").and_then(Value::as_str);
                assert!(unit.is_none_or(|u| ["Count", "Milliseconds"].contains(&u)));
                let v = &doc[name];
                if let Some(dist) = v.as_object() {
                    let (vals, counts) = (
                        dist["Values"].as_array().unwrap(),
                        dist["Counts"].as_array().unwrap(),
                    );
                    assert!(vals.len() == counts.len() && !vals.is_empty() && vals.len() <= 100);
                } else {
                    assert!(v.is_number(), "{name} is a number");
                }
            }
        }
    }

    #[test]
    fn a_line_carries_the_interval_deltas_in_valid_emf() {
        let (before, after) = (Snapshot::parse(BEFORE), Snapshot::parse(AFTER));
        let doc = line(&before, &after, 1_700_000_000_000);
        check_emf(&doc);
        assert_eq!(doc["Gets"], 100.0);
        assert_eq!(doc["CacheHits"], 90.0);
        assert_eq!(doc["Loads"], 30.0);
        assert_eq!(doc["PeerLoads"], 0.0);
        // 90 requests under 1 ms, 10 under 10 ms, 3 over (the /metrics scrape is not counted).
        assert_eq!(doc["RequestLatency"]["Values"], json!([1.0, 10.0, 20.0]));
        assert_eq!(doc["RequestLatency"]["Counts"], json!([90.0, 10.0, 3.0]));
        assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Namespace"], "GeeCache");
    }

    #[test]
    fn a_quiet_minute_is_still_valid() {
        let s = Snapshot::parse(BEFORE);
        let doc = line(&s, &s, 1);
        check_emf(&doc);
        assert_eq!(doc["Gets"], 0.0);
        assert!(doc.get("RequestLatency").is_none());
    }
}
