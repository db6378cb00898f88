//! Defaults and fixed lists: what a key means when it is not given, and the names a key
//! accepts.

use std::time::Duration;

use crate::settings::Choices;

use super::OnShutdown;

/// The FHS place for a daemon's persistent state.
pub(super) const DEFAULT_STATE_DIR: &str = "/var/lib/tokenkeeper";
/// Well inside systemd's default 90 s stop timeout, with room for a few revocation retries.
pub(super) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Two thirds of the lifetime: a 900 s Voucherify token is replaced after 594 s at the
/// latest, leaving five minutes to retry before it expires.
pub(super) const DEFAULT_REFRESH_AT: f64 = 0.66;
/// Spreads replacements over a tenth of the lifetime (90 s for Voucherify) so that many sets
/// and hosts do not call the provider in step.
pub(super) const DEFAULT_REFRESH_JITTER: f64 = 0.10;
/// At most one issue per second per set: short-lived test tokens still work, and a bug
/// cannot flood a provider that caps live tokens (Voucherify: 1000 per project).
pub(super) const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Long enough for a reader of the old token to finish its requests, short enough that a set
/// holds at most two live tokens at steady state.
pub(super) const DEFAULT_REVOKE_SUPERSEDED_AFTER: Duration = Duration::from_secs(60);
/// The store kinds this version speaks.
pub(super) const STORE_KINDS: &[&str] = &["vault"];
/// A store request is one small JSON document; 10 s leaves room for a slow network, and a
/// store that takes longer is treated as down and retried.
pub(super) const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(10);
/// The current token and the one it replaced (still valid for `revoke_superseded_after`):
/// older versions only pile up revoked tokens in the store's history.
pub(super) const DEFAULT_STORE_MAX_VERSIONS: u64 = 2;
/// Requests in flight to one store at once, across sets: a KV write takes about a millisecond
/// on a LAN, so 16 move thousands of tokens a second over 16 keep-alive connections, while a
/// start or a rotation of thousands of sets neither opens a socket per set (about 1,000 at
/// 1,000 sets before the cap) nor floods the store's request quotas.
pub(super) const DEFAULT_STORE_MAX_CONCURRENT_REQUESTS: u64 = 16;
/// Where AppRole is mounted unless `auth.approle.mount` says otherwise (Vault's default).
pub(super) const DEFAULT_APPROLE_MOUNT: &str = "approle";
/// A few seconds: a standby takes over within about one lease of the leader's death, and the
/// leader renews three times per lease, so one slow request does not cost it the lease.
pub(super) const DEFAULT_HA_LEASE: Duration = Duration::from_secs(5);
/// Below this, a renewal every third of the lease is too close to request timeouts.
pub(super) const MIN_HA_LEASE: Duration = Duration::from_secs(1);
/// Where the lease lives unless `ha.path` says otherwise.
pub(super) const DEFAULT_HA_PATH: &str = "tokenkeeper/lease";

/// `on_shutdown:`: what a set does with its token at stop.
pub(super) struct OnShutdownChoice;
impl Choices for OnShutdownChoice {
    type Value = OnShutdown;
    const NAMES: &'static [(&'static str, OnShutdown)] =
        &[("revoke", OnShutdown::Revoke), ("keep", OnShutdown::Keep)];
}
