//! The Raft transport and membership endpoints on the peer port (behind the peer secret, which
//! the peer app checks before any of these runs): `POST /_raft/messages`, `GET /_raft/info`,
//! `GET /_raft/members`, `POST /_raft/join`, `POST /_raft/remove`, `POST /_raft/command`
//! (paths in `peer::wire`).
//!
//! Errors are JSON `{"error", "message"}` with stable codes, as on the client API; a change
//! sent to a follower is 421 `not_leader` with the leader's peer URL in `leader`.

use std::time::Duration;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use protobuf::Message as PbMessage;
use raft::prelude::Message as RaftMessage;
use serde_json::json;
use tokio::sync::oneshot;

use super::AppState;
use super::error::ApiError;
use crate::actors::raft::{
    AddMember, ChangeError, Propose, RaftActor, RemoveMember, RingMembersOf, Status, Step,
};
use crate::peer::wire::{
    CLUSTER_HEADER, FRONTEND_HEADER, RAFT_COMMAND, RAFT_INFO, RAFT_JOIN, RAFT_MEMBERS,
    RAFT_MESSAGES, RAFT_REMOVE, RaftBatch,
};
use crate::raft::membership::{
    Invalid, MemberInfo, PurgeGroup, RingCommand, SetWeight, check_base_url, command,
};

/// How long a change may take to be applied here before the caller gets a 504.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(RAFT_MESSAGES, web::post().to(messages))
        .route(RAFT_INFO, web::get().to(info))
        .route(RAFT_MEMBERS, web::get().to(members))
        .route(RAFT_JOIN, web::post().to(join))
        .route(RAFT_REMOVE, web::post().to(remove))
        .route(RAFT_COMMAND, web::post().to(command));
}

fn raft(state: &AppState) -> Result<Addr<RaftActor>, ApiError> {
    state.raft.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_raft",
            "this node does not run Raft membership",
        )
    })
}

fn unavailable(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "raft_unavailable",
        what.to_owned(),
    )
}

/// A JSON body, or 400 `bad_body` with serde's reason.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request("bad_body", e.to_string()))
}

fn caller_cluster(req: &HttpRequest) -> String {
    req.headers()
        .get(CLUSTER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn messages(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let raft = raft(&state)?;
    let batch: RaftBatch = prost::Message::decode(body)
        .map_err(|e| ApiError::bad_request("bad_batch", e.to_string()))?;
    let msgs = batch
        .messages
        .iter()
        .map(|b| RaftMessage::parse_from_bytes(b))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request("bad_message", e.to_string()))?;
    raft.try_send(Step {
        messages: msgs,
        from_url: batch.from_url,
        cluster_id: batch.cluster_id,
        from_ip: req.peer_addr().map(|a| a.ip()),
    })
    .map_err(|_| unavailable("raft mailbox full"))?;
    Ok(HttpResponse::NoContent().finish())
}

async fn info(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut status = raft(&state)?
        .send(Status)
        .await
        .map_err(|_| unavailable("raft stopped"))?;
    status.groups_digest = state.digest.mine().to_owned();
    Ok(HttpResponse::Ok().json(status))
}

/// The agreed ring, for frontends that follow it without taking part in Raft. A frontend
/// that names its peer port is remembered, for DELETEs.
async fn members(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut ring = raft(&state)?
        .send(RingMembersOf)
        .await
        .map_err(|_| unavailable("raft stopped"))?;
    ring.groups_digest = state.digest.mine().to_owned();
    let frontend = req
        .headers()
        .get(FRONTEND_HEADER)
        .and_then(|v| v.to_str().ok());
    if let Some(url) = frontend
        && check_base_url("frontend", url).is_ok()
    {
        state.cache.frontends.record(url);
    }
    Ok(HttpResponse::Ok().json(ring))
}

/// Maps the outcome of a change to its answer.
fn answer(result: Result<u64, ChangeError>) -> HttpResponse {
    let e = match result {
        Ok(epoch) => return HttpResponse::Ok().json(json!({"epoch": epoch})),
        Err(ChangeError::NotLeader(leader)) => {
            return HttpResponse::build(StatusCode::MISDIRECTED_REQUEST).json(json!({
                "error": "not_leader",
                "message": "this node is not the Raft leader; send the change to `leader`",
                "leader": leader,
            }));
        }
        Err(ChangeError::Invalid(e @ Invalid::UnknownMember(_))) => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_member", e.to_string())
        }
        Err(ChangeError::Invalid(e)) => ApiError::bad_request(e.code(), e.to_string()),
        Err(ChangeError::ForeignCluster { ours, theirs }) => ApiError::new(
            StatusCode::CONFLICT,
            "cluster_mismatch",
            format!(
                "this is cluster {ours}; the caller belongs to cluster {theirs} \
                 (its data dir is from another cluster: start it with an empty --data-dir to join this one)"
            ),
        ),
        Err(ChangeError::Failed(e)) => unavailable(&e),
    };
    e.error_response()
}

async fn change(
    send: impl FnOnce(oneshot::Sender<Result<u64, ChangeError>>) -> bool,
) -> Result<HttpResponse, ApiError> {
    let (tx, rx) = oneshot::channel();
    if !send(tx) {
        return Err(unavailable("raft mailbox full"));
    }
    match tokio::time::timeout(CHANGE_TIMEOUT, rx).await {
        Ok(Ok(result)) => Ok(answer(result)),
        Ok(Err(_)) | Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "change_timeout",
            "the change was not applied within 10 s",
        )),
    }
}

async fn join(
    req: HttpRequest,
    bytes: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let raft = raft(&state)?;
    let info: MemberInfo = body(&bytes)?;
    let cluster_id = caller_cluster(&req);
    change(move |reply| {
        raft.try_send(AddMember {
            info,
            cluster_id,
            reply,
        })
        .is_ok()
    })
    .await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveBody {
    id: u64,
}

async fn remove(
    req: HttpRequest,
    bytes: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let raft = raft(&state)?;
    let RemoveBody { id } = body(&bytes)?;
    let cluster_id = caller_cluster(&req);
    change(move |reply| {
        raft.try_send(RemoveMember {
            id,
            cluster_id,
            reply,
        })
        .is_ok()
    })
    .await
}

/// `{"set_weight": {"id": N, "weight": W}}` or `{"purge_group": "products"}`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum CommandBody {
    SetWeight { id: u64, weight: u32 },
    PurgeGroup(String),
}

/// `POST /_raft/command`'s body as the command it proposes.
pub fn command_from_json(bytes: &[u8]) -> Result<RingCommand, ApiError> {
    let op = match body(bytes)? {
        CommandBody::SetWeight { id, weight } => command::Op::SetWeight(SetWeight { id, weight }),
        CommandBody::PurgeGroup(group) => command::Op::PurgeGroup(PurgeGroup { group }),
    };
    Ok(RingCommand { op: Some(op) })
}

async fn command(
    req: HttpRequest,
    bytes: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let raft = raft(&state)?;
    let command = command_from_json(&bytes)?;
    if let Some(command::Op::PurgeGroup(PurgeGroup { group })) = &command.op {
        // The log checks the name; only this node's config knows which groups exist.
        state.group(group)?;
    }
    let cluster_id = caller_cluster(&req);
    change(move |reply| {
        raft.try_send(Propose {
            command,
            cluster_id,
            reply,
        })
        .is_ok()
    })
    .await
}
