//! Where a template is read from. A template chooses what a token file holds, and that file is
//! readable by the application's group: whoever can change the template can make the daemon
//! write any file it can read (the journal, a key) where that group reads it. So a template
//! is read only from a file root or the daemon's user wrote, in directories only they can
//! change, and never through a symlink at the file itself, at every read (start and each
//! SIGHUP), not only at `check`.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::trust;

/// Open the template at `path` for reading, refusing (with the reason) one another user
/// could have written or swapped: a symlink at the path itself, a file not owned by root or
/// the daemon's user or writable by others, a directory above it that another user owns or
/// may write. Non-blocking, so that a FIFO swapped in returns instead of waiting.
pub(super) fn open(path: &Path) -> Result<(File, std::fs::Metadata), std::io::Error> {
    use std::io::{Error, ErrorKind};
    let refuse = |why: String| Error::new(ErrorKind::PermissionDenied, why);
    if let Some((dir, why)) = trust::swappable_ancestor(path, trust::Writers::GroupOrOthers) {
        return Err(refuse(format!(
            "its directory {} {why}: another user could put a template of theirs there",
            dir.display()
        )));
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
    if let Some(why) = trust::open_to_others(&meta, trust::Owners::DaemonOrRoot) {
        return Err(refuse(format!(
            "{why}: another user could choose what the token file holds"
        )));
    }
    Ok((file, meta))
}
