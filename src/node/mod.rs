//! The composition root of a node: bind the listeners, build the cache and its actors, start
//! membership, serve, drain. Each step is a function below; `Node::start` lists them. How a node finds its cluster
//! (bootstrap, join, leave, a frontend following) is [`membership`].

mod membership;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::Addr;
use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};

use actix::Actor as _;

use crate::actors::loader::Loaders;
use crate::actors::raft::RaftSettings;
use crate::actors::{DbActor, LoaderActor, RaftActor, ShardActor};
use crate::cache::handoff;
use crate::cache::hot::HotPolicy;
use crate::cache::{Cache, Core, Loader, Stores};
use crate::cli::config::{Config, Role, SourceKind};
use crate::feed::FeedSettings;
use crate::group::{Groups, GroupsDigest};
use crate::http::{self, AppState, Health};
use crate::peer::{PeerClient, PeerSettings};
use crate::raft::discovery::{Discovery, Seeds};
use crate::raft::membership::MemberInfo;
use crate::raft::node::RaftNode;
use crate::ring::{Cluster, Frontends};
use crate::source::embedded::EmbeddedConfig;
use crate::source::postgres::PostgresConfig;
use crate::source::{EmbeddedSource, PostgresSource, Source};
use membership::{MemberLoop, follow_ring, leave, run_member};

/// How long a leaving node that sent all of its values still answers peeks: those begun
/// before its batches landed at their new owners.
const HANDOFF_SETTLE: Duration = Duration::from_millis(300);

/// Builds the configured source for `groups` (no connection is made yet).
pub fn build_source(config: &Config, groups: Groups) -> anyhow::Result<Arc<dyn Source>> {
    let s = &config.source;
    Ok(match s.kind {
        SourceKind::Embedded => Arc::new(EmbeddedSource::new(
            EmbeddedConfig {
                products: s.products,
                latency: s.embedded_latency,
                error_rate: s.embedded_error_rate,
            },
            groups,
        )),
        SourceKind::Postgres => Arc::new(PostgresSource::new(
            &PostgresConfig {
                url: s.database_url.clone().unwrap_or_default(),
                pool_size: s.pool_size,
                pipeline: s.pipeline,
                lanes: worker_count(config),
                connect_timeout: s.connect_timeout,
                statement_timeout: s.statement_timeout,
                max_value_bytes: config.max_value_bytes,
            },
            groups,
        )?),
    })
}

/// HTTP workers per listener, and loaders: one per core unless configured.
pub fn worker_count(config: &Config) -> usize {
    match config.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    }
}

fn peer_settings(config: &Config) -> PeerSettings {
    PeerSettings {
        timeout: config.peer_timeout,
        secret: config.peer_secret.clone(),
        max_value_bytes: config.max_value_bytes,
        idle_timeout: config.keep_alive / 2,
        batch_max: config.peer_batch,
    }
}

/// The stores, the ring and the counters every request and flight shares.
fn build_core(config: &Config, groups: Groups) -> Arc<Core> {
    // groupcache's split: the hot cache gets 1/8 of the bytes. A frontend owns no keys, so
    // all of its bytes go to the hot cache.
    let frontend = config.role == Role::Frontend;
    let core = Core::new(
        groups,
        Stores::new(
            groups,
            config.cache_bytes,
            frontend,
            config.hot_ttl,
            config.handoff_grace,
        ),
        HotPolicy::new(config.hot_min_qps),
        Arc::new(Cluster::from_static(
            config.self_url.as_deref(),
            &config.peers,
            !frontend,
            groups,
            config.ring_hash,
            config.vnodes,
        )),
        config.hot_ttl,
    );
    core.feed().set_max_staleness(config.max_staleness);
    core.set_handoff_grace(config.handoff_grace);
    Arc::new(core)
}

