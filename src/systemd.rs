//! systemd integration without libsystemd: sd_notify(3) datagrams to `$NOTIFY_SOCKET`, the
//! watchdog interval, and whether stderr is a journal stream.
//!
//! Outside systemd (no `NOTIFY_SOCKET`, no `JOURNAL_STREAM`) every function here does nothing
//! or says "no", so the daemon behaves the same in a terminal, a container or a test.

use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Send `state` (for example `READY=1`) to systemd, if it is listening. Failures are ignored
/// on purpose: a notification is advice to the service manager, never a reason to stop.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let _ = if let Some(name) = bytes.strip_prefix(b"@") {
        // Abstract socket: the name after '@', with no NUL terminator.
        use std::os::linux::net::SocketAddrExt;
        match std::os::unix::net::SocketAddr::from_abstract_name(name) {
            Ok(addr) => sock.send_to_addr(state.as_bytes(), &addr),
            Err(e) => Err(e),
        }
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
}

/// `READY=1`: every scope set has a valid token in place (start-up), or a reload is over.
pub fn ready() {
    notify("READY=1");
}

/// `STATUS=`: the one line `systemctl status` shows. Newlines would end the assignment, so
/// they become spaces.
pub fn status(line: &str) {
    notify(&format!("STATUS={}", line.replace('\n', " ")));
}

/// `STOPPING=1`: stop has begun; revocation may take up to `shutdown_timeout`.
pub fn stopping() {
    notify("STOPPING=1");
}

/// `WATCHDOG=1`: the daemon's runtime is alive.
pub fn watchdog_ping() {
    notify("WATCHDOG=1");
}

/// A reload under way, as systemd sees it. The reload code takes one with
/// `let _reload = crate::systemd::reloading();` as it starts on SIGHUP and keeps it until the
/// new config is in force or refused: dropping it sends `READY=1`, since on every path out the
/// daemon is serving again, on the new config or the old one.
#[must_use = "READY=1 is sent when the guard drops; dropping it at once ends the reload at once"]
pub struct Reloading(());

/// Tell systemd a reload has begun: `RELOADING=1` with `MONOTONIC_USEC`, which systemd 253+
/// requires for `Type=notify-reload` to match the notification to its `ExecReload=` and older
/// versions ignore. `systemctl reload` returns once the guard drops.
pub fn reloading() -> Reloading {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => {
            let usec = ts.tv_sec() * 1_000_000 + ts.tv_nsec() / 1_000;
            notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
        }
        Err(_) => notify("RELOADING=1"),
    }
    Reloading(())
}

impl Drop for Reloading {
    fn drop(&mut self) {
        ready();
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

    /// Every test that touches `NOTIFY_SOCKET` runs under this lock: the environment is
    /// process-wide and the test harness runs tests on several threads.
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn received(f: impl FnOnce()) -> Vec<String> {
        let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        // SAFETY: tests that touch NOTIFY_SOCKET hold ENV, and nothing else reads it.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        f();
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = listener.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn sends_to_the_socket_named_in_the_environment() {
        assert_eq!(received(|| notify("READY=1")), vec!["READY=1"]);
    }

    #[test]
    fn a_reload_is_bracketed_by_reloading_and_ready() {
        let got = received(|| {
            let _reload = reloading();
            status("reloading");
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

    #[test]
    fn status_is_one_line() {
        assert_eq!(received(|| status("a\nb")), vec!["STATUS=a b".to_string()]);
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
