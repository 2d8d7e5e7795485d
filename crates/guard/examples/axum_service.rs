//! An axum service behind the guard: `GET /files/...` needs a token that may `read` the path,
//! other methods `write`; `/health` is public. The handler answers with the verified subject.
//!
//!     TESSERA_URL=http://127.0.0.1:8080 cargo run -p tessera-guard --example axum_service
//!     curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:3000/files/report

#![allow(missing_docs)]

use axum::routing::{any, get};
use axum::{Extension, Router};
use tessera_guard::{Guard, GuardLayer, Policy, Verified};

const POLICY: &str = r#"
[[rule]]
host = "*"
prefix = "/files"

[[rule]]
host = "*"
prefix = "/health"
public = true
"#;

async fn files(Extension(who): Extension<Verified>) -> String {
    format!("hello {}, tid {}\n", who.subject().unwrap_or("?"), who.tid().unwrap_or("?"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("TESSERA_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let guard = Guard::with_policy(url, Policy::from_toml(POLICY)?).build()?;
    let app = Router::new()
        .route("/files/{*path}", any(files))
        .route("/health", get(|| async { "ok\n" }))
        .layer(GuardLayer::new(guard));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("axum service on http://127.0.0.1:3000");
    axum::serve(listener, app).await?;
    Ok(())
}