/// Starts the cache's actors on the current actix system: the stores' maintenance, the source's
/// owner, and one loader per core, each on an arbiter (thread) of its own with its own peer
/// client and its own lane of the source, keys split by hash (see [`Loaders`] for why not on
/// the HTTP workers' threads).
fn start_cache(config: &Config, core: Arc<Core>, source: Arc<dyn Source>) -> anyhow::Result<Cache> {
    ShardActor::start(core.stores().all());
    DbActor::new(Arc::clone(&source)).start();
    let settings = peer_settings(config);
    let loaders = (0..worker_count(config))
        .map(|lane| {
            let loader = Loader {
                core: Arc::clone(&core),
                source: Arc::clone(&source),
                lane,
                peers: Arc::new(PeerClient::new(&settings)?),
                max_value_bytes: config.max_value_bytes,
            };
            let actor = LoaderActor::new(loader, config.loader_mailbox, config.max_in_flight);
            Ok(actor.start_in(&actix_rt::Arbiter::new().handle()))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Cache {
        core,
        loaders: Arc::new(Loaders::new(loaders)),
        request_timeout: config.request_timeout,
        peers: Arc::new(PeerClient::new(&settings)?),
        frontends: Arc::new(Frontends::default()),
    })
}

/// The handlers' state: the cache and everything the endpoints report on.
pub fn build_state(
    config: &Config,
    groups: Groups,
    source: Arc<dyn Source>,
) -> anyhow::Result<AppState> {
    let metrics = crate::telemetry::metrics::install();
    let cache = start_cache(config, build_core(config, groups), source)?;
    Ok(AppState {
        cache,
        raft: None,
        membership_required: config.uses_raft(),
        role: config.role,
        peer_auth: match &config.peer_secret {
            Some(secret) => http::peer::PeerAuth::new(Some(secret), &config.peer_secret_accept),
            None => http::peer::PeerAuth::open(),
        },
        admin_token: config.admin_token.clone(),
        digest: GroupsDigest::new(groups),
        health: Arc::new(Health::default()),
        metrics,
    })
}

/// The client API app: `/api`, ops endpoints, JSON 404 elsewhere.
pub fn api_app(
    state: web::Data<AppState>,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state)
        .configure(http::api::configure)
        .configure(http::ops::configure)
        .default_service(web::to(http::not_found))
}

/// The peer app: data fetches and Raft, all behind the peer secret.
fn peer_app(
    state: web::Data<AppState>,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state)
        .configure(http::peer::configure)
        .configure(http::membership::configure)
        .default_service(web::to(http::not_found))
        .wrap(actix_web::middleware::from_fn(http::peer::require_secret))
}

/// Binds with `backlog` pending connections (std's `bind` listens with 128: a load balancer's
/// burst of new connections overflowed it, and a connect then waited for SYN retries).
fn bind(addr: SocketAddr, what: &str, backlog: u32) -> anyhow::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let fail = |e: std::io::Error| anyhow::anyhow!("cannot bind {what} on {addr}: {e}");
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.bind(&addr.into()).map_err(fail)?;
    socket
        .listen(i32::try_from(backlog).unwrap_or(i32::MAX))
        .map_err(fail)?;
    Ok(socket.into())
}

/// Descriptors the node keeps for itself beyond its listeners' connections: PostgreSQL, peers,
/// Raft, the feed, files, epoll.
const RESERVED_FDS: u64 = 512;

/// Raises the soft limit on open files to the hard one and returns it. Under the usual soft
/// limit of 1,024, a burst of connections made `accept` fail with EMFILE, and then the node's
/// own connections too.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-files limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// Connections each listener takes at most: `--max-connections`, or what the descriptor limit
/// leaves after the node's own, split between the two listeners.
pub fn connection_cap(config: &Config, nofile: u64) -> usize {
    match config.max_connections {
        0 => usize::try_from(nofile.saturating_sub(RESERVED_FDS) / 2)
            .unwrap_or(usize::MAX)
            .clamp(64, 1_000_000),
        n => n,
    }
}

/// This node as a ring member.
fn member_info(config: &Config) -> anyhow::Result<MemberInfo> {
    let me = MemberInfo {
        id: config.raft_id(),
        peer_url: config
            .self_url
            .clone()
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned(),
        api_url: config.api_url(),
        weight: 1,
    };
    me.check()
        .map_err(|e| anyhow::anyhow!("this node cannot be a ring member: {e}"))?;
    Ok(me)
}

