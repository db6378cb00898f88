//! Secrets stores as token sinks: a set's token goes to its file and, when the set names a
//! store path, to HashiCorp Vault or OpenBao (KV v2), where a fleet's agents read it.
//!
//! The file is written first and at once; the store is written by a background writer per
//! set that retries with backoff while the store is down, so a store outage never holds the
//! file back. The writer only ever applies the latest wish (write this token, hold, remove):
//! a token replaced or revoked meanwhile is never written afterwards.

mod ca;
mod document;
pub mod ha;
mod io;
mod kv2;
pub mod standby;
mod start;
pub mod vault;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::{Config, SetConfig};
use crate::error_chain as chain;
use crate::journal::Entry;
use crate::schedule::retry_after;
use crate::secret::Secret;
use crate::sink::{FileSink, IssuedMeta, SinkError, TokenSink};
use crate::status::{Board, StoreHealth};

pub use vault::{StoreError, Vault};

use document::{Unfit, already_holds, document, entry_from_doc};

/// Every configured store, logged in lazily, by name.
#[derive(Clone, Default)]
pub struct Stores {
    by_name: HashMap<String, Arc<Vault>>,
    /// Background logins, ended with the last clone.
    _keepers: Arc<KeeperGuard>,
    /// The sets whose paths the start did not read in time, and where their writers report
    /// the token they find there before writing over it.
    late: Option<Late>,
    /// What the start's reads found at each set's path, by set, until its writer takes it.
    seen: Arc<std::sync::Mutex<HashMap<String, Seen>>>,
}

/// What the start's look at a set's path tells its writer, sparing it a request or two: the
/// version there (the check-and-set value of its first write), whether the path's metadata
/// is already what the writer would write, the document there (a token not yet deleted),
/// which a first write of the same token leaves as it is, and whether the path held nothing
/// at all (a new path, whose metadata the mount's own may make needless).
#[derive(Clone, Default)]
struct Seen {
    version: u64,
    metadata: bool,
    held: Option<Value>,
    fresh: bool,
}

#[derive(Clone)]
struct Late {
    sets: Arc<HashSet<String>>,
    found: mpsc::UnboundedSender<Entry>,
}

/// What a writer of a path the start did not read must do before its first write: read the
/// document there and report the token it holds, which the write would otherwise hide while
/// it stays live (another instance's, adopted by nobody).
struct Unread {
    set: SetConfig,
    found: mpsc::UnboundedSender<Entry>,
    /// The fingerprint last reported, so a write retried after a conflict reports it once.
    reported: Option<String>,
}

#[derive(Default)]
struct KeeperGuard(Vec<JoinHandle<()>>);

impl Drop for KeeperGuard {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

impl Stores {
    /// One client per store in `config`. Reads `ca_file`s; logs in on first use. Must run
    /// inside a tokio runtime (each store's login is kept fresh by a task, on the stores' own
    /// thread: see [`io`]).
    pub fn build(config: &Config) -> Result<Stores, StoreError> {
        let mut by_name = HashMap::new();
        let mut keepers = Vec::new();
        for (name, cfg) in &config.stores {
            let v = Arc::new(Vault::new(cfg)?);
            keepers.push(io::spawn(Arc::clone(&v).keep_logged_in()));
            by_name.insert(name.clone(), v);
        }
        Ok(Stores {
            by_name,
            _keepers: Arc::new(KeeperGuard(keepers)),
            late: None,
            seen: Arc::default(),
        })
    }

    /// From now on, the writers of `sets` (which the start did not read in time, see
    /// [`entries`](Self::entries)) read their path before their first write and send the
    /// token they find there on the returned channel, to be revoked.
    pub fn watch_unread(&mut self, sets: HashSet<String>) -> mpsc::UnboundedReceiver<Entry> {
        let (found, rx) = mpsc::unbounded_channel();
        self.late = Some(Late {
            sets: Arc::new(sets),
            found,
        });
        rx
    }

