//! The one credential a provider must carry from run to run: Square's latest refresh token
//! (single-use for PKCE applications), or in the legacy renew mode the latest access token.
//!
//! One small JSON file per provider in `state_dir` (0700), written 0600 with the same atomic
//! writer as the token files, so a crash leaves the old or the new token, never neither. The
//! file also records which configured seed it descends from (by fingerprint): when the operator
//! configures a new first token (a new authorization), the old chain is abandoned instead of
//! silently winning over the config.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::fsio::{self, FileError, STATE_DIR_MODE};
use crate::secret::Secret;

/// The stored file: owner read-write only, like any key file.
pub const STATE_FILE_MODE: u32 = 0o600;

/// The layout below; bumped if it ever changes, so an old binary refuses a newer file.
const FORMAT_VERSION: u32 = 1;

/// Larger than any real file (a 1 KiB token plus a few fields); a bigger one is not ours.
const MAX_FILE_BYTES: u64 = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RefreshStoreError {
    #[error("cannot {op} {path}", path = path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}", path = path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: FileError,
    },
    #[error("{path} is not a tokenkeeper state file ({why}); restore it from a backup, or remove it to start again from the configured token", path = path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error("{path} is readable by group or others (mode {mode:04o}); run `chmod 600 {path}`", path = path.display())]
    TooOpen { path: PathBuf, mode: u32 },
}

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    /// Fingerprint of the configured first token this one descends from.
    seed: String,
    token: String,
    /// When it was saved (RFC 3339), for the operator reading the file.
    saved_at: String,
}

impl Drop for Stored {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.token);
    }
}

/// One provider's stored credential.
#[derive(Debug, Clone)]
pub struct RefreshStore {
    path: PathBuf,
}

impl RefreshStore {
    pub fn new(path: PathBuf) -> Self {
        RefreshStore { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored token and the fingerprint of the seed it descends from; `None` when there
    /// is no file yet.
    pub fn load(&self) -> Result<Option<(String, Secret)>, RefreshStoreError> {
        let path = &self.path;
        let io = |op| {
            move |source| RefreshStoreError::Io {
                op,
                path: path.clone(),
                source,
            }
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("inspect")(e)),
        };
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(RefreshStoreError::TooOpen {
                path: path.clone(),
                mode,
            });
        }
        if !meta.is_file() || meta.len() > MAX_FILE_BYTES {
            return Err(RefreshStoreError::Corrupt {
                path: path.clone(),
                why: "not a small regular file".into(),
            });
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(io("read"))?);
        // serde_json's messages never quote a string value of ours here: the only strings are
        // the token and two non-secrets, and a syntax error names a position, not content.
        let stored: Stored =
            serde_json::from_slice(&bytes).map_err(|e| RefreshStoreError::Corrupt {
                path: path.clone(),
                why: super::json_error(&e),
            })?;
        if stored.version != FORMAT_VERSION {
            return Err(RefreshStoreError::Corrupt {
                path: path.clone(),
                why: format!("format version {} is not {FORMAT_VERSION}", stored.version),
            });
        }
        if stored.token.is_empty() {
            return Err(RefreshStoreError::Corrupt {
                path: path.clone(),
                why: "the token is empty".into(),
            });
        }
        Ok(Some((
            stored.seed.clone(),
            Secret::new(stored.token.as_str()),
        )))
    }

    /// Replace the stored token, atomically and durably: when this returns, the token is on
    /// disk, and a crash at any point leaves the previous file or this one.
    pub fn save(&self, seed: &str, token: &Secret) -> Result<(), RefreshStoreError> {
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        // An existing directory is left as the operator made it: the file inside is owner-only
        // whatever the directory's mode, and `load` refuses it otherwise.
        fsio::ensure_dir(dir, STATE_DIR_MODE, fsio::Existing::Keep).map_err(|e| {
            RefreshStoreError::Io {
                op: e.op,
                path: e.path,
                source: e.source,
            }
        })?;
        let stored = Stored {
            version: FORMAT_VERSION,
            seed: seed.to_string(),
            token: token.expose().to_string(),
            saved_at: humantime::format_rfc3339_seconds(crate::clock::now_wall()).to_string(),
        };
        let mut bytes = Zeroizing::new(Vec::new());
        // Serializing plain strings into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *bytes, &stored);
        bytes.push(b'\n');
        fsio::write_file(&self.path, STATE_FILE_MODE, &bytes).map_err(|source| {
            RefreshStoreError::Write {
                path: self.path.clone(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn save_then_load_round_trips_with_exact_modes() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("var/state");
        let store = RefreshStore::new(state.join("square-shop.json"));
        assert!(store.load().unwrap().is_none());
        store.save("abcd1234", &Secret::new("EQAAfirst")).unwrap();
        store.save("abcd1234", &Secret::new("EQAAsecond")).unwrap();
        let (seed, token) = store.load().unwrap().unwrap();
        assert_eq!(seed, "abcd1234");
        assert_eq!(token.expose(), "EQAAsecond");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&state), STATE_DIR_MODE);
        assert_eq!(mode(dir.path().join("var").as_path()), STATE_DIR_MODE);
        assert_eq!(mode(store.path()), STATE_FILE_MODE);
        // Only the file itself: no temporary files left behind.
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 1);
        // An existing directory keeps the mode the operator gave it.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o750)).unwrap();
        store.save("abcd1234", &Secret::new("EQAAthird")).unwrap();
        assert_eq!(mode(&state), 0o750);
    }

    #[test]
    fn a_broken_or_open_file_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let store = RefreshStore::new(path.clone());
        std::fs::write(&path, r#"{"version":1,"seed":"x","token":7}"#).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, RefreshStoreError::Corrupt { .. }), "{err}");
        std::fs::write(
            &path,
            r#"{"version":1,"seed":"x","token":"EQAAsecret","saved_at":"now"}"#,
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, RefreshStoreError::TooOpen { .. }), "{err}");
        assert!(!crate::error_chain(&err).contains("EQAAsecret"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(
            &path,
            r#"{"version":2,"seed":"x","token":"EQAAsecret","saved_at":"now"}"#,
        )
        .unwrap();
        let err = store.load().unwrap_err();
        assert!(
            crate::error_chain(&err).contains("format version 2"),
            "{err}"
        );
    }
}
