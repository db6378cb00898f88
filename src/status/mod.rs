//! Each set's state as other processes see it: `status.json` in the state directory for
//! `tokenkeeper status`, the one-line summary for systemd's `STATUS=`, and the figures the
//! [`crate::metrics`] exposition is made of.
//!
//! Transport: a file, rewritten atomically on every change and at least every [`HEARTBEAT`],
//! not a unix socket. A file needs no listener inside the sandbox, no socket permissions to
//! get right and no protocol; it is readable with `jq` when tokenkeeper itself is not at hand;
//! and it outlives a crash, so `status` can say "gone since 14:02" rather than "no answer".
//! Liveness is the recorded pid being alive plus a recent heartbeat: either alone is fooled,
//! by pid reuse after a crash or by a hung runtime.
//!
//! The daemon side is a [`Board`]: each set's task reports into a [`SetStats`] watch, the
//! board collects every set's channels, and [`crate::reporter::run`] turns changes into the file, the
//! textfile metrics, `STATUS=` and `WATCHDOG=1`.

use std::time::Duration;

mod board;
mod render;
mod snapshot;
mod state;

pub use board::{Board, SetReport};
pub use render::{not_running_message, plural, render_json, render_table, short, summary};
pub use snapshot::{
    HaStatus, Liveness, SetSnapshot, Snapshot, StatusError, StoreHealth, liveness, pid_alive,
    read_status_file, write_status_file,
};
pub use state::{Phase, SetPhase, SetState, SetStats};

/// The status file's name inside `state_dir`.
pub const STATUS_FILE: &str = "status.json";

/// The status file (and the textfile metrics, and `STATUS=`'s countdown) is rewritten at least
/// this often. Ten seconds keeps a "next refresh in" countdown current to the eye while the
/// write (a few hundred bytes and an fsync) stays negligible.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Status file format; bumped on any change a script would notice.
const FORMAT_VERSION: u32 = 1;

#[cfg(test)]
mod tests;
