//! The Unix socket's file: where it may be made, how it is made, and its removal.
//!
//! Whoever can connect to a trusted socket names client addresses, and whoever can put a file at
//! its path while the service is down can answer the proxy in its place; so the socket's place
//! is checked at start like OpenSSH checks a key file's: the directory and every directory above
//! it must be owned by this user or root, the directory must not be writable by others (sticky or
//! not: the sticky bit keeps others from removing a file, not from making one at a free path),
//! and no directory above it writable by others without the sticky bit. A directory its group may
//! write is warned about.
//!
//! The socket is bound, and given its mode, in a private directory (0700) beside the path, then
//! linked into place: setting the mode through the final path would follow a symbolic link put
//! there in between, and `link` (unlike `rename`) fails when something took the path meanwhile.
//! Private directories left by a process killed in between are removed at the next start.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

/// Queued connections not yet accepted on the socket (actix's default for TCP).
const BACKLOG: i32 = 2048;

/// The private directories' names: this, then four hex digits (short: the socket's address
/// holds 107 bytes, and the private path is 9 longer than its directory's).
const PRIVATE_PREFIX: &str = ".t";

/// The bound Unix socket and its file.
pub(crate) struct UnixSocket {
    /// The listening socket, for actix.
    pub(crate) listener: std::os::unix::net::UnixListener,
    /// Its file, removed when this is dropped (the end of `serve`, or a failed start).
    pub(crate) file: SocketFile,
}

/// A socket file this process made; dropping it removes the file if it is still that one (not a
/// file another process put at the path since).
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Where it is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours =
            std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove the socket file");
            }
        }
    }
}

/// Bind the Unix socket at `path` with permission bits `mode`. A socket file nobody listens on
/// (left by a process that died) is replaced; a socket another process listens on, or a path
/// that is anything but a socket, is refused, also when it appears while this one is being made.
/// The mode is set before the socket listens, so no connection is ever accepted under another.
pub(crate) fn bind_unix(path: &Path, mode: u32) -> Result<UnixSocket, String> {
    let shown = format!("unix:{}", path.display());
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    check_place(parent, &shown)?;
    sweep(parent);
    clear_stale(path, &shown)?;
    let long = |p: &Path| {
        let n = p.as_os_str().len();
        format!(
            "{shown}: the socket is made as {} first ({n} bytes), more than a socket address holds \
             (107 bytes on Linux): choose a directory of at most 98 bytes",
            p.display()
        )
    };
    SockAddr::unix(path).map_err(|_| long(path))?;
    // A fresh name (a few tries: `create` fails rather than reuse a directory that exists).
    let mut made_dir = None;
    for _ in 0..8 {
        let private = parent.join(format!("{PRIVATE_PREFIX}{:04x}", random_u32() & 0xffff));
        match std::fs::DirBuilder::new().mode(0o700).create(&private) {
            Ok(()) => {
                made_dir = Some(private);
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("{shown}: making a private directory beside the socket: {e}")),
        }
    }
    let private =
        made_dir.ok_or_else(|| format!("{shown}: no free name for a private directory beside the socket"))?;
    let made = private.join("s");
    let addr = match SockAddr::unix(&made) {
        Ok(a) => a,
        Err(_) => {
            let _ = std::fs::remove_dir(&private);
            return Err(long(&made));
        }
    };
    let bound = (|| -> Result<_, String> {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(|e| format!("{shown}: {e}"))?;
        socket.bind(&addr).map_err(|e| format!("{shown}: {e}"))?;
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{shown}: setting mode {mode:04o}: {e}"))?;
        let meta = std::fs::symlink_metadata(&made).map_err(|e| format!("{shown}: {e}"))?;
        // `link` fails when the path was taken meanwhile (`rename` would replace it).
        std::fs::hard_link(&made, path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "{shown}: something was put at the path while the socket was being made (another \
                 server starting?); not replacing it"
            ),
            _ => format!("{shown}: moving the socket into place: {e}"),
        })?;
        Ok((socket, meta))
    })();
    let _ = std::fs::remove_file(&made);
    let _ = std::fs::remove_dir(&private);
    let (socket, meta) = bound?;
    let file = SocketFile { path: path.to_owned(), dev: meta.dev(), ino: meta.ino() };
    socket.listen(BACKLOG).map_err(|e| format!("{shown}: {e}"))?;
    Ok(UnixSocket { listener: socket.into(), file })
}

