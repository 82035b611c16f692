//! `DbActor`: owns the source of truth (PostgreSQL pool or embedded rows).

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::cache::error::SourceError;
use crate::cache::group::Group;
use crate::source::Source;

pub type FetchResult = Result<Option<Bytes>, SourceError>;

/// Fetches one row from the source.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fetch {
    pub group: Group,
    pub key: String,
    pub reply: oneshot::Sender<FetchResult>,
}

pub struct DbActor {
    source: Arc<dyn Source>,
    mailbox: usize,
}

impl DbActor {
    /// Starts the actor with its mailbox bound in place (see [`super::start_bounded`]).
    pub fn start_bounded(self) -> Addr<Self> {
        let mailbox = self.mailbox;
        super::start_bounded(self, mailbox)
    }

    pub fn new(source: Arc<dyn Source>, mailbox: usize) -> Self {
        DbActor { source, mailbox }
    }
}

impl Actor for DbActor {
    type Context = Context<Self>;
}

impl Handler<Fetch> for DbActor {
    type Result = ();

    fn handle(&mut self, msg: Fetch, _: &mut Self::Context) {
        let fut = self.source.fetch(msg.group, &msg.key);
        // A task of its own (not ctx.spawn, which polls every spawned future on each wake-up);
        // the pool bounds how many queries really run at once.
        actix_rt::spawn(async move {
            let started = Instant::now();
            let result = fut.await;
            let outcome = match &result {
                Ok(Some(_)) => "found",
                Ok(None) => "not_found",
                Err(SourceError::Timeout(_)) => "timeout",
                Err(SourceError::Unavailable(_)) => "unavailable",
                Err(SourceError::Query(_)) => "error",
            };
            metrics::histogram!("geecache_source_duration_seconds",
                "group" => msg.group.name(), "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
            if let Err(e) = &result {
                tracing::warn!(group = %msg.group, key = %msg.key, error = %e, "source fetch failed");
            }
            let _ = msg.reply.send(result);
        });
    }
}
