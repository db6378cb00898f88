//! Client authentication: the shared secret (RFC 6749 section 2.3.1, Basic or in the body),
//! an RFC 7523 `private_key_jwt` assertion signed afresh for every request, or RFC 8705
//! `tls_client_auth`, where the TLS connection itself authenticates and the body names the
//! client.
//!
//! Keys are read through the secret sources and kept only as parsed key pairs; the PEM text
//! and its DER are zeroed as soon as they are parsed. No error here carries key material.

use std::time::UNIX_EPOCH;

use reqwest::header::HeaderValue;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use crate::provider::{AuthMethod, ClientCredential, ProviderError};
use crate::secret::Secret;

/// RFC 7523 section 2.2: the `client_assertion_type` of a JWT assertion.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long an assertion is good for. The contract (and Okta's, Entra's) caps it at
/// 60 s; a fresh one is made per request, so a longer one would only widen a replay window.
const ASSERTION_LIFETIME_SECS: u64 = 60;

/// Random bytes in each `jti`: 128 bits make a collision across all assertions ever sent
/// out of the question, which is what "never reused" asks.
const JTI_BYTES: usize = 16;

/// Why a client key or certificate cannot be used. Never carries key material: only what
/// kind of thing was found and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no PEM block found; expected -----BEGIN PRIVATE KEY----- (PKCS#8)")]
    NotPem,
    #[error("the PEM text is malformed")]
    BadPem,
    #[error(
        "the key is {0}, not PKCS#8; convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8`"
    )]
    NotPkcs8(&'static str),
    #[error(
        "the key is encrypted (ENCRYPTED PRIVATE KEY); store it unencrypted, owner-only, or as a systemd credential (LoadCredentialEncrypted=)"
    )]
    Encrypted,
    #[error("{0} PEM blocks found where one private key was expected")]
    Several(usize),
    #[error(
        "the PKCS#8 key is neither RSA nor EC P-256 ({rsa}; {ec}); supported: RSA (RS256), EC P-256 (ES256)"
    )]
    Unsupported { rsa: String, ec: String },
    #[error("no -----BEGIN CERTIFICATE----- block found")]
    NoCertificate,
    #[error("the certificate and the key do not belong together: {0}")]
    Mismatch(String),
    #[error("cannot sign the client assertion")]
    Sign,
    #[error("auth_method {0} takes another credential")]
    WrongCredential(&'static str),
}

/// The JWS algorithm of a signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Es256,
}

impl Alg {
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }
}

enum SigningKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A parsed `private_key_jwt` key and the `kid` to name it by.
pub struct Signer {
    key: SigningKey,
    key_id: Option<String>,
    /// `assertion_audience`: the `aud` of every assertion, whatever the server's metadata.
    audience: Option<String>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("alg", &self.alg())
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The single PKCS#8 private key in `pem`, zeroed on drop.
fn pkcs8_der(pem: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let mut keys = Vec::new();
    let mut other = None;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
        let (kind, der) = section.map_err(|_| KeyError::BadPem)?;
        let der = Zeroizing::new(der);
        match kind {
            SectionKind::PrivateKey => keys.push(der),
            SectionKind::RsaPrivateKey => {
                other = other.or(Some(KeyError::NotPkcs8("PKCS#1 (BEGIN RSA PRIVATE KEY)")))
            }
            SectionKind::EcPrivateKey => {
                other = other.or(Some(KeyError::NotPkcs8("SEC1 (BEGIN EC PRIVATE KEY)")))
            }
            _ => {}
        }
    }
    // rustls-pki-types skips blocks it has no kind for, such as ENCRYPTED PRIVATE KEY.
    if keys.is_empty() && pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(KeyError::Encrypted);
    }
    match keys.len() {
        1 => Ok(keys.remove(0)),
        0 => Err(other.unwrap_or(KeyError::NotPem)),
        n => Err(KeyError::Several(n)),
    }
}

