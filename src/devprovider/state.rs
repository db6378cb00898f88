//! What the provider knows: the issued tokens and their live count, the request counts and
//! violations, and the failures a test injected.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::warn;

use super::wire::Endpoint;
use super::{DevProviderOptions, RequestCounts};

/// The `client_id` in every token. Made up, with the shape of the spec's example
/// (`a1Bcdefg2HI3Jkl4m5nOP`: 21 letters and digits), so clients parse it like a real one.
pub(super) const CLIENT_ID: &str = "tkDev0Client1Id2Local";

/// Length of a minted access token. The spec's example is 50 characters; 48 random
/// alphanumerics (about 285 bits) look alike and can't collide in practice.
pub(super) const TOKEN_LEN: usize = 48;

/// State shared between the handle and the server task.
pub(super) struct Shared {
    /// Locked briefly, never across an `.await`.
    pub(super) state: Mutex<State>,
}

impl Shared {
    /// The state. A panic while the lock was held can't leave it half-updated in a way that
    /// matters to a development server, so a poisoned lock is used as is rather than
    /// spreading the panic.
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record a contract violation (it must not contain a secret) and log it.
    pub(super) fn violation(&self, endpoint: Endpoint, what: impl Into<String>) {
        let text = format!("{}: {}", endpoint.path(), what.into());
        warn!(violation = %text, "request breaks the Voucherify OAuth contract");
        self.lock().violations.push(text);
    }
}

/// Everything the provider knows.
pub(super) struct State {
    /// Accepted `X-App-Id`.
    pub(super) app_id: String,
    /// Accepted `X-App-Token`.
    pub(super) app_token: String,
    /// Lifetime of new tokens, whole seconds, at least 1.
    pub(super) lifetime_secs: u64,
    /// Quota of live tokens.
    pub(super) max_live_tokens: usize,
    /// Injected outage status, if any.
    pub(super) outage: Option<u16>,
    /// Close connections without answering.
    pub(super) drop_connections: bool,
    /// Injected failures of token requests.
    pub(super) fail_issues: FailIssues,
    /// Wait between minting a token and answering.
    pub(super) issue_delay: Duration,
    /// Injected answer to revoke requests.
    pub(super) revoke_status: Option<u16>,
    /// Wait before taking up a revoke request.
    pub(super) revoke_delay: Duration,
    /// Never answer token requests.
    pub(super) hang_issues: bool,
    /// Answer token requests with a live token of the same scopes, if there is one.
    pub(super) repeat_tokens: bool,
    /// `token_type` in token answers instead of `Bearer`.
    pub(super) answer_token_type: Option<String>,
    /// `expires_in` in token answers instead of the lifetime.
    pub(super) answer_expires_in: Option<i64>,
    /// Fields of token answers replaced (`Some`) or left out (`None`), applied last.
    pub(super) answer_fields: Vec<(String, Option<serde_json::Value>)>,
    /// Seconds taken off `expires_at` in introspection answers.
    pub(super) introspect_early_secs: u64,
    /// Answer with an error that echoes the request.
    pub(super) echo_requests: Option<u16>,
    /// Quote every live token in those echoes too.
    pub(super) echo_live_tokens: bool,
    /// Every token issued, oldest first.
    pub(super) tokens: Vec<TokenRecord>,
    /// Token → index in `tokens`.
    pub(super) index: HashMap<String, usize>,
    /// Tokens neither revoked nor expired, as of the last [`State::expire`]. Kept as a count
    /// because counting `tokens` on every issue made the provider quadratic: a benchmark's
    /// 10,000 sets took it seconds, and it became what the benchmark measured.
    pub(super) live: usize,
    /// Every token's expiry and index, soonest first, for [`State::expire`].
    pub(super) expiries: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, usize)>>,
    /// Revoked tokens in revocation order.
    pub(super) revoked: Vec<String>,
    /// Requests per endpoint.
    pub(super) counts: RequestCounts,
    /// Contract violations, described.
    pub(super) violations: Vec<String>,
}

