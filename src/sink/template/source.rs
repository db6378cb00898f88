//! Where a template is read from. A template chooses what a token file holds, and that file is
//! readable by the application's group: whoever can change the template can make the daemon
//! write any file it can read (the journal, a key) where that group reads it. So a template
//! is read only from a file root or the daemon's user wrote, in directories only they can
//! change, and never through a symlink at the file itself, at every read (start and each
//! SIGHUP), not only at `check`.

use std::fs::{File, Metadata};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Why another user could have chosen what `meta` (a file) holds, if one could: it is owned
/// by neither the daemon's user nor root, or group or others may write it.
fn file_open_to_others(meta: &Metadata, me: u32) -> Option<String> {
    let mode = meta.mode() & 0o7777;
    if meta.uid() != me && meta.uid() != 0 {
        Some(format!(
            "is owned by uid {}, neither tokenkeeper's user (uid {me}) nor root",
            meta.uid()
        ))
    } else if mode & 0o022 != 0 {
        Some(format!("is writable by group or others (mode {mode:04o})"))
    } else {
        None
    }
}

/// Why another user could swap a file inside the directory `meta` describes, if one could:
/// it is owned by neither the daemon's user nor root, or group or others may write it without
/// the sticky bit (which keeps them from renaming a file they do not own).
fn dir_open_to_others(meta: &Metadata, me: u32) -> Option<String> {
    let mode = meta.mode() & 0o7777;
    if meta.uid() != me && meta.uid() != 0 {
        Some(format!(
            "is owned by uid {}, neither tokenkeeper's user (uid {me}) nor root",
            meta.uid()
        ))
    } else if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        Some(format!(
            "is writable by group or others without the sticky bit (mode {mode:04o})"
        ))
    } else {
        None
    }
}

/// Open the template at `path` for reading, refusing (with the reason) one another user
/// could have written or swapped: a symlink at the path itself, a file not owned by root or
/// the daemon's user or writable by others, a directory above it that another user owns or
/// may write. Non-blocking, so that a FIFO swapped in returns instead of waiting.
pub(super) fn open(path: &Path) -> Result<File, std::io::Error> {
    use std::io::{Error, ErrorKind};
    let me = nix::unistd::geteuid().as_raw();
    let refuse = |why: String| Error::new(ErrorKind::PermissionDenied, why);
    for dir in path.ancestors().skip(1) {
        let meta = std::fs::metadata(dir)?;
        if let Some(why) = dir_open_to_others(&meta, me) {
            return Err(refuse(format!(
                "its directory {} {why}: another user could put a template of theirs there",
                dir.display()
            )));
        }
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => refuse(
                "is a symlink: name the template file itself, so that nobody can point it elsewhere later".into(),
            ),
            _ => e,
        })?;
    let meta = file.metadata()?;
    if let Some(why) = file_open_to_others(&meta, me) {
        return Err(refuse(format!(
            "{why}: another user could choose what the token file holds"
        )));
    }
    Ok(file)
}
