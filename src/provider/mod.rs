//! Token providers behind one trait: issue, revoke, introspect.
//!
//! A provider turns config into HTTP requests and answers into [`Issued`] tokens or
//! classified [`ProviderError`]s; when and how often to call it is the daemon's business.

pub mod voucherify;

use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::config::{ProviderConfig, ProviderKind};
use crate::schedule::RetryClass;
use crate::secret::{Secret, SecretError};

/// Connect deadline for every provider. Ten seconds covers a slow TLS handshake across
/// regions; a provider slower than that to accept is better retried than waited for.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response body we read. OAuth answers are a few hundred bytes; the cap keeps a
/// misbehaving server or proxy from filling memory.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest token accepted. Real access tokens (including JWTs) stay well under this; a larger
/// one is a broken answer.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Idle keep-alive connections are dropped after this long. Refreshes for one provider come
/// minutes apart, so a longer idle connection would mostly meet a server that closed it.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A freshly issued token.
#[derive(Debug)]
pub struct Issued {
    pub token: Secret,
    /// As the provider spells it (`Bearer`).
    pub token_type: String,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// When the request was sent: the lifetime counts from here, which errs on the safe side.
    pub issued_at: Instant,
    /// Lifetime the provider granted, measured on our monotonic clock from `issued_at`.
    pub lifetime: Duration,
}

impl Issued {
    pub fn expires_at(&self) -> Instant {
        self.issued_at + self.lifetime
    }

    /// Wall-clock expiry for the token files, in the reader's (local) clock.
    pub fn expires_at_wall(&self) -> SystemTime {
        let left = self.expires_at().saturating_duration_since(Instant::now());
        SystemTime::now() + left
    }
}

/// What introspection says about a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Introspection {
    Active { remaining: Option<Duration> },
    Inactive,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{operation} refused with HTTP {status}: {detail}")]
    Refused {
        operation: &'static str,
        status: u16,
        detail: String,
    },
    #[error("{operation} failed with HTTP {status}: {detail}")]
    Unavailable {
        operation: &'static str,
        status: u16,
        detail: String,
        retry_after: Option<Duration>,
    },
    #[error("{operation} request failed")]
    Transport {
        operation: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("{operation}: malformed answer: {what}")]
    Malformed {
        operation: &'static str,
        what: String,
    },
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("cannot read {what}")]
    Secret {
        what: &'static str,
        #[source]
        source: SecretError,
    },
    #[error("{what} is not a valid HTTP header value")]
    BadHeader { what: &'static str },
}

impl ProviderError {
    /// How the daemon should retry after this error.
    pub fn retry_class(&self) -> RetryClass {
        match self {
            ProviderError::Unavailable { .. } | ProviderError::Transport { .. } => {
                RetryClass::Transient
            }
            _ => RetryClass::Slow,
        }
    }

    /// The provider's `Retry-After`, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The operations every provider offers.
pub trait TokenProvider: Send + Sync {
    /// Obtain a new token for `scopes`.
    fn issue(
        &self,
        scopes: &[String],
    ) -> impl Future<Output = Result<Issued, ProviderError>> + Send;
    /// Revoke `token`. A token the provider no longer knows counts as revoked.
    fn revoke(&self, token: &Secret) -> impl Future<Output = Result<(), ProviderError>> + Send;
    /// Ask whether `token` is still active.
    fn introspect(
        &self,
        token: &Secret,
    ) -> impl Future<Output = Result<Introspection, ProviderError>> + Send;
}

/// Every provider kind, dispatched without boxing.
#[derive(Debug)]
pub enum Provider {
    Voucherify(voucherify::Voucherify),
}

impl Provider {
    /// Build a provider from config, reading its secrets now so a missing key fails at start.
    pub fn build(cfg: &ProviderConfig, http: &reqwest::Client) -> Result<Provider, ProviderError> {
        match &cfg.kind {
            ProviderKind::Voucherify {
                base_url,
                app_id,
                app_token,
            } => {
                let app_id = app_id.load().map_err(|source| ProviderError::Secret {
                    what: "app_id",
                    source,
                })?;
                let app_token = app_token.load().map_err(|source| ProviderError::Secret {
                    what: "app_token",
                    source,
                })?;
                Ok(Provider::Voucherify(voucherify::Voucherify::new(
                    http.clone(),
                    base_url.clone(),
                    &app_id,
                    &app_token,
                    cfg.timeout,
                )?))
            }
        }
    }
}

impl TokenProvider for Provider {
    async fn issue(&self, scopes: &[String]) -> Result<Issued, ProviderError> {
        match self {
            Provider::Voucherify(p) => p.issue(scopes).await,
        }
    }

    async fn revoke(&self, token: &Secret) -> Result<(), ProviderError> {
        match self {
            Provider::Voucherify(p) => p.revoke(token).await,
        }
    }

    async fn introspect(&self, token: &Secret) -> Result<Introspection, ProviderError> {
        match self {
            Provider::Voucherify(p) => p.introspect(token).await,
        }
    }
}

/// The one HTTP client the process shares: one connection pool, rustls, our User-Agent.
pub fn http_client() -> Result<reqwest::Client, ProviderError> {
    crate::init_tls();
    reqwest::Client::builder()
        .user_agent(concat!("tokenkeeper/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        // Token endpoints never redirect; following one could send credentials elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(ProviderError::Client)
}

/// Read at most [`MAX_BODY_BYTES`] of a response body. The buffer is zeroed on drop: it may
/// hold a token.
pub(crate) async fn read_body(
    operation: &'static str,
    mut resp: reqwest::Response,
) -> Result<zeroize::Zeroizing<Vec<u8>>, ProviderError> {
    let too_large = || ProviderError::Malformed {
        operation,
        what: format!("body larger than {MAX_BODY_BYTES} bytes"),
    };
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut buf = zeroize::Zeroizing::new(Vec::new());
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|source| ProviderError::Transport { operation, source })?
    {
        if buf.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// The `Retry-After` header as text, apart from its parsing so that the pure answer parsers
/// (and their fuzz targets) take plain text rather than a header map.
pub(crate) fn retry_after_text(headers: &reqwest::header::HeaderMap) -> Option<&str> {
    headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()
}

/// `Retry-After` in delta-seconds. The HTTP-date form is ignored: OAuth servers send seconds,
/// and our own backoff applies anyway.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Text from a provider, made safe for one log line: control characters replaced, length
/// capped (a server may echo input; it must not forge log lines or flood them).
pub(crate) fn sanitize(text: &str) -> String {
    /// Enough for any real error message.
    const MAX: usize = 300;
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX)
        .collect();
    if text.chars().count() > MAX {
        out.push('…');
    }
    out
}

/// RFC 6750 `b64token`: what a bearer token may contain. Anything else (spaces, newlines,
/// quotes) could break the env and header file formats or a consumer's HTTP header.
pub(crate) fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64token() {
        assert!(is_b64token("1ABCde2F-._~+/=="));
        assert!(!is_b64token(""));
        assert!(!is_b64token("=="));
        assert!(!is_b64token("a b"));
        assert!(!is_b64token("a\nFOO=bar"));
        assert!(!is_b64token("a\"b"));
        assert!(!is_b64token(&"a".repeat(MAX_TOKEN_LEN + 1)));
    }

    #[test]
    fn sanitize_strips_control_and_caps() {
        assert_eq!(sanitize("a\nb\tc"), "a b c");
        let long = "x".repeat(1000);
        assert_eq!(sanitize(&long).chars().count(), 301);
    }
}