/// Opens the Raft log and starts `RaftActor` on an arbiter of its own.
fn start_raft(config: &Config, state: &AppState) -> anyhow::Result<(Addr<RaftActor>, MemberInfo)> {
    let me = member_info(config)?;
    let node = RaftNode::open(me.id, &config.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the Raft log in {}: {e}",
            config.data_dir.display()
        )
    })?;
    if !node.cluster_id().is_empty() {
        tracing::info!(cluster_id = node.cluster_id(), data_dir = %config.data_dir.display(), "resuming this node's cluster");
    }
    let settings = RaftSettings {
        peers: peer_settings(config),
        dead_after: config.dead_after,
        leaderless: Arc::clone(&state.health.leaderless),
    };
    let actor = RaftActor::new(
        node,
        me.clone(),
        Arc::clone(state.cache.core.cluster()),
        settings,
    )?;
    let addr = RaftActor::start_in_arbiter(&actix_rt::Arbiter::new().handle(), move |_| actor);
    Ok((addr, me))
}

/// The two listeners, serving.
struct Servers {
    api_addr: SocketAddr,
    peer_addr: SocketAddr,
    api: ServerHandle,
    peer: ServerHandle,
}

fn serve(
    config: &Config,
    state: web::Data<AppState>,
    listeners: (TcpListener, TcpListener),
) -> anyhow::Result<Servers> {
    let workers = worker_count(config);
    let shutdown = config.shutdown_timeout.as_secs().max(1);
    let api_state = state.clone();
    let nofile = raise_nofile();
    let cap = connection_cap(config, nofile);
    let per_worker = cap.div_ceil(workers).max(1);
    tracing::info!(
        open_files = nofile,
        connections_per_listener = cap,
        "limits"
    );
    let counted = |listener: &'static str| {
        metrics::gauge!("geecache_http_connections_limit", "listener" => listener)
            .set((per_worker * workers) as f64);
        let open = metrics::gauge!("geecache_http_connections_open", "listener" => listener);
        open.set(0.0);
        let accepted = metrics::counter!("geecache_http_connections_total", "listener" => listener);
        move |conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions| {
            accepted.increment(1);
            // No Nagle: a streamed batch answer (`/_fetch_batch`) is several writes, and a
            // later one would wait for the caller's delayed ACK of the first (40 ms).
            if let Some(tcp) = conn.downcast_ref::<actix_rt::net::TcpStream>() {
                tcp.set_nodelay(true).ok();
            }
            ext.insert(OpenConnection::new(open.clone()));
        }
    };
    let timeout = config.client_request_timeout;
    let keep_alive = config.keep_alive;
    let api = HttpServer::new(move || api_app(api_state.clone()))
        .on_connect(counted("api"))
        .workers(workers)
        .max_connections(per_worker)
        .client_request_timeout(timeout)
        .keep_alive(keep_alive)
        .disable_signals()
        .shutdown_timeout(shutdown)
        .listen(listeners.0)?;
    let peer = HttpServer::new(move || peer_app(state.clone()))
        .on_connect(counted("peer"))
        .workers(workers)
        .max_connections(per_worker)
        .client_request_timeout(timeout)
        .keep_alive(keep_alive)
        .disable_signals()
        .shutdown_timeout(shutdown)
        .listen(listeners.1)?;
    let (api_addr, peer_addr) = (api.addrs()[0], peer.addrs()[0]);
    let (api, peer) = (api.run(), peer.run());
    let servers = Servers {
        api_addr,
        peer_addr,
        api: api.handle(),
        peer: peer.handle(),
    };
    actix_rt::spawn(api);
    actix_rt::spawn(peer);
    Ok(servers)
}

/// Counts a connection in `geecache_http_connections_open` while it lives (actix-web keeps a
/// connection's extensions until it closes).
struct OpenConnection(metrics::Gauge);