    /// `self`, still watching the sets `old` watched: a reload's new stores.
    pub fn watching_as(mut self, old: &Stores) -> Stores {
        self.late = old.late.clone();
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Vault>> {
        self.by_name.get(name)
    }

    /// The sink of one set: its file, and its store path if it names one.
    pub fn sink_for(&self, set: &SetConfig, config_hash: &str, board: &Arc<Board>) -> SetSink {
        let store = set.store.as_ref().and_then(|s| match self.by_name.get(&s.name) {
            Some(v) => {
                let health = board.register_store(&set.name, &format!("{}:{}", s.name, s.path));
                let health = Health {
                    tx: health,
                    board: Arc::clone(board),
                };
                let seen = self
                    .seen
                    .lock()
                    .ok()
                    .and_then(|mut seen| seen.remove(&set.name));
                let unread = self
                    .late
                    .as_ref()
                    .filter(|l| l.sets.contains(&set.name))
                    .map(|l| Unread {
                        set: set.clone(),
                        found: l.found.clone(),
                        reported: None,
                    });
                Some(Box::new(StoreSink::start(
                    Arc::clone(v),
                    set,
                    &s.path,
                    config_hash,
                    health,
                    unread,
                    seen,
                )))
            }
            None => {
                error!(set = %set.name, store = %s.name, "the set names a store that is not configured; writing the file only");
                None
            }
        });
        SetSink {
            file: set.file.as_ref().map(|f| FileSink::new(&set.name, f)),
            store,
        }
    }
}

/// Where a set's store writer reports for `tokenkeeper status`.
struct Health {
    tx: watch::Sender<StoreHealth>,
    board: Arc<Board>,
}

impl Health {
    /// Whether the store is behind the set's file (`catching_up`), and the store's last
    /// error while it fails.
    fn report(&self, catching_up: bool, error: Option<String>) {
        let changed = self.tx.send_if_modified(|h| {
            let differs = h.error != error || h.catching_up != catching_up;
            h.error = error;
            h.catching_up = catching_up;
            differs
        });
        if changed {
            self.board.poke();
        }
    }

    /// The store is behind the file from now on, whatever it last said.
    fn behind(&self) {
        if self
            .tx
            .send_if_modified(|h| !std::mem::replace(&mut h.catching_up, true))
        {
            self.board.poke();
        }
    }
}

/// What the writer should make the store hold.
#[derive(Clone)]
enum Want {
    /// Nothing asked yet.
    Nothing,
    Write(Arc<(Secret, IssuedMeta)>),
    /// Write nothing more (a revocation is about to happen); leave the store as it is.
    Hold,
    Remove,
}

#[derive(Clone)]
struct Wish {
    generation: u64,
    want: Want,
}

/// A set's store path, written by a background task that retries with backoff.
pub struct StoreSink {
    vault: Arc<Vault>,
    path: String,
    wish: watch::Sender<Wish>,
    /// The generation of the last wish applied (or given up for a newer one).
    done: watch::Receiver<u64>,
    writer: JoinHandle<()>,
    /// The store's request timeout, plus a little: how long `hold` waits for a write in flight.
    settle: Duration,
    /// Shared with the writer, which reports how the store stands.
    health: Arc<Health>,
}

impl Drop for StoreSink {
    fn drop(&mut self) {
        self.writer.abort();
    }
}

/// How long `remove` at stop waits for the store before giving up and reporting it: stop has
/// `shutdown_timeout` (20 s by default) for everything, revocations included.
const REMOVE_WAIT: Duration = Duration::from_secs(10);

impl StoreSink {
    fn start(
        vault: Arc<Vault>,
        set: &SetConfig,
        path: &str,
        config_hash: &str,
        health: Health,
        unread: Option<Unread>,
        seen: Option<Seen>,
    ) -> StoreSink {
        let (wish, wish_rx) = watch::channel(Wish {
            generation: 0,
            want: Want::Nothing,
        });
        let (done_tx, done) = watch::channel(0);
        let health = Arc::new(health);
        let writer = io::spawn(writer(
            Arc::clone(&vault),
            path.to_string(),
            set.name.clone(),
            config_hash.to_string(),
            wish_rx,
            done_tx,
            Arc::clone(&health),
            unread,
            seen,
        ));
        StoreSink {
            // A request in flight ends within the store's own timeout; a second more covers
            // a login before it and handling the answer.
            settle: vault.timeout() + Duration::from_secs(1),
            vault,
            path: path.to_string(),
            wish,
            done,
            writer,
            health,
        }
    }

    fn ask(&self, want: Want) -> u64 {
        if matches!(want, Want::Write(_)) {
            // Until the write goes through, status says so, not "up to date".
            self.health.behind();
        }
        let mut generation = 0;
        self.wish.send_modify(|w| {
            w.generation += 1;
            w.want = want;
            generation = w.generation;
        });
        generation
    }

