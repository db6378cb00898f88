//! Token files: the formats, and the atomic writer.
//!
//! Every write goes to a temporary file in the target's directory that only the owner can read,
//! is flushed to disk, given its owner and exact mode, and renamed over the target, after which
//! the directory is flushed too. A reader opening the path at any moment sees a whole file,
//! old or new; a crash leaves either, never a mix.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{File, Permissions};
use std::future::Future;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use tracing::warn;
use zeroize::Zeroizing;

use crate::secret::Secret;

pub use template::{FileTemplate, MAX_TEMPLATE_BYTES, TemplateError, TemplateProblem};

mod template;

#[derive(Debug, Clone, PartialEq)]
pub struct FileConfig {
    pub path: PathBuf,
    pub format: FileFormat,
    /// Permission bits, e.g. 0o640.
    pub mode: u32,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileFormat {
    Raw,
    Json,
    Env,
    Header,
    /// Rendered from the operator's template (`file.template`).
    Template(std::sync::Arc<FileTemplate>),
}

/// Mode of a token directory we create: the owner writes, the consumers' group may list and
/// open files, others see nothing.
pub const DIR_MODE: u32 = 0o750;

/// Exact mode of `state_dir`: it holds live tokens, so only the daemon's user may enter.
pub const STATE_DIR_MODE: u32 = 0o700;

/// Mode the temporary file is created with, before it gets the target's exact mode: owner
/// only, so no one else can read the token during the write, whatever the target mode is.
const TEMP_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{op} {path}", path = path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no parent directory or file name", path = .0.display())]
    BadPath(PathBuf),
    #[error(transparent)]
    Template(#[from] TemplateError),
}

impl SinkError {
    /// Whether retrying soon can help. A template that failed to render fails the same way
    /// with the next token: issuing one a second only to revoke it would churn the
    /// provider's tokens, so it waits like a refused key, for the operator to fix it.
    pub fn lasts(&self) -> bool {
        matches!(self, SinkError::Template(_))
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SinkError + 'a {
    move |source| SinkError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What goes into a token file.
pub struct TokenContent<'a> {
    pub set: &'a str,
    pub token: &'a Secret,
    pub token_type: &'a str,
    pub expires_at: SystemTime,
    pub scope: &'a str,
}

#[derive(Serialize)]
struct JsonFile<'a> {
    access_token: &'a str,
    token_type: &'a str,
    expires_at: String,
    scope: &'a str,
    set: &'a str,
}

/// `orders-sync` → `ORDERS_SYNC`, the prefix of the `env` format's variables.
pub fn env_name(set: &str) -> String {
    set.to_ascii_uppercase().replace('-', "_")
}

/// The last second RFC 3339 can write (9999-12-31T23:59:59Z): humantime refuses later
/// times, and its `to_string` then panics.
const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

/// `t` brought into what RFC 3339 can write: from the epoch (humantime panics before it) to
/// the end of year 9999. Configured durations are bounded far inside this, so only a
/// bug or a corrupt clock gets here; a saturated time is still the safe answer, a panic not.
pub fn rfc3339_range(t: SystemTime) -> SystemTime {
    let last = std::time::UNIX_EPOCH + std::time::Duration::from_secs(LAST_RFC3339_SECOND);
    t.clamp(std::time::UNIX_EPOCH, last)
}

/// The file's bytes in `format`. The buffer is zeroed when dropped. Only a template can fail.
pub fn render(
    format: &FileFormat,
    c: &TokenContent<'_>,
) -> Result<Zeroizing<Vec<u8>>, TemplateError> {
    if let FileFormat::Template(t) = format {
        return t.render(c);
    }
    let expires = humantime::format_rfc3339_seconds(rfc3339_range(c.expires_at)).to_string();
    let token = c.token.expose();
    let mut out = Zeroizing::new(Vec::with_capacity(token.len() + 128));
    match format {
        FileFormat::Raw => out.extend_from_slice(token.as_bytes()),
        FileFormat::Json => {
            let doc = JsonFile {
                access_token: token,
                token_type: c.token_type,
                expires_at: expires,
                scope: c.scope,
                set: c.set,
            };
            // Serializing plain strings into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, &doc);
            out.push(b'\n');
        }
        FileFormat::Env => {
            let name = env_name(c.set);
            // Tokens are checked to be b64token characters (RFC 6750), so they need no quoting.
            let _ = write!(
                out,
                "{name}_TOKEN={token}\n{name}_TOKEN_EXPIRES_AT={expires}\n"
            );
        }
        FileFormat::Header => {
            let _ = writeln!(out, "Authorization: Bearer {token}");
        }
        FileFormat::Template(_) => {}
    }
    Ok(out)
}

