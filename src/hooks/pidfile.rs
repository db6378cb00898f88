//! The pid an `on_rotate` signal goes to. Whoever can write the pidfile chooses the process
//! the daemon signals, with the daemon's rights: as root, any process of the machine. So the
//! file is believed only as systemd's `PIDFile=` believes one: a regular file (not a link, not
//! a FIFO that would block the read), owned by root or the daemon's user and writable by
//! nobody else. And whatever it says, the daemon never signals itself (a SIGUSR1 to itself
//! would rotate every set, the hook again, for ever), init, or another user's process. The
//! signal goes through a pidfd opened before the process is checked, so a pid that ends and is
//! reused in between is never signalled in its place.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, Uid};
use tokio::io::AsyncReadExt;

/// A pid is at most 7 digits (the kernel's `pid_max` is at most 2^22); with blanks and a
/// newline a pidfile is a few bytes. Anything longer is not a pidfile, and is not read.
const MAX_PIDFILE_BYTES: u64 = 64;

/// The bits that let the group or others write a file.
const GROUP_OR_OTHER_WRITE: u32 = 0o022;

/// Why a pidfile, or the process it names, was refused. Each names the pidfile.
#[derive(Debug, thiserror::Error)]
pub enum PidfileError {
    #[error("cannot open pidfile {path}", path = path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read pidfile {path}", path = path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pidfile {path} is a symbolic link: name the file itself", path = path.display())]
    Symlink { path: PathBuf },
    #[error("pidfile {path} is not a regular file", path = path.display())]
    NotAFile { path: PathBuf },
    #[error(
        "pidfile {path} is owned by uid {uid}, neither root nor this daemon's user (uid {me}): that user would choose what is signalled",
        path = path.display()
    )]
    Owner { path: PathBuf, uid: u32, me: u32 },
    #[error(
        "pidfile {path} is writable by group or others (mode {mode:04o}): they would choose what is signalled; run `chmod go-w {path}`",
        path = path.display()
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error("pidfile {path} is larger than {MAX_PIDFILE_BYTES} bytes, which no pid is", path = path.display())]
    TooLarge { path: PathBuf },
    #[error("pidfile {path} does not hold a process id above 1", path = path.display())]
    BadPid { path: PathBuf },
    #[error("pidfile {path} names this daemon (pid {pid}), which never signals itself", path = path.display())]
    Itself { path: PathBuf, pid: i32 },
    #[error("pidfile {path} names pid {pid}, which is not running", path = path.display())]
    NotRunning { path: PathBuf, pid: i32 },
    #[error(
        "pidfile {path} names pid {pid}, a process of another user (uid {uid}; this daemon runs as uid {me}), which is never signalled",
        path = path.display()
    )]
    OtherUser {
        path: PathBuf,
        pid: i32,
        uid: u32,
        me: u32,
    },
}

/// A process a pidfile named, checked and held: it can be signalled, and nothing else can
/// take its place.
#[derive(Debug)]
pub struct Target {
    pub pid: i32,
    /// None on kernels before 5.3, which have no pidfd: then the pid itself is signalled.
    pidfd: Option<OwnedFd>,
}

impl Target {
    /// Send `signal` to the process checked, or fail with ESRCH if it has ended since.
    pub fn send(&self, signal: Signal) -> Result<(), Errno> {
        let Some(fd) = &self.pidfd else {
            return kill(Pid::from_raw(self.pid), signal);
        };
        let null_info: *const libc::siginfo_t = std::ptr::null();
        // SAFETY: pidfd_send_signal(2) on a descriptor we own, with no siginfo (a null
        // pointer the kernel reads as "as kill(2) would") and no flags; it touches no memory.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                signal as libc::c_int,
                null_info,
                0 as libc::c_uint,
            )
        };
        if r == 0 { Ok(()) } else { Err(Errno::last()) }
    }
}

/// The process `path` names, if the file is one the daemon may believe and the process one
/// the daemon may signal.
pub async fn target(path: &Path) -> Result<Target, PidfileError> {
    let pid = read(path).await?;
    // Held before the checks: were the process to end and its pid go to another after them,
    // the signal would find this one gone rather than reach the other.
    let pidfd = pidfd_open(pid).map_err(|_| PidfileError::NotRunning {
        path: path.to_path_buf(),
        pid,
    })?;
    check_process(path, pid)?;
    Ok(Target { pid, pidfd })
}

/// A pidfd for `pid`; `Ok(None)` where the kernel has none to give (before 5.3), `Err` when
/// no such process runs.
fn pidfd_open(pid: i32) -> Result<Option<OwnedFd>, Errno> {
    // SAFETY: pidfd_open(2) takes a pid and flags, and returns a new descriptor or -1; it
    // touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0 as libc::c_uint) };
    match i32::try_from(fd) {
        Ok(fd) if fd >= 0 => {
            // SAFETY: the kernel just made this descriptor for us; nothing else owns it.
            Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
        }
        _ => match Errno::last() {
            Errno::ESRCH => Err(Errno::ESRCH),
            // ENOSYS (an old kernel) or a seccomp filter that refuses the call: the checks
            // still hold, with the pid itself signalled.
            _ => Ok(None),
        },
    }
}

