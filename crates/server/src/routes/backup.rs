//! `POST /v1/backup`: a consistent snapshot of a running single node's database, streamed to
//! the caller (admin only, operation `store.backup` on `store`).
//!
//! The snapshot is one read transaction of the embedded database copied into a new file (see
//! `tessera_store::Store::backup_to`): writes go on meanwhile, and the file holds every write
//! acknowledged before the request began. It is written beside the database (where there is
//! room for a copy of it), unlinked as soon as it is open, and streamed with its length; the
//! node keeps nothing once the answer ends, and takes one backup at a time (409 for another).
//!
//! A cluster's PostgreSQL store is backed up with the database's own tools: 409 saying so.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::http::auth::authorize;
use crate::http::blocking;
use crate::http::problem::ApiError;
use crate::state::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Bytes read from the snapshot per chunk of the answer.
const CHUNK: usize = 64 * 1024;
/// Chunks read ahead of the client (the memory a slow client can hold: 4 × 64 KiB).
const AHEAD: usize = 4;

/// Whether a backup is running on this node (one at a time: each copies the whole database).
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Clears [`RUNNING`] when the backup's stream ends, however it ends.
struct Running;

impl Running {
    fn start() -> Option<Running> {
        RUNNING.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).ok().map(|_| Running)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::Release);
    }
}

pub(crate) async fn backup(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse> {
    authorize(&state, &req, "store.backup", None)?;
    if state.store.is_shared() {
        return Err(ApiError::conflict(
            "this node's store is a PostgreSQL database: back it up with pg_dump (or pg_basebackup), see docs/CLUSTER.md",
        ));
    }
    let running =
        Running::start().ok_or_else(|| ApiError::conflict("a backup of this node is already running"))?;
    let st = state.clone();
    let (file, snapshot) = blocking(move || {
        let name = format!(".backup-{}.redb", tessera_core::TokenId::generate().map_err(ApiError::internal)?);
        let path = st.config.data_dir.join(name);
        let snapshot = st.store.backup_to(&path).map_err(ApiError::from);
        // Open, then unlink: the node keeps nothing once the answer ends, even if it stops.
        let file = snapshot.as_ref().ok().map(|_| std::fs::File::open(&path));
        let _ = std::fs::remove_file(&path);
        let snapshot = snapshot?;
        let file =
            file.unwrap_or_else(|| Err(std::io::Error::other("no snapshot"))).map_err(ApiError::internal)?;
        Ok((file, snapshot))
    })
    .await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(AHEAD);
    // A plain thread reads the file: the async workers never wait on the disk.
    std::thread::Builder::new()
        .name("tessera-backup".into())
        .spawn(move || {
            let _running = running;
            let mut file = file;
            loop {
                let mut buf = vec![0u8; CHUNK];
                match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                            break; // the client went away
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        break;
                    }
                }
            }
        })
        .map_err(ApiError::internal)?;
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"tessera-{}.redb\"", snapshot.last_change),
        ))
        .insert_header(("Tessera-Last-Change", snapshot.last_change.to_string()))
        .no_chunking(snapshot.bytes)
        .streaming(body))
}
