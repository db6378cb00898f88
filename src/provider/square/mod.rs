//! Square OAuth (`specs/oauth-contract.md` section 2): ObtainToken with the refresh_token
//! grant, RetrieveTokenStatus, RevokeToken, and the deprecated RenewToken. JSON bodies,
//! `Square-Version` pinned, lowercase `bearer` tokens that live 30 days and expire at an
//! ISO 8601 `expires_at`.
//!
//! Two rules shape this module:
//! - A refresh token Square hands back in place of the one sent (PKCE refresh tokens are
//!   single-use) is saved durably in `state_dir` *before* the answer goes any further, so
//!   a crash after that point never loses it. Rotations are serialized, so two sets sharing
//!   one provider never present the same single-use token twice.
//! - RevokeToken ends the seller's whole authorization unless told otherwise, so this module
//!   always sends `revoke_only_access_token: true`, and the daemon calls it only for sets that
//!   ask for revocation themselves ([`Revocation::OptIn`]).

mod answers;
mod clock;
mod requests;

use std::time::Duration;

use reqwest::Url;
use reqwest::header::HeaderValue;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::refresh_store::RefreshStore;
use super::{
    Introspection, Issued, ProviderError, Revocation, TokenProvider, json_error, malformed,
    retry_after_text,
};
use crate::secret::Secret;
pub use answers::{TokenAnswer, parse_revoke_answer, parse_status_answer, parse_token_answer};
pub use clock::{lifetime, parse_timestamp};
use requests::{ObtainTokenRequest, RenewTokenRequest, RevokeTokenRequest};

/// The API version this module speaks (the spec's release); pinned so Square never changes
/// an answer's shape under us.
pub const SQUARE_VERSION: &str = "2025-08-20";

/// The 59 permissions Square documents (`securitySchemes.oauth2...scopes`, 2025-08-20). A
/// scope outside this list gets a warning, not a refusal: Square adds permissions over time.
pub const SCOPES: &[&str] = &[
    "ADDON_CONFIGURATIONS_READ",
    "ADDON_CONFIGURATIONS_WRITE",
    "APPOINTMENTS_ALL_READ",
    "APPOINTMENTS_ALL_WRITE",
    "APPOINTMENTS_BUSINESS_SETTINGS_READ",
    "APPOINTMENTS_READ",
    "APPOINTMENTS_WRITE",
    "BANK_ACCOUNTS_READ",
    "CASH_DRAWER_READ",
    "CHANNELS_CREATE",
    "CHANNELS_READ",
    "CHANNELS_UPDATE",
    "CUSTOMERS_READ",
    "CUSTOMERS_WRITE",
    "DEVICES_READ",
    "DEVICE_CREDENTIAL_MANAGEMENT",
    "DISCOUNT_CODES_READ",
    "DISCOUNT_CODES_WRITE",
    "DISPUTES_READ",
    "DISPUTES_WRITE",
    "EMPLOYEES_READ",
    "EMPLOYEES_WRITE",
    "GIFTCARDS_READ",
    "GIFTCARDS_WRITE",
    "INVENTORY_READ",
    "INVENTORY_WRITE",
    "INVOICES_READ",
    "INVOICES_WRITE",
    "ITEMS_READ",
    "ITEMS_WRITE",
    "LOYALTY_READ",
    "LOYALTY_WRITE",
    "MERCHANT_PROFILE_READ",
    "MERCHANT_PROFILE_WRITE",
    "ONLINE_STORE_SITE_READ",
    "ONLINE_STORE_SNIPPETS_READ",
    "ONLINE_STORE_SNIPPETS_WRITE",
    "ORDERS_READ",
    "ORDERS_WRITE",
    "PAYMENTS_READ",
    "PAYMENTS_WRITE",
    "PAYMENTS_WRITE_ADDITIONAL_RECIPIENTS",
    "PAYMENTS_WRITE_IN_PERSON",
    "PAYMENTS_WRITE_SHARED_ONFILE",
    "PAYOUTS_READ",
    "PERMISSION_SETS_READ",
    "PERMISSION_SETS_WRITE",
    "RESERVATIONS_READ",
    "RESERVATIONS_WRITE",
    "RESTAURANT_CHECKS_READ",
    "SETTLEMENTS_READ",
    "SUBSCRIPTIONS_READ",
    "SUBSCRIPTIONS_WRITE",
    "TIMECARDS_READ",
    "TIMECARDS_SETTINGS_READ",
    "TIMECARDS_SETTINGS_WRITE",
    "TIMECARDS_WRITE",
    "VENDOR_READ",
    "VENDOR_WRITE",
];

