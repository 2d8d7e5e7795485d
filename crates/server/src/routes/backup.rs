//! `POST /v1/backup`: a consistent snapshot of a running single node's database, streamed to
//! the caller (admin only, operation `store.backup` on `store`).
//!
//! The snapshot is one read transaction of the embedded database copied into a new file (see
//! `tessera_store::Store::backup_to`): writes go on meanwhile, and the file holds every write
//! acknowledged before the request began. It is written beside the database (where there is
//! room for a copy of it), unlinked as soon as it is open, and streamed with its length; the
//! node keeps nothing once the answer ends, and takes one backup at a time (409 for another).
//!
//! The answer has deadlines (`--backup-timeout` in all, `--backup-stall-timeout` for the client to
//! take each next 64 KiB): past either, the stream is cut (the connection is shut down, so the
//! client sees fewer bytes than announced) and the one backup place is free again. Without them a
//! client that stopped reading held the place, and the unlinked snapshot's disk space, forever.
//!
//! A cluster's PostgreSQL store is backed up with the database's own tools: 409 saying so.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::http::auth::authorize;
use crate::http::blocking;
use crate::http::conn::Connection;
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
        let path = tessera_store::snapshot_path_in(&st.config.data_dir).map_err(ApiError::internal)?;
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
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(AHEAD);
    let cut = Arc::new(AtomicBool::new(false));
    let pump = Pump {
        file,
        tx,
        cut: cut.clone(),
        socket: req.conn_data::<std::rc::Rc<Connection>>().and_then(|c| c.handle()),
        until: Instant::now() + state.config.backup_timeout,
        stall: state.config.backup_stall_timeout,
        _running: running,
    };
    // A plain thread reads the file: the async workers never wait on the disk.
    let reader = std::thread::Builder::new()
        .name("tessera-backup".into())
        .spawn(move || pump.run())
        .map_err(ApiError::internal)?
        .thread()
        .clone();
    let mut taker = Taker { rx, reader };
    let body = futures_util::stream::poll_fn(move |cx| {
        let Taker { rx, reader } = &mut taker;
        if cut.load(Ordering::Acquire) {
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the backup took longer than its deadline",
            ))));
        }
        let next = rx.poll_recv(cx);
        if next.is_ready() {
            reader.unpark(); // room for the next chunk
        }
        next
    });
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

/// The answer's side of the channel. Dropped when the answer ends, also when the client left
/// early: the channel is closed and the reading thread woken, so it ends (and gives the backup
/// place back) at once rather than at its stall deadline.
struct Taker {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    reader: std::thread::Thread,
}

impl Drop for Taker {
    fn drop(&mut self) {
        self.rx.close();
        self.reader.unpark();
    }
}

/// The reading side of one backup's answer, on its own thread: the snapshot read chunk by chunk
/// into the answer's channel, under the answer's deadlines.
struct Pump {
    file: std::fs::File,
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    /// Set when a deadline passed: the answer's stream ends with an error at its next poll.
    cut: Arc<AtomicBool>,
    /// The connection's socket (none in in-process tests), shut down when a deadline passed.
    socket: Option<socket2::Socket>,
    /// When the whole answer must have been taken.
    until: Instant,
    /// How long the client may take to make room for the next chunk.
    stall: Duration,
    /// The backup place, given back when the pump ends, however it ends.
    _running: Running,
}

impl Pump {
    fn run(mut self) {
        loop {
            let mut buf = vec![0u8; CHUNK];
            let item = match self.file.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    Ok(Bytes::from(buf))
                }
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if !self.send(item) || failed {
                return;
            }
        }
    }

    /// Hand `item` to the answer, waiting while the client has not taken the earlier ones (the
    /// answer's stream unparks this thread each time it takes one). False when the client went
    /// away or a deadline passed (then the answer is cut).
    fn send(&mut self, mut item: std::io::Result<Bytes>) -> bool {
        let stalled = Instant::now() + self.stall;
        loop {
            let now = Instant::now();
            if now >= self.until || now >= stalled {
                self.cut(now >= self.until);
                return false;
            }
            match self.tx.try_send(item) {
                Ok(()) => return true,
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return false,
                Err(tokio::sync::mpsc::error::TrySendError::Full(back)) => {
                    item = back;
                    std::thread::park_timeout(self.until.min(stalled).saturating_duration_since(now));
                }
            }
        }
    }

    fn cut(&self, whole: bool) {
        self.cut.store(true, Ordering::Release);
        if let Some(socket) = &self.socket {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
        tracing::warn!(
            deadline = if whole { "--backup-timeout" } else { "--backup-stall-timeout" },
            "a backup's answer was cut: the client did not take it in time"
        );
    }
}