/// Read the pid from `path`, refusing a file another user could have written.
async fn read(path: &Path) -> Result<i32, PidfileError> {
    let path_buf = || path.to_path_buf();
    // O_NOFOLLOW: a link swapped in by whoever can write the directory is refused, not
    // followed. O_NONBLOCK: opening a FIFO returns at once (it is refused below, unread).
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .await
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP) => PidfileError::Symlink { path: path_buf() },
            _ => PidfileError::Open {
                path: path_buf(),
                source,
            },
        })?;
    let meta = file.metadata().await.map_err(|source| PidfileError::Read {
        path: path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(PidfileError::NotAFile { path: path_buf() });
    }
    let me = Uid::effective().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(PidfileError::Owner {
            path: path_buf(),
            uid: meta.uid(),
            me,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & GROUP_OR_OTHER_WRITE != 0 {
        return Err(PidfileError::Writable {
            path: path_buf(),
            mode,
        });
    }
    let mut buf = Vec::new();
    file.take(MAX_PIDFILE_BYTES + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|source| PidfileError::Read {
            path: path_buf(),
            source,
        })?;
    if buf.len() as u64 > MAX_PIDFILE_BYTES {
        return Err(PidfileError::TooLarge { path: path_buf() });
    }
    // 0, 1 and negatives would signal a group, init, or everyone: never.
    std::str::from_utf8(&buf)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
        .ok_or_else(|| PidfileError::BadPid { path: path_buf() })
}

/// Refuse to signal this daemon, or a process whose real or effective user is not the
/// daemon's.
fn check_process(path: &Path, pid: i32) -> Result<(), PidfileError> {
    if u32::try_from(pid).is_ok_and(|p| p == std::process::id()) {
        return Err(PidfileError::Itself {
            path: path.to_path_buf(),
            pid,
        });
    }
    let me = Uid::effective().as_raw();
    // `Uid:` in status is real, effective, saved and filesystem uid. The owner of /proc/PID
    // would not do: a process that is not dumpable (a setuid program) shows as root's.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|_| {
        PidfileError::NotRunning {
            path: path.to_path_buf(),
            pid,
        }
    })?;
    let uids: Vec<u32> = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|u| u.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // A status without its uids is a process that is ending.
    let (Some(&real), Some(&effective)) = (uids.first(), uids.get(1)) else {
        return Err(PidfileError::NotRunning {
            path: path.to_path_buf(),
            pid,
        });
    };
    match [real, effective].into_iter().find(|u| *u != me) {
        None => Ok(()),
        Some(uid) => Err(PidfileError::OtherUser {
            path: path.to_path_buf(),
            pid,
            uid,
            me,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[tokio::test]
    async fn only_a_pid_above_1_of_a_running_process_of_ours_is_a_target() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["1\n", "0", "-1", "x", ""] {
            let path = write(dir.path(), "p", text, 0o644);
            let err = target(&path).await.unwrap_err();
            assert!(
                matches!(err, PidfileError::BadPid { .. }),
                "{text:?}: {err}"
            );
        }
        let path = write(dir.path(), "p", &format!("{}\n", std::process::id()), 0o644);
        let err = target(&path).await.unwrap_err();
        assert!(matches!(err, PidfileError::Itself { .. }), "{err}");
        let path = write(dir.path(), "p", &"1".repeat(100), 0o644);
        let err = target(&path).await.unwrap_err();
        assert!(matches!(err, PidfileError::TooLarge { .. }), "{err}");
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let path = write(dir.path(), "p", &format!(" {}\n", child.id()), 0o600);
        let t = target(&path).await.unwrap();
        assert_eq!(t.pid, child.id() as i32);
        assert!(
            t.pidfd.is_some(),
            "this kernel has pidfds: they must be used"
        );
        // Once the process has ended, its pidfd says so, whatever the pid became.
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(t.send(Signal::SIGTERM), Err(Errno::ESRCH));
    }

    #[tokio::test]
    async fn a_pidfile_others_could_write_or_not_a_file_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "open", "4242\n", 0o620);
        let err = target(&path).await.unwrap_err();
        assert!(
            matches!(err, PidfileError::Writable { mode: 0o620, .. }),
            "{err}"
        );
        let err = target(dir.path()).await.unwrap_err();
        assert!(matches!(err, PidfileError::NotAFile { .. }), "{err}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("open"), &link).unwrap();
        let err = target(&link).await.unwrap_err();
        assert!(matches!(err, PidfileError::Symlink { .. }), "{err}");
    }
}
