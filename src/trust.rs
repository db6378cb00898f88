//! Who could have written a file: the rule every path another user might control is held to.
//! A file the daemon acts on (a program it runs, a template whose output it publishes) must
//! be one that only root or the daemon's user could have chosen: owned by one of them, not
//! writable by group or others, in directories that are the same or sticky. This is sshd's
//! StrictModes rule for `~/.ssh`, and systemd's for `PIDFile=`.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The bits that let the group or others write.
const GROUP_OR_OTHER_WRITE: u32 = 0o022;

/// The bit that lets others write.
const OTHER_WRITE: u32 = 0o002;

/// The sticky bit: in such a directory only a file's owner may rename or remove it.
const STICKY: u32 = 0o1000;

/// Who may own a file that only trusted users may have written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners {
    /// The daemon's user alone: what the daemon made itself (the state directory).
    Daemon,
    /// The daemon's user or root: what an operator installs (the config, a template).
    DaemonOrRoot,
}

/// Whose write access to a directory lets them swap what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writers {
    /// Others only: a group-writable directory is the operator's grant (a token directory
    /// shared with the application's group, the directories above the state directory).
    Others,
    /// Group or others: what the daemon runs or publishes (a program, a template) must be
    /// chosen by root or the daemon's user alone.
    GroupOrOthers,
}

/// Why a user other than `owners` could have written the file or directory of `meta`, if one
/// could: it is owned by someone else, or writable by group or others.
pub fn open_to_others(meta: &Metadata, owners: Owners) -> Option<String> {
    let me = nix::unistd::geteuid().as_raw();
    let uid = meta.uid();
    match owners {
        Owners::Daemon if uid != me => {
            return Some(format!(
                "is owned by uid {uid}, not by tokenkeeper's user (uid {me})"
            ));
        }
        Owners::DaemonOrRoot if uid != me && uid != 0 => {
            return Some(format!(
                "is owned by uid {uid}, neither tokenkeeper's user (uid {me}) nor root"
            ));
        }
        _ => {}
    }
    let mode = meta.mode() & 0o7777;
    (mode & GROUP_OR_OTHER_WRITE != 0)
        .then(|| format!("is writable by group or others (mode {mode:04o})"))
}

/// Why a user other than root or the daemon's could swap what the directory of `meta` holds,
/// if one could: it is owned by someone else, or `writers` may write it without the sticky
/// bit (which keeps them from renaming a file they do not own).
pub fn dir_open_to_others(meta: &Metadata, writers: Writers) -> Option<String> {
    let me = nix::unistd::geteuid().as_raw();
    let mode = meta.mode() & 0o7777;
    let (mask, who) = match writers {
        Writers::Others => (OTHER_WRITE, "others"),
        Writers::GroupOrOthers => (GROUP_OR_OTHER_WRITE, "group or others"),
    };
    if meta.uid() != me && meta.uid() != 0 {
        Some(format!(
            "is owned by uid {}, neither tokenkeeper's user (uid {me}) nor root",
            meta.uid()
        ))
    } else if mode & mask != 0 && mode & STICKY == 0 {
        Some(format!(
            "is writable by {who} without the sticky bit (mode {mode:04o})"
        ))
    } else {
        None
    }
}

/// The first directory above `path` (as spelled) that lets another user swap what it holds,
/// and why. Directories that cannot be looked at are passed over: one that does not exist
/// yet is made by the daemon, or its parent decides who could make it.
pub fn swappable_ancestor(path: &Path, writers: Writers) -> Option<(PathBuf, String)> {
    path.ancestors().skip(1).find_map(|dir| {
        let meta = std::fs::metadata(dir).ok()?;
        dir_open_to_others(&meta, writers).map(|why| (dir.to_path_buf(), why))
    })
}

/// [`swappable_ancestor`] of `path` as written, then as its symlinks lead: a link is judged
/// where it leads too, so a safe-looking path cannot borrow a directory another user holds.
pub fn swappable_ancestor_through_links(
    path: &Path,
    writers: Writers,
) -> Option<(PathBuf, String)> {
    let real = std::fs::canonicalize(path).ok();
    std::iter::once(path)
        .chain(real.as_deref())
        .find_map(|p| swappable_ancestor(p, writers))
}

/// Why another user could have chosen what the opened file at `path` (of `meta`) holds, if
/// one could: it is owned by someone other than root or the daemon's user, or a directory
/// above it, as written or as its links lead, lets someone else swap it. A key file is often
/// a link (to a secrets mount, say), so links are followed, and judged where they lead.
pub fn chosen_by_others(path: &Path, meta: &Metadata) -> Option<String> {
    if let Some(why) = open_to_others(meta, Owners::DaemonOrRoot) {
        return Some(why);
    }
    swappable_ancestor_through_links(path, Writers::Others)
        .map(|(dir, why)| format!("is in {}, which {why}", dir.display()))
}

/// Why another user could choose what the program at `path` is, if one could: the file (as
/// its symlinks lead) or a directory above it, as written or as resolved, is open to them.
/// A program that does not exist yet is judged by its directories: whoever may write them
/// could put one there.
pub fn program_open_to_others(path: &Path) -> Option<String> {
    if let Some((dir, why)) = swappable_ancestor_through_links(path, Writers::GroupOrOthers) {
        return Some(format!("its directory {} {why}", dir.display()));
    }
    match std::fs::metadata(path) {
        Ok(meta) => open_to_others(&meta, Owners::DaemonOrRoot).map(|why| format!("it {why}")),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_program_is_ours_only_when_no_other_user_could_choose_it() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let prog = bin.join("reload");
        std::fs::write(&prog, "#!/bin/sh\n").unwrap();
        chmod(&prog, 0o755);
        assert_eq!(program_open_to_others(&prog), None);
        chmod(&prog, 0o775);
        let why = program_open_to_others(&prog).unwrap();
        assert!(
            why.contains("writable by group or others (mode 0775)"),
            "{why}"
        );
        chmod(&prog, 0o755);
        // A group-writable directory lets the group swap the program; sticky does not save
        // a name nobody has taken yet.
        chmod(&bin, 0o775);
        let why = program_open_to_others(&prog).unwrap();
        assert!(why.contains("without the sticky bit (mode 0775)"), "{why}");
        chmod(&bin, 0o1777);
        assert_eq!(program_open_to_others(&prog), None);
        let why = program_open_to_others(&bin.join("missing")).unwrap();
        assert!(why.contains("does not exist"), "{why}");
        // Through a symlink, the directories of where it leads are judged too.
        chmod(&bin, 0o777);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&prog, &link).unwrap();
        assert!(program_open_to_others(&link).is_some());
    }

    #[test]
    fn others_alone_or_group_too_is_the_caller_s_choice() {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o775);
        let meta = std::fs::metadata(dir.path()).unwrap();
        assert_eq!(dir_open_to_others(&meta, Writers::Others), None);
        assert!(dir_open_to_others(&meta, Writers::GroupOrOthers).is_some());
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        chmod(&file, 0o644);
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(open_to_others(&meta, Owners::DaemonOrRoot), None);
        assert_eq!(open_to_others(&meta, Owners::Daemon), None);
    }
}
