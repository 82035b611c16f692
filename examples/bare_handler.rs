//! The benchmark's baseline: a bare actix-web 4 handler returning a fixed 100-byte body.
//!
//! `cargo run --release --example bare_handler -- 127.0.0.1:9100 [workers]`

use actix_web::{App, HttpResponse, HttpServer, web};

static BODY: [u8; 100] = [b'x'; 100];

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9100".into());
    let workers = args.next().and_then(|w| w.parse().ok()).unwrap_or(2);
    HttpServer::new(|| {
        App::new().route(
            "/api",
            web::get().to(|| async {
                HttpResponse::Ok()
                    .content_type("application/octet-stream")
                    .body(&BODY[..])
            }),
        )
    })
    .workers(workers)
    .bind(addr)?
    .run()
    .await
}
