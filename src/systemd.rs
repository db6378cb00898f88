//! systemd integration without libsystemd: sd_notify(3) datagrams to `$NOTIFY_SOCKET` (the
//! states as the `sd-notify` crate spells them), the watchdog interval, and whether stderr is
//! a journal stream.
//!
//! Outside systemd (no `NOTIFY_SOCKET`, no `JOURNAL_STREAM`) every function here does nothing
//! or says "no", so the daemon behaves the same in a terminal, a container or a test.
//!
//! The crate's own `notify` is not used to send: it reads `NOTIFY_SOCKET` at each call, with
//! no way to name another socket (tests would have to set the variable, see [`Notifier`]), it
//! connects to an `@` (abstract) address as if it were a path, which fails, and it ends every
//! state with a newline, which changes the datagrams readers here and in tests compare. Its
//! watchdog reading halves nothing and takes `WATCHDOG_USEC=0` for an interval of zero, which
//! tokio's `interval` refuses: [`watchdog_interval`] stays.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

pub use sd_notify::NotifyState;

/// Where notifications go: the socket `NOTIFY_SOCKET` names, or nowhere. The free functions
/// below read the environment at each call; a test names its own socket with
/// [`Notifier::to`] instead of setting the variable, which other tests' daemons in the same
/// process read (a `setenv` racing a `getenv` is undefined behaviour with glibc).
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    socket: Option<OsString>,
}

impl Notifier {
    /// The socket the environment names now, if any.
    pub fn from_env() -> Notifier {
        Notifier {
            socket: std::env::var_os("NOTIFY_SOCKET"),
        }
    }

    /// Notifications to `socket` (a path, or `@NAME` for an abstract socket), whatever the
    /// environment says.
    pub fn to(socket: impl Into<OsString>) -> Notifier {
        Notifier {
            socket: Some(socket.into()),
        }
    }

    /// Send `states` in one datagram, one per line, if anyone is listening. Failures are
    /// ignored on purpose: a notification is advice to the service manager, never a reason to
    /// stop.
    pub fn notify(&self, states: &[NotifyState<'_>]) {
        let Some(path) = &self.socket else {
            return;
        };
        let Ok(sock) = UnixDatagram::unbound() else {
            return;
        };
        let message = states
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        let bytes = path.as_encoded_bytes();
        let _ = if let Some(name) = bytes.strip_prefix(b"@") {
            // Abstract socket: the name after '@', with no NUL terminator.
            use std::os::linux::net::SocketAddrExt;
            match std::os::unix::net::SocketAddr::from_abstract_name(name) {
                Ok(addr) => sock.send_to_addr(message.as_bytes(), &addr),
                Err(e) => Err(e),
            }
        } else {
            sock.send_to(message.as_bytes(), path)
        };
    }

    /// See [`ready`].
    pub fn ready(&self) {
        self.notify(&[NotifyState::Ready]);
    }

    /// See [`status`].
    pub fn status(&self, line: &str) {
        self.notify(&[NotifyState::Status(&line.replace('\n', " "))]);
    }

    /// See [`reloading`]: the guard sends its `READY=1` to the same socket.
    pub fn reloading(&self) -> Reloading {
        match NotifyState::monotonic_usec_now() {
            Ok(usec) => self.notify(&[NotifyState::Reloading, usec]),
            Err(_) => self.notify(&[NotifyState::Reloading]),
        }
        Reloading(self.clone())
    }
}

/// Send `states` to systemd, if it is listening (see [`Notifier::notify`]).
pub fn notify(states: &[NotifyState<'_>]) {
    Notifier::from_env().notify(states);
}

/// `READY=1`: every scope set has a valid token in place (start-up), or a reload is over.
pub fn ready() {
    Notifier::from_env().ready();
}

/// `STATUS=`: the one line `systemctl status` shows. Newlines would end the assignment, so
/// they become spaces.
pub fn status(line: &str) {
    Notifier::from_env().status(line);
}

/// `STOPPING=1`: stop has begun; revocation may take up to `shutdown_timeout`.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// `WATCHDOG=1`: the daemon's runtime is alive.
pub fn watchdog_ping() {
    notify(&[NotifyState::Watchdog]);
}

/// A reload under way, as systemd sees it. The reload code takes one with
/// `let _reload = crate::systemd::reloading();` as it starts on SIGHUP and keeps it until the
/// new config is in force or refused: dropping it sends `READY=1`, since on every path out the
/// daemon is serving again, on the new config or the old one.
#[must_use = "READY=1 is sent when the guard drops; dropping it at once ends the reload at once"]
pub struct Reloading(Notifier);

/// Tell systemd a reload has begun: `RELOADING=1` with `MONOTONIC_USEC`, which systemd 253+
/// requires for `Type=notify-reload` to match the notification to its `ExecReload=` and older
/// versions ignore. `systemctl reload` returns once the guard drops.
pub fn reloading() -> Reloading {
    Notifier::from_env().reloading()
}

impl Reloading {
    /// End the guard without `READY=1`: the process is about to exec its successor, which
    /// sends it once it serves.
    pub fn handed_on(self) {
        std::mem::forget(self);
    }
}

impl Drop for Reloading {
    fn drop(&mut self) {
        self.0.ready();
    }
}

/// How often to send `WATCHDOG=1`: half of `WatchdogSec=` (sd_watchdog_enabled(3) advises
/// pinging well within the timeout), or `None` if the unit sets no watchdog or the watchdog
/// is meant for another process (`WATCHDOG_PID`).
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(me)
    {
        return None;
    }
    Some(Duration::from_micros(usec) / 2)
}

/// Whether our stderr is the journal stream systemd connected (`JOURNAL_STREAM` is
/// `DEVICE:INODE` of it). Comparing with stderr itself, not just checking that the variable is
/// set, keeps a child that inherited the variable but writes to a pipe or terminal from
/// sending structured records nobody asked for.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    journal_stream_matches(&stream.to_string_lossy(), st.st_dev, st.st_ino)
}

