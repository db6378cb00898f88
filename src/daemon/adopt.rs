//! At start: reusing or revoking each set's journaled tokens, and revoking those of sets no
//! longer configured.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::restart::{Inherited, Role};
use super::revoke::{STOP_RETRY_CAP, remove_token_file, revoke_until, written_forms};
use super::set_task::{REFUSED_TOKEN_TYPE, revokes};
use super::{Held, SetOutcome, Start};
use crate::budget::Budget;
use crate::config::SetConfig;
use crate::error_chain as chain;
use crate::journal::{self, CLOCK_DOUBT_WINDOW, Entry, Journal};
use crate::provider::{Introspection, Revocation, TokenProvider};
use crate::schedule::BACKOFF_CAP;
use crate::sink::IssuedMeta;

/// Name under which tokens of sets that are no longer configured are reported.
pub const REMOVED_SETS: &str = "(sets no longer configured)";

/// Decide, for one set, what to do with its journaled tokens: reuse the best one that still
/// fits (same provider and scopes, not yet due for refresh, and active when introspected),
/// and mark the rest for revocation. Tokens a predecessor handed over (`inherited`, at a
/// restart in place) are taken back as they were, without asking the provider: the
/// predecessor held them until a moment ago. Expiry and refresh times are judged as they
/// stand at wall-clock time `now`.
#[allow(clippy::too_many_arguments)] // each is a distinct input; a struct would only rename them
pub(super) async fn adopt<P: TokenProvider, S>(
    set: &SetConfig,
    hash: &str,
    provider: &P,
    budget: &Arc<Budget>,
    mut mine: Vec<Entry>,
    journal: &Journal,
    inherited: &Inherited,
    now: SystemTime,
) -> Start<S> {
    // The handed-over current token first: it is the one the file holds.
    mine.sort_by_key(|e| {
        let role = inherited.get(&e.fingerprint).map(|(r, _)| *r);
        (role != Some(Role::Current), std::cmp::Reverse(e.expires_at))
    });
    let mut start = Start::default();
    let mut gone = Vec::new();
    let revokes = revokes(set, provider.revocation());
    for e in mine {
        let remaining = journal::remaining(&e, now);
        if remaining.is_zero() {
            // Expired by our clock, which may have jumped while we were down: the provider
            // can still count it live, so revoke it rather than take the clock's word.
            expired_now(&mut start, &e, revokes, budget);
            continue;
        }
        let meta = || IssuedMeta {
            token_type: e.token_type.clone(),
            scope: e.scope.clone(),
            expires_at: e.expires_at,
        };
        match inherited.get(&e.fingerprint) {
            Some((Role::Superseded, at)) => {
                let held = Held::adopted(&e, remaining, budget.adopt());
                start.superseded.push((held, *at));
                continue;
            }
            Some((Role::Current, at)) if start.current.is_none() && e.config_hash == hash => {
                let held = Held::adopted(&e, remaining, budget.adopt());
                let refresh = (*at).min(Instant::now() + remaining);
                start.current = Some((held, meta(), refresh));
                continue;
            }
            // Handed over, but the config changed meanwhile: like any journaled token.
            _ => {}
        }
        // Minted in an answer that was refused, then a crash: it was never in any file.
        if e.token_type == REFUSED_TOKEN_TYPE
            && !set.never_revoke
            && provider.revocation() != Revocation::Unsupported
        {
            let held = Held::adopted(&e, remaining, budget.adopt());
            start.superseded.push((held, Instant::now()));
            continue;
        }
        let fits = e.config_hash == hash && e.refresh_at > now;
        if start.current.is_some() || !fits {
            start
                .stale
                .push(Held::adopted(&e, remaining, budget.adopt()));
            continue;
        }
        let meta = meta();
        let refresh_in = e.refresh_at.duration_since(now).unwrap_or(Duration::ZERO);
        match provider.introspect(&e.token).await {
            Ok(Introspection::Active { remaining: Some(r) }) if r.is_zero() => {
                // Active, yet expired by the provider's own figures: not worth serving, but
                // the provider may go on honouring it, so it is revoked, not just dropped.
                info!(set = %set.name, fingerprint = %e.fingerprint,
                    "the provider says the journaled token has expired; issuing a new one");
                expired_now(&mut start, &e, revokes, budget);
            }
            Ok(Introspection::Active { remaining: r }) => {
                let left = r.map_or(remaining, |r| r.min(remaining));
                let held = Held::adopted(&e, left, budget.adopt());
                start.current = Some((held, meta, Instant::now() + refresh_in.min(left)));
            }
            Ok(Introspection::Inactive) => {
                info!(set = %set.name, fingerprint = %e.fingerprint,
                    "journaled token is no longer active at the provider; issuing a new one");
                gone.push(e.fingerprint.clone());
            }
            Err(err) => {
                // Keep serving it (it is valid by the clock) but replace it straight away.
                warn!(set = %set.name, fingerprint = %e.fingerprint, error = %chain(&err),
                    "could not check the journaled token; using it until a replacement is in place");
                let held = Held::adopted(&e, remaining, budget.adopt());
                start.current = Some((held, meta, Instant::now()));
            }
        }
    }
    journal.remove(gone).await;
    start
}

/// Journal the tokens a store holds for this instance's sets (another member's, or this one's
/// from before a lost journal), all at once so the journal writer commits them together. One
/// that fails to be journaled is still adopted: it is served, and its set's stop revokes it.
pub(super) async fn journal_adopted(journal: &Journal, from_store: &[Entry]) {
    let recorded = join_all(from_store.iter().map(|e| journal.record(e.clone()))).await;
    for (e, r) in from_store.iter().zip(recorded) {
        if let Err(why) = r {
            warn!(set = %e.set, fingerprint = %e.fingerprint, error = %why,
                "could not journal the token the store holds; a crash now would leave it to expire on its own");
        }
    }
}

