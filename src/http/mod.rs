//! The node's two HTTP listeners: the client API (`api`, `ops`) and the peer protocol.

pub mod api;
pub mod ops;
pub mod peer;
pub mod raft;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::Addr;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpResponse, web};
use bytes::Bytes;
use metrics::Histogram;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::actors::shard::{Get, ShardActor};
use crate::actors::{LoaderActor, ask, loader::Load};
use crate::cache::Shard;
use crate::cluster::{Cluster, Route};
use crate::config::{HitPath, Role};
use crate::error::{ApiError, LoadError};
use crate::groups::{Group, validate_key};
use crate::hot::RateTracker;
use crate::metrics::Counters;

/// Liveness and readiness, as a load balancer sees them.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    draining: AtomicBool,
    /// Set by `RaftActor` while this member has had no leader for longer than an election.
    pub leaderless: Arc<AtomicBool>,
}

impl Health {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// `None` when ready, else why not.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::SeqCst) {
            Some("draining")
        } else if !self.ready.load(Ordering::SeqCst) {
            Some("starting")
        } else if self.leaderless.load(Ordering::Relaxed) {
            Some("no raft leader")
        } else {
            None
        }
    }
}

/// What every handler of a node shares.
pub struct AppState {
    pub main: Shard,
    pub hot: Shard,
    pub shard_addr: Addr<ShardActor>,
    /// Loaders, each owning the flights of the keys that hash to it.
    pub loaders: Vec<Addr<LoaderActor>>,
    pub counters: Counters,
    pub cluster: Arc<Cluster>,
    /// Local request rates of keys owned elsewhere (hot cache promotion).
    pub rates: Arc<RateTracker>,
    /// Rates of keys served to peers, reported back as `minute_qps`.
    pub served_rates: Arc<RateTracker>,
    /// Who may use the peer port.
    pub peer_auth: peer::PeerAuth,
    /// Raft membership, when this node takes part in it.
    pub raft: Option<Addr<crate::actors::raft::RaftActor>>,
    /// Ready only once the agreed ring holds this node (a frontend: once it has a ring).
    pub membership_required: bool,
    pub role: Role,
    pub hit_path: HitPath,
    pub request_timeout: Duration,
    pub health: Arc<Health>,
    pub metrics: PrometheusHandle,
}

impl AppState {
    /// `None` when ready to serve, else why not.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        self.health.not_ready_reason().or_else(|| {
            if !self.membership_required {
                return None;
            }
            let view = self.cluster.view();
            let in_ring = match (self.role, self.cluster.self_name()) {
                (Role::Node, Some(me)) => view.ring.members().iter().any(|m| &*m.name == me),
                _ => !view.ring.is_empty(),
            };
            (!in_ring || view.epoch == 0).then_some("not in the ring yet")
        })
    }

    /// The read-through get of the client API: main shard, hot cache, then a load (from the
    /// owner, or from the source when this node owns the key).
    pub async fn get(&self, group: Group, key: &str) -> Result<Bytes, ApiError> {
        validate_key(key).map_err(|e| ApiError::bad_request("bad_key", e.to_string()))?;
        let counters = self.counters.group(group);
        counters.gets.increment(1);
        let cached = match self.hit_path {
            HitPath::Direct => self.main.get(group, key).or_else(|| {
                if let Route::Remote(_) = self.cluster.route(key) {
                    self.rates.hit(group, key);
                }
                let hot = self.hot.get(group, key);
                if hot.is_some() {
                    counters.hot_cache_hits.increment(1);
                }
                hot
            }),
            HitPath::Actor => {
                let rx = ask(&self.shard_addr, "shard", |reply| Get {
                    group,
                    key: key.to_owned(),
                    reply,
                })?;
                rx.await.map_err(|_| LoadError::Stopped)?
            }
        };
        if let Some(value) = cached {
            counters.cache_hits.increment(1);
            return Ok(value);
        }
        self.load(group, key, false).await
    }

    /// A peer's get: this node's main shard, then a load from this node's source. Never
    /// forwarded to another peer.
    pub async fn get_for_peer(&self, group: Group, key: &str) -> Result<Bytes, ApiError> {
        validate_key(key).map_err(|e| ApiError::bad_request("bad_key", e.to_string()))?;
        self.counters.group(group).server_requests.increment(1);
        if let Some(value) = self.main.get(group, key) {
            return Ok(value);
        }
        self.load(group, key, true).await
    }

    async fn load(&self, group: Group, key: &str, local_only: bool) -> Result<Bytes, ApiError> {
        let i = crc32fast::hash(key.as_bytes()) as usize % self.loaders.len();
        let rx = ask(&self.loaders[i], "loader", |reply| Load {
            group,
            key: key.to_owned(),
            local_only,
            reply,
        })?;
        let result = match tokio::time::timeout(self.request_timeout, rx).await {
            Err(_) => Err(LoadError::Timeout),
            Ok(Err(_)) => Err(LoadError::Stopped),
            Ok(Ok(result)) => result,
        };
        Ok(result?)
    }
}

/// Parses a group name, 404 when unknown.
pub fn parse_group(name: &str) -> Result<Group, ApiError> {
    Group::parse(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_group",
            format!("unknown group {name:?} (known: scores, products)"),
        )
    })
}

pub fn value_response(value: Bytes) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(value)
}

thread_local! {
    /// Latency histograms by (route, status), registered once per worker thread so that the
    /// request path does no registry lookup and no label allocation.
    static LATENCY: RefCell<HashMap<(&'static str, u16), Histogram>> = RefCell::new(HashMap::new());
}

/// Records one request in `geecache_http_request_duration_seconds{route, status}`.
pub fn observe(route: &'static str, status: StatusCode, started: Instant) {
    let elapsed = started.elapsed().as_secs_f64();
    LATENCY.with(|m| {
        m.borrow_mut()
            .entry((route, status.as_u16()))
            .or_insert_with(|| {
                metrics::histogram!("geecache_http_request_duration_seconds",
                    "route" => route, "status" => status.as_str().to_owned())
            })
            .record(elapsed)
    });
}

async fn timed<B: MessageBody>(
    route: &'static str,
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    let started = Instant::now();
    let res = next.call(req).await?;
    observe(route, res.status(), started);
    Ok(res)
}

/// A JSON 404 for paths nothing serves.
pub async fn not_found(req: actix_web::HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    observe("unmatched", StatusCode::NOT_FOUND, Instant::now());
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        format!("no route for {} {}", req.method(), req.path()),
    )
    .error_response()
}

/// A JSON 405 for a known path asked with another method than GET.
pub async fn method_not_allowed(req: actix_web::HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    let mut res = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed here; use GET", req.method()),
    )
    .error_response();
    res.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_static("GET, HEAD"),
    );
    res
}

/// A GET-only resource, timed under its path, whose other methods get a JSON 405.
pub fn get_resource<F, Args>(
    path: &'static str,
    handler: F,
) -> impl actix_web::dev::HttpServiceFactory + 'static
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler))
        .default_service(web::to(method_not_allowed))
        .wrap(from_fn(move |req, next| timed(path, req, next)))
}