    /// Wait until the writer has dealt with wish `generation`, up to `limit`.
    async fn settled(&self, generation: u64, limit: Duration) -> bool {
        let mut done = self.done.clone();
        tokio::time::timeout(limit, done.wait_for(|d| *d >= generation))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn location(&self) -> String {
        format!("{}:{}", self.vault.name(), self.path)
    }
}

/// The writer: apply the latest wish, retrying with backoff; a newer wish replaces one that
/// keeps failing at once.
#[allow(clippy::too_many_arguments)] // each is a distinct input; a struct would only rename them
async fn writer(
    vault: Arc<Vault>,
    path: String,
    set: String,
    config_hash: String,
    mut wishes: watch::Receiver<Wish>,
    done: watch::Sender<u64>,
    health: Arc<Health>,
    mut unread: Option<Unread>,
    seen: Option<Seen>,
) {
    // The version we last wrote or read: the check-and-set value of the next write.
    let mut version: Option<u64> = seen.as_ref().map(|s| s.version);
    // A path of the daemon's own making needs no metadata where the mount keeps as many
    // versions; one that held something may carry someone else's, and gets ours.
    let new_path_done = !vault.new_path_needs_metadata();
    let mut metadata_set = seen
        .as_ref()
        .is_some_and(|s| s.metadata || (s.fresh && new_path_done));
    let mut seen_doc = seen.and_then(|s| s.held);
    // Its URLs parsed once: the path is requested at every refresh for the daemon's life.
    let kv = vault.kv_path(&path);
    'wishes: loop {
        let Wish { generation, want } = wishes.borrow_and_update().clone();
        let mut attempt: u32 = 0;
        loop {
            // A newer wish while waiting for a permit replaces this one: a token queued
            // behind other sets' requests is never written after it was revoked.
            let permit = match &want {
                Want::Nothing | Want::Hold => None,
                _ => tokio::select! {
                    permit = vault.permit() => permit,
                    changed = wishes.changed() => {
                        if changed.is_err() { return; }
                        done.send_replace(generation);
                        continue 'wishes;
                    }
                },
            };
            let result = match &want {
                Want::Nothing | Want::Hold => Ok(false),
                Want::Write(w) => {
                    let mut doc = document(&set, &config_hash, &w.0, &w.1);
                    let written = (&mut version, &mut metadata_set, &mut unread);
                    write_once(&vault, &kv, &set, &mut doc, &w.0, written, &mut seen_doc).await
                }
                // Never written over, the path holds no token of this set's but perhaps
                // another instance's, not yet read: left for the next start to find.
                Want::Remove if unread.is_some() => Ok(false),
                // Removed whole: the path starts again from version 0, without metadata.
                Want::Remove => vault.remove_at(&kv).await.map(|()| {
                    version = Some(0);
                    metadata_set = new_path_done;
                    seen_doc = None;
                    true
                }),
            };
            vault::release(permit).await;
            match result {
                Ok(wrote) => {
                    if attempt > 0 {
                        info!(set = %set, store = %vault.name(), path = %path, "the store took the write again");
                    }
                    match &want {
                        Want::Write(w) if wrote => {
                            info!(set = %set, store = %vault.name(), path = %path,
                            fingerprint = %w.0.fingerprint(), version = ?version, "token written to the store")
                        }
                        Want::Write(w) => info!(set = %set, store = %vault.name(), path = %path,
                            fingerprint = %w.0.fingerprint(), version = ?version, "the store already holds the token; nothing written"),
                        _ => {}
                    }
                    if matches!(want, Want::Write(_) | Want::Remove) {
                        health.report(false, None);
                    }
                    done.send_replace(generation);
                    break;
                }
                Err(e) => {
                    health.report(true, Some(chain(&e)));
                    if matches!(e, StoreError::Conflict { .. }) {
                        // Someone else wrote the path: read its version again and write over
                        // it, since this set is the path's owner; whoever wrote it may have
                        // removed it whole, metadata and all, so that is written again too.
                        version = None;
                        metadata_set = false;
                    }
                    let delay = retry_after(e.retry_class(), attempt, None, fastrand::f64());
                    attempt = attempt.saturating_add(1);
                    warn!(set = %set, store = %vault.name(), path = %path, error = %chain(&e),
                        retry_in = %humantime::format_duration(Duration::from_secs(delay.as_secs())),
                        "could not update the store; the token file is up to date, retrying the store");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        changed = wishes.changed() => {
                            if changed.is_err() { return; }
                            // Give up this wish for the newer one: report it dealt with.
                            done.send_replace(generation);
                            continue 'wishes;
                        }
                    }
                }
            }
        }
        if wishes.changed().await.is_err() {
            return;
        }
    }
}

/// Write `doc` (the document of `token`) at `path`; `Ok(false)` when the path holds it
/// already. Before a write whose version is not known (the first, or one after a conflict),
/// the path is read: a document of the same token keeps its `written_at` (its issue time,
/// from which a member taking over schedules the refresh), and one that is otherwise what
/// would be written is not written at all: a take-over writes nothing it adopted unchanged.
async fn write_once(
    vault: &Vault,
    path: &vault::KvPath,
    set: &str,
    doc: &mut Value,
    token: &Secret,
    (version, metadata_set, unread): (&mut Option<u64>, &mut bool, &mut Option<Unread>),
    seen_doc: &mut Option<Value>,
) -> Result<bool, StoreError> {
    // The start's read of this path, if it found a document of the same token: nothing to
    // write (a take-over adopting what the store holds), or at least its `written_at` kept.
    if let Some(held) = seen_doc.take()
        && already_holds(&held, doc, token)
    {
        *unread = None;
        return Ok(false);
    }
    let cas = match *version {
        Some(v) => v,
        None => match vault.read_at(path).await? {
            // The write checks-and-sets against this very version: nothing written between
            // the read and the write is hidden unseen.
            Some(held) if !held.deleted => {
                if let Some(u) = unread.as_mut() {
                    u.report(&held.data, token);
                }
                if already_holds(&held.data, doc, token) {
                    *version = Some(held.version);
                    *unread = None;
                    return Ok(false);
                }
                held.version
            }
            // Its latest version deleted: no token to report, and the read said the version.
            Some(held) => held.version,
            // Never written, or removed whole at a stop: version 0.
            None => 0,
        },
    };
    if !*metadata_set {
        vault
            .set_metadata_at(path, &vault.custom_metadata(set))
            .await?;
        *metadata_set = true;
    }
    // The document is not used after its write: moved into the body, not copied.
    match vault.write_cas_at(path, std::mem::take(doc), cas).await {
        Ok(v) => {
            *version = Some(v);
            // Written over: what this path held before is reported, and is this set's own
            // from now on.
            *unread = None;
            Ok(true)
        }
        Err(e) => {
            *version = None;
            Err(e)
        }
    }
}

impl Unread {
    /// Report the token `data` holds unless it is `ours` or was reported already.
    fn report(&mut self, data: &Value, ours: &Secret) {
        match entry_from_doc(&self.set, data, crate::clock::now_wall()) {
            Ok(Some(e)) if e.fingerprint != ours.fingerprint() => {
                if self.reported.as_deref() != Some(e.fingerprint.as_str()) {
                    self.reported = Some(e.fingerprint.clone());
                    info!(set = %self.set.name, fingerprint = %e.fingerprint,
                        "the store held a token for the set that the start could not read in time; writing over it and revoking it");
                    let _ = self.found.send(e);
                }
            }
            Ok(_) => {}
            // Not a token this set could have issued: nothing of ours to revoke.
            Err(Unfit { fingerprint, why }) => warn!(set = %self.set.name, %fingerprint, why,
                "the set's token document in the store fails the checks a provider's answer passes; writing over it, not revoking it"),
        }
    }
}

/// A set's sinks: its file, and its store path if it has one.
pub struct SetSink {
    file: Option<FileSink>,
    /// Boxed: most sets have none, and an empty slot the size of a [`StoreSink`] in every
    /// set's task was 72 bytes a set for nothing.
    store: Option<Box<StoreSink>>,
}

impl TokenSink for SetSink {
    async fn write(&self, token: &Secret, meta: &IssuedMeta) -> Result<(), SinkError> {
        // The file first and alone decides success: the store catches up in the background.
        if let Some(f) = &self.file {
            f.write(token, meta).await?;
        }
        if let Some(s) = &self.store {
            s.ask(Want::Write(Arc::new((token.clone(), meta.clone()))));
        }
        Ok(())
    }

