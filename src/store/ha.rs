//! High availability through the store itself: instances with the same config elect a
//! leader with a lease record written by check-and-set, and each heartbeats a member record
//! so that a leader asked to stop knows whether someone will carry on.
//!
//! The lease holds the holder's name and an expiry in wall-clock milliseconds: instances on
//! different machines must keep their clocks in step (NTP), well within a lease.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::config::{Config, HaConfig};
use crate::error_chain as chain;
use crate::journal::Entry;
use crate::secret::fingerprint;
use crate::store::Stores;
use crate::store::vault::{StoreError, Vault};

/// Who holds the lease, as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub name: String,
    pub expires_ms: u64,
}

impl Holder {
    /// Whether the lease still runs at wall-clock time `now_ms`.
    fn runs_at(&self, now_ms: u64) -> bool {
        self.expires_ms > now_ms
    }
}

/// What a member record that expires at `expires_ms` says at wall-clock time `now_ms`, for a
/// lease of `lease_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    /// Heartbeating: a standby that can take over.
    Live,
    /// Claims to last longer than a heartbeat reaches ([`MEMBER_BELIEF_LEASES`]): not believed.
    Overclaiming,
    /// Run out, but not long enough ago to call the instance dead.
    Lapsed,
    /// Run out [`MEMBER_EXPIRY_LEASES`] leases ago: the instance is dead.
    Dead,
}

fn member_at(expires_ms: u64, now_ms: u64, lease_ms: u64) -> Member {
    let grace = lease_ms.saturating_mul(MEMBER_EXPIRY_LEASES);
    let bound = now_ms.saturating_add(lease_ms.saturating_mul(MEMBER_BELIEF_LEASES));
    if expires_ms.saturating_add(grace) < now_ms {
        Member::Dead
    } else if expires_ms <= now_ms {
        Member::Lapsed
    } else if expires_ms <= bound {
        Member::Live
    } else {
        Member::Overclaiming
    }
}

/// One instance's view of the lease.
pub struct Lease {
    vault: Arc<Vault>,
    path: String,
    members: String,
    pub id: String,
    pub lease: Duration,
    /// What this instance believes of a lease record claimed further ahead than a lease.
    doubted: std::sync::Mutex<Doubted>,
    _keeper: tokio::task::JoinHandle<()>,
}

/// A lease record that claimed to last longer than a lease, as this instance believes it:
/// anyone who may write `ha.path` can write any `expires_ms`, and believing years would keep
/// every instance standing by for years.
#[derive(Default)]
struct Doubted {
    /// The record's version and the time it is believed to end: one lease after it was first
    /// read. A holder that renews writes a new version, so a live leader keeps the lease.
    until: Option<(u64, u64)>,
    /// The last holder warned about, so a holder renewing with a clock ahead of ours is
    /// reported once, not at every renewal.
    warned: Option<String>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self._keeper.abort();
    }
}

/// How many leases ahead a member record may claim and be believed: a heartbeat says one
/// lease; the second allows for clocks a little apart, far short of a stranger's "forever".
const MEMBER_BELIEF_LEASES: u64 = 2;

/// How many leases past its expiry a member record is kept: a heartbeat writes an expiry one
/// lease ahead and is renewed every quarter (standby) or third (leader) of a lease, so a record
/// two leases past its expiry (last written three leases ago) means nine or more heartbeats
/// missed in a row: the instance is dead, not slow. Fewer would remove the record of an
/// instance merely stalled by a slow store; more leaves dead records about longer for nothing.
const MEMBER_EXPIRY_LEASES: u64 = 2;

/// The wall-clock time now in milliseconds since the epoch, as lease records hold it.
fn now_ms() -> u64 {
    crate::clock::now_wall()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The default instance name: host name and process id, unique among running instances.
fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}-{}", std::process::id())
}

impl Lease {
    /// The lease `ha` describes, on its store (logged in lazily). Needs a tokio runtime.
    pub fn new(config: &Config, ha: &HaConfig) -> Result<Option<Lease>, StoreError> {
        let Some(store) = config.stores.get(&ha.store) else {
            return Ok(None);
        };
        let vault = Arc::new(Vault::new(store)?);
        let keeper = tokio::spawn(Arc::clone(&vault).keep_logged_in());
        Ok(Some(Lease {
            vault,
            path: ha.path.clone(),
            members: format!("{}-members", ha.path),
            id: ha.instance.clone().unwrap_or_else(default_id),
            lease: ha.lease,
            doubted: std::sync::Mutex::default(),
            _keeper: keeper,
        }))
    }

