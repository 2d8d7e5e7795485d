//! An actix-web service behind the guard, with the closure form: `GET` is `read`, anything else
//! `write`, the path (without its leading slash) is the resource.
//!
//!     TESSERA_URL=http://127.0.0.1:8080 cargo run -p tessera-guard --example actix_service
//!     curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:3001/docs/a

#![allow(missing_docs)]

use actix_web::{web, App, HttpMessage, HttpRequest, HttpServer};
use tessera_guard::actix::GuardMiddleware;
use tessera_guard::{Guard, Verified};

async fn hello(req: HttpRequest) -> String {
    let who = req.extensions().get::<Verified>().cloned();
    format!("hello {}\n", who.as_ref().and_then(Verified::subject).unwrap_or("?"))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let url = std::env::var("TESSERA_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let guard = Guard::with_closure(url, |r| {
        let op = if r.method == "GET" || r.method == "HEAD" { "read" } else { "write" };
        let path = r.target.split('?').next().unwrap_or_default();
        Some((op.to_owned(), path.trim_start_matches('/').to_owned()))
    })
    .build()
    .map_err(std::io::Error::other)?;
    println!("actix service on http://127.0.0.1:3001");
    HttpServer::new(move || {
        App::new().wrap(GuardMiddleware::new(guard.clone())).default_service(web::to(hello))
    })
    .bind("127.0.0.1:3001")?
    .run()
    .await
}
