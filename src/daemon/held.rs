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
    pub(super) fingerprint: String,
    pub(super) expires_at: Instant,
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
            fingerprint: issued.token.fingerprint(),
            expires_at: issued.expires_at(),
            token: issued.token,
            _slot: slot,
        };
        (held, meta)
    }

    /// A token from the journal, alive for `remaining` more.
    pub fn adopted(entry: &Entry, remaining: Duration, slot: Slot) -> Held {
        Held {
            token: entry.token.clone(),
            fingerprint: entry.fingerprint.clone(),
            expires_at: Instant::now() + remaining,
            _slot: slot,
        }
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