/// A random number for the private directory's name (not a secret: the directory is made with
/// `create`, which fails rather than reuse what is there).
fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b) ^ std::process::id()
}

/// This process's user (the owner of `/proc/self`).
fn my_uid() -> Option<u32> {
    std::fs::metadata("/proc/self").ok().map(|m| m.uid())
}

/// Refuse a place where another user could replace the socket or put one of theirs there (see
/// the module's documentation); warn when the directory's group may write to it.
fn check_place(dir: &Path, shown: &str) -> Result<(), String> {
    let me = my_uid();
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{shown}: the socket's directory: {e}"))?;
    let refuse = |d: &Path, why: String| {
        Err(format!(
            "{shown}: {} {why}: another user could replace the socket; choose a directory only the \
             service's user (or root) owns and may write (DEPLOY.md)",
            d.display()
        ))
    };
    for (depth, d) in dir.ancestors().enumerate() {
        let meta = std::fs::metadata(d).map_err(|e| format!("{shown}: {}: {e}", d.display()))?;
        let mode = meta.permissions().mode();
        if meta.uid() != 0 && Some(meta.uid()) != me {
            return refuse(d, format!("belongs to user {}", meta.uid()));
        }
        let others_write = mode & 0o002 != 0;
        let sticky = mode & 0o1000 != 0;
        if depth == 0 && others_write {
            return refuse(d, format!("is writable by every user (mode {:04o})", mode & 0o7777));
        }
        if others_write && !sticky {
            return refuse(
                d,
                format!("is writable by every user without the sticky bit (mode {:04o})", mode & 0o7777),
            );
        }
        if depth == 0 && mode & 0o020 != 0 {
            tracing::warn!(
                directory = %d.display(),
                "the socket's directory is writable by its group: its members could put a socket of \
                 their own at the path while the service is down"
            );
        }
    }
    Ok(())
}

/// Remove private directories left beside the socket by a process killed while making it: this
/// user's, mode 0700, holding nothing but a socket nobody listens on.
fn sweep(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let me = my_uid();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_prefix(PRIVATE_PREFIX)) else { continue };
        if hex.len() != 4 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let d = entry.path();
        let ok = std::fs::symlink_metadata(&d)
            .is_ok_and(|m| m.is_dir() && Some(m.uid()) == me && m.permissions().mode() & 0o777 == 0o700);
        let only_s = std::fs::read_dir(&d).is_ok_and(|c| {
            let names: Vec<_> = c.flatten().map(|e| e.file_name()).collect();
            names.is_empty() || (names.len() == 1 && names[0] == "s")
        });
        let s = d.join("s");
        let dead = !s.exists()
            || matches!(std::os::unix::net::UnixStream::connect(&s), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
        if ok && only_s && dead {
            let _ = std::fs::remove_file(&s);
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// Make room at `path`: nothing there, or a socket file nobody listens on (removed).
fn clear_stale(path: &Path, shown: &str) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("{shown}: {e}")),
        Ok(meta) => meta,
    };
    if !meta.file_type().is_socket() {
        return Err(format!("{shown}: the path exists and is not a socket; not replacing it (remove it, or choose another path)"));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(format!(
            "{shown}: another server is listening on this socket (stop it, or choose another path)"
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path)
                .map_err(|e| format!("{shown}: removing the stale socket file: {e}"))?;
            tracing::warn!(path = %path.display(), "removed a socket file nobody listened on (left by an earlier run)");
            Ok(())
        }
        Err(e) => Err(format!(
            "{shown}: a socket file is there and connecting to it failed ({e}); not replacing it"
        )),
    }
}
