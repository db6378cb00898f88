//! Issuing: the budget, the provider call, the journal before the sink, and tokens minted
//! in refused answers.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, timeout_at};
use tracing::{debug, error, info, warn};

use super::{Flow, InFlight, REFUSED_TOKEN_TYPE, SetTask, Tokens, whole_secs};
use crate::budget::{Refusal, Slot};
use crate::clock::wall;
use crate::daemon::Held;
use crate::error_chain as chain;
use crate::provider::{ProviderError, TokenProvider};
use crate::schedule::{RetryClass, refresh_after, retry_after};
use crate::secret::Secret;
use crate::sink::{IssuedMeta, TokenSink};
use crate::status::{SetState, SetStats};

/// How often a set blocked by the live-token cap looks again. Slots free up as superseded
/// tokens are revoked (a minute after their replacement, by default), so seconds suffice.
const BUDGET_RECHECK: Duration = Duration::from_secs(5);

/// How long a token minted in a refused answer is tracked (journaled, its revocation retried):
/// its answer's lifetime is what was refused, so it is unknown. An hour covers Voucherify's
/// 15-minute tokens and the hour most OAuth servers grant; a provider 404s a token that has
/// expired, which counts as revoked.
const REFUSED_TOKEN_TRACKED: Duration = Duration::from_secs(3600);

