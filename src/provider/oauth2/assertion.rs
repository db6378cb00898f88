//! Federated client assertions (`auth_method: client_assertion`): a JWT that the platform
//! writes and rotates (a Kubernetes or Azure federated token file, a SPIFFE JWT-SVID, a CI
//! system's OIDC token), sent as RFC 7521 `client_assertion` with the jwt-bearer type. No
//! long-lived secret of ours: the file is read afresh before every request, so each one
//! carries whatever the platform wrote last.
//!
//! The JWT is not ours to verify (the server does, against the platform's keys); only its
//! `exp` is read, unverified, so that an expired one is a clear error here instead of a
//! refusal the server words as it likes.

use std::time::UNIX_EPOCH;

use crate::provider::ProviderError;
use crate::secret::{Secret, SecretSource};

/// Why a client assertion cannot be sent. Never carries the assertion's text.
#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error(
        "it is not a JWT (three base64url parts separated by dots, the second a JSON object of claims)"
    )]
    NotJwt,
    #[error(
        "the JWT expired {ago}s ago (exp {exp}); whatever writes it has not replaced it in time"
    )]
    Expired { exp: i64, ago: u64 },
}

/// The assertion `source` holds now, checked to be a JWT that has not expired by the local
/// clock. Errors name the source (a file's path), never the text.
pub(super) fn read_assertion(source: &SecretSource) -> Result<Secret, ProviderError> {
    let jwt = source.load().map_err(|source| ProviderError::Secret {
        what: "client_assertion",
        source,
    })?;
    let now = crate::clock::now_wall()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    check_assertion(jwt.expose(), now).map_err(|e| ProviderError::ClientAssertion {
        from: source.to_string(),
        source: e,
    })?;
    Ok(jwt)
}

/// `jwt` is a compact JWS whose claims, if they have an `exp`, put it after `now` (Unix
/// seconds). A JWT without `exp` is left to the server to judge.
pub fn check_assertion(jwt: &str, now: u64) -> Result<(), AssertionError> {
    let mut parts = jwt.split('.');
    let (Some(_header), Some(claims), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AssertionError::NotJwt);
    };
    let bytes = zeroize::Zeroizing::new(base64url_decode(claims).ok_or(AssertionError::NotJwt)?);
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|_| AssertionError::NotJwt)?;
    // RFC 7519 section 4.1.4: a NumericDate, which may have a fraction.
    let exp = match claims.get("exp") {
        None => return Ok(()),
        Some(v) => v.as_f64().ok_or(AssertionError::NotJwt)?,
    };
    if !exp.is_finite() {
        return Err(AssertionError::NotJwt);
    }
    // Saturating casts: an absurd exp far in the past or future is just that.
    let exp = exp.floor() as i64;
    let now_signed = i64::try_from(now).unwrap_or(i64::MAX);
    if exp <= now_signed {
        return Err(AssertionError::Expired {
            exp,
            ago: u64::try_from(now_signed.saturating_sub(exp)).unwrap_or(0),
        });
    }
    Ok(())
}

/// Base64url without padding (RFC 7515 section 2), or `None` for anything else.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut bits: u32 = 0;
    let mut n = 0;
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push(((bits >> n) & 0xff) as u8);
        }
    }
    // One leftover character (6 bits) cannot be the end of any byte string.
    (n < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::oauth2::base64url;

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.c2ln",
            base64url(br#"{"alg":"RS256"}"#),
            base64url(claims.as_bytes())
        )
    }

    #[test]
    fn an_assertion_is_a_jwt_not_yet_expired() {
        let now = 1_900_000_000;
        assert!(check_assertion(&jwt(r#"{"exp":1900000060}"#), now).is_ok());
        assert!(check_assertion(&jwt(r#"{"exp":1900000000.5,"sub":"x"}"#), now).is_err());
        assert!(check_assertion(&jwt(r#"{"sub":"no exp"}"#), now).is_ok());
        let e = check_assertion(&jwt(r#"{"exp":1899999940}"#), now).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the JWT expired 60s ago (exp 1899999940); whatever writes it has not replaced it in time"
        );
        for bad in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "a.!!!.c",
            &jwt("[1]"),
            &jwt(r#"{"exp":"soon"}"#),
            &jwt(r#"{"exp":1e999}"#),
        ] {
            assert!(
                matches!(check_assertion(bad, now), Err(AssertionError::NotJwt)),
                "{bad}"
            );
        }
    }
}