fn journal_stream_matches(stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = stream.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `f` sends to a socket of its own, named to it, not through the environment
    /// (see [`Notifier`]).
    fn received(f: impl FnOnce(Notifier)) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        f(Notifier::to(&path));
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = listener.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn sends_to_the_socket_named() {
        assert_eq!(received(|n| n.ready()), vec!["READY=1"]);
        // Nobody listening: nothing is sent, and nothing fails.
        Notifier::default().ready();
    }

    #[test]
    fn a_reload_is_bracketed_by_reloading_and_ready() {
        let got = received(|n| {
            let _reload = n.reloading();
            n.status("reloading");
        });
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got[0].starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{got:?}"
        );
        let usec: u64 = got[0].rsplit('=').next().unwrap().parse().unwrap();
        assert!(usec > 0);
        assert_eq!(got[1], "STATUS=reloading");
        assert_eq!(got[2], "READY=1");
    }

    /// `@NAME` is an abstract socket (sd_notify(3)), not a path: the reason the sending is
    /// done here (see the module).
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("tokenkeeper-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        Notifier::to(format!("@{name}")).notify(&[NotifyState::Stopping]);
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn status_is_one_line() {
        assert_eq!(
            received(|n| n.status("a\nb")),
            vec!["STATUS=a b".to_string()]
        );
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_and_only_for_us() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_interval_from(Some("30000000"), None, 7), half);
        assert_eq!(watchdog_interval_from(Some("30000000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval_from(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("x"), None, 7), None);
    }

    #[test]
    fn journal_stream_must_name_our_stderr() {
        assert!(journal_stream_matches("8:1234", 8, 1234));
        assert!(!journal_stream_matches("8:1234", 8, 1235));
        assert!(!journal_stream_matches("9:1234", 8, 1234));
        assert!(!journal_stream_matches("garbage", 8, 1234));
        assert!(!journal_stream_matches("", 8, 1234));
    }
}
