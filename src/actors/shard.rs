//! `ShardActor`: owns the maintenance of the node's two stores (the main shard and the hot
//! cache): moka's pending evictions and expirations, run every second, and the size gauges.
//! The request path reads and fills the stores directly (moka is a concurrent map; see
//! `cache::store`).

use std::time::Duration;

use actix::prelude::*;

use crate::cache::store::Store;

pub struct ShardActor {
    stores: Vec<Store>,
}

impl ShardActor {
    /// Starts maintaining `stores`; their gauges exist from the first scrape on.
    pub fn start(stores: Vec<Store>) -> Addr<ShardActor> {
        let actor = ShardActor { stores };
        actor.maintain();
        Actor::start(actor)
    }

    fn maintain(&self) {
        for store in &self.stores {
            let (bytes, items) = store.maintain();
            // The shared stores by `cache` alone; a group's own budget also by `group`.
            let (b, i) = match store.owner() {
                None => (
                    metrics::gauge!("geecache_cache_bytes", "cache" => store.name()),
                    metrics::gauge!("geecache_cache_items", "cache" => store.name()),
                ),
                Some(g) => (
                    metrics::gauge!("geecache_cache_bytes", "cache" => store.name(), "group" => g.name()),
                    metrics::gauge!("geecache_cache_items", "cache" => store.name(), "group" => g.name()),
                ),
            };
            b.set(bytes as f64);
            i.set(items as f64);
        }
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_secs(1), |act, _| act.maintain());
    }
}
