//! Token files: the formats, their templates, and the `TokenSink` that writes them with the
//! atomic writer of [`crate::fsio`].

use std::future::Future;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use tracing::warn;
use zeroize::Zeroizing;

use crate::clock::rfc3339_range;
use crate::fsio::{self, DirError, Durability, Existing, FileError, ensure_dir};
use crate::secret::Secret;

pub use template::{FileTemplate, MAX_TEMPLATE_BYTES, TemplateError, TemplateProblem};

mod template;
pub mod yaml;

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

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    File(#[from] FileError),
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

impl FileConfig {
    /// Where [`fsio::write_atomic`] puts this file.
    pub fn target(&self) -> fsio::Target<'_> {
        fsio::Target {
            path: &self.path,
            mode: self.mode,
            owner: self.owner,
            group: self.group,
        }
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SinkError + 'a {
    move |source| {
        SinkError::File(FileError::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
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

impl From<DirError> for SinkError {
    fn from(e: DirError) -> Self {
        SinkError::File(FileError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        })
    }
}

/// Create the target's directory (and missing parents) with [`DIR_MODE`], exactly; an
/// existing one is left alone.
pub fn ensure_parent(path: &Path) -> Result<(), SinkError> {
    let dir = path
        .parent()
        .ok_or_else(|| SinkError::File(FileError::BadPath(path.to_path_buf())))?;
    Ok(ensure_dir(dir, DIR_MODE, Existing::Keep)?)
}

/// Write a token file. Its directory nearly always exists, so it is made (see
/// [`ensure_parent`]) only once making the temporary file says it is missing or not a
/// directory: one `stat` less on every write.
fn write_token_file(
    file: &FileConfig,
    durability: Durability,
    bytes: &[u8],
) -> Result<(), SinkError> {
    let attempt = || fsio::write_atomic_with(&file.target(), durability, |w| w.write_all(bytes));
    match attempt() {
        Err(FileError::Io {
            op: fsio::CREATE_TEMP,
            source,
            ..
        }) if matches!(
            source.kind(),
            ErrorKind::NotFound | ErrorKind::NotADirectory
        ) =>
        {
            ensure_parent(&file.path)?;
            Ok(attempt()?)
        }
        done => Ok(done?),
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

/// [`remove_if_holds`], told whether the removal must be flushed (see [`fsio::remove_with`]).
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
    fsio::remove_with(path, durability)?;
    Ok(Removal::Removed)
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

/// A token file, written with [`fsio::write_atomic`] (on the blocking pool unless on a tmpfs).
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
    let memory = path.parent().is_some_and(fsio::in_memory);
    // Nothing to flush to on a tmpfs.
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
            Err(SinkError::File(FileError::Io {
                op: "write (the writer thread failed)",
                path: path.to_path_buf(),
                source: std::io::Error::other(e.to_string()),
            }))
        })
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
                Ok(m) if m.file_type().is_file() => {
                    fsio::remove_with(&path, durability)?;
                    Ok(true)
                }
                Ok(_) => {
                    warn!(file = %path.display(), "not removing the token file: it is no longer a regular file");
                    Ok(false)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
                Err(e) => Err(SinkError::File(FileError::Io {
                    op: "stat",
                    path: path.clone(),
                    source: e,
                })),
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
    use crate::clock::LAST_RFC3339_SECOND;
    use crate::fsio::{flushes_in, in_memory, remove, write_file};
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
            write_file(&path, mode, body.as_bytes()).unwrap();
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
        let flushes = flushes_in;
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
            write_file(&path, 0o600, b"tok").unwrap();
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