/// What [`ensure_dir`] does with a directory that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Leave it as it is. A token file's directory may be one the operator made, or a shared
    /// one such as `/run` or `/tmp`, whose mode is not ours to change.
    Keep,
    /// Give it exactly the mode, tightening it if someone loosened it. Only for a directory
    /// that is ours alone, such as `state_dir`.
    SetMode,
}

/// A directory [`ensure_dir`] could not create or set the mode of.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}", path = path.display())]
pub struct DirError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl From<DirError> for SinkError {
    fn from(e: DirError) -> Self {
        SinkError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    }
}

/// Create `dir` and its missing parents, each with exactly `mode` whatever the umask; a `dir`
/// that exists already is kept or given `mode` as `existing` says, and parents that exist are
/// never touched. A symlink to a directory counts as that directory; anything else that is
/// not a directory (a file, a symlink to nothing) is an error naming it.
pub fn ensure_dir(dir: &Path, mode: u32, existing: Existing) -> Result<(), DirError> {
    let fail = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| DirError { op, path, source }
    };
    if !dir.is_dir() {
        // Create one level at a time so that each directory we make gets the exact mode,
        // which the umask would otherwise trim.
        // Up to the nearest directory, not the nearest existing path, so that a file on the
        // way is met by mkdir below and refused by name rather than failing a later step.
        let mut missing = Vec::new();
        let mut cur = Some(dir);
        while let Some(d) = cur {
            if d.is_dir() {
                break;
            }
            missing.push(d);
            cur = d.parent();
        }
        for d in missing.into_iter().rev() {
            match std::fs::DirBuilder::new().mode(mode).create(d) {
                Ok(()) => std::fs::set_permissions(d, Permissions::from_mode(mode))
                    .map_err(fail("set the mode of", d))?,
                // Made by someone else meanwhile: it exists now, and is treated as such.
                Err(e) if e.kind() == ErrorKind::AlreadyExists && d.is_dir() => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    return Err(fail("create directory", d)(std::io::Error::new(
                        ErrorKind::NotADirectory,
                        "it exists, and is neither a directory nor a symlink to one",
                    )));
                }
                Err(e) => return Err(fail("create directory", d)(e)),
            }
        }
    }
    if existing == Existing::SetMode {
        std::fs::set_permissions(dir, Permissions::from_mode(mode))
            .map_err(fail("set the mode of", dir))?;
    }
    Ok(())
}

