//! A set's token as a document in the store: what is written, what is adopted back (held to
//! the checks a provider's answer passes), and whether a path holds a token's document already.

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::config::SetConfig;
use crate::journal::Entry;
use crate::secret::Secret;
use crate::sink::IssuedMeta;

/// The document a set's token becomes in the store. `written_at` lets another instance work
/// out when the token is due for refresh.
pub(super) fn document(set: &str, config_hash: &str, token: &Secret, meta: &IssuedMeta) -> Value {
    let scopes: Vec<&str> = meta.scope.split_whitespace().collect();
    json!({
        "access_token": token.expose(),
        "token_type": meta.token_type,
        "expires_at": humantime::format_rfc3339_seconds(meta.expires_at).to_string(),
        "scope": meta.scope,
        "scopes": scopes,
        "set": set,
        "fingerprint": token.fingerprint(),
        "written_at": humantime::format_rfc3339_seconds(crate::clock::now_wall()).to_string(),
        "config_hash": config_hash,
    })
}

/// Longest `token_type` adopted: the types in use (`Bearer`, `DPoP`, `N_A`) are a few letters.
pub(super) const MAX_TOKEN_TYPE_LEN: usize = 64;

/// Longest `scope` adopted. What the daemon writes there is a provider's scope, escaped and
/// capped at 300 characters (under 4 KiB once escaped), or the configured scopes; 16 KiB holds
/// either with room, and keeps a stranger's document from making every token file huge.
pub(super) const MAX_SCOPE_BYTES: usize = 16 * 1024;

/// Why a set's document was not adopted: which check it failed, never its values.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Unfit {
    /// Of its `access_token`: a hash, whatever the token holds.
    pub(super) fingerprint: String,
    pub(super) why: &'static str,
}

/// A store document read back as a journal entry; `Ok(None)` if it is not one of ours.
///
/// Anyone allowed to write the path can write it, and an adopted token goes into the set's
/// file and to its consumers: it is held to the checks a provider's answer passes (a
/// `b64token`, a one-word `token_type`, a `scope` that is plain text, an expiry after it was
/// written and within [`crate::config::MAX_DURATION`] of `now`), or not adopted at all.
pub(super) fn entry_from_doc(
    set: &SetConfig,
    data: &Value,
    now: SystemTime,
) -> Result<Option<Entry>, Unfit> {
    let text = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_string);
    let time = |k: &str| text(k).and_then(|t| humantime::parse_rfc3339_weak(&t).ok());
    if text("set").as_deref() != Some(set.name.as_str()) {
        return Ok(None);
    }
    let Some(token) = text("access_token") else {
        return Ok(None);
    };
    let token = Secret::new(token);
    let unfit = |why| Unfit {
        fingerprint: token.fingerprint(),
        why,
    };
    if !crate::provider::is_b64token(token.expose()) {
        return Err(unfit(
            "access_token is not a bearer token (RFC 6750 b64token)",
        ));
    }
    let token_type = text("token_type").unwrap_or_else(|| "Bearer".into());
    if token_type.is_empty()
        || token_type.len() > MAX_TOKEN_TYPE_LEN
        || !token_type.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(unfit("token_type is not one printable ASCII word"));
    }
    let scope = text("scope").unwrap_or_default();
    if scope.len() > MAX_SCOPE_BYTES || !scope.chars().all(crate::is_shown_as_is) {
        return Err(unfit(
            "scope is too long or has a control, bidi or invisible character",
        ));
    }
    let (Some(expires_at), Some(written_at)) = (time("expires_at"), time("written_at")) else {
        return Err(unfit("expires_at or written_at is not an RFC 3339 time"));
    };
    let Ok(lifetime) = expires_at.duration_since(written_at) else {
        return Err(unfit("expires_at is not after written_at"));
    };
    if lifetime.is_zero()
        || expires_at
            .duration_since(now)
            .is_ok_and(|ahead| ahead > crate::config::MAX_DURATION)
    {
        return Err(unfit(
            "expires_at is not after written_at, or is too far ahead",
        ));
    }
    Ok(Some(Entry {
        set: set.name.clone(),
        provider: set.provider.clone(),
        fingerprint: token.fingerprint(),
        token,
        token_type,
        scope,
        issued_at: written_at,
        expires_at,
        refresh_at: written_at + lifetime.mul_f64(set.refresh.at),
        config_hash: text("config_hash").unwrap_or_default(),
        file: set.file.as_ref().map(|f| f.path.clone()),
        // A store's token says when it expires.
        lifetime_assumed: false,
    }))
}

/// Whether `held`, a set's document as read from the store, is `doc`, the document of `token`
/// about to be written, in all but `written_at`. A document of the same token lends `doc` its
/// `written_at` either way: that is the token's issue time, from which a member taking over
/// schedules the refresh, and a rewrite must not move it.
pub(super) fn already_holds(held: &Value, doc: &mut Value, token: &Secret) -> bool {
    if held.get("access_token").and_then(Value::as_str) != Some(token.expose()) {
        return false;
    }
    if let (Some(at), Some(d)) = (held.get("written_at"), doc.as_object_mut()) {
        d.insert("written_at".into(), at.clone());
    }
    *held == *doc
}
