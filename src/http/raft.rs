//! Raft transport and membership endpoints on the peer port (behind the peer secret):
//! `POST /_raft/messages`, `GET /_raft/info`, `GET /_raft/members`, `POST /_raft/join`,
//! `POST /_raft/remove`.

use std::time::Duration;

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use protobuf::Message as PbMessage;
use raft::prelude::Message as RaftMessage;
use serde_json::json;
use tokio::sync::oneshot;

use super::AppState;
use super::peer::authorize;
use crate::actors::raft::{ChangeError, Join, Propose, RaftActor, RaftBatch, Remove, Status, Step};
use crate::error::ApiError;
use crate::groups::Group;
use crate::raft::membership::MemberInfo;
use crate::raft::membership::{Command, PurgeGroup, SetWeight, command};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/_raft/messages", web::post().to(messages))
        .route("/_raft/info", web::get().to(info))
        .route("/_raft/members", web::get().to(members))
        .route("/_raft/join", web::post().to(join))
        .route("/_raft/remove", web::post().to(remove))
        .route("/_raft/command", web::post().to(command));
}

fn raft(req: &HttpRequest, state: &AppState) -> Result<Addr<RaftActor>, ApiError> {
    authorize(req, state.peer_secret.as_deref())?;
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

async fn messages(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let raft = raft(&req, &state)?;
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
    })
    .map_err(|_| unavailable("raft mailbox full"))?;
    Ok(HttpResponse::NoContent().finish())
}

async fn info(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let raft = raft(&req, &state)?;
    let status = raft
        .send(Status)
        .await
        .map_err(|_| unavailable("raft stopped"))?;
    Ok(HttpResponse::Ok().json(status))
}

/// The agreed ring, for frontends that follow it without taking part in Raft.
async fn members(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let raft = raft(&req, &state)?;
    let status = raft
        .send(Status)
        .await
        .map_err(|_| unavailable("raft stopped"))?;
    let members: Vec<&MemberInfo> = status.members.iter().map(|m| &m.info).collect();
    Ok(HttpResponse::Ok().json(json!({"epoch": status.epoch, "members": members})))
}

async fn change(
    raft: Addr<RaftActor>,
    send: impl FnOnce(oneshot::Sender<Result<u64, ChangeError>>) -> bool,
) -> Result<HttpResponse, ApiError> {
    let _ = raft;
    let (tx, rx) = oneshot::channel();
    if !send(tx) {
        return Err(unavailable("raft mailbox full"));
    }
    match tokio::time::timeout(Duration::from_secs(10), rx).await {
        Ok(Ok(Ok(epoch))) => Ok(HttpResponse::Ok().json(json!({"epoch": epoch}))),
        Ok(Ok(Err(ChangeError::NotLeader(leader)))) => {
            Ok(HttpResponse::build(StatusCode::MISDIRECTED_REQUEST)
                .json(json!({"error": "not_leader", "leader": leader})))
        }
        Ok(Ok(Err(ChangeError::Failed(e)))) => Err(unavailable(&e)),
        Ok(Err(_)) | Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "change_timeout",
            "the change was not applied within 10 s",
        )),
    }
}

async fn join(
    req: HttpRequest,
    body: web::Json<MemberInfo>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let raft = raft(&req, &state)?;
    let info = body.into_inner();
    if info.id == 0 || info.peer_url.is_empty() {
        return Err(ApiError::bad_request(
            "bad_member",
            "a member needs an id and a peer_url",
        ));
    }
    let addr = raft.clone();
    change(raft, move |reply| {
        addr.try_send(Join { info, reply }).is_ok()
    })
    .await
}

#[derive(serde::Deserialize)]
struct RemoveBody {
    id: u64,
}

async fn remove(
    req: HttpRequest,
    body: web::Json<RemoveBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let raft = raft(&req, &state)?;
    let id = body.id;
    let addr = raft.clone();
    change(raft, move |reply| {
        addr.try_send(Remove { id, reply }).is_ok()
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

async fn command(
    req: HttpRequest,
    body: web::Json<CommandBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let raft = raft(&req, &state)?;
    let op = match body.into_inner() {
        CommandBody::SetWeight { id, weight } if weight > 0 => {
            command::Op::SetWeight(SetWeight { id, weight })
        }
        CommandBody::SetWeight { .. } => {
            return Err(ApiError::bad_request(
                "bad_weight",
                "weight must be at least 1",
            ));
        }
        CommandBody::PurgeGroup(group) => {
            Group::parse(&group).ok_or_else(|| {
                ApiError::bad_request("unknown_group", format!("unknown group {group:?}"))
            })?;
            command::Op::PurgeGroup(PurgeGroup { group })
        }
    };
    let command = Command { op: Some(op) };
    let addr = raft.clone();
    change(raft, move |reply| {
        addr.try_send(Propose { command, reply }).is_ok()
    })
    .await
}
