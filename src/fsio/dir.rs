//! The directory checks: a directory made with an exact mode whatever the umask, and one
//! that exists kept or tightened.

use std::fs::Permissions;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Exact mode of `state_dir`: it holds live tokens, so only the daemon's user may enter.
pub const STATE_DIR_MODE: u32 = 0o700;

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
