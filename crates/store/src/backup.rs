//! Backups of a running single node, and putting one back.
//!
//! redb has no backup call. A consistent snapshot is one read transaction copying every table
//! into a new file: a read transaction sees the database as of one commit and never blocks the
//! writer (redb keeps the pages it reads until it ends; a long one only delays reusing them), so
//! the service goes on writing while the copy runs, and the snapshot holds every write that was
//! acknowledged before the backup began (an acknowledged write is a durable commit).
//!
//! A PostgreSQL store is backed up with the database's own tools (`pg_dump`, `pg_basebackup`).

use std::path::{Path, PathBuf};

use redb::{Database, ReadTransaction, ReadableDatabase, TableDefinition, TableHandle, WriteTransaction};

use crate::error::{storage, Error, Result};
use crate::master::MasterKey;
use crate::store::Store;

/// What a backup or a restore produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The file written.
    pub path: PathBuf,
    /// The last change-log number the snapshot holds: revocations numbered after it (on a source
    /// that went on serving) are not in it.
    pub last_change: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Copy one table of the read transaction `from` into `to`, row by row as stored; its name, or
/// `None` when the source has no such table (an older schema).
pub(crate) fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<Option<String>> {
    let source = match from.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(storage(e)),
    };
    let mut target = to.open_table(def).map_err(storage)?;
    for row in source.range::<K::SelfType<'_>>(..).map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        target.insert(k.value(), v.value()).map_err(storage)?;
    }
    Ok(Some(def.name().to_owned()))
}

/// What the backend's copy of every table gives: the names it copied and the last change number.
pub(crate) type Copied = (Vec<String>, u64);

/// Write a snapshot of `db` to a new file at `path`: one read transaction, `copy` copying every
/// table into the new file's one write transaction. The file appears under its name only once
/// complete and durable (written beside it, then renamed); an existing file is never replaced.
/// A table in the source that `copy` did not copy fails the backup (a table added to the schema
/// but not to the backup would otherwise be silently lost).
pub(crate) fn snapshot(
    db: &Database,
    path: &Path,
    copy: impl FnOnce(&ReadTransaction, &WriteTransaction) -> Result<Copied>,
) -> Result<u64> {
    let io = |source| Error::Io { path: path.display().to_string(), source };
    if path.exists() {
        return Err(io(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "the backup file exists")));
    }
    // First: from here on the snapshot holds every commit acknowledged so far.
    let read = db.begin_read().map_err(storage)?;
    let partial = partial_path(path);
    let result = (|| {
        // An empty file made private first: redb initializes an empty file as a new database.
        drop(create_private(&partial)?);
        let out = Database::create(&partial).map_err(storage)?;
        let write = out.begin_write().map_err(storage)?;
        let (copied, last) = copy(&read, &write)?;
        for table in read.list_tables().map_err(storage)? {
            if !copied.iter().any(|c| c == table.name()) {
                return Err(Error::Corrupt(format!("table {} is not known to the backup", table.name())));
            }
        }
        write.commit().map_err(storage)?;
        drop(out);
        Ok(last)
    })();
    drop(read);
    match result {
        Ok(last) => {
            std::fs::rename(&partial, path).map_err(io)?;
            sync_dir(path);
            Ok(last)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// How a snapshot written into a data directory is named: `.backup-` (a hidden file), 32
/// lowercase hex digits, `.redb`.
const SNAPSHOT_PREFIX: &str = ".backup-";
const SNAPSHOT_SUFFIX: &str = ".redb";
const PARTIAL_SUFFIX: &str = ".partial";

/// A new, unused name for a snapshot in the directory `dir`: `.backup-<32 hex digits>.redb`
/// (random). [`Store::backup_to`] writes it as `<that name>.partial` first;
/// [`remove_stale_snapshots`] recognises both names and no other.
pub fn snapshot_path_in(dir: &Path) -> Result<PathBuf> {
    let id = tessera_core::TokenId::generate().map_err(|e| Error::Corrupt(format!("no randomness: {e}")))?;
    Ok(dir.join(format!("{SNAPSHOT_PREFIX}{id}{SNAPSHOT_SUFFIX}")))
}

/// Whether `name` is exactly a name [`snapshot_path_in`] gives, or that name with `.partial`.
fn is_snapshot_name(name: &str) -> bool {
    let name = name.strip_suffix(PARTIAL_SUFFIX).unwrap_or(name);
    let Some(id) = name.strip_prefix(SNAPSHOT_PREFIX).and_then(|n| n.strip_suffix(SNAPSHOT_SUFFIX)) else {
        return false;
    };
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Remove what a backup that never finished left in `dir`: regular files (not symbolic links,
/// not directories) named exactly as [`snapshot_path_in`] names them, with or without
/// `.partial`. Nothing else in `dir` is touched. Call it only while no backup into `dir` can be
/// running (at start, holding the database's lock). Returns the paths removed.
pub fn remove_stale_snapshots(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| Error::Io { path: p, source }
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        if !entry.file_name().to_str().is_some_and(is_snapshot_name) {
            continue;
        }
        let path = entry.path();
        // `file_type` does not follow a symbolic link.
        if !entry.file_type().map_err(io(&path))?.is_file() {
            continue;
        }
        std::fs::remove_file(&path).map_err(io(&path))?;
        removed.push(path);
    }
    if !removed.is_empty() {
        sync_dir(&dir.join("."));
    }
    Ok(removed)
}

/// `<path>.partial`: where a file is written before it takes its name.
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(PARTIAL_SUFFIX);
    path.with_file_name(name)
}

/// A new file readable by its owner only (it holds sealed secrets and every record).
fn create_private(path: &Path) -> Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(|source| Error::Io { path: path.display().to_string(), source })
}

/// Make a rename durable (best effort: not every platform can sync a directory).
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

impl Store {
    /// A consistent snapshot of this store, taken while it serves, written to a new file at
    /// `path` (which must not exist). Writes go on during the copy; the snapshot holds every
    /// write acknowledged before the call began, opens with the same master key, and is a
    /// complete embedded database (`tessera restore` puts it back).
    ///
    /// Only the embedded store: a PostgreSQL store answers [`Error::Unsupported`] (back it up
    /// with `pg_dump` or `pg_basebackup`).
    pub fn backup_to(&self, path: impl AsRef<Path>) -> Result<Snapshot> {
        let path = path.as_ref();
        let last_change = self.inner.backend.backup_to(path)?;
        let bytes = std::fs::metadata(path)
            .map_err(|source| Error::Io { path: path.display().to_string(), source })?
            .len();
        Ok(Snapshot { path: path.to_owned(), last_change, bytes })
    }
}

/// Put the snapshot `from` back as the database `target`, with the service stopped.
///
/// The snapshot is never written to: it is copied to `<target>.partial`, and the copy is what is
/// checked (an existing Tessera database, opened without being created, with the master key and
/// at least one root key; a schema upgrade happens in the copy) and then renamed over the target.
/// Anything else (an empty file, another file, a wrong master key) is refused and the target is
/// not touched. A target whose lock is held (a running service) is refused with
/// [`Error::InUse`]. An existing target is not deleted: it is kept under a new name,
/// `<target>.replaced-<seconds since the epoch>[-<n>]`, never replacing an earlier one. Returns
/// the restored file's description; revocations made on the source after the snapshot
/// (numbered after its `last_change`) are not in it.
pub fn restore(from: &Path, target: &Path, master: &MasterKey) -> Result<Snapshot> {
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| Error::Io { path: p, source }
    };
    if !from.is_file() {
        return Err(io(from)(std::io::Error::new(std::io::ErrorKind::NotFound, "no snapshot file")));
    }
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let partial = partial_path(target);
    {
        let mut out = create_private(&partial)?;
        let mut src = std::fs::File::open(from).map_err(io(from))?;
        std::io::copy(&mut src, &mut out).map_err(io(&partial))?;
        out.sync_all().map_err(io(&partial))?;
    }
    let last_change = match check_copy(from, &partial, master) {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    // Refuse a target a running service holds; keep holding its lock while it is replaced.
    let lock = if target.exists() {
        match Database::open(target) {
            Ok(db) => Some(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(Error::InUse(target.display().to_string()))
            }
            // A damaged target is what a restore is for: it is set aside below.
            Err(_) => None,
        }
    } else {
        None
    };
    if target.exists() {
        // A hard link fails rather than replace a name already there: two restores within one
        // second keep both earlier databases.
        let secs = crate::store::now_ms() / 1000;
        let mut n = 0u32;
        loop {
            let mut aside = target.file_name().map(|n| n.to_os_string()).unwrap_or_default();
            aside.push(format!(".replaced-{secs}"));
            if n > 0 {
                aside.push(format!("-{n}"));
            }
            match std::fs::hard_link(target, target.with_file_name(aside)) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => n += 1,
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(io(target)(e));
                }
            }
        }
    }
    std::fs::rename(&partial, target).map_err(io(target))?;
    sync_dir(target);
    drop(lock);
    let bytes = std::fs::metadata(target).map_err(io(target))?.len();
    Ok(Snapshot { path: target.to_owned(), last_change, bytes })
}

