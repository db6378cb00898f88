//! The small state types a set's task reports and others read: [`SetState`], [`SetStats`],
//! and the words [`Phase`] and [`SetPhase`].

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::clock::wall;

/// A set's state as others may see it (readiness, status).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum SetState {
    /// No token yet.
    #[default]
    Starting,
    /// A valid token is in the sink.
    Fresh {
        fingerprint: String,
        expires_at: Instant,
        next_refresh: Instant,
    },
    /// The last attempt failed; `has_token` says whether a valid token is still in place.
    Failing { has_token: bool, error: String },
    /// Stopped.
    Stopped,
}

/// What a set's task reports besides its [`SetState`]: counters and facts for status and
/// metrics. Updated through [`SetReport`](super::SetReport), so each update wakes the reporter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SetStats {
    /// Tokens the provider issued to this set (written or not).
    pub issued: u64,
    /// Issue attempts that failed, or whose token could not be written.
    pub issue_failures: u64,
    /// Tokens revoked: superseded ones and, at stop, everything.
    pub revoked: u64,
    /// Revocation attempts that failed.
    pub revoke_failures: u64,
    /// Tokens the provider minted in answers refused for their other fields (token_type,
    /// lifetime), each revoked at once.
    pub refused: u64,
    /// Journal records that failed: each token concerned was logged by fingerprint, and one
    /// not in use was revoked at once.
    pub journal_failures: u64,
    /// A token request is under way.
    pub refreshing: bool,
    /// Tokens this set holds that the provider still counts as live: the current one,
    /// superseded ones awaiting revocation, ones being revoked.
    pub live_tokens: usize,
    /// The token in the file, by fingerprint, and when it expires.
    pub fingerprint: Option<String>,
    pub expires_at: Option<SystemTime>,
    /// When the next token will be asked for (planned refresh or retry).
    pub next_refresh: Option<SystemTime>,
    /// The last failure, without any secret (the same text the log has), and when.
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    /// The token expired with no replacement, and none has come since.
    pub expired: bool,
    /// The token the set took back at start (from the journal, the store or the binary it
    /// replaced) rather than wrote anew: its consumers have it already, so no `on_rotate`
    /// hook runs for it.
    pub adopted: Option<String>,
}

impl SetStats {
    /// The provider minted a token in an answer that was refused.
    pub fn token_refused(&mut self) {
        self.refused += 1;
    }

    /// A token request is being sent.
    pub fn issue_started(&mut self) {
        self.refreshing = true;
    }

    /// The provider issued a token (not yet written).
    pub fn issue_succeeded(&mut self) {
        self.refreshing = false;
        self.issued += 1;
    }

    /// The request failed, or its token could not be written; `retry_at` is the next attempt.
    pub fn issue_failed(&mut self, error: String, retry_at: Instant) {
        self.refreshing = false;
        self.issue_failures += 1;
        self.last_error = Some(error);
        self.last_error_at = Some(crate::clock::now_wall());
        self.next_refresh = Some(wall(retry_at));
    }

    /// A token's journal record could not be written; nothing was retried for it, so no
    /// issue failure is counted.
    pub fn journal_failed(&mut self, error: String) {
        self.journal_failures += 1;
        self.last_error = Some(error);
        self.last_error_at = Some(crate::clock::now_wall());
    }

    /// A new token is in the file.
    pub fn written(&mut self, fingerprint: &str, expires_at: SystemTime, next_refresh: Instant) {
        self.fingerprint = Some(fingerprint.to_string());
        self.expires_at = Some(expires_at);
        self.next_refresh = Some(wall(next_refresh));
        self.expired = false;
    }

    /// A token taken back at start is in place: shown as a written one is, but not a rotation.
    pub fn adopted(&mut self, fingerprint: &str, expires_at: SystemTime, next_refresh: Instant) {
        self.written(fingerprint, expires_at, next_refresh);
        self.adopted = Some(fingerprint.to_string());
    }

    /// The token in the file expired with no replacement; the file is gone.
    pub fn token_expired(&mut self) {
        self.fingerprint = None;
        self.expires_at = None;
        self.expired = true;
    }

    /// A revocation finished.
    pub fn revoke_result(&mut self, ok: bool) {
        if ok {
            self.revoked += 1;
        } else {
            self.revoke_failures += 1;
        }
    }

    /// Record how many live tokens the set holds; true if that changed (for `send_if_modified`).
    pub fn set_live(&mut self, n: usize) -> bool {
        let changed = self.live_tokens != n;
        self.live_tokens = n;
        changed
    }
}

/// The daemon as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Not every set has had a token yet (systemd has no `READY=1` yet).
    Starting,
    /// Ready was reported.
    Running,
    /// Revoking everything.
    Stopping,
    /// Exited cleanly; the file is the last word.
    Stopped,
}

/// One set's state in words a person or a script can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SetPhase {
    /// No token yet, no failure yet.
    Starting,
    /// A valid token is in place.
    Fresh,
    /// A valid token is in place and its replacement is being asked for.
    Refreshing,
    /// The last attempt failed; a token may still be in place (see `expires_at`).
    Failing,
    /// The token expired with no replacement: the file is gone.
    Expired,
    /// The set was stopped (its tokens revoked or kept).
    Stopped,
}

impl SetPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            SetPhase::Starting => "starting",
            SetPhase::Fresh => "fresh",
            SetPhase::Refreshing => "refreshing",
            SetPhase::Failing => "failing",
            SetPhase::Expired => "expired",
            SetPhase::Stopped => "stopped",
        }
    }

    /// A valid token is in the file.
    pub fn has_token(self) -> bool {
        matches!(self, SetPhase::Fresh | SetPhase::Refreshing)
    }

    /// Every phase, for one-hot metrics.
    pub const ALL: [SetPhase; 6] = [
        SetPhase::Starting,
        SetPhase::Fresh,
        SetPhase::Refreshing,
        SetPhase::Failing,
        SetPhase::Expired,
        SetPhase::Stopped,
    ];
}

/// Combine the task's [`SetState`] with its counters into one word.
pub(super) fn set_phase(state: &SetState, stats: &SetStats) -> SetPhase {
    match state {
        SetState::Stopped => SetPhase::Stopped,
        SetState::Fresh { .. } if stats.refreshing => SetPhase::Refreshing,
        SetState::Fresh { .. } => SetPhase::Fresh,
        SetState::Failing { .. } if stats.expired => SetPhase::Expired,
        SetState::Failing { .. } => SetPhase::Failing,
        SetState::Starting if stats.last_error.is_some() => SetPhase::Failing,
        SetState::Starting => SetPhase::Starting,
    }
}
