//! Secret values (API keys, access tokens) and the places they are read from.
//!
//! Every secret lives in a [`Secret`], whose `Debug` and `Display` print `[redacted]` and whose
//! memory is zeroed on drop; the value is read only through [`Secret::expose`], so each place
//! that touches a secret is visible in review. Tokens are named in logs by [`fingerprint`].

use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Largest secret we read from a file or credential. API keys and tokens are well under 1 KiB;
/// the cap keeps a misnamed path (a log file, `/dev/zero`) from being slurped into memory.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// A secret string. Never printed; zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Zeroizing::new(value.into()))
    }

    /// The secret itself. Call only where the value must leave the process (an HTTP request,
    /// a token file).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// First 8 hex digits of the value's SHA-256: enough to tell tokens apart in logs and
    /// to match a log line against a file with `sha256sum`, useless for guessing the token.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.expose())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// First 8 hex digits of the SHA-256 of `value`.
pub fn fingerprint(value: &str) -> String {
    hex(&Sha256::digest(value.as_bytes())[..4])
}

/// `bytes` in lowercase hexadecimal, two digits each, in one allocation: fingerprints and
/// config hashes are made for every token and set.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bytes.len());
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Where a secret comes from, as the config names it.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable.
    Env(String),
    /// A file readable by the owner only.
    File(PathBuf),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/NAME` (`LoadCredential=NAME:PATH`), or
    /// the file NAME of the folder the shipped unit loads ([`CREDENTIAL_FOLDER_ID`]).
    Credential(String),
    /// The value written in the config itself (`check` warns about it).
    Plain(Secret),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "env:{name}"),
            SecretSource::File(path) => write!(f, "file:{}", path.display()),
            SecretSource::Credential(name) => write!(f, "credential:{name}"),
            SecretSource::Plain(_) => f.write_str("plain:[redacted]"),
        }
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "environment variable {name}"),
            SecretSource::File(path) => write!(f, "file {}", path.display()),
            SecretSource::Credential(name) => write!(f, "systemd credential {name}"),
            SecretSource::Plain(_) => f.write_str("value written in the config"),
        }
    }
}

/// Why a secret could not be read. Never carries the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("environment variable {0} is empty or not valid UTF-8")]
    EnvInvalid(String),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is readable by group or others (mode {mode:04o}); run `chmod 600 {path}`",
        path = path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    /// Another user could have chosen the key: the file is theirs, or a directory on its way
    /// lets them swap it. `why` names which and how.
    #[error("{path} {why}: another user could choose the key tokenkeeper sends", path = path.display())]
    Untrusted { path: PathBuf, why: String },
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("{0} is larger than 64 KiB, which no API key is")]
    TooLarge(PathBuf),
    #[error("{0} is empty or not valid UTF-8")]
    Invalid(PathBuf),
    #[error(
        "systemd credential {0} cannot be read: $CREDENTIALS_DIRECTORY is not set (use LoadCredential= in the unit)"
    )]
    NoCredentialsDirectory(String),
    /// `check` outside the service found no file for a credential where the unit loads them.
    #[error(
        "systemd credential {name}: there is no {path}, so the service would not start (the unit loads credentials from {folder}; for a unit that loads them elsewhere, run check with --credentials-dir)",
        path = folder.join(name).display(),
        folder = folder.display()
    )]
    CredentialMissing { name: String, folder: PathBuf },
}

/// The ID under which the shipped unit loads the whole credentials folder
/// (`LoadCredential=tokenkeeper:/etc/tokenkeeper/credentials`), so that the unit starts
/// whatever the providers and their keys are called. systemd names each file of a loaded
/// folder `ID_FILE`; `{ credential: NAME }` finds the file NAME so too.
pub const CREDENTIAL_FOLDER_ID: &str = "tokenkeeper";

/// The folder the shipped unit loads its credentials from (its `LoadCredential=` line), which
/// is where `check`, run outside the service, looks for each `{ credential: NAME }`.
pub const UNIT_CREDENTIALS_FOLDER: &str = "/etc/tokenkeeper/credentials";

/// What `check` could tell about a secret without using it.
#[derive(Debug, PartialEq, Eq)]
pub enum Availability {
    Ok,
    /// A `credential` outside systemd: it exists only once the unit runs.
    Unknowable(String),
}

impl SecretSource {
    /// Read the secret. Trailing newlines are dropped: `echo key > file` is how most
    /// people write a key file, and no API key ends in a newline.
    pub fn load(&self) -> Result<Secret, SecretError> {
        match self {
            SecretSource::Plain(secret) => Ok(secret.clone()),
            SecretSource::Env(name) => match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim_end_matches(['\n', '\r']))),
                Ok(_) | Err(std::env::VarError::NotUnicode(_)) => {
                    Err(SecretError::EnvInvalid(name.clone()))
                }
                Err(std::env::VarError::NotPresent) => Err(SecretError::EnvMissing(name.clone())),
            },
            SecretSource::File(path) => read_secret_file(path, true),
            SecretSource::Credential(name) => {
                let dir = std::env::var_os(CREDENTIALS_DIRECTORY)
                    .ok_or_else(|| SecretError::NoCredentialsDirectory(name.clone()))?;
                let dir = Path::new(&dir);
                // A credential of its own name first (a unit with LoadCredential=NAME:...),
                // then the file of that name in the loaded folder. When neither is there, the
                // error names the first, which is what an operator who wrote it expects.
                let own = dir.join(name);
                let in_folder = dir.join(format!("{CREDENTIAL_FOLDER_ID}_{name}"));
                let path =
                    if own.symlink_metadata().is_err() && in_folder.symlink_metadata().is_ok() {
                        in_folder
                    } else {
                        own
                    };
                // systemd makes credential files owner-only and read-only itself; their
                // mode is its business, not the operator's.
                read_secret_file(&path, false)
            }
        }
    }

    /// Read a value that is not secret but is named like one (a client certificate): a
    /// file may be readable by others, every other rule holds.
    pub fn load_public(&self) -> Result<Secret, SecretError> {
        match self {
            SecretSource::File(path) => read_secret_file(path, false),
            other => other.load(),
        }
    }

    /// Check that the secret can be read, without keeping it.
    pub fn check(&self) -> Result<Availability, SecretError> {
        self.check_in(None)
    }

    /// [`Self::check`]; outside the service (no `$CREDENTIALS_DIRECTORY`), a credential is
    /// looked for as the file NAME in `folder`, the folder the unit loads credentials from,
    /// so that a missing one fails `check` as it would fail the start.
    pub fn check_in(&self, folder: Option<&Path>) -> Result<Availability, SecretError> {
        if let SecretSource::Credential(name) = self
            && std::env::var_os(CREDENTIALS_DIRECTORY).is_none()
        {
            let Some(folder) = folder else {
                return Ok(Availability::Unknowable(format!(
                    "systemd credential {name} was not checked: $CREDENTIALS_DIRECTORY is not set outside the service"
                )));
            };
            let path = folder.join(name);
            return match path.symlink_metadata() {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(SecretError::CredentialMissing {
                        name: name.clone(),
                        folder: folder.to_path_buf(),
                    })
                }
                // systemd reads the folder as root; this user may not, which says nothing
                // about the service.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    Ok(Availability::Unknowable(format!(
                        "systemd credential {name} was not checked: {} cannot be read by this user (permission denied); run check as root to check it",
                        path.display()
                    )))
                }
                _ => match read_secret_file(&path, false) {
                    Err(SecretError::Read { source, .. })
                        if source.kind() == std::io::ErrorKind::PermissionDenied =>
                    {
                        Ok(Availability::Unknowable(format!(
                            "systemd credential {name} was not checked: {} cannot be read by this user (permission denied); run check as root to check it",
                            path.display()
                        )))
                    }
                    other => other.map(|_| Availability::Ok),
                },
            };
        }
        self.load().map(|_| Availability::Ok)
    }
}

fn read_secret_file(path: &Path, check_mode: bool) -> Result<Secret, SecretError> {
    let refused = |e| match e {
        SmallFileError::Io(source) => SecretError::Read {
            path: path.to_path_buf(),
            source,
        },
        SmallFileError::NotAFile => SecretError::NotAFile(path.to_path_buf()),
        SmallFileError::TooLarge => SecretError::TooLarge(path.to_path_buf()),
    };
    let (file, meta) = open_small_file(path, MAX_SECRET_FILE_BYTES).map_err(refused)?;
    let mode = meta.mode() & 0o7777;
    if check_mode && mode & 0o077 != 0 {
        return Err(SecretError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    if check_mode && let Some(why) = crate::trust::chosen_by_others(path, &meta) {
        return Err(SecretError::Untrusted {
            path: path.to_path_buf(),
            why,
        });
    }
    let buf = read_capped(file, &meta, MAX_SECRET_FILE_BYTES).map_err(refused)?;
    let text = std::str::from_utf8(&buf).map_err(|_| SecretError::Invalid(path.to_path_buf()))?;
    let text = text.trim_end_matches(['\n', '\r']);
    if text.is_empty() {
        return Err(SecretError::Invalid(path.to_path_buf()));
    }
    Ok(Secret::new(text))
}

/// Why [`open_small_file`] or [`read_small_file`] refused a file; each caller words it for
/// what the file is.
#[derive(Debug)]
pub enum SmallFileError {
    Io(std::io::Error),
    /// A device, FIFO, socket or directory.
    NotAFile,
    /// Over the caller's bound, at open or while read.
    TooLarge,
}

/// Open a small file the operator names (the config, a template, a secret) for reading: a
/// regular file only, at most `max` bytes now. Opened non-blocking, so that a FIFO nobody
/// writes returns at once instead of hanging `check`, a start or a reload (a regular file
/// reads the same either way), and without becoming our controlling terminal.
pub fn open_small_file(
    path: &Path,
    max: u64,
) -> Result<(std::fs::File, std::fs::Metadata), SmallFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(SmallFileError::Io)?;
    let meta = file.metadata().map_err(SmallFileError::Io)?;
    small_file(&meta, max)?;
    Ok((file, meta))
}

/// Refuse a file `meta` says is no regular file of at most `max` bytes: the check of
/// [`open_small_file`], for a caller that opened the file with rules of its own.
pub fn small_file(meta: &std::fs::Metadata, max: u64) -> Result<(), SmallFileError> {
    if !meta.is_file() {
        return Err(SmallFileError::NotAFile);
    }
    if meta.len() > max {
        return Err(SmallFileError::TooLarge);
    }
    Ok(())
}

/// The whole of a file [`open_small_file`] opened, at most `max` bytes even if it grew since;
/// zeroed when dropped, since it may be a secret.
pub fn read_capped(
    file: std::fs::File,
    meta: &std::fs::Metadata,
    max: u64,
) -> Result<Zeroizing<Vec<u8>>, SmallFileError> {
    // Room for the whole file and the byte that would show it grew, so the buffer never
    // reallocates (which would leave a copy of a secret behind, unzeroed).
    let room = usize::try_from(meta.len().min(max) + 1).unwrap_or(0);
    let mut bytes = Zeroizing::new(Vec::with_capacity(room));
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(SmallFileError::Io)?;
    if bytes.len() as u64 > max {
        return Err(SmallFileError::TooLarge);
    }
    Ok(bytes)
}

/// [`open_small_file`] and [`read_capped`] at once.
pub fn read_small_file(path: &Path, max: u64) -> Result<Zeroizing<Vec<u8>>, SmallFileError> {
    let (file, meta) = open_small_file(path, max)?;
    read_capped(file, &meta, max)
}

/// Environment variables the config reads secrets from (`{ env: NAME }`). Hooks would inherit
/// them with the rest of the daemon's environment, and a hook that logs or passes on its
/// environment would pass on the API key: every hook runs without them. Names are only ever
/// added (a reload may drop a provider, but its key is still in our environment).
/// Environment variables the config reads secrets from (`{ env: NAME }`). Children (hooks,
/// the command `exec` runs) would inherit them with the rest of the daemon's environment, and
/// one that logs or passes on its environment would pass on the API key: every child runs
/// without them. Names are only ever added (a reload may drop a provider, but its key is still
/// in our environment).
static SECRET_ENV: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Where systemd puts the service's credentials (the API keys themselves): no child needs to
/// know, and one that hands its environment on would hand on where the keys are.
const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// Keep the environment variables of `sources` out of every child's environment from now on
/// (a provider or store added by a reload calls this as it is built).
pub fn hide_env_of<'a>(sources: impl IntoIterator<Item = &'a SecretSource>) {
    let mut hidden = SECRET_ENV
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for source in sources {
        if let SecretSource::Env(name) = source
            && !hidden.contains(name)
        {
            hidden.push(name.clone());
        }
    }
}

/// The variables no child of the daemon gets: those [`hide_env_of`] has been given so far,
/// and `CREDENTIALS_DIRECTORY`.
pub fn hidden_env() -> Vec<String> {
    let mut names = SECRET_ENV
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    names.push(CREDENTIALS_DIRECTORY.to_string());
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("sk_live_do_not_print");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        let src = SecretSource::Plain(s);
        assert!(!format!("{src:?}").contains("do_not_print"));
        assert!(!format!("{src}").contains("do_not_print"));
    }

    /// Journaled fingerprints and config hashes were written with `format!("{b:02x}")`; the
    /// same bytes must give the same text.
    #[test]
    fn hex_is_two_lowercase_digits_a_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let expected: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), expected);
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn fingerprint_is_first_eight_hex_of_sha256() {
        // sha256("abc") = ba7816bf...
        assert_eq!(fingerprint("abc"), "ba7816bf");
        assert_eq!(Secret::new("abc").fingerprint(), "ba7816bf");
    }

    #[test]
    fn a_key_file_another_user_could_choose_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "k3y\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let src = SecretSource::File(path.clone());
        assert_eq!(src.load().unwrap().expose(), "k3y");
        // Theirs, even if only they may read it: they would choose the key (the tests run
        // as root, who reads it all the same).
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let err = src.load().unwrap_err().to_string();
        assert!(err.contains("is owned by uid 65534"), "{err}");
        assert!(err.contains("another user could choose the key"), "{err}");
        std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        // In a directory others may write, and through a link into one.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = src.load().unwrap_err().to_string();
        assert!(
            err.contains("which is writable by others without the sticky bit"),
            "{err}"
        );
        let safe = tempfile::tempdir().unwrap();
        let link = safe.path().join("key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = SecretSource::File(link).load().unwrap_err().to_string();
        assert!(err.contains("which is writable by others"), "{err}");
        assert!(!err.contains("k3y"), "{err}");
    }

    #[test]
    fn file_secret_must_be_owner_only_and_trailing_newline_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "k3y\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let src = SecretSource::File(path.clone());
        let err = src.load().unwrap_err();
        assert!(
            matches!(err, SecretError::TooOpen { mode: 0o640, .. }),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(src.load().unwrap().expose(), "k3y");
    }

    /// A FIFO nobody writes would block a plain open for ever: refused at once instead, and a
    /// credential (read by the same reader) too.
    #[test]
    fn a_fifo_is_not_a_file_and_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("key");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = SecretSource::File(fifo.clone()).load().unwrap_err();
        assert!(
            matches!(err, SecretError::NotAFile(ref p) if *p == fifo),
            "{err}"
        );
        assert!(matches!(
            read_secret_file(&fifo, false),
            Err(SecretError::NotAFile(_))
        ));
    }

    #[test]
    fn missing_and_empty_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = SecretSource::File(dir.path().join("nope"));
        assert!(matches!(missing.load(), Err(SecretError::Read { .. })));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            SecretSource::File(empty).load(),
            Err(SecretError::Invalid(_))
        ));
    }
}
