//! The node's two HTTP listeners, as thin handlers over `cache`: the client API (`api`,
//! `ops`) and the peer protocol (`peer` for data, `membership` for Raft); the error table
//! (`error`) and strict decoding (`decode`) they share.

pub mod api;
pub mod auth;
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
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpResponse, web};
use metrics::Histogram;
use metrics_exporter_prometheus::PrometheusHandle;

use actix_web::http::header::{HeaderName, HeaderValue};

use crate::actors::RaftActor;
use crate::cache::{Cache, Reply};
use crate::cli::config::Role;
use crate::group::{Group, Groups, GroupsDigest};
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
    /// What DELETE on the client API needs; `None`: DELETE is refused (403).
    pub admin_token: Option<String>,
    /// This node's groups' digest, and whether the cluster's matches.
    pub digest: GroupsDigest,
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
            let cluster = self.cache.core.cluster();
            let view = cluster.view();
            let in_ring = match (self.role, cluster.self_name()) {
                (Role::Node, Some(me)) => view.ring.members().iter().any(|m| &*m.name == me),
                _ => !view.ring.is_empty(),
            };
            (!in_ring || view.epoch == 0).then_some("not in the ring yet")
        })
    }
}

impl AppState {
    /// Parses a group name, 404 when this node does not serve it.
    pub fn group(&self, name: &str) -> Result<Group, ApiError> {
        group_named(self.cache.core.groups(), name)
    }
}

/// A group of `groups` by name, 404 when there is none.
pub fn group_named(groups: Groups, name: &str) -> Result<Group, ApiError> {
    groups.get(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_group",
            format!("unknown group {name:?} (known: {})", groups.names()),
        )
    })
}

/// A client API answer: 200 with the value bytes and the group's `Content-Type`, or the
/// error's JSON; `X-Cache` on every answer, and `Age` (seconds) for what came from a cache.
pub fn reply_response(group: Group, reply: Reply) -> HttpResponse {
    use actix_web::ResponseError;
    let mut res = match reply.result {
        Ok(value) => HttpResponse::Ok()
            .content_type(group.content_type())
            .body(value),
        Err(e) => ApiError::from(e).error_response(),
    };
    let headers = res.headers_mut();
    headers.insert(
        HeaderName::from_static("x-cache"),
        HeaderValue::from_static(reply.status.as_str()),
    );
    if let Some(age) = reply.age_ms {
        headers.insert(actix_web::http::header::AGE, HeaderValue::from(age / 1000));
    }
    res
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
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let started = Instant::now();
    if let Some(size) = head_too_large(req.head()) {
        use actix_web::ResponseError;
        let refused = ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "head_too_large",
            format!("the request's head is {size} bytes, over the limit of {MAX_HEAD_BYTES}"),
        )
        .error_response();
        let res = req.into_response(refused).map_into_right_body();
        observe(route, res.status(), started);
        return Ok(res);
    }
    let res = next.call(req).await?.map_into_left_body();
    observe(route, res.status(), started);
    Ok(res)
}

/// The largest request head (request line and headers) a listener takes; a larger one is 431.
/// (actix-http's own decoder refuses, without a body, a request line over about 64 KiB and a
/// head over its 128 KiB buffer, before any handler runs.)
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// The head's size as sent (`METHOD URI HTTP/1.1`, `name: value` lines), when over
/// [`MAX_HEAD_BYTES`].
fn head_too_large(head: &actix_web::dev::RequestHead) -> Option<usize> {
    let uri = head.uri.path().len() + head.uri.query().map_or(0, |q| q.len() + 1);
    let mut size = head.method.as_str().len() + uri + 11;
    for (name, value) in head.headers.iter() {
        size += name.as_str().len() + value.len() + 4;
    }
    (size > MAX_HEAD_BYTES).then_some(size)
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

/// A JSON 405 for a known path asked with a method it does not take; `Allow` lists those.
pub fn method_not_allowed_response(
    req: &actix_web::HttpRequest,
    allow: &'static str,
) -> HttpResponse {
    use actix_web::ResponseError;
    let mut res = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed here; use {allow}", req.method()),
    )
    .error_response();
    res.headers_mut().insert(
        actix_web::http::header::ALLOW,
        HeaderValue::from_static(allow),
    );
    res
}

fn method_not_allowed(
    allow: &'static str,
) -> impl Fn(actix_web::HttpRequest) -> std::future::Ready<HttpResponse> + Clone {
    move |req| std::future::ready(method_not_allowed_response(&req, allow))
}

/// GET, and HEAD answered as GET without the body (actix-http leaves the body out).
fn get_or_head() -> actix_web::Route {
    web::route().guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
}

/// Every path under `prefix/` answered by `handler` (which dispatches on the method), timed
/// under `label`. Routed by the static prefix: a pattern with `{group}/{key}` segments is
/// matched by actix-router with a regex on every request, which was 37 % of a hit's
/// instructions (load/bench/instr.py).
pub fn subtree<F, Args>(
    prefix: &'static str,
    label: &'static str,
    handler: F,
) -> impl actix_web::dev::HttpServiceFactory + 'static
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::scope(prefix)
        .default_service(web::to(handler))
        .wrap(from_fn(move |req, next| timed(label, req, next)))
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
        .route(get_or_head().to(handler))
        .default_service(web::to(method_not_allowed("GET, HEAD")))
        .wrap(from_fn(move |req, next| timed(path, req, next)))
}

/// A resource answering GET and DELETE, timed under its path; other methods get a JSON 405.
pub fn get_delete_resource<G, GArgs, D, DArgs>(
    path: &'static str,
    get: G,
    delete: D,
) -> impl actix_web::dev::HttpServiceFactory + 'static
where
    G: actix_web::Handler<GArgs>,
    GArgs: actix_web::FromRequest + 'static,
    G::Output: actix_web::Responder + 'static,
    D: actix_web::Handler<DArgs>,
    DArgs: actix_web::FromRequest + 'static,
    D::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(get_or_head().to(get))
        .route(web::delete().to(delete))
        .default_service(web::to(method_not_allowed("GET, HEAD, DELETE")))
        .wrap(from_fn(move |req, next| timed(path, req, next)))
}
