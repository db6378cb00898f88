//! Exclusive ownership of a state directory, and the checks that it and its files are the
//! daemon's user's alone.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::trust::{Owners, Writers, open_to_others, swappable_ancestor};

use super::{JOURNAL_MODE, JournalError, LOCK_FILE, io};
use crate::fsio::STATE_DIR_MODE;

/// Exclusive ownership of a state directory, for as long as this value lives.
#[derive(Debug)]
pub struct StateLock {
    /// Held for its drop, which releases the lock.
    _lock: Flock<File>,
    dir: PathBuf,
    /// The lock file's path, and the device and inode of the file locked: fixed for as long
    /// as the lock is held, so [`StateLock::still_guards`], asked at every journal commit,
    /// costs one `stat` of the path.
    path: PathBuf,
    held: (u64, u64),
}

impl StateLock {
    /// The lock's descriptor, for a restart in place to keep it open across the exec.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self._lock.as_raw_fd()
    }

    /// Whether the lock file at the path is still the file this lock holds. A state
    /// directory removed (or its lock file replaced) while the daemon runs leaves the lock
    /// on a file nobody can find, and a second process would lock a new one beside it.
    pub fn still_guards(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.held)
    }

    /// Take the state directory's lock again if it was lost (see [`StateLock::still_guards`]):
    /// the directory is made again and locked, and the old lock released. `Ok(true)` when
    /// it was taken again; [`JournalError::Locked`] when another process holds it now.
    pub fn take_again(&mut self) -> Result<bool, JournalError> {
        if self.still_guards() {
            return Ok(false);
        }
        *self = lock_state_dir(&self.dir)?;
        Ok(true)
    }
}

/// Whether `meta` (of `path`) is what only the daemon's user can have written: owned by it
/// and writable by nobody else.
fn ours_alone(path: &Path, meta: &std::fs::Metadata) -> Result<(), JournalError> {
    match open_to_others(meta, Owners::Daemon) {
        Some(why) => Err(JournalError::Unsafe {
            path: path.to_path_buf(),
            why,
        }),
        None => Ok(()),
    }
}

/// The directories above `state_dir` must not let another user swap it for one of theirs.
fn ancestors_safe(dir: &Path) -> Result<(), JournalError> {
    match swappable_ancestor(dir, Writers::Others) {
        Some((path, why)) => Err(JournalError::Unsafe {
            path,
            why: format!("{why}, and holds the state directory"),
        }),
        None => Ok(()),
    }
}

/// Open a state file (journal or lock) without following a symlink, and refuse it unless it
/// is a regular file only the daemon's user can have written.
pub(super) fn open_state_file(
    path: &Path,
    options: &mut OpenOptions,
) -> Result<File, JournalError> {
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => JournalError::Unsafe {
                path: path.to_path_buf(),
                why: "is not a regular file (it is a symlink)".into(),
            },
            _ => io("open", path)(e),
        })?;
    let meta = file.metadata().map_err(io("stat", path))?;
    if !meta.is_file() {
        return Err(JournalError::Unsafe {
            path: path.to_path_buf(),
            why: "is not a regular file".into(),
        });
    }
    ours_alone(path, &meta)?;
    Ok(file)
}

/// Take over the lock a predecessor held on `dir` and kept open across its exec, as `fd`
/// (see `daemon::Restart`): the lock never leaves this process, so no other can slip in. The
/// descriptor is believed only if it is open on `dir`'s lock file, checked as
/// [`lock_state_dir`] checks it; otherwise it is left alone and the error says why.
pub fn lock_inherited(dir: &Path, fd: std::os::fd::RawFd) -> Result<StateLock, JournalError> {
    use std::os::fd::{BorrowedFd, FromRawFd};
    use std::os::unix::fs::MetadataExt;
    ancestors_safe(dir)?;
    let path = dir.join(LOCK_FILE);
    let not_it = |why: String| JournalError::Unsafe {
        path: path.clone(),
        why,
    };
    if fd <= 2 {
        return Err(not_it(format!(
            "was handed over as descriptor {fd}, a standard stream"
        )));
    }
    // SAFETY: only borrowed, to look at it; closed by nobody here.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = nix::sys::stat::fstat(borrowed)
        .map_err(|e| io("stat the handed-over lock", &path)(std::io::Error::from(e)))?;
    let on_disk = std::fs::symlink_metadata(&path).map_err(io("stat", &path))?;
    if (stat.st_dev as u64, stat.st_ino as u64) != (on_disk.dev(), on_disk.ino()) {
        return Err(not_it(format!(
            "is not the file handed over as descriptor {fd}"
        )));
    }
    if !on_disk.is_file() {
        return Err(not_it("is not a regular file".into()));
    }
    ours_alone(&path, &on_disk)?;
    // SAFETY: the descriptor is the lock file, handed to this process alone by its
    // predecessor, and owned from here on by the lock.
    let file = unsafe { File::from_raw_fd(fd) };
    // Closed at any later exec but a restart's own, like every other descriptor.
    nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| io("fcntl", &path)(std::io::Error::from(e)))?;
    // The same open file holds the lock already: this only makes it ours to release.
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            return Err(JournalError::Locked {
                path,
                pid: String::new(),
            });
        }
        Err((_, e)) => return Err(io("lock", &path)(std::io::Error::from(e))),
    };
    super::disk::remove_leftover_copies(dir);
    Ok(StateLock {
        _lock: lock,
        dir: dir.to_path_buf(),
        path,
        held: (on_disk.dev(), on_disk.ino()),
    })
}

/// Create `state_dir` (exactly 0700) and take its lock, without blocking. A state directory,
/// lock or journal another user owns or may write is refused, not repaired: what it holds
/// may be theirs.
pub fn lock_state_dir(dir: &Path) -> Result<StateLock, JournalError> {
    ancestors_safe(dir)?;
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => ours_alone(dir, &meta)?,
        // Not a directory: ensure_dir says so by name.
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io("stat", dir)(e)),
    }
    // It holds live tokens and is ours alone, so a read mode someone added is taken back.
    crate::fsio::ensure_dir(dir, STATE_DIR_MODE, crate::fsio::Existing::SetMode).map_err(|e| {
        JournalError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    })?;
    let path = dir.join(LOCK_FILE);
    let file = open_state_file(
        &path,
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(JOURNAL_MODE),
    )?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let pid = std::fs::read_to_string(&path)
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            return Err(JournalError::Locked { path, pid });
        }
        Err((_, e)) => return Err(io("lock", &path)(std::io::Error::from(e))),
    };
    // The pid inside is for the message above, and for operators; the lock is the flock.
    let pid = std::process::id().to_string();
    lock.set_len(0).map_err(io("write", &path))?;
    (&*lock)
        .write_all(pid.as_bytes())
        .map_err(io("write", &path))?;
    let held = {
        use std::os::unix::fs::MetadataExt;
        let m = lock.metadata().map_err(io("stat", &path))?;
        (m.dev(), m.ino())
    };
    // Only now that no other process can be compacting the journal here.
    super::disk::remove_leftover_copies(dir);
    Ok(StateLock {
        _lock: lock,
        dir: dir.to_path_buf(),
        path,
        held,
    })
}
