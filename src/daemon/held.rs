//! A token a set holds, with its budget slot.

use std::time::Duration;

use tokio::time::Instant;

use crate::budget::Slot;
use crate::journal::Entry;
use crate::provider::Issued;
use crate::secret::Secret;
use crate::sink::IssuedMeta;

/// A token a set holds, with its place in the provider's budget.
pub struct Held {
    pub(super) token: Secret,
    pub(super) fingerprint: Box<str>,
    pub(super) expires_at: Instant,
    /// `expires_at` is an assumption (the provider gave no lifetime): the token may be live
    /// past it, so it is revoked rather than dropped as expired.
    pub(super) assumed: bool,
    /// Given back when the token is dropped: revoked, expired, or abandoned at exit.
    pub(super) _slot: Slot,
}

impl Held {
    pub(super) fn from_issued(issued: Issued, slot: Slot) -> (Held, IssuedMeta) {
        let meta = IssuedMeta {
            expires_at: issued.expires_at_wall(),
            token_type: issued.token_type.clone(),
            scope: issued.scope.clone(),
        };
        let held = Held {
            fingerprint: issued.token.fingerprint().into(),
            expires_at: issued.expires_at(),
            assumed: issued.lifetime_assumed,
            token: issued.token,
            _slot: slot,
        };
        (held, meta)
    }

    /// A token from the journal, alive for `remaining` more.
    pub fn adopted(entry: &Entry, remaining: Duration, slot: Slot) -> Held {
        Held {
            token: entry.token.clone(),
            fingerprint: entry.fingerprint.as_str().into(),
            expires_at: Instant::now() + remaining,
            assumed: entry.lifetime_assumed,
            _slot: slot,
        }
    }

    /// Whether it can be left to expire by `now`: its expiry is known, not assumed, and past.
    pub(super) fn surely_expired(&self, now: Instant) -> bool {
        !self.assumed && self.expires_at <= now
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether both hold the same token: by value, since fingerprints are short enough to
    /// collide, and two different tokens taken for one would leave one unrevoked.
    pub(super) fn same_token(&self, other: &Held) -> bool {
        self.token == other.token
    }
}
