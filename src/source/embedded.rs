//! Deterministic rows in process, so a node runs with nothing installed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::demo::{SCORES, product_id, product_value};
use super::{PrepareFuture, Source, SourceFuture};
use crate::error::SourceError;
use crate::group::{Demo, Group, Groups};

#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Rows of `products`: ids 1..=products.
    pub products: u64,
    /// Sleep per fetch, to act like a slow database.
    pub latency: Duration,
    /// Fraction of fetches that fail with a query error (0.0 ..= 1.0), for failure drills.
    pub error_rate: f64,
}

pub struct EmbeddedSource {
    config: EmbeddedConfig,
    groups: Groups,
    /// xorshift state for the error draw; a counter is enough, no need for a crypto RNG.
    draws: AtomicU64,
}

impl EmbeddedSource {
    /// Serves `groups`; only the demo groups can be served from it (see [`Source::prepare`]).
    pub fn new(config: EmbeddedConfig, groups: Groups) -> Arc<Self> {
        Arc::new(EmbeddedSource {
            config,
            groups,
            draws: AtomicU64::new(0x2545_F491_4F6C_DD1D),
        })
    }

    /// The row for a key, without latency or injected errors.
    pub fn row(&self, group: Group, key: &str) -> Option<Bytes> {
        match group.def().demo? {
            Demo::Scores => SCORES
                .iter()
                .find(|(name, _)| *name == key)
                .map(|(_, v)| Bytes::from_static(v.as_bytes())),
            Demo::Products => product_id(key)
                .filter(|id| (1..=self.config.products).contains(id))
                .map(|id| Bytes::from(product_value(id).into_bytes().into_boxed_slice())),
        }
    }

    fn should_fail(&self) -> bool {
        if self.config.error_rate <= 0.0 {
            return false;
        }
        let mut x = self
            .draws
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64 <= self.config.error_rate
    }
}

impl Source for Arc<EmbeddedSource> {
    /// The embedded source has only the demo tables: any other group stops the node.
    fn prepare(&self) -> PrepareFuture {
        let other = self.groups.all().find(|g| g.def().demo.is_none());
        Box::pin(async move {
            match other {
                Some(g) => Err(format!(
                    "group {g}: the embedded source serves only the demo groups (scores, \
                     products); give --source postgres and --database-url for your own tables"
                )),
                None => Ok(()),
            }
        })
    }

    fn fetch(&self, _lane: usize, group: Group, key: &str) -> SourceFuture {
        let this = Arc::clone(self);
        let key = key.to_owned();
        Box::pin(async move {
            if !this.config.latency.is_zero() {
                tokio::time::sleep(this.config.latency).await;
            }
            if this.should_fail() {
                return Err(SourceError::Query(
                    "injected error (embedded source)".into(),
                ));
            }
            Ok(this.row(group, &key))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(error_rate: f64) -> Arc<EmbeddedSource> {
        EmbeddedSource::new(
            EmbeddedConfig {
                products: 100,
                latency: Duration::ZERO,
                error_rate,
            },
            Groups::demo(),
        )
    }

    fn g(name: &str) -> Group {
        Groups::demo().get(name).unwrap()
    }

    #[actix_rt::test]
    async fn serves_the_seed_rows() {
        let s = source(0.0);
        assert_eq!(
            s.fetch(0, g("scores"), "Tom").await.unwrap().unwrap(),
            "630"
        );
        assert_eq!(s.fetch(0, g("scores"), "tom").await.unwrap(), None);
        assert!(s.fetch(0, g("products"), "100").await.unwrap().is_some());
        assert_eq!(s.fetch(0, g("products"), "101").await.unwrap(), None);
        assert_eq!(s.fetch(0, g("products"), "0").await.unwrap(), None);
        assert_eq!(s.fetch(0, g("products"), "abc").await.unwrap(), None);
    }

    #[actix_rt::test]
    async fn injects_errors_at_the_configured_rate() {
        let always = source(1.0);
        assert!(always.fetch(0, g("scores"), "Tom").await.is_err());
        let some = source(0.5);
        let mut failed = 0;
        for _ in 0..1000 {
            failed += some.fetch(0, g("scores"), "Tom").await.is_err() as u32;
        }
        assert!((300..700).contains(&failed), "{failed} of 1000 failed");
    }
}
