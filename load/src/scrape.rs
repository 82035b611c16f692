//! Polls every node's `/metrics` during a run: the cluster's side of the numbers (client gets,
//! database queries, hits), which the client cannot see.

use std::time::{Duration, Instant};

use serde::Serialize;

/// The counters of one node at one moment, summed over groups (or one group's series) and
/// outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Client API gets (`geecache_gets_total`).
    pub gets: f64,
    /// Source queries, whatever their outcome (`geecache_source_duration_seconds_count`).
    pub db_queries: f64,
    /// Gets answered by the main shard or the hot cache.
    pub cache_hits: f64,
    /// Gets this node forwarded to an owner that failed.
    pub peer_errors: f64,
}

impl Counts {
    /// With `group`, only the series labelled `group="GROUP"`.
    pub fn parse(text: &str, group: Option<&str>) -> Counts {
        let mut c = Counts::default();
        let label = group.map(|g| format!("group=\"{g}\""));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if let Some(label) = &label {
                let labels = series.split_once('{').map_or("", |(_, l)| l);
                if !labels.trim_end_matches('}').split(',').any(|l| l == label) {
                    continue;
                }
            }
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            match name {
                "geecache_gets_total" => c.gets += value,
                "geecache_source_duration_seconds_count" => c.db_queries += value,
                "geecache_cache_hits_total" => c.cache_hits += value,
                "geecache_peer_errors_total" => c.peer_errors += value,
                _ => {}
            }
        }
        c
    }

    /// What happened between `prev` and `self`; a counter that went down means the process
    /// restarted, so all of its current value is new.
    pub fn since(&self, prev: &Counts) -> Counts {
        let d = |now: f64, before: f64| if now >= before { now - before } else { now };
        Counts {
            gets: d(self.gets, prev.gets),
            db_queries: d(self.db_queries, prev.db_queries),
            cache_hits: d(self.cache_hits, prev.cache_hits),
            peer_errors: d(self.peer_errors, prev.peer_errors),
        }
    }

    fn add(&mut self, o: &Counts) {
        self.gets += o.gets;
        self.db_queries += o.db_queries;
        self.cache_hits += o.cache_hits;
        self.peer_errors += o.peer_errors;
    }
}

/// One poll of every node; `None` where a node did not answer.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    pub nodes: Vec<Option<Counts>>,
}

pub struct Scraper {
    urls: Vec<String>,
    group: Option<String>,
    client: reqwest::Client,
}

impl Scraper {
    /// `bases` are node API URLs; `/metrics` is appended. With `group`, only its series count.
    pub fn new(bases: &[String], group: Option<String>) -> Scraper {
        Scraper {
            group,
            urls: bases
                .iter()
                .map(|b| format!("{}/metrics", b.trim_end_matches('/')))
                .collect(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_millis(800))
                .build()
                .expect("a plain HTTP client"),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// Polls every node, one after another (a few nodes fit easily in one interval); a node
    /// that does not answer keeps its value from `last`, so that it counts as idle.
    pub async fn snapshot(&self, last: Option<&Snapshot>) -> Snapshot {
        let mut nodes = Vec::with_capacity(self.urls.len());
        for (i, url) in self.urls.iter().enumerate() {
            let polled = async { self.client.get(url).send().await.ok()?.text().await.ok() };
            nodes.push(match polled.await {
                Some(text) => Some(Counts::parse(&text, self.group.as_deref())),
                None => last.and_then(|l| l.nodes[i]),
            });
        }
        Snapshot {
            at: Instant::now(),
            nodes,
        }
    }
}

/// The cluster's counts between two snapshots, per node and in total. A node never seen
/// before `b` (one that joined) counts from zero.
pub fn between(a: &Snapshot, b: &Snapshot) -> (Counts, Vec<Counts>) {
    let mut total = Counts::default();
    let per_node: Vec<Counts> = a
        .nodes
        .iter()
        .zip(&b.nodes)
        .map(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => y.since(x),
            (None, Some(y)) => *y,
            _ => Counts::default(),
        })
        .collect();
    for n in &per_node {
        total.add(n);
    }
    (total, per_node)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE geecache_gets_total counter\n\
        geecache_gets_total{group=\"scores\"} 10\n\
        geecache_gets_total{group=\"products\"} 90\n\
        geecache_cache_hits_total{group=\"products\"} 70\n\
        geecache_source_duration_seconds_bucket{group=\"products\",outcome=\"found\",le=\"0.001\"} 3\n\
        geecache_source_duration_seconds_count{group=\"products\",outcome=\"found\"} 25\n\
        geecache_source_duration_seconds_count{group=\"products\",outcome=\"not_found\"} 5\n\
        geecache_source_duration_seconds_sum{group=\"products\",outcome=\"found\"} 0.5\n";

    #[test]
    fn sums_the_series_it_needs() {
        let c = Counts::parse(TEXT, None);
        assert_eq!(c.gets, 100.0);
        assert_eq!(c.cache_hits, 70.0);
        assert_eq!(c.db_queries, 30.0);
    }

    #[test]
    fn a_group_counts_only_its_own_series() {
        let text = format!(
            "{TEXT}geecache_source_duration_seconds_count{{outcome=\"found\",group=\"scores\"}} 4\n\
             geecache_gets_total{{group=\"products2\"}} 1000\n"
        );
        let scores = Counts::parse(&text, Some("scores"));
        assert_eq!((scores.gets, scores.db_queries), (10.0, 4.0));
        let products = Counts::parse(&text, Some("products"));
        assert_eq!(
            (products.gets, products.cache_hits, products.db_queries),
            (90.0, 70.0, 30.0)
        );
        assert_eq!(Counts::parse(&text, None).db_queries, 34.0);
    }

    #[test]
    fn restarted_and_missing_nodes() {
        let at = Instant::now();
        let c = |gets| {
            Some(Counts {
                gets,
                ..Counts::default()
            })
        };
        let a = Snapshot {
            at,
            nodes: vec![c(100.0), c(50.0), None],
        };
        let b = Snapshot {
            at,
            nodes: vec![c(130.0), c(5.0), c(7.0)],
        };
        let (total, per) = between(&a, &b);
        assert_eq!(per[0].gets, 30.0);
        assert_eq!(per[1].gets, 5.0, "a counter that went down restarted");
        assert_eq!(per[2].gets, 7.0, "a node that joined counts from zero");
        assert_eq!(total.gets, 42.0);
    }
}
