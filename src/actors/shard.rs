//! `ShardActor`: owns the maintenance of the node's two stores (the main shard and the hot
//! cache): moka's pending evictions and expirations, run every second, and the size gauges.
//! The request path reads and fills the stores directly (moka is a concurrent map; see
//! `cache::store`).

use std::time::Duration;

use actix::prelude::*;

use crate::cache::store::Store;

pub struct ShardActor {
    main: Store,
    hot: Store,
}

impl ShardActor {
    /// Starts maintaining `main` and `hot`; their gauges exist from the first scrape on.
    pub fn start(main: Store, hot: Store) -> Addr<ShardActor> {
        let actor = ShardActor { main, hot };
        actor.maintain();
        Actor::start(actor)
    }

    fn maintain(&self) {
        for store in [&self.main, &self.hot] {
            let (bytes, items) = store.maintain();
            metrics::gauge!("geecache_cache_bytes", "cache" => store.name()).set(bytes as f64);
            metrics::gauge!("geecache_cache_items", "cache" => store.name()).set(items as f64);
        }
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_secs(1), |act, _| act.maintain());
    }
}
