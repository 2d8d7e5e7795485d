//! The baseline for `make bench-http`: an actix-web server, built like Tessera's (same actix
//! features, release profile, worker count), whose endpoints do no work:
//! `GET /constant` returns a constant; `POST /parse` parses a JSON body and returns a constant.
//!
//! Usage: `constant_server ADDR WORKERS` (prints `listening on ADDR`).

#![allow(clippy::unwrap_used)] // a benchmark helper: fail loudly

use actix_web::{web, App, HttpResponse, HttpServer};

#[derive(serde::Deserialize)]
#[allow(dead_code)] // parsed only to cost what a real handler's parsing costs
struct Body {
    token: String,
    #[serde(default)]
    context: serde_json::Map<String, serde_json::Value>,
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(2);
    let listener = std::net::TcpListener::bind(&addr)?;
    println!("listening on {}", listener.local_addr()?);
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(|| {
            App::new()
                .route("/constant", web::get().to(|| async { HttpResponse::Ok().body("{\"ok\":true}") }))
                .route(
                    "/parse",
                    web::post().to(|b: web::Json<Body>| async move {
                        std::hint::black_box(&b.token);
                        HttpResponse::Ok().body("{\"ok\":true}")
                    }),
                )
        })
        .workers(workers)
        .listen(listener)?
        .run()
        .await
    })
}