impl<P: TokenProvider + 'static, S: TokenSink> SetTask<P, S> {
    /// Issue a token and put it in place, within the budget.
    pub(super) async fn issue(&mut self, t: &mut Tokens<S>) -> Flow<S> {
        let name = self.cfg.name.clone();
        let slot = match self.budget.acquire() {
            Ok(slot) => {
                if std::mem::take(&mut t.budget_blocked) {
                    info!(set = %name, provider = %self.cfg.provider, "token budget available again");
                }
                slot
            }
            Err(refusal) => {
                let wait = match &refusal {
                    Refusal::Rate { wait } => *wait,
                    Refusal::Live { .. } => BUDGET_RECHECK.mul_f64(1.0 + (self.jitter)()),
                };
                t.next_issue = Instant::now() + wait;
                if matches!(refusal, Refusal::Live { .. }) && !t.budget_blocked {
                    t.budget_blocked = true;
                    warn!(set = %name, provider = %self.cfg.provider, reason = %refusal,
                        "not issuing: the provider's token budget is exhausted; waiting for tokens to be revoked or to expire");
                    self.set_state(SetState::Failing {
                        has_token: t.current.is_some(),
                        error: refusal.to_string(),
                    });
                } else {
                    debug!(set = %name, reason = %refusal, "issue delayed");
                }
                return Flow::Continue;
            }
        };
        t.last_issue = Some(Instant::now());
        self.report.stats(SetStats::issue_started);
        let mut issue: InFlight = {
            let provider = Arc::clone(&self.provider);
            let cfg = Arc::clone(&self.cfg);
            Box::pin(async move { provider.issue(&cfg.scopes).await })
        };
        let result = tokio::select! {
            biased;
            r = &mut issue => r,
            order = &mut self.stop => {
                // Stop arrived mid-issue. The provider may already have minted the token: the
                // stop waits for the answer (up to its deadline) while it revokes what the set
                // holds, rather than before.
                t.in_flight = Some(Box::new((issue, slot)));
                return Flow::Stop(order.ok());
            }
        };
        match result {
            Ok(issued) => {
                self.report.stats(SetStats::issue_succeeded);
                let lifetime = issued.lifetime;
                let issued_at = issued.issued_at;
                let (held, meta) = Held::from_issued(issued, slot);
                let refresh_at =
                    issued_at + refresh_after(lifetime, &self.cfg.refresh, (self.jitter)());
                // Journal first: a crash after the file write must not lose track.
                let entry = self.journal_entry(&held, &meta, refresh_at);
                let unjournaled = Box::pin(self.journal.record(entry)).await.err();
                if let Some(e) = &unjournaled {
                    error!(set = %name, fingerprint = %held.fingerprint, error = %e,
                        "token not journaled; if tokenkeeper is killed now it stays live until it expires");
                }
                match Box::pin(self.sink.write(&held.token, &meta)).await {
                    Ok(()) => {
                        t.attempt = 0;
                        t.next_issue = refresh_at;
                        let next = t.next_issue;
                        self.report
                            .stats(|s| s.written(&held.fingerprint, meta.expires_at, next));
                        info!(set = %name, provider = %self.cfg.provider,
                            fingerprint = %held.fingerprint,
                            expires_at = %humantime::format_rfc3339_seconds(meta.expires_at),
                            expires_in = %humantime::format_duration(whole_secs(lifetime)),
                            refresh_in = %humantime::format_duration(whole_secs(next.saturating_duration_since(Instant::now()))),
                            "token written");
                        let grace = Instant::now() + self.cfg.revoke_superseded_after;
                        // A provider may answer with a token it gave us before (one it caches):
                        // that token is the one in the file now, and must not be revoked as
                        // superseded, nor stay queued for revocation from an earlier turn.
                        let before = t.superseded.len();
                        t.superseded.retain(|(h, _)| !h.same_token(&held));
                        let stale = std::mem::take(&mut t.stale);
                        let mut repeated = t.superseded.len() < before;
                        for old in t.current.replace(held).into_iter().chain(stale) {
                            if t.current.as_ref().is_some_and(|c| c.same_token(&old)) {
                                repeated = true;
                            } else {
                                self.supersede(&mut t.superseded, old, grace);
                            }
                        }
                        if repeated {
                            info!(set = %name, fingerprint = %t.current.as_ref().map_or("", |h| h.fingerprint()),
                                "the provider answered with a token this set already holds; keeping it, not revoking it");
                        }
                        // The count first, then the state: whoever sees the set fresh sees
                        // its tokens counted.
                        let live = t.live();
                        self.report.stats_if(|s| s.set_live(live));
                        if let Some(h) = &t.current {
                            self.fresh(h, next);
                        }
                        // The token serves, but a set that cannot write its journal is not
                        // well: say so until a token is journaled again.
                        if let Some(e) = unjournaled {
                            let error = format!("token not journaled: {e}");
                            self.report.stats(|s| s.journal_failed(error.clone()));
                            self.set_state(SetState::Failing {
                                has_token: true,
                                error,
                            });
                        }
                        t.current_meta = Some(meta);
                        Box::pin(self.forget_previous(&mut t.previous)).await;
                    }
                    Err(e) => {
                        // The file still holds the previous token (or nothing); the new token
                        // was never seen by anyone, so revoke it now.
                        let class = if e.lasts() {
                            RetryClass::Slow
                        } else {
                            RetryClass::Transient
                        };
                        let delay = retry_after(class, t.attempt, None, (self.jitter)());
                        t.attempt = t.attempt.saturating_add(1);
                        t.next_issue = self.retry_at(delay, t.last_issue);
                        error!(set = %name, fingerprint = %held.fingerprint, error = %chain(&e),
                            retry_in = %humantime::format_duration(whole_secs(delay)),
                            "could not write the token; revoking it and retrying");
                        self.supersede(&mut t.superseded, held, Instant::now());
                        let next = t.next_issue;
                        self.report.stats(|s| s.issue_failed(chain(&e), next));
                        self.set_state(SetState::Failing {
                            has_token: t.current.is_some(),
                            error: chain(&e),
                        });
                    }
                }
            }
            Err(e) => {
                if let Some(token) = e.minted() {
                    let held = Box::pin(self.refused(token.clone(), slot, &e)).await;
                    self.supersede(&mut t.superseded, held, Instant::now());
                }
                let delay =
                    retry_after(e.retry_class(), t.attempt, e.retry_after(), (self.jitter)());
                t.attempt = t.attempt.saturating_add(1);
                t.next_issue = self.retry_at(delay, t.last_issue);
                let retry_in = humantime::format_duration(whole_secs(delay));
                match e.retry_class() {
                    RetryClass::Slow => error!(set = %name, provider = %self.cfg.provider,
                        error = %chain(&e), %retry_in, "{}", e.advice()),
                    RetryClass::Transient => warn!(set = %name, provider = %self.cfg.provider,
                        error = %chain(&e), %retry_in, "could not get a token"),
                }
                let next = t.next_issue;
                self.report.stats(|s| s.issue_failed(chain(&e), next));
                self.set_state(SetState::Failing {
                    has_token: t.current.is_some(),
                    error: chain(&e),
                });
            }
        }
        Flow::Continue
    }

    /// The provider minted `token` but its answer was refused (`why`): nobody uses it, yet it
    /// is live at the provider. Journal it first (a crash before the revocation must not lose
    /// it) and count it; the caller revokes it now.
    async fn refused(&self, token: Secret, slot: Slot, why: &ProviderError) -> Held {
        let now = Instant::now();
        let held = Held {
            fingerprint: token.fingerprint().into(),
            expires_at: now + REFUSED_TOKEN_TRACKED,
            assumed: false,
            token,
            _slot: slot,
        };
        let meta = IssuedMeta {
            token_type: REFUSED_TOKEN_TYPE.into(),
            scope: self.cfg.scopes.join(" "),
            expires_at: wall(held.expires_at),
        };
        // Due for refresh at once and in no file: a restart never adopts it, it revokes it.
        let mut entry = self.journal_entry(&held, &meta, now);
        entry.file = None;
        if let Err(e) = Box::pin(self.journal.record(entry)).await {
            error!(set = %self.cfg.name, fingerprint = %held.fingerprint, error = %e,
                "refused token not journaled; revoking it now, but if tokenkeeper is killed first it stays live until it expires");
            self.report
                .stats(|s| s.journal_failed(format!("refused token not journaled: {e}")));
        }
        self.report.stats(SetStats::token_refused);
        error!(set = %self.cfg.name, provider = %self.cfg.provider, fingerprint = %held.fingerprint,
            error = %chain(why), "the provider issued a token in an answer that was refused; revoking it");
        held
    }

    /// Wait until `until` for the answer to the token request a stop interrupted; a token it
    /// brings (written nowhere) is journaled and returned for revocation.
    pub(super) async fn settle(&self, issue: InFlight, slot: Slot, until: Instant) -> Option<Held> {
        let name = &self.cfg.name;
        match timeout_at(until, issue).await {
            Ok(Ok(issued)) => {
                let (held, meta) = Held::from_issued(issued, slot);
                info!(set = %name, fingerprint = %held.fingerprint,
                    "token issued while stopping; revoking it");
                let entry = self.journal_entry(&held, &meta, Instant::now());
                // The caller revokes it at once either way; a failed record is said and
                // counted like any other, for a kill before that revocation loses it.
                if let Err(e) = Box::pin(self.journal.record(entry)).await {
                    error!(set = %name, fingerprint = %held.fingerprint, error = %e,
                        "token issued while stopping not journaled; revoking it now, but if tokenkeeper is killed first it stays live until it expires");
                    self.report.stats(|s| {
                        s.journal_failed(format!("token issued while stopping not journaled: {e}"));
                    });
                }
                Some(held)
            }
            Ok(Err(e)) => match e.minted() {
                Some(token) => Some(Box::pin(self.refused(token.clone(), slot, &e)).await),
                None => {
                    warn!(set = %name, error = %chain(&e), "issue in flight at stop failed");
                    None
                }
            },
            Err(_) => {
                warn!(set = %name, "issue in flight at stop did not finish by the deadline; if the provider minted it, it will expire on its own");
                None
            }
        }
    }
}