/// Create the target's directory (and missing parents) with [`DIR_MODE`], exactly; an
/// existing one is left alone.
pub fn ensure_parent(path: &Path) -> Result<(), SinkError> {
    let dir = path
        .parent()
        .ok_or_else(|| SinkError::BadPath(path.to_path_buf()))?;
    Ok(ensure_dir(dir, DIR_MODE, Existing::Keep)?)
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
pub fn write_file(path: &Path, mode: u32, contents: &[u8]) -> Result<(), SinkError> {
    write_atomic(&own_file(path, mode), contents)
}

/// One of the daemon's own files: raw bytes, owned by the daemon's user.
fn own_file(path: &Path, mode: u32) -> FileConfig {
    FileConfig {
        path: path.to_path_buf(),
        format: FileFormat::Raw,
        mode,
        owner: None,
        group: None,
    }
}

/// Atomically replace `file.path` with `contents`, with the exact mode and owner.
pub fn write_atomic(file: &FileConfig, contents: &[u8]) -> Result<(), SinkError> {
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
) -> Result<(), SinkError> {
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
#[derive(Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// The file and the rename are flushed before the write returns: tokens, the journal.
    Durable,
    /// Atomic (a reader sees the old file or the new), but not flushed: also what a token
    /// file on a tmpfs gets, where a flush means nothing.
    Advisory,
}

fn write_atomic_with(
    file: &FileConfig,
    durability: Durability,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), SinkError> {
    let path = &file.path;
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) => (d, n),
        _ => return Err(SinkError::BadPath(path.clone())),
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

/// The temporary file a write starts with: next to the target (so the rename is atomic),
/// with a random name opened exclusively (so nobody can plant it), readable by the owner only.
/// What a failure to make the temporary file beside a target is called in its error.
const CREATE_TEMP: &str = "create a temporary file in";

fn create_temp(dir: &Path, name: &std::ffi::OsStr) -> Result<tempfile::NamedTempFile, SinkError> {
    tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .permissions(Permissions::from_mode(TEMP_MODE))
        .tempfile_in(dir)
        .map_err(io(CREATE_TEMP, dir))
}

/// Write a token file. Its directory nearly always exists, so it is made (see
/// [`ensure_parent`]) only once making the temporary file says it is missing or not a
/// directory: one `stat` less on every write.
fn write_token_file(
    file: &FileConfig,
    durability: Durability,
    bytes: &[u8],
) -> Result<(), SinkError> {
    let attempt = || write_atomic_with(file, durability, |w| w.write_all(bytes));
    match attempt() {
        Err(SinkError::Io {
            op: CREATE_TEMP,
            source,
            ..
        }) if matches!(
            source.kind(),
            ErrorKind::NotFound | ErrorKind::NotADirectory
        ) =>
        {
            ensure_parent(&file.path)?;
            attempt()
        }
        done => done,
    }
}

/// Why [`read_small_text`] refused a file; each caller words it for what the file is.
#[derive(Debug)]
pub enum SmallTextError {
    Io(std::io::Error),
    /// A device, FIFO, socket or directory.
    NotAFile,
    /// Over the caller's bound, at open or while read.
    TooLarge,
    NotUtf8,
}

/// The whole of a small text file the operator names (the config, a template): a regular
/// file only, at most `max` bytes even if it grows while it is read, UTF-8. Opened
/// non-blocking, so that a FIFO nobody writes returns instead of waiting; a regular file
/// reads the same either way.
pub fn read_small_text(path: &Path, max: u64) -> Result<String, SmallTextError> {
    let (file, meta) = crate::secret::open_small_file(path, max).map_err(small_text_error)?;
    text_of(file, &meta, max)
}

/// [`read_small_text`] of a file its caller opened (non-blocking) and looked at (`meta`), with
/// rules of its own.
pub(crate) fn read_opened_text(
    file: std::fs::File,
    meta: &std::fs::Metadata,
    max: u64,
) -> Result<String, SmallTextError> {
    crate::secret::small_file(meta, max).map_err(small_text_error)?;
    text_of(file, meta, max)
}

/// The UTF-8 text of a small file already judged, at most `max` bytes even if it grew since.
fn text_of(
    file: std::fs::File,
    meta: &std::fs::Metadata,
    max: u64,
) -> Result<String, SmallTextError> {
    let mut bytes = crate::secret::read_capped(file, meta, max).map_err(small_text_error)?;
    // Not a secret: the text moves out of the zeroing buffer rather than being copied.
    String::from_utf8(std::mem::take(&mut *bytes)).map_err(|_| SmallTextError::NotUtf8)
}

fn small_text_error(e: crate::secret::SmallFileError) -> SmallTextError {
    use crate::secret::SmallFileError as E;
    match e {
        E::Io(e) => SmallTextError::Io(e),
        E::NotAFile => SmallTextError::NotAFile,
        E::TooLarge => SmallTextError::TooLarge,
    }
}

/// Remove a token file; a file that is already gone is fine.
pub fn remove(path: &Path) -> Result<(), SinkError> {
    remove_with(path, Durability::Durable)
}

/// [`remove`], told whether the removal must be flushed: a caller that has just asked
/// whether the directory is on a tmpfs (`Advisory`) spares the second `statfs`.
fn remove_with(path: &Path, durability: Durability) -> Result<(), SinkError> {
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

/// The largest file [`remove_if_holds`] reads: the largest a template renders to. A fixed
/// format's file is a token (RFC 6750 tokens run to a few KiB at most) and a line or two
/// around it; a rendered one is an application's config file; anything larger is not ours.
const MAX_TOKEN_FILE_BYTES: u64 = template::MAX_RENDERED_BYTES;

/// What [`remove_if_holds`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// Nothing was there.
    Gone,
    /// Left in place: the path no longer names the file tokenkeeper wrote, and why.
    Kept(&'static str),
}

/// The SHA-256 of a token file's bytes as tokenkeeper wrote them: what [`remove_if_holds`]
/// checks a file against. A digest rather than the bytes: 32 bytes a set instead of the whole
/// rendering (about 180 bytes a file at 10,000 sets), and one copy of each token fewer in the
/// process's memory.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FileDigest([u8; 32]);

impl FileDigest {
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        FileDigest(sha2::Sha256::digest(bytes).into())
    }
}

/// Remove `path` only if it is still a token file tokenkeeper wrote: a regular file (not
/// followed if a symlink) whose bytes are exactly one of `written`, the renderings of the
/// token once written there (by their digest). A path recorded long ago (in the journal, possibly not by this
/// process) may name another program's file by now, and deleting whatever is there would
/// make the journal a way to delete any file.
pub fn remove_if_holds(path: &Path, written: &[FileDigest]) -> Result<Removal, SinkError> {
    remove_if_holds_with(path, written, Durability::Durable)
}

/// [`remove_if_holds`], told whether the removal must be flushed (see [`remove_with`]).
fn remove_if_holds_with(
    path: &Path,
    written: &[FileDigest],
    durability: Durability,
) -> Result<Removal, SinkError> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = match std::fs::OpenOptions::new()
        .read(true)
        // Not through a symlink, and never blocking on a FIFO put in the file's place.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Removal::Gone),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Removal::Kept("it is a symlink now"));
        }
        Err(e) => return Err(io("open", path)(e)),
    };
    let meta = file.metadata().map_err(io("stat", path))?;
    if !meta.is_file() {
        return Ok(Removal::Kept("it is not a regular file now"));
    }
    if meta.len() > MAX_TOKEN_FILE_BYTES {
        return Ok(Removal::Kept("it no longer holds the token written there"));
    }
    // Room for the whole file and the byte that would show it grew: read in one call and
    // the one that finds its end, instead of growing from a 32-byte first read.
    let mut content = Zeroizing::new(Vec::with_capacity(meta.len() as usize + 1));
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_end(&mut content)
        .map_err(io("read", path))?;
    if !written.contains(&FileDigest::of(&content)) {
        return Ok(Removal::Kept("it no longer holds the token written there"));
    }
    // The path must still name the file just read, not one renamed into place meanwhile.
    match std::fs::symlink_metadata(path) {
        Ok(now) if now.dev() == meta.dev() && now.ino() == meta.ino() => {}
        Ok(_) => return Ok(Removal::Kept("it was replaced while being checked")),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Removal::Gone),
        Err(e) => return Err(io("stat", path)(e)),
    }
    remove_with(path, durability)?;
    Ok(Removal::Removed)
}