    /// The lease record as stored: (version for check-and-set, holder if any).
    pub async fn read(&self) -> Result<(u64, Option<Holder>), StoreError> {
        match self.vault.read(&self.path).await? {
            Some(doc) if !doc.deleted => {
                let name = doc.data.get("holder").and_then(Value::as_str).unwrap_or("");
                let expires_ms = doc
                    .data
                    .get("expires_ms")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let holder = (!name.is_empty()).then(|| Holder {
                    name: name.to_string(),
                    expires_ms: self.believed(doc.version, name, expires_ms, now_ms()),
                });
                Ok((doc.version, holder))
            }
            _ => Ok((self.vault.current_version(&self.path).await?, None)),
        }
    }

    /// When lease record `version`, held by `holder` until `expires_ms`, is taken to end: as it
    /// says, unless that lies more than a lease after `now`; then one lease after the first
    /// time this version was read. Clocks in step (see the module) never claim more than that.
    fn believed(&self, version: u64, holder: &str, expires_ms: u64, now: u64) -> u64 {
        let bound = now.saturating_add(ms(self.lease));
        if expires_ms <= bound {
            return expires_ms;
        }
        let mut doubted = self
            .doubted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if doubted.warned.as_deref() != Some(holder) {
            warn!(holder = %crate::shown(holder), lease_ms = ms(self.lease),
                ahead_ms = expires_ms - now,
                "the lease record claims to last longer than a lease; believing it for one lease");
            doubted.warned = Some(holder.to_string());
        }
        match doubted.until {
            Some((v, until)) if v == version => until.min(expires_ms),
            _ => {
                doubted.until = Some((version, bound));
                bound
            }
        }
    }

