//! Who could have written a file: the rule every path another user might control is held to.
//! A file the daemon acts on (a program it runs, a template whose output it publishes) must
//! be one that only root or the daemon's user could have chosen: owned by one of them, not
//! writable by group or others, in directories that are the same or sticky. This is sshd's
//! StrictModes rule for `~/.ssh`, and systemd's for `PIDFile=`.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The bits that let the group or others write.
const GROUP_OR_OTHER_WRITE: u32 = 0o022;

/// The sticky bit: in such a directory only a file's owner may rename or remove it.
const STICKY: u32 = 0o1000;

/// Why a user other than root or the daemon's could have written the file of `meta`, if one
/// could: it is owned by someone else, or writable by group or others.
pub fn file_open_to_others(meta: &Metadata) -> Option<String> {
    let me = nix::unistd::geteuid().as_raw();
    let mode = meta.mode() & 0o7777;
    if meta.uid() != me && meta.uid() != 0 {
        Some(format!(
            "is owned by uid {}, neither tokenkeeper's user (uid {me}) nor root",
            meta.uid()
        ))
    } else if mode & GROUP_OR_OTHER_WRITE != 0 {
        Some(format!("is writable by group or others (mode {mode:04o})"))
    } else {
        None
    }
}

/// Why a user other than root or the daemon's could swap what the directory of `meta` holds,
/// if one could: it is owned by someone else, or group or others may write it without the
/// sticky bit (which keeps them from renaming a file they do not own).
pub fn dir_open_to_others(meta: &Metadata) -> Option<String> {
    let me = nix::unistd::geteuid().as_raw();
    let mode = meta.mode() & 0o7777;
    if meta.uid() != me && meta.uid() != 0 {
        Some(format!(
            "is owned by uid {}, neither tokenkeeper's user (uid {me}) nor root",
            meta.uid()
        ))
    } else if mode & GROUP_OR_OTHER_WRITE != 0 && mode & STICKY == 0 {
        Some(format!(
            "is writable by group or others without the sticky bit (mode {mode:04o})"
        ))
    } else {
        None
    }
}

/// The first directory above `path` (as spelled) that another user could change, and why.
/// One that does not exist is passed over (its parent decides who could make it); one that
/// cannot be looked at otherwise is an error of its own, for the caller to report.
pub fn dirs_open_to_others(path: &Path) -> std::io::Result<Option<String>> {
    for dir in path.ancestors().skip(1) {
        let meta = match std::fs::metadata(dir) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if let Some(why) = dir_open_to_others(&meta) {
            return Ok(Some(format!("its directory {} {why}", dir.display())));
        }
    }
    Ok(None)
}

/// Why another user could choose what the program at `path` is, if one could: the file (as
/// its symlinks lead) or a directory above it, as written or as resolved, is open to them.
/// A program that does not exist yet is judged by its directories: whoever may write them
/// could put one there.
pub fn program_open_to_others(path: &Path) -> Option<String> {
    let real = std::fs::canonicalize(path).ok();
    for spelled in std::iter::once(path).chain(real.as_deref()) {
        if let Ok(Some(why)) = dirs_open_to_others(spelled) {
            return Some(why);
        }
    }
    match std::fs::metadata(path) {
        Ok(meta) => file_open_to_others(&meta).map(|why| format!("it {why}")),
        // Not there (yet): the sticky bit keeps others from replacing what another user made
        // in a directory, not from making a name nobody has taken.
        Err(_) => path.ancestors().skip(1).find_map(|dir| {
            let meta = std::fs::metadata(dir).ok()?;
            let mode = meta.mode() & 0o7777;
            Some((mode & GROUP_OR_OTHER_WRITE != 0).then(|| {
                format!(
                    "it does not exist, and its directory {} (mode {mode:04o}) lets group or others make it",
                    dir.display()
                )
            }))
        })?,
    }
}
