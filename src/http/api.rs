//! The client API: `GET /api?key=K[&group=G]` and `GET /api/{group}/{key}`.

use actix_web::{HttpRequest, HttpResponse, web};

use super::{AppState, get_resource, parse_group, value_response};
use crate::decode::{decode, query_pairs};
use crate::error::ApiError;
use crate::groups::Group;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get_resource("/api", by_query))
        .service(get_resource("/api/{group}/{key:.*}", by_path));
}

fn bad_query(message: String) -> ApiError {
    ApiError::bad_request("bad_query", message)
}

/// `GET /api?key=K[&group=G]`; the group defaults to `scores`, as in the seed.
async fn by_query(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(req.query_string()).map_err(|e| bad_query(e.to_string()))?;
    let (mut key, mut group) = (None, None);
    for (name, value) in pairs {
        let slot = match name.as_str() {
            "key" => &mut key,
            "group" => &mut group,
            other => return Err(bad_query(format!("unknown parameter {other:?}"))),
        };
        if slot.replace(value).is_some() {
            return Err(bad_query(format!("parameter {name:?} given twice")));
        }
    }
    let key = key.ok_or_else(|| bad_query("missing parameter \"key\"".into()))?;
    let group = match group {
        Some(name) => parse_group(&name)?,
        None => Group::Scores,
    };
    Ok(value_response(state.get(group, &key).await?))
}

/// `GET /api/{group}/{key}`: the key is the rest of the raw path, percent-decoded strictly
/// (so `%2F` and `/` both reach the key as `/`).
async fn by_path(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let rest = req.uri().path().strip_prefix("/api/").unwrap_or_default();
    let (group, key) = rest
        .split_once('/')
        .ok_or_else(|| ApiError::bad_request("bad_path", "expected /api/{group}/{key}"))?;
    let bad = |e: crate::decode::DecodeError| ApiError::bad_request("bad_path", e.to_string());
    let group = parse_group(&decode(group, false).map_err(bad)?)?;
    let key = decode(key, false).map_err(bad)?;
    Ok(value_response(state.get(group, &key).await?))
}