impl Signer {
    /// Parse a PKCS#8 PEM key: RSA (RS256) or EC P-256 (ES256).
    pub fn from_pem(pem: &Secret, key_id: Option<String>) -> Result<Signer, KeyError> {
        let der = pkcs8_der(pem.expose())?;
        let rng = SystemRandom::new();
        let key = match RsaKeyPair::from_pkcs8(&der) {
            Ok(k) => SigningKey::Rsa(k),
            Err(rsa) => {
                match EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &der,
                    &rng,
                ) {
                    Ok(k) => SigningKey::Ec(k),
                    Err(ec) => {
                        return Err(KeyError::Unsupported {
                            rsa: rsa.to_string(),
                            ec: ec.to_string(),
                        });
                    }
                }
            }
        };
        Ok(Signer {
            key,
            key_id,
            audience: None,
            rng,
        })
    }

    /// This signer with every assertion addressed to `audience` (`assertion_audience:`),
    /// for a server that wants another `aud` than its issuer or token endpoint.
    pub fn with_audience(mut self, audience: Option<String>) -> Signer {
        self.audience = audience;
        self
    }

    /// The configured audience, if the config chose one.
    pub fn audience(&self) -> Option<&str> {
        self.audience.as_deref()
    }

    pub fn alg(&self) -> Alg {
        match self.key {
            SigningKey::Rsa(_) => Alg::Rs256,
            SigningKey::Ec(_) => Alg::Es256,
        }
    }

    /// The public key, as ring's verifiers take it (tests check signatures with it).
    pub fn public_key(&self) -> &[u8] {
        match &self.key {
            SigningKey::Rsa(k) => k.public_key().as_ref(),
            SigningKey::Ec(k) => k.public_key().as_ref(),
        }
    }

    /// A fresh RFC 7523 client assertion for `client_id` addressed to `audience`.
    pub fn assertion(&self, client_id: &str, audience: &str) -> Result<Secret, KeyError> {
        let now = crate::clock::now_wall()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| KeyError::Sign)?
            .as_secs();
        let mut jti = [0u8; JTI_BYTES];
        self.rng.fill(&mut jti).map_err(|_| KeyError::Sign)?;
        let jti = crate::secret::hex(&jti);
        let mut header = serde_json::json!({"alg": self.alg().name(), "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = serde_json::Value::from(kid.as_str());
        }
        let claims = serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "jti": jti,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            base64url(header.to_string().as_bytes()),
            base64url(claims.to_string().as_bytes())
        );
        let sig = match &self.key {
            SigningKey::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &self.rng,
                    signing_input.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| KeyError::Sign)?;
                sig
            }
            SigningKey::Ec(k) => k
                .sign(&self.rng, signing_input.as_bytes())
                .map_err(|_| KeyError::Sign)?
                .as_ref()
                .to_vec(),
        };
        Ok(Secret::new(format!("{signing_input}.{}", base64url(&sig))))
    }
}

/// A `tls_client_auth` identity: the certificate chain and its key, checked to belong
/// together, as reqwest takes them.
pub fn identity(certificate: &Secret, key: &Secret) -> Result<reqwest::Identity, KeyError> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(certificate.expose().as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| KeyError::BadPem)?;
    if certs.is_empty() {
        return Err(KeyError::NoCertificate);
    }
    let der = pkcs8_der(key.expose())?;
    // Borrowed from the zeroed buffer rather than copied into a DER that nothing zeroes.
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(&der[..]));
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|_| {
        KeyError::Unsupported {
            rsa: "not an RSA key rustls accepts".into(),
            ec: "not an EC or Ed25519 key rustls accepts".into(),
        }
    })?;
    // The certificate's public key must be the key's: a mismatch is found here, with a
    // message, rather than as a failed handshake later.
    rustls::sign::CertifiedKey::new(certs, signing_key)
        .keys_match()
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => KeyError::Mismatch(
                "the certificate's public key is not the key's (give the certificate issued for this key)".into(),
            ),
            other => KeyError::Mismatch(other.to_string()),
        })?;
    // reqwest reads the pair back from one PEM buffer; it is zeroed once read.
    let joined = Zeroizing::new(format!("{}\n{}", certificate.expose(), key.expose()));
    reqwest::Identity::from_pem(joined.as_bytes()).map_err(|_| KeyError::BadPem)
}

/// Read and parse what `client_id` authenticates with: the [`ClientAuth`] for its requests
/// and, for `tls_client_auth`, the identity its own HTTP client presents. `check` calls this
/// too, so a bad key is a config problem before it is a failed request.
pub fn load_credential(
    client_id: &str,
    method: AuthMethod,
    credential: &ClientCredential,
) -> Result<(ClientAuth, Option<reqwest::Identity>), ProviderError> {
    let key_error = |what, source| ProviderError::ClientKey { what, source };
    match (method, credential) {
        (AuthMethod::ClientSecretBasic, ClientCredential::Secret(s)) => Ok((
            ClientAuth::basic(client_id, crate::provider::load("client_secret", s)?)?,
            None,
        )),
        (AuthMethod::ClientSecretPost, ClientCredential::Secret(s)) => Ok((
            ClientAuth::Post(crate::provider::load("client_secret", s)?),
            None,
        )),
        (
            AuthMethod::PrivateKeyJwt,
            ClientCredential::PrivateKey {
                key,
                key_id,
                audience,
            },
        ) => {
            let pem = crate::provider::load("private_key", key)?;
            let signer = Signer::from_pem(&pem, key_id.clone())
                .map_err(|e| key_error("private_key", e))?
                .with_audience(audience.clone());
            Ok((ClientAuth::Jwt(Box::new(signer)), None))
        }
        (AuthMethod::TlsClientAuth, ClientCredential::Certificate { certificate, key }) => {
            let cert = certificate
                .load_public()
                .map_err(|source| ProviderError::Secret {
                    what: "client_certificate",
                    source,
                })?;
            let key = crate::provider::load("client_key", key)?;
            let id =
                identity(&cert, &key).map_err(|e| key_error("client_certificate/client_key", e))?;
            Ok((ClientAuth::Tls, Some(id)))
        }
        (AuthMethod::ClientAssertion, ClientCredential::Assertion(source)) => {
            Ok((ClientAuth::Assertion(source.clone()), None))
        }
        (method, _) => Err(key_error(
            "the client credential",
            KeyError::WrongCredential(method.name()),
        )),
    }
}

