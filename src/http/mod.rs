//! The node's two HTTP listeners, as thin handlers over `cache`: the client API (`api`,
//! `ops`) and the peer protocol (`peer` for data, `membership` for Raft); the error table
//! (`error`) and strict decoding (`decode`) they share.

pub mod api;
pub mod decode;
pub mod error;
pub mod membership;
pub mod ops;
pub mod peer;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use actix::Addr;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpResponse, web};
use bytes::Bytes;
use metrics::Histogram;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::actors::RaftActor;
use crate::cache::Cache;
use crate::cache::group::Group;
use crate::cli::config::Role;
use error::ApiError;

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
    /// The read-through cache: what the client API and the peer protocol read.
    pub cache: Cache,
    /// Raft membership, when this node takes part in it.
    pub raft: Option<Addr<RaftActor>>,
    /// Ready only once the agreed ring holds this node (a frontend: once it has a ring).
    pub membership_required: bool,
    pub role: Role,
    /// Who may use the peer port.
    pub peer_auth: peer::PeerAuth,
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
            let cluster = &self.cache.core.cluster;
            let view = cluster.view();
            let in_ring = match (self.role, cluster.self_name()) {
                (Role::Node, Some(me)) => view.ring.members().iter().any(|m| &*m.name == me),
                _ => !view.ring.is_empty(),
            };
            (!in_ring || view.epoch == 0).then_some("not in the ring yet")
        })
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

/// 200 with the raw value bytes.
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
