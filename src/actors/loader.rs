//! `LoaderActor`: singleflight as a mailbox; [`Loaders`]: one per core, keys split by hash.
//!
//! The actor owns the in-flight table (key -> waiters). The first miss of a key opens a flight
//! and starts the load (`cache::Loader::load`) as a task of its own, detached from every
//! caller: a caller that times out or disconnects only drops its reply channel, and the others
//! still get the result. When the load ends the task tells the actor (`LoadFinished`), which
//! hands the result, value or error, to every waiter. Errors are shared, never cached.

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::cache::flights::{Flights, Joined, TooManyFlights};
use crate::cache::{Lease, LoadResult, Loader};
use crate::error::LoadError;
use crate::group::Group;

/// Loads a key that missed the cache, joining the flight already open for it if any.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Load {
    pub group: Group,
    pub key: String,
    /// Load from this node's source even if the ring says another node owns the key: peer
    /// requests set it, so that a node never forwards a peer's request (no A -> B -> A loops).
    pub local_only: bool,
    pub reply: oneshot::Sender<LoadResult>,
}

/// A flight has landed (sent by the load task to the actor).
#[derive(Message)]
#[rtype(result = "()")]
pub struct LoadFinished {
    pub flight: FlightKey,
    pub result: LoadResult,
}

/// One flight per (group, key, goes_to_peer, lease): a peer's request (always served locally)
/// never joins a flight that is itself waiting on a peer, while on the owner the client API's
/// loads and the peers' loads of a key share one flight; a request after an invalidation or a
/// purge (a new lease) never joins a flight that began before it.
pub type FlightKey = (Group, Arc<str>, bool, Lease);

type Waiter = oneshot::Sender<LoadResult>;

pub struct LoaderActor {
    flights: Flights<FlightKey, Waiter>,
    loader: Loader,
    mailbox: usize,
}

impl LoaderActor {
    /// Starts the actor with its mailbox bound in place (see [`super::start_bounded`]), on
    /// this thread (tests; nodes start theirs on arbiters of their own, [`Self::start_in`]).
    #[cfg(test)]
    pub fn start_bounded(self) -> Addr<Self> {
        let mailbox = self.mailbox;
        super::start_bounded(self, mailbox)
    }

    /// `start_bounded` on another arbiter (thread).
    pub fn start_in(self, arbiter: &actix_rt::ArbiterHandle) -> Addr<Self> {
        let mailbox = self.mailbox;
        Self::start_in_arbiter(arbiter, move |ctx| {
            ctx.set_mailbox_capacity(mailbox);
            self
        })
    }

    pub fn new(loader: Loader, mailbox: usize, max_in_flight: usize) -> Self {
        LoaderActor {
            flights: Flights::new(max_in_flight),
            loader,
            mailbox,
        }
    }
}

impl Actor for LoaderActor {
    type Context = Context<Self>;
}

/// The node's loaders, keys split by hash: a key's flights all live in one loader.
///
/// Each runs on an arbiter (thread) of its own, one per core, not on the client API's HTTP
/// workers' threads: actix-web stops its idle workers on SIGTERM, and with them their threads'
/// loaders, while the other workers still wait for those loaders' flights.
pub struct Loaders {
    slots: Vec<Addr<LoaderActor>>,
}

impl Loaders {
    pub fn new(slots: Vec<Addr<LoaderActor>>) -> Loaders {
        assert!(!slots.is_empty(), "a node has at least one loader");
        Loaders { slots }
    }

    /// The loader of `key`.
    pub fn of(&self, key: &str) -> Result<Addr<LoaderActor>, LoadError> {
        let loader = &self.slots[crc32fast::hash(key.as_bytes()) as usize % self.slots.len()];
        if loader.connected() {
            Ok(loader.clone())
        } else {
            Err(LoadError::Stopped)
        }
    }
}

impl crate::cache::Flights for Loaders {
    fn join(
        &self,
        group: Group,
        key: &str,
        local_only: bool,
    ) -> Result<oneshot::Receiver<LoadResult>, LoadError> {
        super::ask(&self.of(key)?, "loader", |reply| Load {
            group,
            key: key.to_owned(),
            local_only,
            reply,
        })
    }
}

impl Handler<Load> for LoaderActor {
    type Result = ();

    fn handle(&mut self, msg: Load, ctx: &mut Self::Context) {
        let counters = self.loader.core.counters(msg.group);
        if let Some(result) = self.loader.core.recheck(msg.group, &msg.key) {
            counters.cache_hits.increment(1);
            let _ = msg.reply.send(result);
            return;
        }
        let peer = self.loader.peer_for(&msg.key, msg.local_only);
        let lease = self.loader.lease(msg.group, &msg.key);
        let flight: FlightKey = (msg.group, msg.key.into(), peer.is_some(), lease);
        match self.flights.join(flight.clone(), msg.reply) {
            Ok(Joined::Follower) => counters.loads_deduped.increment(1),
            Ok(Joined::Leader) => {
                let loader = self.loader.clone();
                let me = ctx.address();
                actix_rt::spawn(async move {
                    let result = loader.load(flight.0, &flight.1, peer, flight.3).await;
                    // do_send, not try_send: a landed flight must never be dropped, or its
                    // waiters would hang until their deadline. At most one per open flight.
                    me.do_send(LoadFinished { flight, result });
                });
            }
            Err(TooManyFlights(reply)) => {
                let _ = reply.send(Err(LoadError::Overloaded("in-flight loads")));
            }
        }
    }
}