impl State {
    pub(super) fn new(opts: DevProviderOptions) -> Self {
        State {
            app_id: opts.app_id,
            app_token: opts.app_token,
            lifetime_secs: whole_secs(opts.lifetime),
            max_live_tokens: opts.max_live_tokens,
            outage: None,
            drop_connections: false,
            fail_issues: FailIssues::default(),
            issue_delay: Duration::ZERO,
            revoke_status: None,
            revoke_delay: Duration::ZERO,
            hang_issues: false,
            repeat_tokens: false,
            answer_token_type: None,
            answer_expires_in: None,
            answer_fields: Vec::new(),
            introspect_early_secs: 0,
            echo_requests: None,
            echo_live_tokens: false,
            tokens: Vec::new(),
            index: HashMap::new(),
            live: 0,
            expiries: std::collections::BinaryHeap::new(),
            revoked: Vec::new(),
            counts: RequestCounts::default(),
            violations: Vec::new(),
        }
    }

    /// Take the tokens that expired by `now` out of the live count. A token revoked first was
    /// taken out then.
    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(std::cmp::Reverse((at, i))) = self.expiries.peek().copied() {
            if at > now {
                break;
            }
            self.expiries.pop();
            if self.tokens.get(i).is_some_and(|t| !t.revoked) {
                self.live = self.live.saturating_sub(1);
            }
        }
    }

    pub(super) fn find(&self, token: &str) -> Option<&TokenRecord> {
        self.index.get(token).and_then(|&i| self.tokens.get(i))
    }

    pub(super) fn find_mut(&mut self, token: &str) -> Option<&mut TokenRecord> {
        let i = *self.index.get(token)?;
        self.tokens.get_mut(i)
    }

    /// Mint a live token for `scope` and return its record.
    pub(super) fn mint(&mut self, scope: &str) -> TokenRecord {
        // fastrand is not a CSPRNG. Fine here: these tokens guard nothing, and each one is
        // checked against the index so a repeat can't alias an earlier token.
        let token = loop {
            let candidate: String = (0..TOKEN_LEN).map(|_| fastrand::alphanumeric()).collect();
            if !self.index.contains_key(&candidate) {
                break candidate;
            }
        };
        let lifetime = Duration::from_secs(self.lifetime_secs);
        let record = TokenRecord {
            token: token.clone(),
            scope: scope.to_owned(),
            expires: Instant::now() + lifetime,
            expires_at: unix_now().saturating_add(self.lifetime_secs),
            lifetime_secs: self.lifetime_secs,
            revoked: false,
        };
        self.index.insert(token, self.tokens.len());
        self.expiries
            .push(std::cmp::Reverse((record.expires, self.tokens.len())));
        self.live += 1;
        self.tokens.push(record.clone());
        record
    }
}

/// Injected failures of token requests.
#[derive(Debug, Clone, Default)]
pub(super) struct FailIssues {
    /// Token requests still to fail.
    pub(super) remaining: usize,
    /// Their status.
    pub(super) status: u16,
    /// Their `Retry-After` header, if any, as sent.
    pub(super) retry_after: Option<String>,
}

/// One issued token.
#[derive(Clone)]
pub(super) struct TokenRecord {
    pub(super) token: String,
    /// Granted scopes, space-separated, as requested.
    pub(super) scope: String,
    /// When it expires, on tokio's clock (so paused test time moves it).
    pub(super) expires: Instant,
    /// When it expires, Unix seconds on the wall clock (`expires_at` in answers).
    pub(super) expires_at: u64,
    /// `expires_in` at issue.
    pub(super) lifetime_secs: u64,
    pub(super) revoked: bool,
}

impl TokenRecord {
    /// When it was minted, on tokio's clock.
    pub(super) fn minted(&self) -> Instant {
        self.expires - Duration::from_secs(self.lifetime_secs)
    }
}

impl TokenRecord {
    pub(super) fn is_live(&self, now: Instant) -> bool {
        !self.revoked && now < self.expires
    }

    /// The `OAuthToken` object; `expires_in` is the whole seconds left at `now`.
    pub(super) fn to_json(&self, expires_in: u64) -> Value {
        json!({
            "access_token": self.token,
            "client_id": CLIENT_ID,
            "expires_at": self.expires_at,
            "expires_in": expires_in,
            "scope": self.scope,
            "token_type": "Bearer",
        })
    }
}

/// Whole seconds of a lifetime, at least 1 (Voucherify's `expires_in` is an integer and a
/// zero-second token would be dead on arrival).
pub(super) fn whole_secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

/// Seconds since the Unix epoch on the wall clock; 0 if the clock is before 1970, which only
/// a badly broken machine shows.
pub(super) fn unix_now() -> u64 {
    crate::clock::now_wall()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