/// How new access tokens are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// ObtainToken, `grant_type=refresh_token`.
    RefreshToken,
    /// The deprecated RenewToken, renewing the latest access token.
    Renew,
}

/// What [`Square::new`] needs.
pub struct Settings {
    pub http: reqwest::Client,
    pub name: String,
    pub base_url: Url,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub mode: Mode,
    /// The configured first refresh token (or, to renew, access token).
    pub seed: Secret,
    pub store: RefreshStore,
    pub timeout: Duration,
}

/// A Square application's OAuth endpoints for one seller.
pub struct Square {
    http: reqwest::Client,
    name: String,
    base_url: Url,
    client_id: String,
    client_secret: Option<Secret>,
    /// `Authorization: Client <secret>`, marked sensitive; none for PKCE applications.
    client_auth: Option<HeaderValue>,
    mode: Mode,
    /// Fingerprint of the configured seed, recorded with every saved token.
    seed: String,
    store: RefreshStore,
    /// The credential the next issue presents. Held across the request, so rotations of a
    /// single-use token never overlap.
    current: Mutex<Secret>,
    timeout: Duration,
}

impl Square {
    /// What requests carry, besides the token they are about, that an answer must not show:
    /// the client secret and the `Authorization: Client` header made from it.
    pub(crate) fn secrets(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.client_secret.iter().map(Secret::expose).collect();
        out.extend(self.client_auth.as_ref().and_then(|h| h.to_str().ok()));
        out
    }
}

impl std::fmt::Debug for Square {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Square")
            .field("name", &self.name)
            .field("base_url", &self.base_url.as_str())
            .field("client_id", &self.client_id)
            .field("mode", &self.mode)
            .field("state_file", &self.store.path())
            .finish_non_exhaustive()
    }
}

