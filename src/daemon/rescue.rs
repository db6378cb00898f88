//! A set whose task panicked: revoking its journaled tokens in its place at stop.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::join_all;
use tokio::time::Instant;
use tracing::{error, warn};

use super::SetOutcome;
use super::revoke::{STOP_RETRY_CAP, Written, remove_token_file, revoke_until, written_forms};
use crate::config::{OnShutdown, SetConfig};
use crate::journal::{Entry, Journal};
use crate::provider::{Revocation, TokenProvider};

/// The provider to revoke a crashed set's journaled tokens with, if they are to be revoked at
/// this stop: not at a handover, nor for a set that keeps its token or never revokes, nor
/// with a provider that cannot revoke.
pub(super) fn rescuable<P: TokenProvider>(
    set: &SetConfig,
    providers: &HashMap<String, Arc<P>>,
    handover: bool,
) -> Option<Arc<P>> {
    let provider = providers.get(&set.provider)?;
    let revokes = !handover
        && !set.never_revoke
        && set.on_shutdown == OnShutdown::Revoke
        && provider.revocation() != Revocation::Unsupported;
    revokes.then(|| Arc::clone(provider))
}

/// A set's task panicked, taking its tokens with it. It journaled each before using it, so
/// revoke what the journal holds for the set (until `deadline`), and remove its file once
/// every one is revoked: one broken set must not leave its tokens live.
pub(super) async fn recover_crashed<P: TokenProvider + 'static>(
    set: Arc<SetConfig>,
    provider: Arc<P>,
    journal: Journal,
    deadline: Instant,
) -> SetOutcome {
    let mut outcome = SetOutcome {
        set: set.name.clone(),
        ..SetOutcome::default()
    };
    let mine: Vec<Entry> = journal
        .entries()
        .await
        .into_iter()
        .filter(|e| e.set == set.name && e.provider == set.provider)
        .collect();
    warn!(set = %set.name, tokens = mine.len(), "revoking the journaled tokens of the set whose task failed");
    let results = join_all(
        mine.iter()
            .map(|e| revoke_until(provider.as_ref(), &e.token, deadline, STOP_RETRY_CAP)),
    )
    .await;
    for (e, r) in mine.iter().zip(results) {
        match r {
            Ok(()) => outcome.revoked.push(e.fingerprint.clone()),
            Err(why) => {
                error!(set = %set.name, fingerprint = %e.fingerprint, error = %why,
                    "could not revoke token; it stays in the journal for the next start or `tokenkeeper revoke`");
                outcome.failed.push((e.fingerprint.clone(), why));
            }
        }
    }
    journal.remove(outcome.revoked.clone()).await;
    if outcome.failed.is_empty()
        && let Some(path) = set.file.as_ref().map(|f| f.path.clone())
    {
        // Only while it still holds one of the set's revoked tokens: the task that wrote it is
        // gone, and whatever else is there now is not ours to delete.
        let written: Written = mine.iter().flat_map(written_forms).collect();
        let _ = tokio::task::spawn_blocking(move || remove_token_file(&path, &written)).await;
    }
    outcome
}
