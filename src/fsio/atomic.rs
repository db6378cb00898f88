//! The atomic writer. Every write goes to a temporary file in the target's directory that
//! only the owner can read, is flushed to disk, given its owner and exact mode, and renamed
//! over the target, after which the directory is flushed too. A reader opening the path at
//! any moment sees a whole file, old or new; a crash leaves either, never a mix.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{File, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Mode the temporary file is created with, before it gets the target's exact mode: owner
/// only, so no one else can read the token during the write, whatever the target mode is.
const TEMP_MODE: u32 = 0o600;

/// A file the writer could not write, flush or remove, or a path it cannot write to.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{op} {path}", path = path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no parent directory or file name", path = .0.display())]
    BadPath(PathBuf),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FileError + 'a {
    move |source| FileError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where [`write_atomic`] puts a file: its path and exact mode, and its owner and group when
/// they are to be other than the daemon's.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub path: &'a Path,
    /// Permission bits, e.g. 0o640.
    pub mode: u32,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

/// Directories already listed for stale temporary files, with the stale ones still to remove.
/// Only a previous process can leave a stale temporary file (this one removes its own when a
/// write fails), so one listing per directory, taken before this process writes there, finds
/// them all. Listing once instead of once per set keeps a start with 10,000 files in one
/// directory linear instead of quadratic (10,000 listings of 10,000 names each).
static LISTED: std::sync::Mutex<Option<HashMap<PathBuf, Vec<OsString>>>> =
    std::sync::Mutex::new(None);

/// Whether [`remove_stale_temps`] for `path` has anything left to do: false once its directory
/// has been listed and no stale file of this target was found, so the caller can skip a trip
/// to the blocking pool.
pub fn stale_temps_pending(path: &Path) -> bool {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return false;
    };
    let listed = LISTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match listed.as_ref().and_then(|m| m.get(dir)) {
        None => true,
        Some(stale) => stale.iter().any(|n| is_temp_of(n, name)),
    }
}

/// `.NAME.RANDOM.tmp`: a temporary file [`write_atomic`] makes for `NAME`.
pub fn is_temp_of(candidate: &std::ffi::OsStr, name: &std::ffi::OsStr) -> bool {
    let c = candidate.to_string_lossy();
    let prefix = format!(".{}.", name.to_string_lossy());
    c.starts_with(&prefix) && c.ends_with(".tmp")
}

/// Remove temporary files that a killed writer left behind for this target.
pub fn remove_stale_temps(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let mut listed = LISTED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let stale = listed
        .get_or_insert_with(HashMap::new)
        .entry(dir.to_path_buf())
        .or_insert_with(|| {
            // Every dot-name ending in .tmp: candidates for any target in this directory.
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.file_name())
                        .filter(|n| {
                            let n = n.to_string_lossy();
                            n.starts_with('.') && n.ends_with(".tmp")
                        })
                        .collect()
                })
                .unwrap_or_default()
        });
    stale.retain(|n| {
        if is_temp_of(n, name) {
            let _ = std::fs::remove_file(dir.join(n));
            false
        } else {
            true
        }
    });
}

/// Atomically replace `path` with `contents` at exactly `mode`, owned by us: the journal,
/// state files, the status file and metrics go through here like the token files.
pub fn write_file(path: &Path, mode: u32, contents: &[u8]) -> Result<(), FileError> {
    write_atomic(&own_file(path, mode), contents)
}

/// One of the daemon's own files: owned by the daemon's user.
fn own_file(path: &Path, mode: u32) -> Target<'_> {
    Target {
        path,
        mode,
        owner: None,
        group: None,
    }
}

/// Atomically replace `file.path` with `contents`, with the exact mode and owner.
pub fn write_atomic(file: &Target<'_>, contents: &[u8]) -> Result<(), FileError> {
    write_atomic_with(file, Durability::Durable, |w| w.write_all(contents))
}

/// Replace `path` atomically with what `fill` writes, piece by piece through a buffer of
/// [`STREAM_BUFFER_BYTES`], and without `fsync`: for a file that says how things are and is
/// rewritten every few seconds (the status file), whose loss in a power cut costs nothing,
/// since the daemon that wrote it is gone too. Streamed because the status file of 10,000
/// sets is several MiB of JSON, which serialized whole first was the largest single
/// allocation of a stop; unsynced because the two `fsync`s were most of an idle daemon's
/// wake-ups. Not for secrets: the buffer is not zeroed.
pub fn write_advisory_file(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), FileError> {
    write_atomic_with(&own_file(path, mode), Durability::Advisory, |w| {
        let mut buffered = std::io::BufWriter::with_capacity(STREAM_BUFFER_BYTES, w);
        fill(&mut buffered)?;
        buffered.flush()
    })
}