impl OpenConnection {
    fn new(gauge: metrics::Gauge) -> OpenConnection {
        gauge.increment(1.0);
        OpenConnection(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// A running node.
pub struct Node {
    pub api_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    api: ServerHandle,
    peer: ServerHandle,
    health: Arc<Health>,
    config: Config,
    raft: Option<RaftMember>,
    /// For the handoff drain: the peeks this node has answered.
    core: Arc<crate::cache::Core>,
    /// Why the node cannot go on (its data dir belongs to another cluster).
    fatal: tokio::sync::mpsc::Receiver<String>,
}

/// What a Raft member needs at shutdown to leave the ring.
struct RaftMember {
    addr: Addr<RaftActor>,
    id: u64,
    peers: PeerClient,
    leaving: Arc<AtomicBool>,
}

/// Starts membership: a member's boot loop, or a frontend following the ring.
fn start_membership(
    config: &Config,
    state: &AppState,
    raft: Option<(Addr<RaftActor>, MemberInfo)>,
    fatal: tokio::sync::mpsc::Sender<String>,
) -> anyhow::Result<Option<RaftMember>> {
    let discovery: Arc<dyn Discovery> = Arc::new(Seeds(config.seeds.clone()));
    let peers = || PeerClient::new(&peer_settings(config));
    let Some((addr, me)) = raft else {
        if config.uses_raft() {
            let cluster = Arc::clone(state.cache.core.cluster());
            let me = config.self_url.clone();
            let digest = state.digest.clone();
            actix_rt::spawn(follow_ring(cluster, discovery, peers()?, me, digest));
        }
        return Ok(None);
    };
    let leaving = Arc::new(AtomicBool::new(false));
    if config.handoff_send {
        let core = Arc::clone(&state.cache.core);
        let budget = config.cache_bytes;
        actix_rt::spawn(handoff::push_on_join(
            core,
            peers()?,
            budget,
            config.handoff_drain,
        ));
    }
    actix_rt::spawn(run_member(MemberLoop {
        raft: addr.clone(),
        me: me.clone(),
        discovery,
        bootstrap_expect: config.bootstrap_expect,
        peers: peers()?,
        leaving: Arc::clone(&leaving),
        fatal,
        data_dir: config.data_dir.clone(),
        digest: state.digest.clone(),
    }));
    Ok(Some(RaftMember {
        addr,
        id: me.id,
        peers: peers()?,
        leaving,
    }))
}

/// A node started by `geecache up` (`GEECACHE_PARENT_PID`) gets SIGTERM when `up` dies,
/// even by SIGKILL (Linux's parent-death signal, which follows the thread that forked it: a
/// thread of `up`'s runtime, alive as long as `up`), and exits at once if `up` is already gone.
fn die_with_parent() -> anyhow::Result<()> {
    let Some(parent) = std::env::var(crate::cli::up::PARENT_ENV)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        return Ok(());
    };
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?;
    anyhow::ensure!(
        nix::unistd::getppid().as_raw() == parent,
        "the `geecache up` that started this node (pid {parent}) is gone"
    );
    Ok(())
}

impl Node {
    /// Starts a node; must run inside an actix system.
    pub async fn start(mut config: Config) -> anyhow::Result<Node> {
        die_with_parent()?;
        config.resolve_self().await?;
        raise_nofile();
        // Bind and build everything that can fail before any actor starts: an actix system
        // dropped with actors still starting does not shut down cleanly.
        let listeners = (
            bind(config.api_addr, "client API", config.listen_backlog)?,
            bind(config.peer_addr, "peer port", config.listen_backlog)?,
        );
        let groups = config.build_groups()?;
        let source = build_source(&config, groups)?;
        source.prepare().await.map_err(|why| anyhow::anyhow!(why))?;
        PeerClient::new(&peer_settings(&config))?;
        warn_if_open(&config);
        let mut state = build_state(&config, groups, source)?;
        let raft = match (config.uses_raft(), config.role) {
            (true, Role::Node) => Some(start_raft(&config, &state)?),
            _ => None,
        };
        state.raft = raft.as_ref().map(|(addr, _)| addr.clone());
        let state = web::Data::new(state);
        start_feed(&config, &state);
        let servers = serve(&config, state.clone(), listeners)?;
        // Feed-backed groups cache nothing before the feed's first poll: not ready until it
        // has completed, or for at most the connect timeout (a database that is down at
        // startup does not keep the node out; misses answer 503 until it is back).
        let deadline = std::time::Instant::now() + config.source.connect_timeout;
        let feed = state.cache.core.feed();
        while feed.enabled() && feed.applied_xmin() == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        state.health.set_ready();
        if config.emf {
            let metrics = state.metrics.clone();
            actix_rt::spawn(crate::telemetry::emit_emf(metrics, config.emf_interval));
        }
        let (fatal_tx, fatal) = tokio::sync::mpsc::channel(1);
        let raft = start_membership(&config, &state, raft, fatal_tx)?;
        let view = state.cache.core.cluster().view();
        tracing::info!(
            api_addr = %servers.api_addr, peer_addr = %servers.peer_addr,
            role = config.role.as_str(), source = config.source.kind.as_str(),
            cache_bytes = config.cache_bytes, members = view.ring.members().len(),
            self_url = config.self_url.as_deref().unwrap_or("-"), "node started"
        );
        Ok(Node {
            api_addr: servers.api_addr,
            peer_addr: servers.peer_addr,
            api: servers.api,
            peer: servers.peer,
            health: Arc::clone(&state.health),
            config,
            raft,
            core: Arc::clone(&state.cache.core),
            fatal,
        })
    }

    /// Serves until SIGTERM or SIGINT, then drains and stops; or until the node finds it
    /// cannot take part in its cluster, then stops with that error.
    pub async fn run_until_signal(mut self) -> anyhow::Result<()> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let fatal = tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); None }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: draining"); None }
            Some(why) = self.fatal.recv() => Some(why),
        };
        if let Some(why) = fatal {
            tracing::error!(error = %why, "stopping");
            self.health.start_draining();
            tokio::join!(self.api.stop(false), self.peer.stop(false));
            anyhow::bail!(why);
        }
        self.shutdown().await;
        Ok(())
    }

    /// Graceful stop: leave the ring, then `/ready` says 503 for `drain_delay` (so a load
    /// balancer stops sending), then the listeners stop accepting and in-flight requests get
    /// `shutdown_timeout`.
    pub async fn shutdown(self) {
        if let Some(r) = &self.raft {
            r.leaving.store(true, Ordering::SeqCst);
            let left = leave(&r.addr, r.id, &r.peers, Duration::from_secs(5)).await;
            tracing::info!(left, "left the ring");
            if left {
                let started = std::time::Instant::now();
                // Sent whole, every fresh value this node has is at its new owner, which
                // looks in its handoff store before it peeks: a peek here could only say
                // `not held` (under a Zipf load, the tail's misses peek all the time, so
                // "1 s without a peek" never came and every restart stayed away the whole
                // --handoff-drain). Only the peeks begun before the batches landed are left.
                let pushed = self.config.handoff_send
                    && handoff::push_on_leave(
                        &self.core,
                        &r.peers,
                        self.config.cache_bytes,
                        self.config.handoff_drain,
                    )
                    .await;
                let drain = if pushed {
                    HANDOFF_SETTLE.min(self.config.handoff_drain)
                } else {
                    self.config.handoff_drain
                };
                handoff::answer_peeks(&self.core, started, drain).await;
            }
        }
        self.health.start_draining();
        if !self.config.drain_delay.is_zero() {
            tokio::time::sleep(self.config.drain_delay).await;
        }
        tokio::join!(self.api.stop(true), self.peer.stop(true));
        tracing::info!("node stopped");
    }
}

