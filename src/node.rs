//! Starting and stopping one node: actors, the two listeners, signals, drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};

use crate::actors::{DbActor, LoaderActor, ShardActor, loader::Loader};
use std::sync::atomic::{AtomicBool, Ordering};

use actix::{Actor as _, Addr};

use crate::actors::raft::{RaftActor, RaftSettings};
use crate::cache::Shard;
use crate::cluster::Cluster;
use crate::config::{Config, Role, SourceKind};
use crate::hot::RateTracker;
use crate::http::{self, AppState, Health};
use crate::peer_client::{HttpPeerClient, PeerClient};
use crate::raft::boot::{MemberLoop, PeerHttp, follow_ring, leave, run_member};
use crate::raft::discovery::{Discovery, Seeds};
use crate::raft::membership::MemberInfo;
use crate::raft::node::RaftNode;
use crate::source::embedded::EmbeddedConfig;
use crate::source::postgres::PostgresConfig;
use crate::source::{EmbeddedSource, PostgresSource, Source};

/// Builds the configured source (no connection is made yet).
pub fn build_source(config: &Config) -> anyhow::Result<Arc<dyn Source>> {
    let s = &config.source;
    Ok(match s.kind {
        SourceKind::Embedded => Arc::new(EmbeddedSource::new(EmbeddedConfig {
            products: s.products,
            latency: s.embedded_latency,
            error_rate: s.embedded_error_rate,
        })),
        SourceKind::Postgres => Arc::new(PostgresSource::new(&PostgresConfig {
            url: s.database_url.clone().unwrap_or_default(),
            pool_size: s.pool_size,
            connect_timeout: s.connect_timeout,
            statement_timeout: s.statement_timeout,
            queries: s.queries.as_array(),
        })?),
    })
}

/// Starts the actors of a node on the current actix system and returns the handlers' state.
/// HTTP workers per listener, and loaders: one per core unless configured.
pub fn worker_count(config: &Config) -> usize {
    match config.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    }
}

