//! Revoking with retries until a deadline, and `tokenkeeper revoke`: journaled tokens
//! revoked outside any set's task, their files removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::{Instant, timeout_at};
use tracing::warn;

use crate::error_chain as chain;
use crate::journal::{self, Entry};
use crate::provider::TokenProvider;
use crate::schedule::RetryClass;
use crate::secret::Secret;
use crate::sink::{self, TokenContent};

/// First pause between revocation attempts at stop; doubled up to [`STOP_RETRY_CAP`]. Short,
/// because the whole stop has only `shutdown_timeout` (20 s by default).
pub(super) const STOP_RETRY_BASE: Duration = Duration::from_millis(250);

/// Longest pause between revocation attempts at stop: several attempts still fit in the
/// default 20 s deadline.
pub(super) const STOP_RETRY_CAP: Duration = Duration::from_secs(2);

/// Revoke `token`, retrying transient failures (pauses doubling up to `cap`) until `deadline`.
pub(super) async fn revoke_until<P: TokenProvider>(
    provider: &P,
    token: &Secret,
    deadline: Instant,
    cap: Duration,
) -> Result<(), String> {
    let mut pause = STOP_RETRY_BASE;
    loop {
        match timeout_at(deadline, provider.revoke(token)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) if e.retry_class() == RetryClass::Transient => {
                if Instant::now() + pause >= deadline {
                    return Err(chain(&e));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(cap);
            }
            Ok(Err(e)) => return Err(chain(&e)),
            Err(_) => return Err("the deadline passed before the provider answered".into()),
        }
    }
}

/// What `tokenkeeper revoke` did with one journaled token.
#[derive(Debug)]
pub struct Revoked {
    pub set: String,
    pub fingerprint: String,
    pub result: Result<(), String>,
}

/// Revoke the journaled `entries` (the daemon is not running: the caller holds the state
/// lock), each retried until `deadline`; write back the journal without the revoked ones and
/// remove files whose every journaled token was revoked.
pub async fn revoke_journaled<P: TokenProvider>(
    state_dir: &std::path::Path,
    all: Vec<Entry>,
    selected: impl Fn(&Entry) -> bool,
    providers: &HashMap<String, Arc<P>>,
    deadline: Instant,
) -> Result<Vec<Revoked>, journal::JournalError> {
    let (chosen, kept): (Vec<Entry>, Vec<Entry>) = all.into_iter().partition(|e| selected(e));
    let results = join_all(chosen.iter().map(|e| async move {
        match providers.get(&e.provider) {
            Some(p) => revoke_until(p.as_ref(), &e.token, deadline, STOP_RETRY_CAP).await,
            None => Err(format!(
                "provider {} is not in the config; it cannot be revoked (it expires on its own)",
                e.provider
            )),
        }
    }))
    .await;
    let mut report = Vec::new();
    let mut remaining = kept;
    let mut revoked = Vec::new();
    for (e, r) in chosen.into_iter().zip(results) {
        report.push(Revoked {
            set: e.set.clone(),
            fingerprint: e.fingerprint.clone(),
            result: r.clone(),
        });
        if r.is_ok() {
            revoked.push(e);
        } else {
            remaining.push(e);
        }
    }
    let dir = state_dir.to_path_buf();
    let files = files_to_remove(&revoked, &remaining);
    tokio::task::spawn_blocking(move || {
        journal::save(&dir, &remaining)?;
        for (f, written) in files {
            remove_token_file(&f, &written);
        }
        Ok(())
    })
    .await
    .map_err(|e| journal::JournalError::Io {
        op: "write",
        path: state_dir.join(journal::JOURNAL_FILE),
        source: std::io::Error::other(e.to_string()),
    })??;
    Ok(report)
}

/// A file as it may have been written, for [`sink::remove_if_holds`].
pub(super) type Written = Vec<sink::FileDigest>;

/// Files of revoked tokens that no remaining journaled token names, each with what it held
/// when written for any of those tokens: it is removed only if it still does.
fn files_to_remove(revoked: &[Entry], remaining: &[Entry]) -> Vec<(std::path::PathBuf, Written)> {
    let mut out: Vec<(std::path::PathBuf, Written)> = Vec::new();
    for e in revoked {
        let Some(f) = &e.file else { continue };
        if remaining.iter().any(|r| r.file.as_ref() == Some(f)) {
            continue;
        }
        match out.iter_mut().find(|(p, _)| p == f) {
            Some((_, written)) => written.extend(written_forms(e)),
            None => out.push((f.clone(), written_forms(e))),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The bytes `e`'s file held when its token was written there, in each format: the journal
/// does not record the set's format, and a set no longer configured has none to ask.
pub(super) fn written_forms(e: &Entry) -> Written {
    let content = TokenContent {
        set: &e.set,
        token: &e.token,
        token_type: &e.token_type,
        expires_at: e.expires_at,
        scope: &e.scope,
    };
    [
        crate::sink::FileFormat::Raw,
        crate::sink::FileFormat::Json,
        crate::sink::FileFormat::Env,
        crate::sink::FileFormat::Header,
    ]
    .into_iter()
    // The fixed formats cannot fail to render.
    .filter_map(|format| sink::render(&format, &content).ok())
    .map(|bytes| sink::FileDigest::of(&bytes))
    .collect()
}

/// Remove a revoked token's file if it still holds that token, logging what was not removed.
pub(super) fn remove_token_file(path: &std::path::Path, written: &[sink::FileDigest]) {
    match sink::remove_if_holds(path, written) {
        Ok(sink::Removal::Removed | sink::Removal::Gone) => {}
        Ok(sink::Removal::Kept(why)) => {
            warn!(file = %path.display(), "not removing the file of a revoked token: {why}");
        }
        Err(e) => {
            warn!(file = %path.display(), error = %chain(&e), "could not remove the file of a revoked token");
        }
    }
}