/// How requests authenticate the client.
pub enum ClientAuth {
    /// `Authorization: Basic ...`, marked sensitive, and the secret it was made from.
    Basic { header: HeaderValue, secret: Secret },
    /// `client_id` and `client_secret` in the body.
    Post(Secret),
    /// `client_assertion` in the body, signed per request. Boxed: an RSA key pair is
    /// hundreds of bytes the other methods should not carry.
    Jwt(Box<Signer>),
    /// The connection's client certificate; `client_id` in the body (RFC 8705 section 2).
    Tls,
    /// `client_assertion` in the body, read from where the platform writes it before every
    /// request.
    Assertion(crate::secret::SecretSource),
}

impl ClientAuth {
    pub fn basic(client_id: &str, secret: Secret) -> Result<ClientAuth, ProviderError> {
        let text = basic_credentials(client_id, &secret);
        let mut header = HeaderValue::from_str(&text).map_err(|_| ProviderError::BadHeader {
            what: "client_id/client_secret",
        })?;
        header.set_sensitive(true);
        Ok(ClientAuth::Basic { header, secret })
    }

    /// What a provider's answer must not show: the secret, and the Basic credentials made
    /// from it (whole and Base64 alone). Keys never go on the wire.
    pub fn secrets(&self) -> Vec<&str> {
        match self {
            ClientAuth::Basic { header, secret } => {
                let mut out = vec![secret.expose()];
                if let Ok(basic) = header.to_str() {
                    out.push(basic);
                    out.extend(basic.strip_prefix("Basic "));
                }
                out
            }
            ClientAuth::Post(secret) => vec![secret.expose()],
            // The assertion changes under us: each answer is cut by the one its request sent.
            ClientAuth::Jwt(_) | ClientAuth::Tls | ClientAuth::Assertion(_) => Vec::new(),
        }
    }
}

/// `body` with every occurrence of `needle` replaced by `[client assertion]`, however the
/// body writes it: a JSON error may spell the assertion's dots `\u002e`, or any character
/// in an escape, and the description shown is the decoded text.
pub(super) fn cut_out(body: Zeroizing<Vec<u8>>, needle: &[u8]) -> Zeroizing<Vec<u8>> {
    if let (Ok(text), Ok(secret)) = (std::str::from_utf8(&body), std::str::from_utf8(needle)) {
        let cut = crate::provider::Redactor::new([secret]).redact_as(text, "[client assertion]");
        // The body may be a token answer: its copy is zeroed on drop too.
        return Zeroizing::new(cut.into_bytes());
    }
    // Not UTF-8: no JSON parser reads it, so only the raw bytes can show.
    if needle.is_empty() || !body.windows(needle.len()).any(|w| w == needle) {
        return body;
    }
    let mut out = Zeroizing::new(Vec::with_capacity(body.len()));
    let mut rest: &[u8] = &body;
    while !rest.is_empty() {
        if rest.starts_with(needle) {
            out.extend_from_slice(b"[client assertion]");
            rest = &rest[needle.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

/// Base64url without padding (RFC 7515 section 2), as JWS uses it.
pub fn base64url(input: &[u8]) -> String {
    base64(input)
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect()
}

/// Standard Base64 with padding (RFC 4648 section 4), for the Basic credentials.
pub(super) fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `application/x-www-form-urlencoded` serialization of one value (WHATWG URL
/// standard), which RFC 6749 section 2.3.1 applies to the client id and secret before Base64.
pub(crate) fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Whether form-encoding changes the client id or secret, so that a server which skips the
/// decoding RFC 6749 section 2.3.1 asks for sees other credentials than the configured ones.
pub(super) fn form_encoding_changes(client_id: &str, secret: &Secret) -> bool {
    form_encode(client_id) != client_id
        || *Zeroizing::new(form_encode(secret.expose())) != secret.expose()
}

/// `Authorization: Basic base64(form(client_id) ":" form(client_secret))`.
pub fn basic_credentials(client_id: &str, client_secret: &Secret) -> Zeroizing<String> {
    let joined = Zeroizing::new(format!(
        "{}:{}",
        form_encode(client_id),
        form_encode(client_secret.expose())
    ));
    Zeroizing::new(format!("Basic {}", base64(joined.as_bytes())))
}
