//! What the stores hold for the configured sets at start, found with as few requests as the
//! store allows: one LIST of each folder the sets' paths are in, then a read of only the
//! paths the LIST names (a path it does not name holds nothing: version 0, nothing to adopt),
//! and one read of each store's mount config, which tells whether a new path needs a metadata
//! write of its own. A fresh start of 1,000 sets in one folder costs 2 requests, not 1,000.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tracing::warn;

use super::document::{Unfit, entry_from_doc};
use super::vault::{self, StoreError, Vault, Versioned};
use super::{Seen, Stores};
use crate::config::{Config, SetConfig};
use crate::error_chain as chain;
use crate::journal::Entry;

/// One answer of the start's look at the stores.
enum Step<'a> {
    /// A store's mount config, read (or not): it concerns no set in particular.
    Mount,
    /// The keys of one folder of one store, and the sets whose paths are in it; `None` when
    /// the LIST failed (a policy without `list`, a folder too large to answer): each path is
    /// then read.
    Listed(&'a Vault, Vec<&'a SetConfig>, Option<HashSet<String>>),
    /// A set's path, read.
    Read(&'a SetConfig, Result<Option<Versioned>, StoreError>),
}

/// Where a set's path is: its folder (`""` for the mount's top) and its key in it.
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

async fn mount(v: &Vault) -> Step<'_> {
    let permit = v.permit().await;
    let read = v.mount_max_versions().await;
    vault::release(permit).await;
    match read {
        Ok(m) => v.note_mount_max_versions(m),
        // Only a request saved is lost: each new path gets its metadata written.
        Err(e) => tracing::debug!(store = %v.name(), error = %chain(&e),
            "could not read the mount's max_versions; writing each path's own"),
    }
    Step::Mount
}

async fn list<'a>(v: &'a Vault, folder: &'a str, sets: Vec<&'a SetConfig>) -> Step<'a> {
    let permit = v.permit().await;
    let keys = v.list(folder).await;
    vault::release(permit).await;
    match keys {
        Ok(keys) => Step::Listed(v, sets, Some(keys.into_iter().collect())),
        Err(e) => {
            warn!(store = %v.name(), folder, error = %chain(&e),
                "could not list the folder of the sets' store paths; reading each path instead");
            Step::Listed(v, sets, None)
        }
    }
}

impl Stores {
    /// Keep what the start found at `set`'s path for its writer.
    fn keep(&self, set: &SetConfig, seen: Seen) {
        if let Ok(mut all) = self.seen.lock() {
            all.insert(set.name.clone(), seen);
        }
    }

    async fn read<'a>(&'a self, v: &'a Vault, set: &'a SetConfig) -> Step<'a> {
        let Some(s) = set.store.as_ref() else {
            return Step::Read(set, Ok(None));
        };
        let permit = v.permit().await;
        let read = v.read(&s.path).await;
        vault::release(permit).await;
        if let Ok(doc) = &read {
            let seen = doc.as_ref().map_or(
                Seen {
                    fresh: true,
                    ..Seen::default()
                },
                |d| Seen {
                    version: d.version,
                    metadata: d.custom == v.custom_metadata(&set.name),
                    held: (!d.deleted).then(|| d.data.clone()),
                    fresh: false,
                },
            );
            self.keep(set, seen);
        }
        Step::Read(set, read)
    }

    /// Tokens the stores hold for the configured sets, as journal entries, so that an
    /// instance taking over (HA) or starting on a new machine reuses them instead of issuing.
    ///
    /// Every folder is listed at once, and the paths the LISTs name are read at once (within
    /// each store's `max_concurrent_requests`); the start waits at most `budget` for them all:
    /// a set whose path has not been looked at by then is left out and issues its own token,
    /// so a store that hangs delays no token file by more than `budget` (never a store timeout
    /// per set). What each look found is kept for the set's writer. Returns the entries, and
    /// the names of the sets left out.
    pub async fn entries<'a>(
        &'a self,
        config: &'a Config,
        budget: Duration,
    ) -> (Vec<Entry>, HashSet<String>) {
        let mut folders: HashMap<(&str, &str), Vec<&SetConfig>> = HashMap::new();
        for set in &config.sets {
            if let Some(s) = &set.store
                && self.by_name.contains_key(&s.name)
            {
                let key = (s.name.as_str(), split(&s.path).0);
                folders.entry(key).or_default().push(set);
            }
        }
        let mut pending: FuturesUnordered<BoxFuture<'a, Step<'a>>> = FuturesUnordered::new();
        let used: HashSet<&str> = folders.keys().map(|(store, _)| *store).collect();
        for v in used.into_iter().filter_map(|s| self.by_name.get(s)) {
            pending.push(Box::pin(mount(v)));
        }
        for ((store, folder), sets) in folders {
            if let Some(v) = self.by_name.get(store) {
                pending.push(Box::pin(list(v, folder, sets)));
            }
        }
        let mut out = Vec::new();
        let mut answered = HashSet::new();
        let late = tokio::time::sleep(budget);
        tokio::pin!(late);
        loop {
            let step = tokio::select! {
                next = pending.next() => match next {
                    Some(step) => step,
                    None => return (out, HashSet::new()),
                },
                () = &mut late => break,
            };
            let (set, read) = match step {
                Step::Mount => continue,
                Step::Listed(v, sets, keys) => {
                    for set in sets {
                        let path = set.store.as_ref().map_or("", |s| s.path.as_str());
                        match &keys {
                            // Not there when listed: nothing to adopt, and version 0 is the
                            // first write's check-and-set value, so a path written meanwhile
                            // is still never written over unseen.
                            Some(keys) if !keys.contains(split(path).1) => {
                                self.keep(
                                    set,
                                    Seen {
                                        fresh: true,
                                        ..Seen::default()
                                    },
                                );
                                answered.insert(set.name.as_str());
                            }
                            _ => pending.push(Box::pin(self.read(v, set))),
                        }
                    }
                    continue;
                }
                Step::Read(set, read) => (set, read),
            };
            answered.insert(set.name.as_str());
            match read {
                Ok(Some(doc)) if !doc.deleted => {
                    match entry_from_doc(set, &doc.data, crate::clock::now_wall()) {
                        Ok(Some(e)) => out.push(e),
                        Ok(None) => {}
                        // The fingerprint and the field only: the values are a stranger's text.
                        Err(Unfit { fingerprint, why }) => warn!(set = %set.name,
                        %fingerprint, why,
                        "the set's token document in the store fails the checks a provider's answer passes; not adopting it, issuing a new token"),
                    }
                }
                Ok(_) => {}
                Err(e) => warn!(set = %set.name, error = %chain(&e),
                    "could not read the set's token from the store; issuing a new one"),
            }
        }
        drop(pending);
        let unread: HashSet<String> = config
            .sets
            .iter()
            .filter(|s| s.store.is_some() && !answered.contains(s.name.as_str()))
            .map(|s| s.name.clone())
            .collect();
        if !unread.is_empty() {
            warn!(sets = unread.len(), budget = %humantime::format_duration(budget),
                "the store did not say in time which tokens it holds; these sets issue their own (the store catches up in the background), and a token the store holds for them is revoked once read");
        }
        (out, unread)
    }
}