impl Square {
    pub fn new(s: Settings) -> Result<Self, ProviderError> {
        let client_auth = match &s.client_secret {
            Some(secret) => {
                let mut v = HeaderValue::from_str(&format!("Client {}", secret.expose())).map_err(
                    |_| ProviderError::BadHeader {
                        what: "client_secret",
                    },
                )?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let seed = s.seed.fingerprint();
        let current = match s.store.load().map_err(ProviderError::State)? {
            Some((stored_seed, token)) if stored_seed == seed => {
                info!(provider = %s.name, state_file = %s.store.path().display(),
                    fingerprint = %token.fingerprint(),
                    "continuing from the refresh token saved in state_dir");
                token
            }
            Some(_) => {
                warn!(provider = %s.name, state_file = %s.store.path().display(),
                    "the configured first token changed since the saved one descends from another; starting from the configured one");
                s.seed
            }
            None => s.seed,
        };
        Ok(Square {
            http: s.http,
            name: s.name,
            base_url: s.base_url,
            client_id: s.client_id,
            client_secret: s.client_secret,
            client_auth,
            mode: s.mode,
            seed,
            store: s.store,
            current: Mutex::new(current),
            timeout: s.timeout,
        })
    }

    /// Save `next` as the credential to present next time, then start using it.
    async fn keep(&self, current: &mut Secret, next: Secret) -> Result<(), ProviderError> {
        let store = self.store.clone();
        let seed = self.seed.clone();
        let saving = next.clone();
        tokio::task::spawn_blocking(move || store.save(&seed, &saving))
            .await
            .map_err(|e| {
                ProviderError::State(super::refresh_store::RefreshStoreError::Io {
                    op: "save (the writer thread failed)",
                    path: self.store.path().to_path_buf(),
                    source: std::io::Error::other(e.to_string()),
                })
            })?
            .map_err(|e| {
                error!(provider = %self.name, new = %next.fingerprint(), state_file = %self.store.path().display(),
                    "could not save the new refresh token; it is kept in memory only and lost if the process ends");
                ProviderError::State(e)
            })?;
        info!(provider = %self.name, old = %current.fingerprint(), new = %next.fingerprint(),
            state_file = %self.store.path().display(), "saved the rotated refresh token");
        *current = next;
        Ok(())
    }
}

impl TokenProvider for Square {
    async fn issue(&self, scopes: &[String]) -> Result<Issued, ProviderError> {
        let mut current = self.current.lock().await;
        let (op, url, auth, body) = match self.mode {
            Mode::RefreshToken => {
                let body = serde_json::to_vec(&ObtainTokenRequest {
                    client_id: &self.client_id,
                    client_secret: self.client_secret.as_ref().map(Secret::expose),
                    grant_type: "refresh_token",
                    refresh_token: current.expose(),
                    scopes,
                });
                ("ObtainToken", self.url(&["oauth2", "token"]), None, body)
            }
            Mode::Renew => {
                let body = serde_json::to_vec(&RenewTokenRequest {
                    access_token: current.expose(),
                });
                (
                    "RenewToken",
                    self.url(&[
                        "oauth2",
                        "clients",
                        &self.client_id,
                        "access-token",
                        "renew",
                    ]),
                    self.client_auth.clone(),
                    body,
                )
            }
        };
        let body =
            body.map_err(|e| malformed("request", format!("cannot encode: {}", json_error(&e))))?;
        let issued_at = Instant::now();
        // The request carried the refresh (or access) token: an answer echoing it is cut.
        let redact = |e: super::ProviderError| {
            let r = super::Redactor::new([current.expose()]);
            e.redacted(|t| r.redact(t))
        };
        let (status, headers, body) = self.post(op, url, auth, Some(body)).await.map_err(redact)?;
        let answer = parse_token_answer(
            op,
            status.as_u16(),
            retry_after_text(&headers),
            &body,
            headers
                .get(reqwest::header::DATE)
                .and_then(|v| v.to_str().ok()),
            crate::clock::now_wall(),
        )
        .map_err(redact)?;
        // The new refresh token first: whatever is wrong with the rest of the answer, the
        // old one may already be spent.
        if self.mode == Mode::RefreshToken
            && let Some(next) = answer
                .refresh_token
                .filter(|t| t.expose() != current.expose())
        {
            self.keep(&mut current, next).await?;
        }
        if let Some(clock) = &answer.clock {
            error!(provider = %self.name, expires_at = %answer.expires_at, "CLOCK LOOKS WRONG: {clock}");
        }
        let (token, lifetime) = answer.access?;
        if self.mode == Mode::Renew {
            // The renewed token is what the next renewal presents.
            self.keep(&mut current, token.clone()).await?;
        }
        Ok(Issued {
            token,
            token_type: "bearer".to_string(),
            // ObtainToken does not echo scopes; the set asked for these (Square grants their
            // intersection with the authorization's).
            scope: scopes.join(" "),
            issued_at,
            lifetime,
            lifetime_assumed: false,
        })
    }

    async fn revoke(&self, token: &Secret) -> Result<(), ProviderError> {
        const OP: &str = "RevokeToken";
        let Some(auth) = self.client_auth.clone() else {
            return Err(ProviderError::Unsupported { operation: OP });
        };
        let body = serde_json::to_vec(&RevokeTokenRequest {
            client_id: &self.client_id,
            access_token: token.expose(),
            // Never the whole authorization: that would also end the refresh token.
            revoke_only_access_token: true,
        })
        .map_err(|e| malformed(OP, format!("cannot encode: {}", json_error(&e))))?;
        let (status, headers, body) = self
            .post(OP, self.url(&["oauth2", "revoke"]), Some(auth), Some(body))
            .await?;
        parse_revoke_answer(status.as_u16(), retry_after_text(&headers), &body)
    }

    async fn introspect(&self, token: &Secret) -> Result<Introspection, ProviderError> {
        const OP: &str = "RetrieveTokenStatus";
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| ProviderError::BadHeader { what: "the token" })?;
        auth.set_sensitive(true);
        let (status, headers, body) = self
            .post(
                OP,
                self.url(&["oauth2", "token", "status"]),
                Some(auth),
                None,
            )
            .await?;
        parse_status_answer(
            status.as_u16(),
            retry_after_text(&headers),
            &body,
            crate::clock::now_wall(),
        )
    }

    fn revocation(&self) -> Revocation {
        if self.client_auth.is_some() {
            Revocation::OptIn
        } else {
            Revocation::Unsupported
        }
    }
}

#[cfg(test)]
mod tests;
