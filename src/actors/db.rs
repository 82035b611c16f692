//! `DbActor`: owns the source of truth (PostgreSQL pools or embedded rows) and reports on it.
//!
//! Loads do not pass through its mailbox: each loader fetches on its own lane of the source
//! (see `source::postgres`), so that a miss is polled on one thread from the request to the
//! row: a mailbox hop here would cost every miss a thread crossing, and one thread would poll
//! every query of the node. The actor keeps what is the pool owner's: the gauges of each lane's
//! connections, published every second, and the one `Arc` the node shuts down with.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::source::Source;

const REPORT_EVERY: Duration = Duration::from_secs(1);

pub struct DbActor {
    source: Arc<dyn Source>,
}

impl DbActor {
    pub fn new(source: Arc<dyn Source>) -> Self {
        DbActor { source }
    }

    /// `geecache_source_pool_connections{lane, state}` and `geecache_source_pool_waiting{lane}`.
    fn report(&self) {
        for p in self.source.pools() {
            let lane = p.lane.to_string();
            metrics::gauge!("geecache_source_pool_connections", "lane" => lane.clone(), "state" => "idle")
                .set(p.idle as f64);
            metrics::gauge!("geecache_source_pool_connections", "lane" => lane.clone(), "state" => "busy")
                .set(p.size.saturating_sub(p.idle) as f64);
            metrics::gauge!("geecache_source_pool_waiting", "lane" => lane).set(p.waiting as f64);
        }
    }
}

impl Actor for DbActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.report();
        ctx.run_interval(REPORT_EVERY, |this, _| this.report());
    }
}