/// Flush a directory so a rename or unlink in it survives a power cut.
fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    flushed(dir);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

/// Where a set's token goes. The file is the first kind; a secrets store is another.
pub trait TokenSink: Send + Sync + 'static {
    /// Replace what the sink holds with this token, atomically.
    fn write(
        &self,
        token: &Secret,
        issued: &IssuedMeta,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// Remove the token from the sink (nothing there is fine).
    fn remove(&self) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// Where the sink writes, to tell whether two sinks are the same place.
    fn location(&self) -> String;
    /// Write nothing more until the next `write` or `remove`: the current token is about to
    /// be revoked, and a sink that writes in the background (a store) must not write it after.
    fn hold(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// The non-secret facts about a token that sinks render.
#[derive(Debug, Clone)]
pub struct IssuedMeta {
    pub token_type: String,
    pub scope: String,
    pub expires_at: SystemTime,
}

/// A token file, written with [`write_atomic`] (on the blocking pool unless on a tmpfs).
pub struct FileSink {
    set: String,
    file: FileConfig,
    /// What this sink last wrote there. The file is removed only while it still holds exactly
    /// that: a file someone put in its place since is not the daemon's to delete.
    written: std::sync::Mutex<Option<FileDigest>>,
}

impl FileSink {
    pub fn new(set: &str, file: &FileConfig) -> Self {
        FileSink {
            set: set.to_string(),
            file: file.clone(),
            written: std::sync::Mutex::new(None),
        }
    }

    fn written(&self) -> std::sync::MutexGuard<'_, Option<FileDigest>> {
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Run a file operation on `path`: on the calling runtime thread when `path`'s directory is on
/// a file system held in memory and `cheap` says the work is only system calls, otherwise on
/// the blocking pool. On a tmpfs (`/run`, where the unit puts token files) a write, its
/// `fsync`s and the rename wait for no device and take microseconds, while the trip to the
/// blocking pool and back cost two thread switches a token: the largest single entry in a
/// profile of a 10,000-set start. Anywhere else an `fsync` may wait for a disk, which a
/// runtime thread shared by every set must not do.
/// `f` is told whether a write there must be flushed: the one `statfs` decides both.
async fn blocking<T: Send + 'static>(
    path: &std::path::Path,
    cheap: bool,
    f: impl FnOnce(Durability) -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    let memory = path.parent().is_some_and(in_memory);
    // Nothing to flush to on a tmpfs (see `can_flush`).
    let durability = if memory {
        Durability::Advisory
    } else {
        Durability::Durable
    };
    if cheap && memory {
        return f(durability);
    }
    tokio::task::spawn_blocking(move || f(durability))
        .await
        .unwrap_or_else(|e| {
            Err(SinkError::Io {
                op: "write (the writer thread failed)",
                path: path.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            })
        })
}

/// Whether `dir` is on a tmpfs, the file system that lives in memory. Asked at each
/// operation rather than once: a mount may come or go under a long-running daemon, and the
/// `statfs` costs a microsecond.
fn in_memory(dir: &Path) -> bool {
    use nix::sys::statfs::{TMPFS_MAGIC, statfs};
    statfs(dir).is_ok_and(|fs| fs.filesystem_type() == TMPFS_MAGIC)
}

impl TokenSink for FileSink {
    async fn write(&self, token: &Secret, meta: &IssuedMeta) -> Result<(), SinkError> {
        let file = self.file.clone();
        let (set, token, meta) = (self.set.clone(), token.clone(), meta.clone());
        // Rendered on the blocking pool with the write: compiling and running a template of
        // up to 1 MiB is work that runtime threads, shared by every set, should not do.
        let cheap = !matches!(self.file.format, FileFormat::Template(_));
        let digest = blocking(&self.file.path, cheap, move |durability| {
            let bytes = render(
                &file.format,
                &TokenContent {
                    set: &set,
                    token: &token,
                    token_type: &meta.token_type,
                    expires_at: meta.expires_at,
                    scope: &meta.scope,
                },
            )?;
            write_token_file(&file, durability, &bytes).map(|()| FileDigest::of(&bytes))
        })
        .await?;
        *self.written() = Some(digest);
        Ok(())
    }

    async fn remove(&self) -> Result<(), SinkError> {
        let path: PathBuf = self.file.path.clone();
        let written = *self.written();
        // Whether the file is gone: only then is what was written forgotten, so that a file
        // kept here stays judged by it at every later removal.
        let gone = blocking(&self.file.path, true, move |durability| match written {
            Some(w) => match remove_if_holds_with(&path, &[w], durability)? {
                Removal::Removed | Removal::Gone => Ok(true),
                Removal::Kept(why) => {
                    warn!(file = %path.display(), "not removing the token file: {why}");
                    Ok(false)
                }
            },
            // Written by this set's predecessor (a reload that kept the file): still only a
            // regular file, never what a symlink there points to.
            None => match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_file() => remove_with(&path, durability).map(|()| true),
                Ok(_) => {
                    warn!(file = %path.display(), "not removing the token file: it is no longer a regular file");
                    Ok(false)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
                Err(e) => Err(SinkError::Io {
                    op: "stat",
                    path: path.clone(),
                    source: e,
                }),
            },
        })
        .await?;
        if gone {
            *self.written() = None;
        }
        Ok(())
    }

    fn location(&self) -> String {
        self.file.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, UNIX_EPOCH};

    fn content(token: &Secret) -> TokenContent<'_> {
        TokenContent {
            set: "orders-sync",
            token,
            token_type: "Bearer",
            expires_at: UNIX_EPOCH + Duration::from_secs(1_738_945_086),
            scope: "orders customers",
        }
    }

    #[test]
    fn formats() {
        let t = Secret::new("tok123");
        let c = content(&t);
        assert_eq!(&*render(&FileFormat::Raw, &c).unwrap(), b"tok123");
        assert_eq!(
            String::from_utf8(render(&FileFormat::Header, &c).unwrap().to_vec()).unwrap(),
            "Authorization: Bearer tok123\n"
        );
        assert_eq!(
            String::from_utf8(render(&FileFormat::Env, &c).unwrap().to_vec()).unwrap(),
            "ORDERS_SYNC_TOKEN=tok123\nORDERS_SYNC_TOKEN_EXPIRES_AT=2025-02-07T16:18:06Z\n"
        );
        let v: serde_json::Value =
            serde_json::from_slice(&render(&FileFormat::Json, &c).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "access_token": "tok123", "token_type": "Bearer",
                "expires_at": "2025-02-07T16:18:06Z", "scope": "orders customers",
                "set": "orders-sync"
            })
        );
    }

    #[test]
    fn times_out_of_rfc3339_range_saturate_instead_of_panicking() {
        let t = Secret::new("tok123");
        let mut c = content(&t);
        c.expires_at = UNIX_EPOCH + Duration::from_secs(LAST_RFC3339_SECOND * 4);
        let env = String::from_utf8(render(&FileFormat::Env, &c).unwrap().to_vec()).unwrap();
        assert!(env.ends_with("_EXPIRES_AT=9999-12-31T23:59:59Z\n"), "{env}");
        c.expires_at = UNIX_EPOCH - Duration::from_secs(1);
        let env = String::from_utf8(render(&FileFormat::Env, &c).unwrap().to_vec()).unwrap();
        assert!(env.ends_with("_EXPIRES_AT=1970-01-01T00:00:00Z\n"), "{env}");
    }

    #[test]
    fn only_a_regular_file_still_holding_the_token_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let t = Secret::new("tok123");
        let c = content(&t);
        let json = render(&FileFormat::Json, &c).unwrap();
        let written = [
            FileDigest::of(&render(&FileFormat::Raw, &c).unwrap()),
            FileDigest::of(&json),
        ];
        let path = dir.path().join("t.token");
        std::fs::write(&path, &*json).unwrap();
        assert_eq!(remove_if_holds(&path, &written).unwrap(), Removal::Removed);
        assert!(!path.exists());
        assert_eq!(remove_if_holds(&path, &written).unwrap(), Removal::Gone);
        // Someone else's file by now, or the token with a byte more.
        for other in ["precious", "tok1234"] {
            std::fs::write(&path, other).unwrap();
            assert_eq!(
                remove_if_holds(&path, &written).unwrap(),
                Removal::Kept("it no longer holds the token written there")
            );
            assert_eq!(std::fs::read_to_string(&path).unwrap(), other);
        }
        // A symlink to a file that holds it: neither followed nor removed.
        let target = dir.path().join("target");
        std::fs::write(&target, "tok123").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert_eq!(
            remove_if_holds(&path, &written).unwrap(),
            Removal::Kept("it is a symlink now")
        );
        assert!(std::fs::symlink_metadata(&path).is_ok());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "tok123");
        // A FIFO: not opened for long, not removed.
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(
            remove_if_holds(&path, &written).unwrap(),
            Removal::Kept("it is not a regular file now")
        );
    }

    #[test]
    fn a_large_rendered_file_is_still_recognised_and_removed() {
        // A template renders an application's whole config file, far beyond a token's size.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.ini");
        let body = Zeroizing::new(vec![b'x'; 300 * 1024]);
        std::fs::write(&path, &*body).unwrap();
        assert_eq!(
            remove_if_holds(&path, &[FileDigest::of(&body)]).unwrap(),
            Removal::Removed
        );
    }

    fn file_cfg(path: PathBuf, mode: u32) -> FileConfig {
        FileConfig {
            path,
            format: FileFormat::Raw,
            mode,
            owner: None,
            group: None,
        }
    }

    #[test]
    fn write_sets_exact_mode_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/t.token");
        ensure_parent(&path).unwrap();
        let meta = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(meta.mode() & 0o7777, DIR_MODE);
        for (mode, body) in [(0o640, "one"), (0o604, "two"), (0o600, "three")] {
            write_atomic(&file_cfg(path.clone(), mode), body.as_bytes()).unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), body);
            let m = std::fs::metadata(&path).unwrap().mode() & 0o7777;
            assert_eq!(m, mode);
        }
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("t.token")]);
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }

    #[test]
    fn ensure_dir_makes_exact_modes_and_refuses_a_file_in_the_way() {
        let tmp = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        let nested = tmp.path().join("a/b/c");
        // A umask that would strip the group's bits from a naive create.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let made = ensure_dir(&nested, 0o750, Existing::Keep);
        nix::sys::stat::umask(old);
        made.unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&tmp.path().join(d)), 0o750, "{d}");
        }

        // An existing directory: kept, or given the mode; its existing parents never touched.
        std::fs::set_permissions(&nested, Permissions::from_mode(0o755)).unwrap();
        ensure_dir(&nested, 0o750, Existing::Keep).unwrap();
        assert_eq!(mode(&nested), 0o755);
        ensure_dir(&nested, 0o700, Existing::SetMode).unwrap();
        assert_eq!(mode(&nested), 0o700);
        assert_eq!(mode(&tmp.path().join("a/b")), 0o750);

        // A symlink to a directory is that directory.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&nested, &link).unwrap();
        ensure_dir(&link, 0o750, Existing::Keep).unwrap();
        assert_eq!(mode(&nested), 0o700);

        // A file in the way, as the directory or as a parent: an error naming it, file intact.
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        for (dir, existing) in [
            (file.clone(), Existing::Keep),
            (file.clone(), Existing::SetMode),
            (file.join("sub"), Existing::Keep),
        ] {
            let err = ensure_dir(&dir, 0o700, existing).unwrap_err();
            assert_eq!(err.path, file);
            let text = crate::error_chain(&err);
            assert!(text.starts_with("create directory "), "{text}");
            assert!(
                text.contains("neither a directory nor a symlink to one"),
                "{text}"
            );
        }
        assert_eq!(mode(&file), 0o644);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");

        // So is a symlink to nothing, which is left dangling rather than followed.
        let dangling = tmp.path().join("dangling");
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).unwrap();
        let err = ensure_dir(&dangling, 0o700, Existing::SetMode).unwrap_err();
        assert_eq!(err.path, dangling);
        assert!(!tmp.path().join("nowhere").exists());
    }

    #[test]
    fn a_directory_in_the_way_is_an_error_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.token");
        std::fs::create_dir(&path).unwrap();
        let err = write_atomic(&file_cfg(path.clone(), 0o640), b"x").unwrap_err();
        assert!(err.to_string().contains("rename"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_temporary_file_is_owner_only_from_its_creation() {
        let dir = tempfile::tempdir().unwrap();
        // Even with no umask at all, the token is never readable by others mid-write.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let tmp = create_temp(dir.path(), std::ffi::OsStr::new("t.token"));
        nix::sys::stat::umask(old);
        let tmp = tmp.unwrap();
        assert_eq!(tmp.as_file().metadata().unwrap().mode() & 0o7777, 0o600);
    }

    #[test]
    fn stale_temps_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.token");
        std::fs::write(dir.path().join(".t.token.abc123.tmp"), "x").unwrap();
        std::fs::write(dir.path().join("other"), "x").unwrap();
        remove_stale_temps(&path);
        assert!(!dir.path().join(".t.token.abc123.tmp").exists());
        assert!(dir.path().join("other").exists());
    }

    /// Whether `dir` is on a tmpfs by the kernel's own mount table, not by `in_memory`.
    fn mounted_tmpfs(dir: &Path) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        mounts.lines().any(|l| {
            let mut f = l.split(' ');
            let (point, kind) = (f.nth(1), f.next());
            point == dir.to_str() && kind == Some("tmpfs")
        })
    }

    #[test]
    fn a_token_file_on_a_tmpfs_is_written_without_the_blocking_pool() {
        // /dev/shm is a tmpfs on every Linux this runs on; the runtime's only blocking thread
        // is kept busy, so a write that needs the pool never ends.
        let shm = Path::new("/dev/shm");
        assert!(mounted_tmpfs(shm), "/dev/shm is not a tmpfs here");
        assert!(in_memory(shm));
        assert!(!in_memory(Path::new("/proc")));
        let dir = tempfile::tempdir_in(shm).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (release, held) = std::sync::mpsc::channel::<()>();
        rt.block_on(async {
            let busy = tokio::task::spawn_blocking(move || held.recv());
            let sink = FileSink::new("s", &file_cfg(dir.path().join("t.token"), 0o640));
            let meta = IssuedMeta {
                token_type: "Bearer".into(),
                scope: "api".into(),
                expires_at: UNIX_EPOCH + Duration::from_secs(1_738_945_086),
            };
            let wrote = tokio::time::timeout(
                Duration::from_secs(30),
                sink.write(&Secret::new("tok-shm"), &meta),
            )
            .await;
            assert!(matches!(wrote, Ok(Ok(()))), "{wrote:?}");
            let path = dir.path().join("t.token");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), "tok-shm");
            assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o640);
            let removed = tokio::time::timeout(Duration::from_secs(30), sink.remove()).await;
            assert!(matches!(removed, Ok(Ok(()))), "{removed:?}");
            assert!(!path.exists());
            release.send(()).unwrap();
            busy.await.unwrap().unwrap();
        });
    }

    /// A token file's directory is made (with `DIR_MODE`) once the write finds it missing, and
    /// a file in its place is refused by name and left alone.
    #[tokio::test]
    async fn a_write_makes_a_missing_directory_and_refuses_a_file_in_its_place() {
        let tmp = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        let meta = IssuedMeta {
            token_type: "Bearer".into(),
            scope: "api".into(),
            expires_at: UNIX_EPOCH + Duration::from_secs(1_738_945_086),
        };
        let path = tmp.path().join("a/b/t.token");
        let sink = FileSink::new("s", &file_cfg(path.clone(), 0o640));
        sink.write(&Secret::new("tok-made"), &meta).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "tok-made");
        assert_eq!(mode(&tmp.path().join("a")), DIR_MODE);
        assert_eq!(mode(&tmp.path().join("a/b")), DIR_MODE);

        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let sink = FileSink::new("s", &file_cfg(file.join("t.token"), 0o640));
        let err = sink
            .write(&Secret::new("tok-blocked"), &meta)
            .await
            .unwrap_err();
        let text = crate::error_chain(&err);
        assert!(text.contains(&file.display().to_string()), "{text}");
        assert!(
            text.contains("neither a directory nor a symlink to one"),
            "{text}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    }

    #[test]
    fn a_token_file_is_flushed_on_a_disk_and_not_on_a_tmpfs() {
        let flushes = |dir: &Path| {
            FLUSHES
                .lock()
                .unwrap()
                .as_ref()
                .and_then(|m| m.get(dir).copied())
                .unwrap_or(0)
        };
        let meta = IssuedMeta {
            token_type: "Bearer".into(),
            scope: "api".into(),
            expires_at: UNIX_EPOCH + Duration::from_secs(1_738_945_086),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let shm = Path::new("/dev/shm");
        assert!(mounted_tmpfs(shm), "/dev/shm is not a tmpfs here");
        let memory = tempfile::tempdir_in(shm).unwrap();
        let mut dirs = vec![(memory.path().to_path_buf(), 0)];
        // A directory on a disk: the checkout's, or /var/tmp where the checkout is on a tmpfs.
        let disk = [env!("CARGO_MANIFEST_DIR"), "/var/tmp"]
            .into_iter()
            .map(Path::new)
            .find(|d| d.is_dir() && !in_memory(d))
            .map(|d| tempfile::tempdir_in(d).unwrap());
        match &disk {
            Some(d) => dirs.push((d.path().to_path_buf(), 2)),
            None => eprintln!("no directory on a disk here: only the tmpfs half is checked"),
        }
        for (dir, expected) in &dirs {
            let (dir, expected) = (dir.as_path(), *expected);
            let path = dir.join("t.token");
            let before = flushes(dir);
            write_atomic(&file_cfg(path.clone(), 0o600), b"tok").unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"tok");
            // The file and its directory, or nothing.
            assert_eq!(
                flushes(dir) - before,
                expected,
                "write in {}",
                dir.display()
            );
            let before = flushes(dir);
            remove(&path).unwrap();
            assert!(!path.exists());
            assert_eq!(
                flushes(dir) - before,
                expected / 2,
                "removal in {}",
                dir.display()
            );
            // The same through a set's sink, which asks once whether the directory is a tmpfs.
            let sink = FileSink::new("s", &file_cfg(path.clone(), 0o600));
            let before = flushes(dir);
            rt.block_on(sink.write(&Secret::new("tok"), &meta)).unwrap();
            assert_eq!(
                flushes(dir) - before,
                expected,
                "sink write in {}",
                dir.display()
            );
            let before = flushes(dir);
            rt.block_on(sink.remove()).unwrap();
            assert!(!path.exists());
            assert_eq!(
                flushes(dir) - before,
                expected / 2,
                "sink removal in {}",
                dir.display()
            );
        }
    }
}