pub fn start_actors(
    config: &Config,
    source: Arc<dyn Source>,
    peers: impl Fn() -> Arc<dyn PeerClient>,
) -> AppState {
    let metrics = crate::metrics::install();
    let counters = crate::metrics::Counters::new();
    // groupcache's split: the hot cache gets 1/8 of the bytes. A frontend owns no keys, so
    // all of its bytes go to the hot cache.
    let hot_bytes = match config.role {
        Role::Node => config.cache_bytes / 8,
        Role::Frontend => config.cache_bytes,
    };
    let main = Shard::new("main", (config.cache_bytes - hot_bytes).max(1024), None);
    let hot = Shard::new("hot", hot_bytes, Some(config.hot_ttl));
    let cluster = Arc::new(Cluster::from_static(
        config.self_url.as_deref(),
        &config.peers,
        config.role == Role::Node,
        config.ring_hash,
        config.vnodes,
    ));
    let rates = Arc::new(RateTracker::new(Duration::from_secs(1), 100_000));
    let mailbox = config.loader_mailbox;
    let shard_addr = ShardActor::new(main.clone(), hot.clone(), mailbox).start_bounded();
    let db = DbActor::new(source, mailbox).start_bounded();
    // One loader per core, each on an arbiter (thread) of its own with its own peer client, keys
    // split by hash: a key's flights all live in one loader, and peer I/O spreads over the
    // cores instead of queueing on one thread (measured by load/bench-remote.sh).
    let loaders = (0..worker_count(config))
        .map(|_| {
            let loader = Loader {
                main: main.clone(),
                hot: hot.clone(),
                db: db.clone(),
                counters: counters.clone(),
                cluster: Arc::clone(&cluster),
                peers: peers(),
                rates: Arc::clone(&rates),
                hot_min_qps: config.hot_min_qps,
                max_value_bytes: config.max_value_bytes,
            };
            let actor = LoaderActor::new(loader, mailbox, config.max_in_flight);
            actor.start_in(&actix_rt::Arbiter::new().handle())
        })
        .collect();
    AppState {
        main,
        hot,
        shard_addr,
        loaders,
        counters,
        cluster,
        rates,
        served_rates: Arc::new(RateTracker::new(Duration::from_secs(60), 100_000)),
        peer_auth: match &config.peer_secret {
            Some(secret) => http::peer::PeerAuth::new(Some(secret), &config.peer_secret_accept),
            None => http::peer::PeerAuth::open(),
        },
        raft: None,
        membership_required: config.uses_raft(),
        role: config.role,
        hit_path: config.hit_path,
        request_timeout: config.request_timeout,
        health: Arc::new(Health::default()),
        metrics,
    }
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

/// Prints one EMF line per interval with what happened in it.
async fn emit_emf(metrics: metrics_exporter_prometheus::PrometheusHandle, every: Duration) {
    let mut before = crate::emf::Snapshot::parse(&metrics.render());
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        metrics.run_upkeep();
        let now = crate::emf::Snapshot::parse(&metrics.render());
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        println!("{}", crate::emf::line(&before, &now, ms));
        before = now;
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
    /// Why the node cannot go on (its data dir belongs to another cluster).
    fatal: tokio::sync::mpsc::Receiver<String>,
}

/// What a Raft member needs at shutdown to leave the ring.
struct RaftMember {
    addr: Addr<RaftActor>,
    id: u64,
    http: PeerHttp,
    leaving: Arc<AtomicBool>,
}

/// Opens the Raft log and starts `RaftActor` on an arbiter of its own.
fn start_raft(
    config: &Config,
    cluster: Arc<Cluster>,
    leaderless: Arc<AtomicBool>,
) -> anyhow::Result<(Addr<RaftActor>, MemberInfo)> {
    let id = config.raft_id();
    let me = MemberInfo {
        id,
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
    let node = RaftNode::open(id, &config.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the Raft log in {}: {e}",
            config.data_dir.display()
        )
    })?;
    if !node.cluster_id().is_empty() {
        tracing::info!(cluster_id = node.cluster_id(), data_dir = %config.data_dir.display(), "resuming this node's cluster");
    }
    let settings = RaftSettings {
        ring_hash: config.ring_hash,
        vnodes: config.vnodes,
        secret: config.peer_secret.clone(),
        dead_after: config.dead_after,
        leaderless,
    };
    let actor = RaftActor::new(node, me.clone(), cluster, settings);
    let addr = RaftActor::start_in_arbiter(&actix_rt::Arbiter::new().handle(), move |_| actor);
    Ok((addr, me))
}

