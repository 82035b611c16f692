//! `ShardActor`: owns the node's caches (main shard and hot cache), their maintenance and
//! their statistics.

use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::cache::Shard;
use crate::groups::Group;

/// Looks a key up in the main shard, then in the hot cache.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Get {
    pub group: Group,
    pub key: String,
    pub reply: oneshot::Sender<Option<Bytes>>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Insert {
    pub group: Group,
    pub key: String,
    pub value: Bytes,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Remove {
    pub group: Group,
    pub key: String,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct PurgeGroup(pub Group);

/// Bytes and items of the main shard and of the hot cache, after maintenance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardStats {
    pub bytes: u64,
    pub items: u64,
    pub hot_bytes: u64,
    pub hot_items: u64,
}

#[derive(Message)]
#[rtype(result = "ShardStats")]
pub struct Stats;

pub struct ShardActor {
    main: Shard,
    hot: Shard,
    mailbox: usize,
}

impl ShardActor {
    /// Starts the actor with its mailbox bound in place (see [`super::start_bounded`]).
    pub fn start_bounded(self) -> Addr<Self> {
        let mailbox = self.mailbox;
        super::start_bounded(self, mailbox)
    }

    pub fn new(main: Shard, hot: Shard, mailbox: usize) -> Self {
        ShardActor { main, hot, mailbox }
    }

    fn maintain(&self) -> ShardStats {
        let (bytes, items) = self.main.maintain();
        let (hot_bytes, hot_items) = self.hot.maintain();
        for (shard, b, i) in [
            (&self.main, bytes, items),
            (&self.hot, hot_bytes, hot_items),
        ] {
            metrics::gauge!("geecache_cache_bytes", "cache" => shard.name()).set(b as f64);
            metrics::gauge!("geecache_cache_items", "cache" => shard.name()).set(i as f64);
        }
        ShardStats {
            bytes,
            items,
            hot_bytes,
            hot_items,
        }
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(Duration::from_secs(1), |act, _| {
            act.maintain();
        });
    }
}

impl Handler<Get> for ShardActor {
    type Result = ();
    fn handle(&mut self, msg: Get, _: &mut Self::Context) {
        let value = self
            .main
            .get(msg.group, &msg.key)
            .or_else(|| self.hot.get(msg.group, &msg.key));
        let _ = msg.reply.send(value);
    }
}

impl Handler<Insert> for ShardActor {
    type Result = ();
    fn handle(&mut self, msg: Insert, _: &mut Self::Context) {
        self.main.insert(msg.group, &msg.key, msg.value);
    }
}

impl Handler<Remove> for ShardActor {
    type Result = ();
    fn handle(&mut self, msg: Remove, _: &mut Self::Context) {
        self.main.remove(msg.group, &msg.key);
        self.hot.remove(msg.group, &msg.key);
    }
}

impl Handler<PurgeGroup> for ShardActor {
    type Result = ();
    fn handle(&mut self, msg: PurgeGroup, _: &mut Self::Context) {
        self.main.purge_group(msg.0);
        self.hot.purge_group(msg.0);
    }
}

impl Handler<Stats> for ShardActor {
    type Result = MessageResult<Stats>;
    fn handle(&mut self, _: Stats, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.maintain())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn get_insert_remove_through_the_mailbox() {
        let addr = ShardActor::new(
            Shard::new("main", 1 << 20, None),
            Shard::new("hot", 1 << 17, None),
            16,
        )
        .start_bounded();
        addr.send(Insert {
            group: Group::Scores,
            key: "Tom".into(),
            value: Bytes::from_static(b"630"),
        })
        .await
        .unwrap();
        let (tx, rx) = oneshot::channel();
        addr.send(Get {
            group: Group::Scores,
            key: "Tom".into(),
            reply: tx,
        })
        .await
        .unwrap();
        assert_eq!(rx.await.unwrap().unwrap(), "630");
        assert_eq!(addr.send(Stats).await.unwrap().items, 1);
        addr.send(PurgeGroup(Group::Scores)).await.unwrap();
        assert_eq!(addr.send(Stats).await.unwrap().items, 0);
    }
}