    /// Take the lease if it is free, expired or ours, or renew it; `Ok(false)` if another
    /// instance holds it (or won the race to it).
    pub async fn acquire(&self) -> Result<bool, StoreError> {
        let (version, holder) = self.read().await?;
        let now = now_ms();
        match &holder {
            Some(h) if h.name != self.id && h.runs_at(now) => return Ok(false),
            _ => {}
        }
        let doc = json!({
            "holder": self.id,
            "expires_ms": now + ms(self.lease),
            "lease_ms": ms(self.lease),
        });
        match self.vault.write_cas(&self.path, doc, version).await {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Give the lease up now, so a standby need not wait for it to expire.
    pub async fn release(&self) -> Result<(), StoreError> {
        let (version, holder) = self.read().await?;
        if holder.is_some_and(|h| h.name == self.id) {
            let doc = json!({ "holder": "", "expires_ms": 0 });
            match self.vault.write_cas(&self.path, doc, version).await {
                Ok(_) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn member_path(&self) -> String {
        format!("{}/{}", self.members, self.id)
    }

    /// Say "I am here" for two leases: a leader asked to stop hands over only to an instance
    /// that said so recently.
    pub async fn heartbeat(&self) -> Result<(), StoreError> {
        let path = self.member_path();
        let version = self.vault.current_version(&path).await?;
        let doc = json!({ "expires_ms": now_ms() + ms(self.lease) });
        match self.vault.write_cas(&path, doc, version).await {
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Remove this instance's member record (it is stopping).
    pub async fn leave(&self) {
        if let Err(e) = self.vault.delete_all(&self.member_path()).await {
            warn!(error = %chain(&e), "could not remove this instance's member record; it expires on its own");
        }
    }

    /// Whether another instance heartbeated recently (a standby that can take over). A member
    /// record is believed live until its `expires_ms`, but not one claiming more than
    /// [`MEMBER_BELIEF_LEASES`] leases ahead: a stranger's record would otherwise turn every
    /// stop into a handover to no one, leaving the tokens live.
    pub async fn live_standby(&self) -> Result<Option<String>, StoreError> {
        let now = now_ms();
        for key in self.vault.list(&self.members).await? {
            if key == self.id || key.ends_with('/') {
                continue;
            }
            let path = format!("{}/{key}", self.members);
            if let Some(doc) = self.vault.read(&path).await?
                && !doc.deleted
                && let Some(expires_ms) = doc.data.get("expires_ms").and_then(Value::as_u64)
            {
                match member_at(expires_ms, now, ms(self.lease)) {
                    Member::Live => return Ok(Some(key)),
                    Member::Overclaiming => {
                        warn!(member = %crate::shown(&key), "a member record claims to last longer than a heartbeat reaches; not counting it as a standby");
                    }
                    Member::Lapsed | Member::Dead => {}
                }
            }
        }
        Ok(None)
    }

    /// Delete the member records of instances that stopped heartbeating
    /// [`MEMBER_EXPIRY_LEASES`] leases ago (killed ones never remove their own). The delete is
    /// idempotent, so two leaders in a hand-over racing at it is harmless; an instance whose
    /// record went only because it stalled that long writes it again at its next heartbeat.
    /// Records without a readable expiry are left alone: they are no heartbeat of ours.
    pub async fn expire_dead_members(&self) -> Result<(), StoreError> {
        let now = now_ms();
        for key in self.vault.list(&self.members).await? {
            if key == self.id || key.ends_with('/') {
                continue;
            }
            let path = format!("{}/{key}", self.members);
            let Some(doc) = self.vault.read(&path).await? else {
                continue;
            };
            let expires_ms = doc.data.get("expires_ms").and_then(Value::as_u64);
            let dead = !doc.deleted
                && expires_ms.is_some_and(|e| member_at(e, now, ms(self.lease)) == Member::Dead);
            if !dead {
                continue;
            }
            self.vault.delete_all(&path).await?;
            info!(member = %crate::shown(&key), "removed the record of a member that stopped heartbeating");
        }
        Ok(())
    }

    /// [`Lease::expire_dead_members`], given up after `limit`: a slow store must not hold off
    /// the next renewal.
    async fn expire_dead_members_within(&self, limit: Duration) {
        match tokio::time::timeout(limit, self.expire_dead_members()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %chain(&e), "leader: could not expire dead members' records");
            }
            Err(_) => {
                warn!("leader: expiring dead members' records took too long; trying again later")
            }
        }
    }

    /// Stand by until this instance holds the lease, heartbeating meanwhile. Polls every
    /// quarter lease: a dead leader's lease is taken within about 1.25 leases of its last
    /// renewal, a released one within a quarter lease.
    pub async fn wait_for_lease(&self, on_leader: impl Fn(Option<String>)) {
        let mut last_leader: Option<String> = None;
        loop {
            if let Err(e) = self.heartbeat().await {
                warn!(error = %chain(&e), "standby: could not heartbeat to the store");
            }
            match self.acquire().await {
                Ok(true) => return,
                Ok(false) => {
                    // Anyone who can write the lease names its holder: escaped before the
                    // log and the status show it.
                    let leader = self.read().await.ok().and_then(|(_, h)| h);
                    let leader = leader.map(|h| crate::shown(&h.name).into_owned());
                    if leader != last_leader {
                        info!(leader = leader.as_deref().unwrap_or("-"), "standing by");
                        on_leader(leader.clone());
                        last_leader = leader;
                    }
                }
                Err(e) => warn!(error = %chain(&e), "standby: could not read the lease"),
            }
            tokio::time::sleep(self.lease / 4).await;
        }
    }
}

impl Lease {
    /// As leader: renew every third of a lease until the lease is lost (another instance
    /// holds it) or could not be renewed before it ran out; then return, and the caller must
    /// stop acting as leader at once. Once a lease, also expire dead members' records.
    pub async fn keep(&self) {
        let mut valid_until = tokio::time::Instant::now() + self.lease;
        for tick in 0_u64.. {
            tokio::time::sleep(self.lease / 3).await;
            if let Err(e) = self.heartbeat().await {
                warn!(error = %chain(&e), "leader: could not heartbeat to the store");
            }
            let asked = tokio::time::Instant::now();
            match self.acquire().await {
                Ok(true) => {
                    valid_until = asked + self.lease;
                    if tick % 3 == 0 {
                        self.expire_dead_members_within(self.lease / 3).await;
                    }
                }
                Ok(false) => {
                    warn!("leader: another instance holds the lease now");
                    return;
                }
                Err(e) => {
                    warn!(error = %chain(&e), "leader: could not renew the lease");
                    if tokio::time::Instant::now() + self.lease / 3 >= valid_until {
                        warn!("leader: the lease runs out before it can be renewed");
                        return;
                    }
                }
            }
        }
    }
}

/// How many leases [`Lease::live_leader`] watches the lease before it gives up telling: a live
/// holder renews every third of a lease and a dead one's lease is believed one lease at most,
/// after which a live standby takes it within a quarter lease; three leases cover both with
/// room for a slow store, and bound how long `tokenkeeper revoke` can wait.
const LIVENESS_LEASES: u32 = 3;

/// How often [`Lease::live_leader`] reads the lease: ten times a lease sees a renewal (every
/// third of a lease) within a tenth of a lease, at a few requests a second for a 2 s lease.
const LIVENESS_POLLS_PER_LEASE: u32 = 10;

/// How many store paths [`served_by_the_group`] reads at once: a crashed leader's journal can
/// name thousands of sets, and the store must not see thousands of connections for it.
const PATH_READS_AT_ONCE: usize = 16;

/// Why [`served_by_the_group`] could not tell which tokens another member serves.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("could not ask the store")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Config(String),
    #[error(
        "the lease (held by {holder}) was neither renewed nor given up within {waited}: cannot tell whether it leads"
    )]
    Undecided { holder: String, waited: String },
}

impl Lease {
    /// The group's live leader, if there is one, as seen by an instance that does not hold
    /// the lease. A holder is live once it is seen writing the lease (a version newer than
    /// the first read, its lease still running): a dead one cannot. The group has no leader
    /// once the lease is free or run out and no member record is live: nobody takes over.
    /// While the lease is free and a standby is live, that standby is waited for: it takes
    /// the lease within a quarter lease. The leader's name comes back escaped for display.
    pub async fn live_leader(&self) -> Result<Option<String>, GroupError> {
        let (first, mut seen) = self.read().await?;
        let waited = self.lease * LIVENESS_LEASES;
        let give_up = tokio::time::Instant::now() + waited;
        loop {
            let (version, holder) = self.read().await?;
            let now = now_ms();
            match holder.filter(|h| h.runs_at(now)) {
                // Anyone who can write the lease names its holder: escaped before it is shown.
                Some(h) if version != first => return Ok(Some(crate::shown(&h.name).into_owned())),
                Some(h) => seen = Some(h),
                None if self.live_standby().await?.is_none() => return Ok(None),
                None => {}
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(GroupError::Undecided {
                    holder: seen.map_or_else(|| "-".into(), |h| crate::shown(&h.name).into_owned()),
                    waited: humantime::format_duration(waited).to_string(),
                });
            }
            tokio::time::sleep(self.lease / LIVENESS_POLLS_PER_LEASE).await;
        }
    }
}

/// The fingerprint of the token `set`'s entry at `path` holds, if it holds one of that set's.
async fn held_at(vault: &Vault, path: &str, set: &str) -> Result<Option<String>, StoreError> {
    Ok(vault
        .read(path)
        .await?
        .filter(|d| !d.deleted)
        .and_then(|d| {
            let token = d.data.get("access_token")?.as_str()?;
            let ours = d.data.get("set").and_then(Value::as_str) == Some(set);
            ours.then(|| fingerprint(token))
        }))
}

/// After `tokenkeeper revoke` (the daemon not running, and no member of its group serving
/// them): remove each store path that still holds one of the `revoked` tokens (set,
/// fingerprint), or every reader of the store would go on being handed a revoked token. A
/// path holding any other token is left alone: a member wrote it since. KV v2 has no
/// conditional delete, so a member that takes over and writes the path between this read
/// and the removal loses its write; its writer finds the path gone and writes again.
/// Returns, for each set whose path held its revoked token (or could not be read by
/// `deadline`), the removal's outcome.
pub async fn clear_revoked(
    config: &Config,
    revoked: &[(&str, &str)],
    deadline: tokio::time::Instant,
) -> Vec<(String, Result<(), String>)> {
    let paths: Vec<(&str, &str, &str, &str)> = config
        .sets
        .iter()
        .filter_map(|set| {
            let s = set.store.as_ref()?;
            let (_, fp) = revoked.iter().find(|(name, _)| *name == set.name)?;
            Some((s.name.as_str(), s.path.as_str(), set.name.as_str(), *fp))
        })
        .collect();
    if paths.is_empty() {
        return Vec::new();
    }
    let stores = match Stores::build(config) {
        Ok(stores) => stores,
        Err(e) => {
            let why = chain(&e);
            return paths
                .iter()
                .map(|(_, _, set, _)| (set.to_string(), Err(why.clone())))
                .collect();
        }
    };
    // Owned: the futures below borrow nothing.
    let wanted: Vec<(Arc<Vault>, String, String, String)> = paths
        .into_iter()
        .filter_map(|(store, path, set, fp)| {
            let vault = Arc::clone(stores.get(store)?);
            Some((vault, path.into(), set.into(), fp.into()))
        })
        .collect();
    let clears = wanted.into_iter().map(|(vault, path, set, fp)| async move {
        let clear = async {
            match held_at(&vault, &path, &set).await {
                Ok(Some(held)) if held == fp => vault.remove(&path).await.map(Some),
                Ok(_) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let cleared = match tokio::time::timeout_at(deadline, clear).await {
            Ok(cleared) => cleared.map_err(|e| chain(&e)),
            Err(_) => Err("the store did not answer by the deadline (shutdown_timeout)".into()),
        };
        (set, cleared)
    });
    let done: Vec<(String, Result<Option<()>, String>)> = futures_util::stream::iter(clears)
        .buffer_unordered(PATH_READS_AT_ONCE)
        .collect()
        .await;
    done.into_iter()
        .filter_map(|(set, r)| match r {
            Ok(None) => None,
            Ok(Some(())) => Some((set, Ok(()))),
            Err(why) => Some((set, Err(why))),
        })
        .collect()
}

/// Of the journaled `entries` of a member of `config`'s HA group that is not running, the
/// ones another member serves now, by fingerprint, each with the leader's name: those the
/// store entry at their set's path holds while a live member leads the group (it adopted
/// that entry, or adopts it as it takes over). Revoking one would cut every reader of the
/// store off a token the leader goes on handing out. Empty without `ha:`, or when no store
/// path holds a journaled token (nothing to ask the lease then).
///
/// An error when the store does not answer: the caller must then revoke none of the tokens
/// the store may hold (see `tokenkeeper revoke`).
pub async fn served_by_the_group(
    config: &Config,
    entries: &[&Entry],
) -> Result<HashMap<String, String>, GroupError> {
    let Some(ha) = &config.ha else {
        return Ok(HashMap::new());
    };
    let mut by_set: HashMap<&str, Vec<String>> = HashMap::new();
    for e in entries {
        by_set
            .entry(e.set.as_str())
            .or_default()
            .push(e.fingerprint.clone());
    }
    // Each path to read, with what to look for there.
    let paths: Vec<(&str, &str, &str, Vec<String>)> = config
        .sets
        .iter()
        .filter_map(|set| {
            let s = set.store.as_ref()?;
            let mine = by_set.remove(set.name.as_str())?;
            Some((s.name.as_str(), s.path.as_str(), set.name.as_str(), mine))
        })
        .collect();
    if paths.is_empty() {
        return Ok(HashMap::new());
    }
    let stores = Stores::build(config)?;
    // Owned: the futures below borrow nothing.
    let mut wanted: Vec<(Arc<Vault>, String, String, Vec<String>)> = Vec::new();
    for (store, path, set, mine) in paths {
        let vault = stores
            .get(store)
            .ok_or_else(|| GroupError::Config(format!("store {store} is not configured")))?;
        wanted.push((Arc::clone(vault), path.into(), set.into(), mine));
    }
    let reads = wanted
        .into_iter()
        .map(|(vault, path, set, mine)| async move {
            let held = held_at(&vault, &path, &set).await?;
            Ok::<_, GroupError>(held.filter(|f| mine.contains(f)))
        });
    let held: Vec<Result<Option<String>, GroupError>> = futures_util::stream::iter(reads)
        .buffer_unordered(PATH_READS_AT_ONCE)
        .collect()
        .await;
    let mut adopted = Vec::new();
    for h in held {
        adopted.extend(h?);
    }
    if adopted.is_empty() {
        return Ok(HashMap::new());
    }
    let lease = Lease::new(config, ha)?
        .ok_or_else(|| GroupError::Config(format!("ha.store {} is not configured", ha.store)))?;
    Ok(match lease.live_leader().await? {
        Some(leader) => adopted.into_iter().map(|f| (f, leader.clone())).collect(),
        None => HashMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each verdict at chosen times around one record, for a 10 s lease: live up to its
    /// expiry, lapsed after it, dead two leases later, and not believed if it claims more than
    /// two leases ahead.
    #[test]
    fn a_member_record_is_judged_at_the_time_given() {
        let lease = 10_000;
        let expires = 1_800_000_000_000;
        assert_eq!(member_at(expires, expires - 1, lease), Member::Live);
        assert_eq!(member_at(expires, expires - 2 * lease, lease), Member::Live);
        assert_eq!(
            member_at(expires, expires - 2 * lease - 1, lease),
            Member::Overclaiming
        );
        assert_eq!(member_at(expires, expires, lease), Member::Lapsed);
        assert_eq!(
            member_at(expires, expires + 2 * lease, lease),
            Member::Lapsed
        );
        assert_eq!(
            member_at(expires, expires + 2 * lease + 1, lease),
            Member::Dead
        );
    }

    #[test]
    fn a_lease_runs_until_its_expiry_at_the_time_given() {
        let h = Holder {
            name: "a".into(),
            expires_ms: 1_800_000_000_000,
        };
        assert!(h.runs_at(h.expires_ms - 1));
        assert!(!h.runs_at(h.expires_ms));
    }
}