impl Node {
    /// Starts actors and binds both listeners; must run inside an actix system.
    pub async fn start(mut config: Config) -> anyhow::Result<Node> {
        config.resolve_self().await?;
        // Bind and build everything that can fail before any actor starts: an actix system
        // dropped with actors still starting does not shut down cleanly.
        let bind = |addr: SocketAddr, what: &str| {
            std::net::TcpListener::bind(addr)
                .map_err(|e| anyhow::anyhow!("cannot bind {what} on {addr}: {e}"))
        };
        let api_listener = bind(config.api_addr, "client API")?;
        let peer_listener = bind(config.peer_addr, "peer port")?;
        let source = build_source(&config)?;
        // Fail here on a bad TLS/client setup rather than in a loader's arbiter.
        HttpPeerClient::new(
            config.peer_timeout,
            config.peer_secret.as_deref(),
            config.max_value_bytes,
        )?;
        let (timeout, secret) = (config.peer_timeout, config.peer_secret.clone());
        let max_value = config.max_value_bytes;
        let peers = move || -> Arc<dyn PeerClient> {
            Arc::new(
                HttpPeerClient::new(timeout, secret.as_deref(), max_value)
                    .expect("the same settings built a client a moment ago"),
            )
        };
        let mut state = start_actors(&config, source, peers);
        if config.insecure_open_peer_port {
            tracing::warn!(
                peer_addr = %config.peer_addr,
                "the peer port is OPEN (--insecure-open-peer-port): anyone who reaches it can read \
                 and poison the cache and change the ring; use it only to mix with GeeCache (Go) nodes"
            );
        }
        let raft = match (config.uses_raft(), config.role) {
            (true, Role::Node) => Some(start_raft(
                &config,
                Arc::clone(&state.cluster),
                Arc::clone(&state.health.leaderless),
            )?),
            _ => None,
        };
        state.raft = raft.as_ref().map(|(addr, _)| addr.clone());
        let state = web::Data::new(state);
        let health = Arc::clone(&state.health);
        let workers = worker_count(&config);
        let shutdown = config.shutdown_timeout.as_secs().max(1);

        let api_state = state.clone();
        let api = HttpServer::new(move || api_app(api_state.clone()))
            .workers(workers)
            .disable_signals()
            .shutdown_timeout(shutdown)
            .listen(api_listener)?;
        let api_addr = api.addrs()[0];

        let peer_state = state.clone();
        let peer = HttpServer::new(move || {
            App::new()
                .app_data(peer_state.clone())
                .configure(http::peer::configure)
                .configure(http::raft::configure)
                .default_service(web::to(http::not_found))
                .wrap(actix_web::middleware::from_fn(http::peer::require_secret))
        })
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(shutdown)
        .listen(peer_listener)?;
        let peer_addr = peer.addrs()[0];

        let api = api.run();
        let peer = peer.run();
        let (api_handle, peer_handle) = (api.handle(), peer.handle());
        actix_rt::spawn(api);
        actix_rt::spawn(peer);
        health.set_ready();
        if config.emf {
            actix_rt::spawn(emit_emf(state.metrics.clone(), config.emf_interval));
        }
        let discovery: Arc<dyn Discovery> = Arc::new(Seeds(config.seeds.clone()));
        let http = PeerHttp::new(config.peer_secret.as_deref());
        let (fatal_tx, fatal) = tokio::sync::mpsc::channel(1);
        let raft = match raft {
            Some((addr, me)) => {
                let leaving = Arc::new(AtomicBool::new(false));
                actix_rt::spawn(run_member(MemberLoop {
                    raft: addr.clone(),
                    me: me.clone(),
                    discovery,
                    bootstrap_expect: config.bootstrap_expect,
                    http: http.clone(),
                    leaving: Arc::clone(&leaving),
                    fatal: fatal_tx,
                    data_dir: config.data_dir.clone(),
                }));
                Some(RaftMember {
                    addr,
                    id: me.id,
                    http,
                    leaving,
                })
            }
            None => {
                if config.uses_raft() {
                    actix_rt::spawn(follow_ring(
                        Arc::clone(&state.cluster),
                        discovery,
                        http,
                        config.ring_hash,
                        config.vnodes,
                    ));
                }
                None
            }
        };
        let view = state.cluster.view();
        tracing::info!(
            %api_addr, %peer_addr, role = ?config.role, source = ?config.source.kind,
            cache_bytes = config.cache_bytes, members = view.ring.members().len(),
            self_url = config.self_url.as_deref().unwrap_or("-"), "node started"
        );
        Ok(Node {
            api_addr,
            peer_addr,
            api: api_handle,
            peer: peer_handle,
            health,
            config,
            raft,
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

    /// Graceful stop: `/ready` says 503 for `drain_delay` (so a load balancer stops sending),
    /// then the listeners stop accepting and in-flight requests get `shutdown_timeout`.
    pub async fn shutdown(self) {
        if let Some(r) = &self.raft {
            r.leaving.store(true, Ordering::SeqCst);
            let left = leave(&r.addr, r.id, &r.http, Duration::from_secs(5)).await;
            tracing::info!(left, "left the ring");
        }
        self.health.start_draining();
        if !self.config.drain_delay.is_zero() {
            tokio::time::sleep(self.config.drain_delay).await;
        }
        tokio::join!(self.api.stop(true), self.peer.stop(true));
        tracing::info!("node stopped");
    }
}