/// Follows the change feed when the source is PostgreSQL and some group has `invalidate`
/// entries.
fn start_feed(config: &Config, state: &AppState) {
    let Some(url) = &config.source.database_url else {
        return;
    };
    if config.source.kind != SourceKind::Postgres {
        return;
    }
    let consumer = config.self_url.clone().unwrap_or_else(|| config.api_url());
    let settings = FeedSettings {
        database_url: url.clone(),
        consumer: format!("{} ({})", consumer, config.role.as_str()),
        connect_timeout: config.source.connect_timeout,
        retention: config.feed_retention,
        poll_every: config.feed_poll,
    };
    if crate::feed::enable(&state.cache.core) {
        actix_rt::spawn(crate::feed::follow(Arc::clone(&state.cache.core), settings));
    }
}

fn warn_if_open(config: &Config) {
    if config.insecure_open_peer_port {
        tracing::warn!(
            peer_addr = %config.peer_addr,
            "the peer port is OPEN (--insecure-open-peer-port): anyone who reaches it can read \
             and poison the cache and change the ring; use it only to mix with GeeCache (Go) nodes"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node closes idle connections after `--keep-alive`; its peer client must let its own
    /// go first, or a remote load can go out on a connection the peer is closing.
    #[test]
    fn the_peer_client_lets_idle_connections_go_before_the_peers_do() {
        for keep_alive in ["75s", "1s"] {
            let config = crate::cli::config::node_config([
                "--keep-alive",
                keep_alive,
                "--insecure-open-peer-port",
            ])
            .unwrap();
            let idle = peer_settings(&config).idle_timeout;
            assert!(
                !idle.is_zero() && idle < config.keep_alive,
                "{idle:?} against --keep-alive {keep_alive}"
            );
        }
    }
}