/// Check the copy of a snapshot: an existing redb database (opened without create: an empty or
/// foreign file is refused, not initialised), that opens as a store with the master key (its
/// schema upgraded in the copy) and holds at least one root key. Returns its last change number.
fn check_copy(from: &Path, copy: &Path, master: &MasterKey) -> Result<u64> {
    let not_a_snapshot =
        |why: &str| Error::Corrupt(format!("{} is not a Tessera snapshot: {why}", from.display()));
    drop(Database::open(copy).map_err(|e| not_a_snapshot(&e.to_string()))?);
    let store = Store::open(copy, master.clone())?;
    if store.list_keys()?.is_empty() {
        return Err(not_a_snapshot("it holds no root key"));
    }
    Ok(store.last_applied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_names_a_snapshot_is_given_are_snapshot_names() {
        let dir = Path::new("/data");
        let path = snapshot_path_in(dir).unwrap();
        assert_eq!(path.parent(), Some(dir));
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(is_snapshot_name(&name), "{name}");
        let partial = partial_path(&path);
        assert!(is_snapshot_name(partial.file_name().unwrap().to_str().unwrap()));
        let id = &name[".backup-".len()..name.len() - ".redb".len()];
        for other in [
            format!("{name}.partial.partial"),
            format!("{name}x"),
            format!("x{name}"),
            format!(".backup-{}.redb", id.to_uppercase()),
            format!(".backup-{}.redb", &id[1..]),
            format!(".backup-{id}0.redb"),
            format!(".backup-{}g.redb", &id[1..]),
            format!(".backup-{id}.redb.part"),
            ".backup-.redb.partial".into(),
            "tessera.redb.partial".into(),
        ] {
            assert!(!is_snapshot_name(&other), "{other}");
        }
        assert_ne!(snapshot_path_in(dir).unwrap(), path, "names are random");
    }
}