/// What [`write_advisory_file`] buffers: large enough that a multi-MiB file takes few
/// `write`s, small next to the file.
const STREAM_BUFFER_BYTES: usize = 64 * 1024;

/// Whether a replaced file must survive a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The file and the rename are flushed before the write returns: tokens, the journal.
    Durable,
    /// Atomic (a reader sees the old file or the new), but not flushed: also what a token
    /// file on a tmpfs gets, where a flush means nothing.
    Advisory,
}

/// Replace `file.path` atomically with what `fill` writes, flushed as `durability` says.
pub fn write_atomic_with(
    file: &Target<'_>,
    durability: Durability,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), FileError> {
    let path = file.path;
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (d, n),
        _ => return Err(FileError::BadPath(path.to_path_buf())),
    };
    let mut tmp = create_temp(dir, name)?;
    let tmp_path = tmp.path().to_path_buf();
    fill(tmp.as_file_mut()).map_err(io("write", &tmp_path))?;
    let f: &File = tmp.as_file();
    if file.owner.is_some() || file.group.is_some() {
        std::os::unix::fs::fchown(f, file.owner, file.group).map_err(io("chown", &tmp_path))?;
    }
    // fchmod after fchown: chown may clear mode bits, and the umask never touches fchmod.
    f.set_permissions(Permissions::from_mode(file.mode))
        .map_err(io("set the mode of", &tmp_path))?;
    let flush = durability == Durability::Durable && can_flush(dir);
    if flush {
        flushed(dir);
        f.sync_all().map_err(io("fsync", &tmp_path))?;
    }
    tmp.persist(path)
        .map_err(|e| io("rename a temporary file over", path)(e.error))?;
    if flush { sync_dir(dir) } else { Ok(()) }
}

/// Whether flushing a file or a rename in `dir` means anything. A tmpfs has no device to
/// flush to (its `fsync` returns at once) and loses everything in a power cut anyway, so a
/// token file there (under `/run`, where the unit puts them) skips the `fsync` of the file
/// and the open, `fsync` and close of its directory: four system calls a write and three a
/// removal, for nothing.
fn can_flush(dir: &Path) -> bool {
    !in_memory(dir)
}

/// Whether `dir` is on a tmpfs, the file system that lives in memory. Asked at each
/// operation rather than once: a mount may come or go under a long-running daemon, and the
/// `statfs` costs a microsecond.
pub fn in_memory(dir: &Path) -> bool {
    use nix::sys::statfs::{TMPFS_MAGIC, statfs};
    statfs(dir).is_ok_and(|fs| fs.filesystem_type() == TMPFS_MAGIC)
}

/// The flushes made in each directory, for the tests that check when they are skipped: by
/// directory, since a write may run on any thread of the blocking pool.
#[cfg(test)]
static FLUSHES: std::sync::Mutex<Option<HashMap<PathBuf, usize>>> = std::sync::Mutex::new(None);

fn flushed(_dir: &Path) {
    #[cfg(test)]
    {
        let mut counts = FLUSHES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts
            .get_or_insert_with(HashMap::new)
            .entry(_dir.to_path_buf())
            .or_default() += 1;
    }
}

/// How many flushes were made in `dir` so far.
#[cfg(test)]
pub(crate) fn flushes_in(dir: &Path) -> usize {
    FLUSHES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .and_then(|m| m.get(dir).copied())
        .unwrap_or(0)
}

/// What a failure to make the temporary file beside a target is called in its error.
pub const CREATE_TEMP: &str = "create a temporary file in";

/// The temporary file a write starts with: next to the target (so the rename is atomic),
/// with a random name opened exclusively (so nobody can plant it), readable by the owner only.
pub(super) fn create_temp(
    dir: &Path,
    name: &std::ffi::OsStr,
) -> Result<tempfile::NamedTempFile, FileError> {
    tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .permissions(Permissions::from_mode(TEMP_MODE))
        .tempfile_in(dir)
        .map_err(io(CREATE_TEMP, dir))
}

/// Remove a file; a file that is already gone is fine.
pub fn remove(path: &Path) -> Result<(), FileError> {
    remove_with(path, Durability::Durable)
}

/// [`remove`], told whether the removal must be flushed: a caller that has just asked
/// whether the directory is on a tmpfs (`Advisory`) spares the second `statfs`.
pub fn remove_with(path: &Path, durability: Durability) -> Result<(), FileError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("remove", path)(e)),
    }
    match path.parent() {
        Some(dir) if durability == Durability::Durable && can_flush(dir) => sync_dir(dir),
        _ => Ok(()),
    }
}

/// Flush a directory so a rename or unlink in it survives a power cut.
fn sync_dir(dir: &Path) -> Result<(), FileError> {
    flushed(dir);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}
