//! The actors of a node. Each owns one piece of state; messages are the only way in.
//!
//! Request paths use [`ask`]: a bounded `try_send` with a oneshot reply, so a full mailbox
//! becomes a 503 instead of an unbounded queue (`do_send` ignores the bound).

pub mod db;
pub mod loader;
pub mod raft;
pub mod shard;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use tokio::sync::oneshot;

use crate::error::LoadError;

pub use db::DbActor;
pub use loader::LoaderActor;
pub use raft::RaftActor;
pub use shard::ShardActor;

/// Starts an actor with its mailbox bound already in place: set in `started` it would come too
/// late for messages sent right after `start` (they see actix's default of 16).
#[cfg(test)]
pub fn start_bounded<A>(actor: A, mailbox: usize) -> Addr<A>
where
    A: Actor<Context = Context<A>>,
{
    A::create(move |ctx| {
        ctx.set_mailbox_capacity(mailbox);
        actor
    })
}

/// Sends the message built around a fresh reply channel, refusing when the mailbox is full.
pub fn ask<A, M, R>(
    addr: &Addr<A>,
    what: &'static str,
    build: impl FnOnce(oneshot::Sender<R>) -> M,
) -> Result<oneshot::Receiver<R>, LoadError>
where
    A: Actor + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message<Result = ()> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    addr.try_send(build(tx)).map_err(|e| match e {
        SendError::Full(_) => LoadError::Overloaded(what),
        SendError::Closed(_) => LoadError::Stopped,
    })?;
    Ok(rx)
}