/// Queue journaled token `e`, which the wall clock or the provider calls expired, for
/// revocation for [`CLOCK_DOUBT_WINDOW`]. When the set revokes, that is at once, not once a
/// replacement is written plus the superseded tokens' grace: no reader should count on a
/// token already called expired, and waiting would leave one the provider still honours live
/// for as long as no replacement can be had (a single request settles it either way).
fn expired_now<S>(start: &mut Start<S>, e: &Entry, revokes: bool, budget: &Arc<Budget>) {
    let held = Held::adopted(e, CLOCK_DOUBT_WINDOW, budget.adopt());
    if revokes {
        start.superseded.push((held, Instant::now()));
    } else {
        // Reported as not revoked once the replacement is written, as any stale token.
        start.stale.push(held);
    }
}

/// How long to try revoking journaled token `e`: until it expires, or for
/// [`CLOCK_DOUBT_WINDOW`] if by our clock it already has.
fn revoke_window(e: &Entry, now: SystemTime) -> Duration {
    match journal::remaining(e, now) {
        d if d.is_zero() => CLOCK_DOUBT_WINDOW,
        d => d,
    }
}

/// Revoke journaled tokens that belong to no configured set (or to a set's former provider),
/// retrying until each is revoked or expired, or until stop; then remove their files. Each
/// is tried until it expires as it stands at wall-clock time `now` (see [`revoke_window`]).
pub(super) async fn revoke_leftovers<P: TokenProvider>(
    entries: Vec<Entry>,
    providers: HashMap<String, Arc<P>>,
    journal: Journal,
    in_use: Vec<std::path::PathBuf>,
    mut stop: watch::Receiver<Option<Instant>>,
    now: SystemTime,
) -> SetOutcome {
    let mut outcome = SetOutcome {
        set: REMOVED_SETS.into(),
        ..SetOutcome::default()
    };
    let attempts = entries.iter().map(|e| {
        let provider = providers.get(&e.provider).cloned();
        let mut stop = stop.clone();
        let expires = Instant::now() + revoke_window(e, now);
        async move {
            let Some(p) = provider else {
                return Err(format!(
                    "provider {} is no longer configured; the token expires on its own",
                    e.provider
                ));
            };
            tokio::select! {
                r = revoke_until(p.as_ref(), &e.token, expires, BACKOFF_CAP) => r,
                _ = stop.changed() => {
                    let deadline = stop_deadline(&stop);
                    revoke_until(p.as_ref(), &e.token, deadline.min(expires), STOP_RETRY_CAP).await
                }
            }
        }
    });
    let results = join_all(attempts).await;
    for (e, r) in entries.iter().zip(results) {
        match r {
            Ok(()) => {
                info!(set = %e.set, fingerprint = %e.fingerprint, "revoked a journaled token of a set no longer configured");
                outcome.revoked.push(e.fingerprint.clone());
                if let Some(path) = e.file.clone().filter(|p| !in_use.contains(p)) {
                    let written = written_forms(e);
                    let _ = tokio::task::spawn_blocking(move || {
                        remove_token_file(&path, &written);
                    })
                    .await;
                }
            }
            // Expired while we tried: nothing is left to revoke.
            Err(_) if journal::remaining(e, crate::clock::now_wall()).is_zero() => {}
            Err(why) => {
                warn!(set = %e.set, fingerprint = %e.fingerprint, error = %why, "could not revoke a journaled token");
                outcome.failed.push((e.fingerprint.clone(), why));
            }
        }
    }
    journal.remove(outcome.revoked.clone()).await;
    // Wait for stop, so the report is complete however early this finished.
    while stop.borrow().is_none() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    outcome
}

/// The deadline for revocations outside a set's task (leftovers at start), from a plain
/// deadline watch.
fn stop_deadline(stop: &watch::Receiver<Option<Instant>>) -> Instant {
    stop.borrow()
        .unwrap_or_else(|| Instant::now() + STOP_RETRY_CAP)
}

/// Revoke the tokens the store writers found in paths the start could not read in time
/// (another instance's, written over and adopted by nobody), as they come, until stop.
/// One this daemon journals is its own and is left alone.
pub(super) async fn revoke_displaced<P: TokenProvider + 'static>(
    mut found: mpsc::UnboundedReceiver<Entry>,
    providers: HashMap<String, Arc<P>>,
    journal: Journal,
    in_use: Vec<std::path::PathBuf>,
    mut stop: watch::Receiver<Option<Instant>>,
) -> SetOutcome {
    let mut revoking = Vec::new();
    while stop.borrow().is_none() {
        tokio::select! {
            e = found.recv() => {
                let Some(e) = e else { break };
                if journal.entries().await.iter().any(|j| j.fingerprint == e.fingerprint) {
                    continue;
                }
                revoking.push(tokio::spawn(revoke_leftovers(
                    vec![e],
                    providers.clone(),
                    journal.clone(),
                    in_use.clone(),
                    stop.clone(),
                    crate::clock::now_wall(),
                )));
            }
            changed = stop.changed() => if changed.is_err() { break },
        }
    }
    let mut outcome = SetOutcome {
        set: REMOVED_SETS.into(),
        ..SetOutcome::default()
    };
    for r in join_all(revoking).await.into_iter().flatten() {
        outcome.revoked.extend(r.revoked);
        outcome.failed.extend(r.failed);
    }
    // Wait for stop, so the report is complete however early this finished.
    while stop.borrow().is_none() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    outcome
}
