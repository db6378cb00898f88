//! Any RFC 8414 / OpenID discovery document. The input is the body alone, byte for byte, not
//! the framing in fuzz/src/lib.rs: discovery hands the parser only 200 bodies (any other
//! status means "try the next document" or "retry later"), so a status line would test
//! nothing of the parser's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use tokenkeeper::provider::AuthMethod;
use tokenkeeper::provider::ProviderError;
use tokenkeeper::provider::oauth2::{Discovered, parse_discovery_answer};
use tokenkeeper_fuzz::{Answer, check_error};
use url::{Host, Url};

/// The configured issuer, with a path like Keycloak's realms so that the path matters too.
const ISSUER: &str = "https://idp.example/realms/ops";
/// Where its RFC 8414 document lives.
const DOCUMENT: &str = "https://idp.example/.well-known/oauth-authorization-server/realms/ops";
/// Longest error text allowed. oauth2.rs quotes at most 300 characters of the document
/// (escaped, then Debug-escaped, at most 11 bytes each) besides its own words and the two
/// URLs above; anything longer means document text got out uncut.
const MAX_ERROR_LEN: usize = 4096;

/// What the document announces, read apart from the parser, to hold its result against.
#[derive(Deserialize)]
struct Announced {
    issuer: String,
    token_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    introspection_endpoint: Option<String>,
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    grant_types_supported: Option<Vec<String>>,
}

/// An endpoint the daemon may send client secrets to: https, or http on a loopback host
/// (which cannot be overheard), and never with credentials or a fragment of its own.
fn check_endpoint(url: &Url) {
    let loopback = match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    assert!(
        url.scheme() == "https" || (url.scheme() == "http" && loopback),
        "endpoint {url} is neither https nor loopback http"
    );
    assert!(url.username().is_empty(), "endpoint {url} has a user name");
    assert!(url.password().is_none(), "endpoint {url} has a password");
    assert!(url.fragment().is_none(), "endpoint {url} has a fragment");
}

fn check_discovered(d: &Discovered, body: &[u8], method: &str) {
    let Ok(a) = serde_json::from_slice::<Announced>(body) else {
        panic!("endpoints from a body that is not a discovery document");
    };
    // RFC 8414 section 3.3: endpoints only from a document that names our issuer (a trailing
    // slash aside, which servers and operators disagree on).
    assert_eq!(
        a.issuer.trim_end_matches('/'),
        ISSUER,
        "endpoints from a document for another issuer"
    );
    let endpoints = &d.endpoints;
    // Each endpoint is the one announced, never made up or taken from another key.
    let announced = |text: Option<&String>| text.and_then(|t| Url::parse(t).ok());
    assert_eq!(
        Some(&endpoints.token),
        announced(a.token_endpoint.as_ref()).as_ref()
    );
    assert_eq!(
        endpoints.revocation,
        announced(a.revocation_endpoint.as_ref())
    );
    assert_eq!(
        endpoints.introspection,
        announced(a.introspection_endpoint.as_ref())
    );
    check_endpoint(&endpoints.token);
    endpoints.revocation.iter().for_each(check_endpoint);
    endpoints.introspection.iter().for_each(check_endpoint);
    // A warning for exactly the lists that exist and leave ours out.
    let unlisted = |list: &Option<Vec<String>>, name: &str| {
        list.as_ref().is_some_and(|l| !l.iter().any(|x| x == name))
    };
    assert_eq!(
        d.auth_method_unlisted,
        unlisted(&a.token_endpoint_auth_methods_supported, method)
    );
    assert_eq!(
        d.client_credentials_unlisted,
        unlisted(&a.grant_types_supported, "client_credentials")
    );
}

fn check_discovery_error(e: &ProviderError, body: &[u8]) {
    assert!(
        matches!(
            e,
            ProviderError::Malformed { .. } | ProviderError::Discovery { .. }
        ),
        "a document failed as {e:?}"
    );
    let answer = Answer {
        status: 200,
        retry_after: None,
        body,
    };
    check_error(e, &answer);
    let len = e.to_string().len();
    assert!(len <= MAX_ERROR_LEN, "an error of {len} bytes");
}

fuzz_target!(|data: &[u8]| {
    let (Ok(document), Ok(issuer)) = (Url::parse(DOCUMENT), Url::parse(ISSUER)) else {
        panic!("the fixed URLs do not parse");
    };
    // Both methods: the document's verdict must not depend on ours, only the flag may.
    let mut verdicts = Vec::new();
    for (method, name) in [
        (AuthMethod::ClientSecretBasic, "client_secret_basic"),
        (AuthMethod::ClientSecretPost, "client_secret_post"),
    ] {
        match parse_discovery_answer(&document, &issuer, method, data) {
            Ok(d) => {
                check_discovered(&d, data, name);
                verdicts.push(Ok(d.endpoints));
            }
            Err(e) => {
                check_discovery_error(&e, data);
                verdicts.push(Err(e.to_string()));
            }
        }
    }
    assert_eq!(
        verdicts[0], verdicts[1],
        "the auth method changed the verdict"
    );
});