impl Handler<LoadFinished> for LoaderActor {
    type Result = ();

    fn handle(&mut self, msg: LoadFinished, _: &mut Self::Context) {
        for waiter in self.flights.finish(&msg.flight) {
            // A waiter that gave up has dropped its receiver; nothing to do for it.
            let _ = waiter.send(msg.result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::actors::ask;
    use crate::cache::Core;
    use crate::error::SourceError;
    use crate::group::Groups;
    use crate::peer::{PeerClient, PeerSettings};
    use crate::source::{Source, SourceFuture};
    use bytes::Bytes;

    /// Counts fetches; answers after a delay, with an error for keys starting with "bad".
    struct SlowCounting {
        fetches: AtomicUsize,
        delay: Duration,
    }

    impl Source for Arc<SlowCounting> {
        fn fetch(&self, _: usize, _: Group, key: &str) -> SourceFuture {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let (delay, key) = (self.delay, key.to_owned());
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                if key.starts_with("bad") {
                    Err(SourceError::Query("boom".into()))
                } else if key.starts_with("missing") {
                    Ok(None)
                } else {
                    Ok(Some(Bytes::from(format!("v-{key}"))))
                }
            })
        }
    }

    fn setup(
        delay: Duration,
        max_in_flight: usize,
    ) -> (Addr<LoaderActor>, Arc<SlowCounting>, Arc<Core>) {
        crate::telemetry::metrics::install();
        let source = Arc::new(SlowCounting {
            fetches: AtomicUsize::new(0),
            delay,
        });
        let core = Arc::new(Core::alone());
        let settings = PeerSettings {
            timeout: Duration::from_secs(1),
            secret: None,
            max_value_bytes: 1 << 20,
            idle_timeout: Duration::from_secs(30),
            batch_max: 1,
        };
        let loader = Loader {
            core: Arc::clone(&core),
            source: Arc::new(source.clone()),
            lane: 0,
            peers: Arc::new(PeerClient::new(&settings).unwrap()),
            max_value_bytes: 1 << 20,
        };
        (
            LoaderActor::new(loader, 1024, max_in_flight).start_bounded(),
            source,
            core,
        )
    }

    fn products() -> Group {
        Groups::demo().get("products").unwrap()
    }

    fn load(addr: &Addr<LoaderActor>, key: &str) -> oneshot::Receiver<LoadResult> {
        ask(addr, "loader", |reply| Load {
            group: products(),
            key: key.into(),
            local_only: false,
            reply,
        })
        .unwrap()
    }

    #[actix_rt::test]
    async fn concurrent_misses_cost_one_fetch_and_share_the_value() {
        let (addr, source, core) = setup(Duration::from_millis(50), 100);
        let waiters: Vec<_> = (0..100).map(|_| load(&addr, "k")).collect();
        for w in waiters {
            assert_eq!(w.await.unwrap().unwrap().value, "v-k");
        }
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
        let main = core.stores().main(products());
        assert_eq!(main.get(products(), "k").unwrap().value.unwrap(), "v-k");
        // Now cached: the recheck inside the actor answers without a fetch.
        assert_eq!(load(&addr, "k").await.unwrap().unwrap().value, "v-k");
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
    }

    #[actix_rt::test]
    async fn errors_are_shared_and_not_cached() {
        let (addr, source, core) = setup(Duration::from_millis(30), 100);
        let a = load(&addr, "bad-1");
        let b = load(&addr, "bad-1");
        assert!(matches!(a.await.unwrap(), Err(LoadError::Source(_))));
        assert!(matches!(b.await.unwrap(), Err(LoadError::Source(_))));
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
        assert_eq!(
            core.stores().main(products()).get(products(), "bad-1"),
            None
        );
        // The next request tries again.
        assert!(load(&addr, "bad-1").await.unwrap().is_err());
        assert_eq!(source.fetches.load(Ordering::SeqCst), 2);
        assert_eq!(
            load(&addr, "missing").await.unwrap(),
            Err(LoadError::NotFound)
        );
    }

    #[actix_rt::test]
    async fn a_waiter_that_gives_up_does_not_fail_the_others() {
        let (addr, source, _) = setup(Duration::from_millis(80), 100);
        let first = load(&addr, "k");
        let second = load(&addr, "k");
        drop(first); // the caller that started the load goes away
        assert_eq!(second.await.unwrap().unwrap().value, "v-k");
        assert_eq!(source.fetches.load(Ordering::SeqCst), 1);
    }

    #[actix_rt::test]
    async fn too_many_distinct_flights_are_shed() {
        let (addr, _, _) = setup(Duration::from_millis(50), 2);
        let a = load(&addr, "a");
        let b = load(&addr, "b");
        let c = load(&addr, "c");
        assert_eq!(
            c.await.unwrap(),
            Err(LoadError::Overloaded("in-flight loads"))
        );
        assert!(a.await.unwrap().is_ok() && b.await.unwrap().is_ok());
    }
}
