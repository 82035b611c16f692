//! Operations endpoints on the client port: `/health`, `/ready`, `/metrics`, `/cluster`,
//! `/cluster/owner`.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::decode::query_pairs;
use super::error::ApiError;
use super::{AppState, get_resource};
use crate::group::validate_key;
use crate::ring::Route;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get_resource("/health", health))
        .service(get_resource("/ready", ready))
        .service(get_resource("/metrics", metrics))
        .service(get_resource("/cluster", cluster))
        .service(get_resource("/cluster/owner", owner));
}

/// This node's view of the cluster.
async fn cluster(state: web::Data<AppState>) -> HttpResponse {
    let cluster = &state.cache.core.cluster();
    let view = cluster.view();
    let mut body = json!({
        "self": cluster.self_name(),
        "role": state.role.as_str(),
        "membership": if state.raft.is_some() || state.membership_required { "raft" } else { "static" },
        "epoch": view.epoch,
        "vnodes": view.ring.vnodes(),
        "members": if view.members.is_empty() {
            json!(view.ring.members())
        } else {
            // A frontend: the ring it follows, as its members published it. It takes no part
            // in Raft, so it knows no roles; `state` says where the list comes from.
            json!(view.members.iter().map(|m| json!({
                "id": m.id, "peer_url": m.peer_url, "api_url": m.api_url, "weight": m.weight,
                "role": "member", "state": "followed",
            })).collect::<Vec<_>>())
        },
        "node_id": null,
        "leader_id": null,
        "term": null,
        "groups": state.cache.core.groups().names(),
        "groups_digest": state.digest.mine(),
        "groups_match": state.digest.matches(),
    });
    if let Some(raft) = &state.raft
        && let Ok(status) = raft.send(crate::actors::raft::Status).await
    {
        body["node_id"] = json!(status.node_id);
        body["cluster_id"] = json!(status.cluster_id);
        body["leader_id"] = json!(status.leader_id);
        body["term"] = json!(status.term);
        body["state"] = json!(status.state);
        body["members"] = json!(status.members);
    }
    HttpResponse::Ok().json(body)
}

/// Which member owns a key under this node's ring.
async fn owner(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut key = None;
    for pair in query_pairs(req.query_string()) {
        let (name, value) = pair.map_err(|e| ApiError::bad_request("bad_query", e.to_string()))?;
        let bad = |m: String| ApiError::bad_request("bad_query", m);
        match &*name {
            "key" if key.is_some() => return Err(bad("parameter \"key\" given twice".into())),
            "key" => key = Some(value),
            other => return Err(bad(format!("unknown parameter {other:?}"))),
        }
    }
    let key = key.ok_or_else(|| ApiError::bad_request("bad_query", "missing parameter \"key\""))?;
    validate_key(&key).map_err(|e| ApiError::bad_request("bad_key", e.to_string()))?;
    let cluster = &state.cache.core.cluster();
    let view = cluster.view();
    let owner = view.ring.owner(&key).map(|m| m.name.to_string());
    Ok(HttpResponse::Ok().json(json!({
        "key": key,
        "owner": owner.or_else(|| cluster.self_name().map(str::to_owned)),
        "local": cluster.route(&key) == Route::Local,
        "epoch": view.epoch,
    })))
}

/// The process is alive and its HTTP workers answer.
async fn health() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Able to serve: started, not draining.
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    match state.not_ready_reason() {
        None => HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n"),
        Some(why) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("not ready: {why}\n")),
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let feed = state.cache.core.feed();
    if feed.enabled() {
        let at = feed.fresh_as_of_ms();
        let lag = crate::clock::now_ms().saturating_sub(at) as f64 / 1000.0;
        metrics::gauge!("geecache_feed_lag_seconds").set(lag);
    }
    if let Some(n) = listen_overflows() {
        metrics::counter!("geecache_tcp_listen_overflows_total").absolute(n);
    }
    state.metrics.run_upkeep();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// The kernel's count of connections dropped because a listener's backlog was full
/// (`TcpExt: ListenOverflows` in /proc/net/netstat): what a connection cap or a short backlog
/// costs, for the node's network namespace (its container's, on ECS).
fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}