    async fn remove(&self) -> Result<(), SinkError> {
        if let Some(s) = &self.store {
            let generation = s.ask(Want::Remove);
            if !s.settled(generation, REMOVE_WAIT).await {
                error!(store = %s.vault.name(), path = %s.path,
                    "could not remove the token from the store in time; it stays there until it expires");
            }
        }
        match &self.file {
            Some(f) => f.remove().await,
            None => Ok(()),
        }
    }

    async fn hold(&self) {
        if let Some(s) = &self.store {
            let generation = s.ask(Want::Hold);
            if !s.settled(generation, s.settle).await {
                warn!(store = %s.vault.name(), path = %s.path, "a store write was still under way before revoking");
            }
        }
    }

    fn location(&self) -> String {
        let file = self.file.as_ref().map(FileSink::location);
        let store = self.store.as_deref().map(StoreSink::location);
        [file, store]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("|")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use document::{MAX_SCOPE_BYTES, MAX_TOKEN_TYPE_LEN};
    use serde_json::json;

    fn set() -> SetConfig {
        let text = "providers:\n  p: { kind: voucherify, app_id: a, app_token: b }\nscope_sets:\n  - { name: s, provider: p, scopes: [api], file: { path: /t/s } }\n";
        crate::config::parse(text, std::path::Path::new("t"))
            .unwrap()
            .config
            .sets
            .remove(0)
    }

    /// A document as the daemon writes it, for a token that lives an hour from now.
    fn doc() -> Value {
        let meta = IssuedMeta {
            token_type: "Bearer".into(),
            scope: "api".into(),
            expires_at: crate::clock::now_wall() + Duration::from_secs(3600),
        };
        document("s", "h", &Secret::new("tok.en-1~+/="), &meta)
    }

    #[test]
    fn a_document_of_the_same_token_keeps_its_written_at_and_is_not_rewritten() {
        let token = Secret::new("tok.en-1~+/=");
        let mut held = doc();
        held["written_at"] = json!("2026-01-01T00:00:00Z");
        let mut again = doc();
        assert!(already_holds(&held, &mut again, &token));
        assert_eq!(again["written_at"], held["written_at"]);
        // The same token with something else changed: written, at its first written time.
        let mut changed = doc();
        changed["config_hash"] = json!("other");
        assert!(!already_holds(&held, &mut changed, &token));
        assert_eq!(changed["written_at"], held["written_at"]);
        // Another token: written as it is.
        let mut other = doc();
        other["access_token"] = json!("other");
        let before = other.clone();
        assert!(!already_holds(&held, &mut other, &Secret::new("other")));
        assert_eq!(other, before);
    }

    #[test]
    fn a_document_is_adopted_only_if_it_passes_a_providers_answer_checks() {
        let set = set();
        let now = crate::clock::now_wall();
        let e = entry_from_doc(&set, &doc(), now).unwrap().unwrap();
        assert_eq!(e.token.expose(), "tok.en-1~+/=");
        assert_eq!((e.token_type.as_str(), e.scope.as_str()), ("Bearer", "api"));
        let mut other = doc();
        other["set"] = json!("t");
        assert_eq!(entry_from_doc(&set, &other, now), Ok(None));
        let far = humantime::format_rfc3339_seconds(
            crate::clock::now_wall() + crate::config::MAX_DURATION + Duration::from_secs(86400),
        )
        .to_string();
        for (field, value) in [
            ("access_token", json!("x\nFOO=$(id)")),
            ("access_token", json!("a b")),
            (
                "access_token",
                json!("a".repeat(crate::provider::MAX_TOKEN_LEN + 1)),
            ),
            ("token_type", json!("Bearer\nX")),
            ("token_type", json!("")),
            ("token_type", json!("B".repeat(MAX_TOKEN_TYPE_LEN + 1))),
            ("scope", json!("api\u{1b}[2J")),
            ("scope", json!("api\u{202e}")),
            ("scope", json!("a".repeat(MAX_SCOPE_BYTES + 1))),
            ("expires_at", json!(far)),
            ("expires_at", json!("2000-01-01T00:00:00Z")),
            ("expires_at", json!("soon")),
            ("written_at", json!("9999-01-01T00:00:00Z")),
        ] {
            let mut d = doc();
            d[field] = value.clone();
            let refused = entry_from_doc(&set, &d, now);
            assert!(refused.is_err(), "{field} = {value} was adopted");
            // The reason names the check, never the value.
            let why = format!("{refused:?}");
            assert!(!why.contains("FOO") && !why.contains("\\u{1b}"), "{why}");
        }
    }

    /// "Too far ahead" is measured from the time the document is judged at, not from when it
    /// was written: a document expiring a minute within the cap after `now` is adopted at
    /// `now`, and refused when judged two minutes earlier.
    #[test]
    fn how_far_ahead_a_document_expires_is_judged_at_the_time_given() {
        let set = set();
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut d = doc();
        let at = |t: std::time::SystemTime| json!(humantime::format_rfc3339_seconds(t).to_string());
        d["written_at"] = at(now - crate::config::MAX_DURATION);
        d["expires_at"] = at(now + crate::config::MAX_DURATION - Duration::from_secs(60));
        assert!(matches!(entry_from_doc(&set, &d, now), Ok(Some(_))));
        let earlier = now - Duration::from_secs(120);
        assert!(entry_from_doc(&set, &d, earlier).is_err());
    }
}
