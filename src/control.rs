//! What the process (its signals, or the HA lease) asks of a running daemon.

/// What the process asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM/SIGINT: revoke everything and stop.
    Shutdown,
    /// SIGUSR1: give every set a new token now.
    Rotate,
    /// SIGHUP: re-read the config.
    Reload,
    /// Stop without revoking the sets' current tokens: another instance (HA) carries on with
    /// them. Superseded and in-flight tokens are still revoked; sinks are left as they are.
    Handover,
}
