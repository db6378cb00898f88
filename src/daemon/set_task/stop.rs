//! Carrying out a stop order: revoking everything by the deadline, releasing the current
//! token at an HA handover, or handing every token to a successor at a reload.

use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, timeout_at};
use tracing::{error, info};

use super::{HANDOVER_WAIT, Handover, Order, SetTask, Start, Tokens};
use crate::config::OnShutdown;
use crate::daemon::revoke::{STOP_RETRY_CAP, revoke_until};
use crate::daemon::{Held, SetOutcome};
use crate::error_chain as chain;
use crate::provider::TokenProvider;
use crate::sink::TokenSink;
use crate::status::SetState;

/// At stop, how much of the time left is kept after the wait for a token request in flight
/// ends: to revoke the token its answer brought, and to journal and remove files in time for
/// the daemon's count. A revocation is one round trip and a journal write one fsync; a quarter
/// of a short `shutdown_timeout` at most.
const IN_FLIGHT_ROOM: Duration = Duration::from_secs(1);

impl<P: TokenProvider + 'static, S: TokenSink> SetTask<P, S> {
    /// Revoke each of `tokens` (retrying until `deadline`), all at once.
    async fn revoke_each(
        &self,
        tokens: Vec<Held>,
        deadline: Instant,
    ) -> Vec<(Held, Result<(), String>)> {
        let results = join_all(
            tokens
                .iter()
                .map(|h| revoke_until(self.provider.as_ref(), &h.token, deadline, STOP_RETRY_CAP)),
        )
        .await;
        tokens.into_iter().zip(results).collect()
    }

    /// Carry out the stop order: hand everything over, or revoke what must be revoked by the
    /// deadline. `turn` is the provider's stop turn, given back once the revocations are
    /// done: the journal's and the file's part go faster with every set in one commit.
    pub(super) async fn finish(
        self: Box<Self>,
        t: Box<Tokens<S>>,
        order: Option<Order<S>>,
        turn: Option<OwnedSemaphorePermit>,
    ) -> SetOutcome {
        let (deadline, keep_file, release) = match order {
            Some(Order::Revoke {
                deadline,
                keep_file,
            }) => (deadline, keep_file, false),
            Some(Order::Release { deadline }) => (deadline, true, true),
            // Boxed apart: its waits are not the stop's, and inline they would make every
            // stopping set's future as large as both.
            Some(Order::Handover(reply)) => return Box::pin(self.hand_over(t, reply)).await,
            // The daemon dropped its end: stop quickly rather than hang.
            None => (Instant::now() + STOP_RETRY_CAP, false, false),
        };
        Box::pin(self.stop(t, deadline, keep_file, release, turn)).await
    }

    /// Hand every token over to the successor at a reload, once the request in flight and
    /// the superseded revocations under way have finished, so that nothing is revoked twice
    /// or lost between two tasks.
    async fn hand_over(
        self: Box<Self>,
        t: Box<Tokens<S>>,
        reply: tokio::sync::oneshot::Sender<Handover<S>>,
    ) -> SetOutcome {
        let this = *self;
        let Tokens {
            current,
            current_meta,
            mut superseded,
            mut revoking,
            stale,
            in_flight,
            next_issue,
            ..
        } = *t;
        let name = this.cfg.name.clone();
        let wait = Instant::now() + HANDOVER_WAIT;
        let late = async {
            match in_flight.map(|b| *b) {
                Some((issue, slot)) => this.settle(issue, slot, wait).await,
                None => None,
            }
        };
        let under_way = async {
            let mut back = Vec::new();
            while let Ok(Some(joined)) = timeout_at(wait, revoking.join_next()).await {
                match joined {
                    Ok((held, Ok(()))) => {
                        this.journal
                            .remove(vec![held.fingerprint.to_string()])
                            .await
                    }
                    Ok((held, Err(_))) => back.push(held),
                    Err(_) => {}
                }
            }
            back
        };
        let (late, back) = tokio::join!(late, under_way);
        revoking.abort_all();
        let now = Instant::now();
        superseded.extend(back.into_iter().map(|h| (h, now)));
        // A token that came in answer to the request under way was never written: the
        // successor revokes it with the superseded ones, due now.
        superseded.extend(late.into_iter().chain(stale).map(|h| (h, now)));
        let report = this.report;
        let start = Start {
            current: current.zip(current_meta).map(|(h, m)| (h, m, next_issue)),
            stale: Vec::new(),
            superseded,
            previous: Some(this.sink),
        };
        // A successor that is gone drops the tokens, which stay in the journal and are
        // revoked at the next start.
        let _ = reply.send(Handover { start });
        report.state(SetState::Stopped);
        SetOutcome {
            set: name,
            ..SetOutcome::default()
        }
    }

    /// Revoke what must be revoked by `deadline` (all but the current token if `release`),
    /// journal it, and remove the file unless `keep_file`.
    async fn stop(
        self: Box<Self>,
        t: Box<Tokens<S>>,
        deadline: Instant,
        keep_file: bool,
        release: bool,
        turn: Option<OwnedSemaphorePermit>,
    ) -> SetOutcome {
        // Kept in its box: moved out, the task would sit in every stopping set's future, and
        // a stop of 10,000 sets would free 10,000 boxes while allocating as many larger
        // futures, which the freed chunks cannot hold.
        let this = self;
        let Tokens {
            current,
            superseded,
            mut revoking,
            stale,
            in_flight,
            ..
        } = *t;
        let name = this.cfg.name.clone();
        let on_shutdown = if release {
            OnShutdown::Keep
        } else {
            this.cfg.on_shutdown
        };
        // Stop: collect every live token this set holds and revoke them together.
        let mut outcome = SetOutcome {
            set: name.clone(),
            ..SetOutcome::default()
        };
        let mut to_revoke: Vec<Held> = stale;
        to_revoke.extend(superseded.into_iter().map(|(h, _)| h));
        let current_fp = current.as_ref().map(|h| h.fingerprint.clone());
        match (current, on_shutdown) {
            (Some(h), OnShutdown::Revoke) => to_revoke.push(h),
            (Some(h), OnShutdown::Keep) => {
                info!(set = %name, fingerprint = %h.fingerprint, "keeping the token at stop (on_shutdown: keep, or handed over)");
                outcome.kept = Some(h.fingerprint.to_string());
            }
            (None, _) => {}
        }
        let now = Instant::now();
        let (mut live, expired): (Vec<_>, Vec<_>) =
            to_revoke.into_iter().partition(|h| !h.surely_expired(now));
        drop(expired);
        let revokes = this.revokes();
        if !revokes {
            for h in live.drain(..) {
                outcome.expiring.push(h.fingerprint.to_string());
            }
        }
        // The file goes first, before any revocation: from the stop on, a token in a file is
        // one a consumer may use. A revocation that fails, times out, or is cut short by a
        // second signal could still be carried out by the provider a moment later, and a
        // file left holding that token would hand applications a revoked one; what could
        // not be revoked stays in the journal for the next start or `tokenkeeper revoke`.
        let removes = outcome.kept.is_none() && !keep_file;
        if removes
            || live
                .iter()
                .any(|h| current_fp.as_deref() == Some(&h.fingerprint))
        {
            // A write still under way (a store's) must land before the removal or revocation.
            Box::pin(this.sink.hold()).await;
        }
        if removes && let Err(e) = Box::pin(this.sink.remove()).await {
            error!(set = %name, error = %chain(&e), "could not remove the token file");
        }
        // All at once: what the set holds, the revocations under way when the order came, and
        // the answer to a token request in flight. A request that hangs must not hold back the
        // revocation of the tokens the set already has.
        let held = this.revoke_each(live, deadline);
        // Each waiting part is boxed, and made only when there is something to wait for: at a
        // stop every set waits here at once, and inline these parts made each set's stop
        // future over 2 KiB, 21 MiB at 10,000 sets, where most sets need only `held`.
        let me = &this;
        let under_way = (!revoking.is_empty()).then(|| {
            Box::pin(async move {
                let mut done = Vec::new();
                let mut back = Vec::new();
                let drained = timeout_at(deadline, async {
                    while let Some(joined) = revoking.join_next().await {
                        match joined {
                            Ok((held, Err(_))) => back.push(held),
                            Ok((held, Ok(()))) => done.push(held.fingerprint.clone()),
                            Err(_) => {}
                        }
                    }
                })
                .await;
                if drained.is_err() {
                    revoking.abort_all();
                }
                (done, me.revoke_each(back, deadline).await)
            })
        });
        let late = in_flight.map(|b| *b).map(|(issue, slot)| {
            Box::pin(async move {
                let left = deadline.saturating_duration_since(Instant::now());
                let until = deadline - IN_FLIGHT_ROOM.min(left / 4);
                match me.settle(issue, slot, until).await {
                    Some(h) if revokes => (me.revoke_each(vec![h], deadline).await, None),
                    Some(h) => (Vec::new(), Some(h.fingerprint.clone())),
                    None => (Vec::new(), None),
                }
            })
        });
        let (held, (done, retried), (late, late_expiring)) = tokio::join!(
            held,
            async {
                match under_way {
                    Some(f) => f.await,
                    None => (Vec::new(), Vec::new()),
                }
            },
            async {
                match late {
                    Some(f) => f.await,
                    None => (Vec::new(), None),
                }
            },
        );
        drop(turn);
        outcome.revoked.extend(done.into_iter().map(String::from));
        outcome.expiring.extend(late_expiring.map(String::from));
        if !outcome.expiring.is_empty() {
            info!(set = %name, fingerprints = %outcome.expiring.join(","),
                "not revoked: {}", this.why_not_revoked());
        }
        for (h, r) in held.into_iter().chain(retried).chain(late) {
            this.report.stats(|s| s.revoke_result(r.is_ok()));
            match r {
                Ok(()) => outcome.revoked.push(h.fingerprint.to_string()),
                Err(e) => {
                    error!(set = %name, fingerprint = %h.fingerprint, error = %e,
                        "could not revoke token; it stays in the journal for the next start or `tokenkeeper revoke`");
                    outcome.failed.push((h.fingerprint.to_string(), e));
                }
            }
        }
        Box::pin(this.journal.remove(outcome.revoked.clone())).await;
        if !outcome.revoked.is_empty() {
            info!(set = %name, provider = %this.cfg.provider, fingerprints = %outcome.revoked.join(","), "revoked");
        }
        let still_live = outcome.failed.len() + usize::from(outcome.kept.is_some());
        this.report.stats_if(|s| s.set_live(still_live));
        this.set_state(SetState::Stopped);
        outcome
    }
}
