//! Operations endpoints on the client port: `/health`, `/ready`, `/metrics`.

use actix_web::{HttpResponse, web};

use super::{AppState, get_resource};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(get_resource("/health", health))
        .service(get_resource("/ready", ready))
        .service(get_resource("/metrics", metrics));
}

/// The process is alive and its HTTP workers answer.
async fn health() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Able to serve: started, not draining.
async fn ready(state: web::Data<AppState>) -> HttpResponse {
    match state.health.not_ready_reason() {
        None => HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n"),
        Some(why) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("not ready: {why}\n")),
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state.metrics.run_upkeep();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
