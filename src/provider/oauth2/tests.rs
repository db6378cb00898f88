use super::auth::base64;
use super::discovery::same_issuer;
use super::*;
use crate::provider::testutil::{Canned, http};

/// A missing `expires_in` takes the default lifetime and says so; a bad one is an error
/// that never quotes the body.
#[test]
fn token_answers_read_expires_in_or_the_default() {
    let default = Duration::from_secs(1234);
    let t = parse_token_answer(
        200,
        None,
        br#"{"access_token":"abc","token_type":"bearer"}"#,
        Instant::now(),
        "read",
        default,
    )
    .unwrap();
    assert!(t.default_lifetime_used);
    assert_eq!(t.issued.lifetime, default);
    assert_eq!(t.issued.scope, "read");
    let err = parse_token_answer(
        200,
        None,
        br#"{"access_token":"abc","token_type":"bearer","expires_in":"SECRET"}"#,
        Instant::now(),
        "read",
        default,
    )
    .unwrap_err();
    assert!(!err.to_string().contains("SECRET"), "{err}");
}

/// A token in an answer refused for its token_type or expires_in was minted: the error
/// carries it for revocation.
#[test]
fn refused_answers_with_a_minted_token_carry_it() {
    for body in [
        br#"{"access_token":"tokXYZ","token_type":"mac","expires_in":60}"#.as_slice(),
        br#"{"access_token":"tokXYZ","token_type":"bearer","expires_in":0}"#,
        br#"{"access_token":"tokXYZ","token_type":"bearer","expires_in":"-3"}"#,
    ] {
        let e = parse_token_answer(200, None, body, Instant::now(), "read", Duration::ZERO)
            .unwrap_err();
        assert_eq!(e.minted().map(Secret::expose), Some("tokXYZ"), "{e}");
        assert!(!format!("{e} {e:?}").contains("tokXYZ"), "{e:?}");
    }
}

/// A 200 answer with a well-formed token that cannot be read whole (a field missing, of the
/// wrong type, out of range) still minted it: the refusal carries it.
#[test]
fn every_token_in_a_malformed_answer_is_carried_for_revocation() {
    for body in [
        r#"{"access_token":"tokXYZ","expires_in":60}"#,
        r#"{"access_token":"tokXYZ","token_type":null}"#,
        r#"{"access_token":"tokXYZ","token_type":"bearer","expires_in":60.5}"#,
        r#"{"access_token":"tokXYZ","token_type":"bearer","expires_in":true}"#,
        r#"{"access_token":"tokXYZ","token_type":"bearer","expires_in":1e30}"#,
        r#"{"access_token":"tokXYZ","token_type":"bearer","expires_in":"soon"}"#,
        r#"{"access_token":"tokXYZ","token_type":"bearer","scope":["read"]}"#,
    ] {
        let e = parse_token_answer(
            200,
            None,
            body.as_bytes(),
            Instant::now(),
            "read",
            Duration::ZERO,
        )
        .unwrap_err();
        assert_eq!(
            e.minted().map(Secret::expose),
            Some("tokXYZ"),
            "{body}: {e:?}"
        );
        assert!(!format!("{e} {e:?}").contains("tokXYZ"), "{e:?}");
    }
    // Not a bearer token, not a string, not JSON: nothing to carry.
    for body in [r#"{"access_token":"a b"}"#, r#"{"access_token":1}"#, "{"] {
        let e = parse_token_answer(
            200,
            None,
            body.as_bytes(),
            Instant::now(),
            "read",
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(e.minted().is_none(), "{body}: {e:?}");
    }
}

fn settings(endpoints: OAuth2Endpoints, auth: AuthMethod) -> Settings {
    Settings {
        http: crate::provider::http_client().unwrap(),
        name: "idp".into(),
        endpoints,
        client_id: "tk client:1".into(),
        auth: match auth {
            AuthMethod::ClientSecretBasic => {
                ClientAuth::basic("tk client:1", Secret::new("s3cr%t +/=")).unwrap()
            }
            _ => ClientAuth::Post(Secret::new("s3cr%t +/=")),
        },
        auth_method: auth,
        extra_params: vec![("audience".into(), "https://api.example".into())],
        default_lifetime: Duration::from_secs(300),
        timeout: Duration::from_secs(5),
    }
}

fn explicit(base: &Url, revocation: bool) -> OAuth2Endpoints {
    OAuth2Endpoints::Explicit {
        token_url: base.join("/token").unwrap(),
        revocation_url: revocation.then(|| base.join("/revoke").unwrap()),
        introspection_url: Some(base.join("/introspect").unwrap()),
    }
}

const OK: &str =
    r#"{"access_token":"eyJ.abc-_","token_type":"Bearer","expires_in":3599,"scope":"read write"}"#;

#[test]
fn base64_and_form_encoding_follow_the_rfcs() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(form_encode("a b:c%+/é"), "a+b%3Ac%25%2B%2F%C3%A9");
    // RFC 6749 2.3.1: encode, then join with ':', then Base64.
    let v = basic_credentials("tk client:1", &Secret::new("s3cr%t +/="));
    assert_eq!(
        v.as_str(),
        format!("Basic {}", base64(b"tk+client%3A1:s3cr%25t+%2B%2F%3D"))
    );
}

#[test]
fn discovery_urls_insert_and_append() {
    let u = |s: &str| Url::parse(s).unwrap();
    let issuer = u("https://login.example.com/realms/ops");
    let got: Vec<String> = discovery_urls(&issuer)
        .iter()
        .map(|u| u.to_string())
        .collect();
    // RFC 8414's form, the appended form real servers use, then OpenID's.
    assert_eq!(
        got,
        [
            "https://login.example.com/.well-known/oauth-authorization-server/realms/ops",
            "https://login.example.com/realms/ops/.well-known/oauth-authorization-server",
            "https://login.example.com/realms/ops/.well-known/openid-configuration"
        ]
    );
    assert_eq!(
        discovery_form(&issuer, &u(&got[1])),
        "RFC 8414 suffix appended to the issuer"
    );
    // Without a path the two RFC 8414 forms are one URL, asked once.
    let got: Vec<String> = discovery_urls(&u("https://t.auth0.com/"))
        .iter()
        .map(|u| u.to_string())
        .collect();
    assert_eq!(
        got,
        [
            "https://t.auth0.com/.well-known/oauth-authorization-server",
            "https://t.auth0.com/.well-known/openid-configuration"
        ]
    );
    assert!(same_issuer(
        &u("https://t.auth0.com"),
        "https://t.auth0.com/"
    ));
    assert!(!same_issuer(
        &u("https://a.example/x"),
        "https://a.example/y"
    ));
}

const DOC: &str = "https://idp.example/.well-known/oauth-authorization-server/realms/ops";
const ISSUER: &str = "https://idp.example/realms/ops";

/// Read `body` as the document at [`DOC`] for [`ISSUER`] with Basic client auth.
fn discovered(body: &str) -> Result<Discovered, ProviderError> {
    discovered_as(AuthMethod::ClientSecretBasic, body.as_bytes())
}

fn discovered_as(method: AuthMethod, body: &[u8]) -> Result<Discovered, ProviderError> {
    let doc = Url::parse(DOC).unwrap();
    let issuer = Url::parse(ISSUER).unwrap();
    parse_discovery_answer(&doc, &issuer, method, body)
}

/// The error of `body`, checked to be one bounded log line.
fn discovery_error(body: &[u8]) -> String {
    let e = discovered_as(AuthMethod::ClientSecretBasic, body).unwrap_err();
    let text = e.to_string();
    assert!(!text.chars().any(char::is_control), "{text:?}");
    // 300 sanitized characters, each at most 11 once escaped and Debug-escaped, plus our own
    // words.
    assert!(text.len() < 4096, "{} bytes", text.len());
    text
}

fn metadata(token_endpoint: &str) -> String {
    format!(r#"{{"issuer":"{ISSUER}","token_endpoint":"{token_endpoint}"}}"#)
}

#[test]
fn discovery_documents_give_their_endpoints() {
    let d = discovered(&format!(
            r#"{{"issuer":"{ISSUER}","token_endpoint":"https://idp.example/t","revocation_endpoint":"https://idp.example/r","introspection_endpoint":"https://other.example:8443/i","token_endpoint_auth_methods_supported":["private_key_jwt","client_secret_basic"],"grant_types_supported":["authorization_code","client_credentials"],"scopes_supported":["openid"],"jwks_uri":"https://idp.example/jwks"}}"#
        ))
        .unwrap();
    assert_eq!(
        d,
        Discovered {
            endpoints: Endpoints {
                token: Url::parse("https://idp.example/t").unwrap(),
                revocation: Some(Url::parse("https://idp.example/r").unwrap()),
                introspection: Some(Url::parse("https://other.example:8443/i").unwrap()),
                issuer: Some(ISSUER.into()),
            },
            auth_method_unlisted: false,
            client_credentials_unlisted: false,
        }
    );
    // Only the token endpoint is required.
    let d = discovered(&metadata("https://idp.example/t")).unwrap();
    assert_eq!(d.endpoints.revocation, None);
    assert_eq!(d.endpoints.introspection, None);
}

#[test]
fn discovery_issuers_match_but_for_a_trailing_slash() {
    let d = discovered(&format!(
        r#"{{"issuer":"{ISSUER}/","token_endpoint":"https://idp.example/t"}}"#
    ));
    assert!(d.is_ok(), "{d:?}");
    let doc = Url::parse("https://t.auth0.com/.well-known/openid-configuration").unwrap();
    let slashless = Url::parse("https://t.auth0.com").unwrap();
    let body =
        br#"{"issuer":"https://t.auth0.com/","token_endpoint":"https://t.auth0.com/oauth/token"}"#;
    let d = parse_discovery_answer(&doc, &slashless, AuthMethod::ClientSecretPost, body);
    assert!(d.is_ok(), "{d:?}");
}

/// RFC 8414 section 3.3: another issuer's document is refused, whatever it announces.
#[test]
fn discovery_refuses_another_issuer() {
    for other in [
        "https://evil.example/realms/ops",
        "https://idp.example/realms/ops2",
        "https://idp.example/realms",
        "http://idp.example/realms/ops",
        "https://idp.example:8443/realms/ops",
        "",
    ] {
        let body = format!(r#"{{"issuer":"{other}","token_endpoint":"https://idp.example/t"}}"#);
        let text = discovery_error(body.as_bytes());
        assert!(
            text.contains(&format!(
                "{DOC} names issuer {other:?}, not the configured {ISSUER}; refusing"
            )),
            "{text}"
        );
    }
    // The announced issuer is quoted, but as one bounded line.
    let text = discovery_error(
            br#"{"issuer":"https://evil.example\n2025-01-01 INFO forged","token_endpoint":"https://evil.example/t"}"#,
        );
    assert!(
        text.contains(r#"names issuer "https://evil.example\\x0a2025-01-01 INFO forged""#),
        "{text}"
    );
    let long = "x".repeat(100_000);
    let text = discovery_error(format!(r#"{{"issuer":"{long}"}}"#).as_bytes());
    assert!(text.contains("…"), "{text}");
    // Characters Debug escapes at their longest.
    let unprintable = "\u{10FFFF}".repeat(10_000);
    discovery_error(format!(r#"{{"issuer":"{unprintable}"}}"#).as_bytes());
}

#[test]
fn discovery_needs_a_token_endpoint() {
    let text = discovery_error(format!(r#"{{"issuer":"{ISSUER}"}}"#).as_bytes());
    assert_eq!(text, format!("discovery: {DOC} has no token_endpoint"));
    let text =
        discovery_error(format!(r#"{{"issuer":"{ISSUER}","token_endpoint":null}}"#).as_bytes());
    assert!(text.ends_with("has no token_endpoint"), "{text}");
}

/// Endpoints are https, or http on a loopback host like the config allows (for an http
/// issuer only: never weaker than the issuer), and carry no credentials or fragment.
#[test]
fn discovered_endpoints_are_https_or_loopback() {
    for ok in [
        "https://idp.example/t",
        "https://idp.example:8443/oauth/token?tenant=a",
    ] {
        let d = discovered(&metadata(ok));
        assert!(d.is_ok(), "{ok}: {d:?}");
    }
    let loopback_issuer = Url::parse("http://127.0.0.1:8080/realms/ops").unwrap();
    let loopback_doc =
        Url::parse("http://127.0.0.1:8080/.well-known/oauth-authorization-server/realms/ops")
            .unwrap();
    for ok in [
        "https://idp.example/t",
        "http://127.0.0.1:8080/t",
        "http://localhost/t",
        "http://LOCALHOST:9/t",
        "http://[::1]:8080/t",
    ] {
        let body = format!(r#"{{"issuer":"{loopback_issuer}","token_endpoint":"{ok}"}}"#);
        let d = parse_discovery_answer(
            &loopback_doc,
            &loopback_issuer,
            AuthMethod::ClientSecretBasic,
            body.as_bytes(),
        );
        assert!(d.is_ok(), "{ok}: {d:?}");
    }
    // An https issuer's document that names plain http, even on this host: a downgrade.
    for key in [
        "token_endpoint",
        "revocation_endpoint",
        "introspection_endpoint",
    ] {
        for downgraded in ["http://127.0.0.1:8080/t", "http://localhost/t"] {
            let body = if key == "token_endpoint" {
                metadata(downgraded)
            } else {
                format!(
                    r#"{{"issuer":"{ISSUER}","token_endpoint":"https://idp.example/t","{key}":"{downgraded}"}}"#
                )
            };
            let text = discovery_error(body.as_bytes());
            assert_eq!(
                text,
                format!(
                    "discovery: {key} {downgraded} is plain http while the issuer is https: refusing an endpoint whose scheme is weaker than the issuer's, which would carry the client's credentials in clear"
                )
            );
        }
    }
    for (bad, why) in [
        (
            "http://idp.example/t",
            "token_endpoint is not an https:// URL",
        ),
        (
            "http://127.0.0.1.nip.io/t",
            "token_endpoint is not an https:// URL",
        ),
        (
            "http://[::ffff:127.0.0.1]/t",
            "token_endpoint is not an https:// URL",
        ),
        (
            "ftp://idp.example/t",
            "token_endpoint is not an https:// URL",
        ),
        (
            "file:///etc/passwd",
            "token_endpoint is not an https:// URL",
        ),
        ("/token", "token_endpoint is not a URL"),
        ("https://", "token_endpoint is not a URL"),
        ("not a url", "token_endpoint is not a URL"),
        (
            "https://user:pass@idp.example/t",
            "token_endpoint has a user name, password or fragment",
        ),
        (
            "https://user@idp.example/t",
            "token_endpoint has a user name, password or fragment",
        ),
        (
            "http://user:pass@localhost/t",
            "token_endpoint has a user name, password or fragment",
        ),
        (
            "https://idp.example/t#frag",
            "token_endpoint has a user name, password or fragment",
        ),
    ] {
        let text = discovery_error(metadata(bad).as_bytes());
        assert_eq!(text, format!("discovery: {why}"), "{bad}");
    }
    for key in ["revocation_endpoint", "introspection_endpoint"] {
        let body = format!(
            r#"{{"issuer":"{ISSUER}","token_endpoint":"https://idp.example/t","{key}":"http://idp.example/x"}}"#
        );
        let text = discovery_error(body.as_bytes());
        assert_eq!(text, format!("discovery: {key} is not an https:// URL"));
    }
}

/// A field of the wrong type fails the document without quoting its value.
#[test]
fn discovery_documents_with_wrong_types_are_malformed() {
    for body in [
        r#"{"issuer":5,"token_endpoint":"https://idp.example/t"}"#.to_string(),
        format!(r#"{{"issuer":"{ISSUER}","token_endpoint":["https://idp.example/t"]}}"#),
        format!(r#"{{"issuer":"{ISSUER}","token_endpoint":{{"SECRET":"SECRET"}}}}"#),
        format!(
            r#"{{"issuer":"{ISSUER}","token_endpoint":"https://idp.example/t","token_endpoint_auth_methods_supported":"SECRET"}}"#
        ),
        format!(
            r#"{{"issuer":"{ISSUER}","token_endpoint":"https://idp.example/t","grant_types_supported":[1,2]}}"#
        ),
        format!(
            r#"{{"issuer":"{ISSUER}","token_endpoint":"https://idp.example/t","revocation_endpoint":true}}"#
        ),
        r#"{"token_endpoint":"https://idp.example/t"}"#.to_string(),
        r#"["SECRET"]"#.to_string(),
    ] {
        let e = discovered(&body).unwrap_err();
        assert!(
            matches!(e, ProviderError::Malformed { .. }),
            "{body}: {e:?}"
        );
        let text = discovery_error(body.as_bytes());
        assert!(
            text.starts_with(&format!(
                "discovery: malformed answer: {DOC} is not authorization server metadata: "
            )),
            "{text}"
        );
        assert!(!text.contains("SECRET"), "{text}");
    }
}

#[test]
fn garbage_and_huge_discovery_bodies_are_bounded_errors() {
    let deep = "[".repeat(100_000);
    let long_key = format!(r#"{{"{}":1}}"#, "k".repeat(100_000));
    let huge_issuer = format!(r#"{{"issuer":"{}""#, "i".repeat(100_000));
    for body in [
        &b""[..],
        b"\xff\xfe\x00garbage",
        b"<html><body>Not Found</body></html>",
        b"{\"issuer\":\"\xff\"}",
        deep.as_bytes(),
        long_key.as_bytes(),
        huge_issuer.as_bytes(),
    ] {
        let text = discovery_error(body);
        assert!(text.len() < 300, "{} bytes: {text}", text.len());
    }
}

#[test]
fn discovery_flags_an_unlisted_auth_method_or_grant() {
    let doc = |extra: &str| {
        format!(r#"{{"issuer":"{ISSUER}","token_endpoint":"https://idp.example/t"{extra}}}"#)
    };
    let flags = |method, extra: &str| {
        let d = discovered_as(method, doc(extra).as_bytes()).unwrap();
        (d.auth_method_unlisted, d.client_credentials_unlisted)
    };
    let basic = AuthMethod::ClientSecretBasic;
    let post = AuthMethod::ClientSecretPost;
    // Lists that are absent say nothing.
    assert_eq!(flags(basic, ""), (false, false));
    let methods = r#","token_endpoint_auth_methods_supported":["client_secret_basic"]"#;
    assert_eq!(flags(basic, methods), (false, false));
    assert_eq!(flags(post, methods), (true, false));
    let keyed = r#","token_endpoint_auth_methods_supported":["private_key_jwt","tls_client_auth"]"#;
    assert_eq!(flags(AuthMethod::PrivateKeyJwt, keyed), (false, false));
    assert_eq!(flags(AuthMethod::TlsClientAuth, keyed), (false, false));
    assert_eq!(flags(AuthMethod::PrivateKeyJwt, methods), (true, false));
    assert_eq!(flags(AuthMethod::TlsClientAuth, methods), (true, false));
    let empty = r#","token_endpoint_auth_methods_supported":[],"grant_types_supported":[]"#;
    assert_eq!(flags(post, empty), (true, true));
    // Registry names are case-sensitive (RFC 8414 section 2).
    let grants = r#","grant_types_supported":["authorization_code","Client_Credentials"]"#;
    assert_eq!(flags(basic, grants), (false, true));
    let grants = r#","grant_types_supported":["client_credentials"]"#;
    assert_eq!(flags(post, grants), (false, false));
}

#[tokio::test]
async fn basic_auth_issue_sends_the_rfc_request() {
    let c = Canned::start(vec![http("200 OK", "", OK)]).await;
    let p = OAuth2::new(settings(
        explicit(&c.url, true),
        AuthMethod::ClientSecretBasic,
    ))
    .unwrap();
    let issued = p.issue(&["read".into(), "write".into()]).await.unwrap();
    assert_eq!(issued.token.expose(), "eyJ.abc-_");
    assert_eq!(issued.lifetime, Duration::from_secs(3599));
    assert_eq!(issued.scope, "read write");
    let req = &c.requests().await[0];
    assert!(req.starts_with("POST /token HTTP/1.1\r\n"), "{req}");
    let want = format!(
        "authorization: {}\r\n",
        basic_credentials("tk client:1", &Secret::new("s3cr%t +/=")).as_str()
    );
    assert!(
        req.to_ascii_lowercase()
            .contains(&want.to_ascii_lowercase()),
        "{req}"
    );
    assert!(
            req.ends_with(
                "\r\n\r\ngrant_type=client_credentials&scope=read+write&audience=https%3A%2F%2Fapi.example"
            ),
            "{req}"
        );
    assert!(!req.contains("client_secret"), "{req}");
}

#[tokio::test]
async fn post_auth_puts_the_credentials_in_the_body_and_a_missing_expiry_uses_the_default() {
    let c = Canned::start(vec![
        http(
            "200 OK",
            "",
            r#"{"access_token":"t1","token_type":"bearer"}"#,
        ),
        http(
            "200 OK",
            "",
            r#"{"access_token":"t2","token_type":"bearer","expires_in":"60"}"#,
        ),
    ])
    .await;
    let p = OAuth2::new(settings(
        explicit(&c.url, false),
        AuthMethod::ClientSecretPost,
    ))
    .unwrap();
    let issued = p.issue(&["a".into()]).await.unwrap();
    assert_eq!(issued.lifetime, Duration::from_secs(300));
    assert_eq!(
        issued.scope, "a",
        "no scope in the answer: the requested one"
    );
    assert!(p.said_default_lifetime.load(Ordering::Relaxed));
    let issued = p.issue(&["a".into()]).await.unwrap();
    assert_eq!(issued.lifetime, Duration::from_secs(60));
    let req = &c.requests().await[0];
    assert!(
        !req.to_ascii_lowercase().contains("authorization:"),
        "{req}"
    );
    assert!(
        req.ends_with("&client_id=tk+client%3A1&client_secret=s3cr%25t+%2B%2F%3D"),
        "{req}"
    );
    assert_eq!(p.revocation(), Revocation::Unsupported);
    assert!(matches!(
        p.revoke(&Secret::new("t1")).await,
        Err(ProviderError::Unsupported { .. })
    ));
}

#[tokio::test]
async fn rfc6749_errors_are_surfaced_and_classified() {
    let c = Canned::start(vec![
        http(
            "400 Bad Request",
            "",
            r#"{"error":"invalid_scope","error_description":"scope \"x\" unknown\nFAKE LOG LINE"}"#,
        ),
        http(
            "401 Unauthorized",
            "WWW-Authenticate: Basic\r\n",
            r#"{"error":"invalid_client"}"#,
        ),
        http("503 Service Unavailable", "Retry-After: 9\r\n", ""),
        http(
            "200 OK",
            "",
            r#"{"access_token":"a b","token_type":"Bearer"}"#,
        ),
        http("200 OK", "", r#"{"access_token":"ab","token_type":"DPoP"}"#),
        http(
            "200 OK",
            "",
            r#"{"access_token":"ab","token_type":"Bearer","expires_in":-5}"#,
        ),
    ])
    .await;
    let p = OAuth2::new(settings(
        explicit(&c.url, true),
        AuthMethod::ClientSecretBasic,
    ))
    .unwrap();
    let scopes = ["x".to_string()];
    let e = p.issue(&scopes).await.unwrap_err();
    assert!(matches!(e, ProviderError::Refused { status: 400, .. }));
    let text = e.to_string();
    assert!(
        text.contains(
            r#"error=invalid_scope error_description="scope \"x\" unknown\\x0aFAKE LOG LINE""#
        ),
        "{text}"
    );
    let e = p.issue(&scopes).await.unwrap_err();
    assert!(
        e.to_string().contains("HTTP 401: error=invalid_client"),
        "{e}"
    );
    assert_eq!(e.retry_class(), crate::schedule::RetryClass::Slow);
    let e = p.issue(&scopes).await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(9)));
    assert_eq!(e.retry_class(), crate::schedule::RetryClass::Transient);
    for want in [
        "bearer token cannot have",
        "is not Bearer",
        "not a sane lifetime",
    ] {
        let e = p.issue(&scopes).await.unwrap_err();
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
}

#[tokio::test]
async fn discovery_falls_back_to_openid_and_checks_the_issuer() {
    // Both RFC 8414 forms missing, the OpenID document present.
    let c = Canned::start_with(|base| {
            let meta = format!(
                r#"{{"issuer":"{base}realms/ops","token_endpoint":"{base}t","revocation_endpoint":"{base}r","introspection_endpoint":"{base}i","token_endpoint_auth_methods_supported":["client_secret_basic"]}}"#
            );
            vec![
                http("404 Not Found", "", ""),
                http("404 Not Found", "", ""),
                http("200 OK", "", &meta),
                http("200 OK", "", OK),
                http("200 OK", "", ""),
                http("200 OK", "", r#"{"active":true,"exp":4102444800}"#),
            ]
        })
        .await;
    let issuer = c.url.join("/realms/ops").unwrap();
    let p = OAuth2::new(settings(
        OAuth2Endpoints::Discover {
            issuer: issuer.clone(),
        },
        AuthMethod::ClientSecretBasic,
    ))
    .unwrap();
    p.issue(&["read".into()]).await.unwrap();
    p.revoke(&Secret::new("tok")).await.unwrap();
    assert!(matches!(
        p.introspect(&Secret::new("tok")).await.unwrap(),
        Introspection::Active { remaining: Some(_) }
    ));
    let reqs = c.requests().await;
    assert!(reqs[0].starts_with("GET /.well-known/oauth-authorization-server/realms/ops "));
    assert!(reqs[1].starts_with("GET /realms/ops/.well-known/oauth-authorization-server "));
    assert!(reqs[2].starts_with("GET /realms/ops/.well-known/openid-configuration "));
    assert!(reqs[3].starts_with("POST /t "));
    assert!(reqs[4].starts_with("POST /r "), "{}", reqs[4]);
    assert!(reqs[4].ends_with("\r\n\r\ntoken=tok&token_type_hint=access_token"));
    assert!(reqs[5].starts_with("POST /i "));
    assert_eq!(p.revocation(), Revocation::Always);

    // Another server's metadata is refused, and the failure is retryable.
    let c = Canned::start(vec![http(
        "200 OK",
        "",
        r#"{"issuer":"https://evil.example","token_endpoint":"https://evil.example/t"}"#,
    )])
    .await;
    let p = OAuth2::new(settings(
        OAuth2Endpoints::Discover {
            issuer: c.url.join("/realms/ops").unwrap(),
        },
        AuthMethod::ClientSecretBasic,
    ))
    .unwrap();
    let e = p.issue(&["read".into()]).await.unwrap_err();
    assert!(e.to_string().contains("not the configured"), "{e}");
    assert!(
        p.endpoints.get().is_none(),
        "a failed discovery is tried again"
    );
}

// Client authentication by key.

const RSA_TEST_KEY: &str = include_str!("../../../tests/keys/rsa-test.pem");

fn b64url_decode(text: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let (mut bits, mut n, mut out) = (0u32, 0, Vec::new());
    for c in text.bytes() {
        bits = (bits << 6) | A.iter().position(|&a| a == c).unwrap() as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn ec_p256_pem() -> String {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let rng = ring::rand::SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    pem("PRIVATE KEY", doc.as_ref())
}

/// Check an assertion as a server would: the signature with the public key, then the claims.
fn verify_assertion(
    jwt: &str,
    alg: &'static dyn ring::signature::VerificationAlgorithm,
    public_key: &[u8],
) -> (serde_json::Value, serde_json::Value) {
    let (input, sig) = jwt.rsplit_once('.').unwrap();
    ring::signature::UnparsedPublicKey::new(alg, public_key)
        .verify(input.as_bytes(), &b64url_decode(sig))
        .expect("the signature verifies with the public key");
    let (header, claims) = input.split_once('.').unwrap();
    (
        serde_json::from_slice(&b64url_decode(header)).unwrap(),
        serde_json::from_slice(&b64url_decode(claims)).unwrap(),
    )
}

#[test]
fn rs256_and_es256_assertions_verify_and_carry_rfc7523_claims() {
    let cases = [
        (
            Secret::new(RSA_TEST_KEY),
            "RS256",
            &ring::signature::RSA_PKCS1_2048_8192_SHA256
                as &'static dyn ring::signature::VerificationAlgorithm,
        ),
        (
            Secret::new(ec_p256_pem()),
            "ES256",
            &ring::signature::ECDSA_P256_SHA256_FIXED,
        ),
    ];
    for (key, alg, verifier) in cases {
        let signer = Signer::from_pem(&key, Some("k1".into())).unwrap();
        assert_eq!(signer.alg().name(), alg);
        let aud = "https://login.example.com/token";
        let a = signer.assertion("tokenkeeper", aud).unwrap();
        let b = signer.assertion("tokenkeeper", aud).unwrap();
        let (header, claims) = verify_assertion(a.expose(), verifier, signer.public_key());
        assert_eq!(header["alg"], alg);
        assert_eq!(header["kid"], "k1");
        assert_eq!(claims["iss"], "tokenkeeper");
        assert_eq!(claims["sub"], "tokenkeeper");
        assert_eq!(claims["aud"], aud);
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert!(exp > iat && exp - iat <= 60, "{claims}");
        let (_, claims_b) = verify_assertion(b.expose(), verifier, signer.public_key());
        assert_ne!(claims["jti"], claims_b["jti"], "a jti was reused");
        assert_eq!(claims["jti"].as_str().unwrap().len(), 32);
        // Debug shows the algorithm, never the key.
        assert!(!format!("{signer:?}").contains("PRIVATE"));
    }
}

#[test]
fn bad_keys_are_refused_with_a_reason_and_never_quoted() {
    use ring::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
    let rng = ring::rand::SystemRandom::new();
    let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let p384 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
    let body = "MIIBVwIBADANBgkqhkiG9w0BAQEFAASCAUEwggE9AgEAAkEAsecretbodyXYZA";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "ed25519",
            pem("PRIVATE KEY", ed.as_ref()),
            "neither RSA nor EC P-256",
        ),
        (
            "p-384",
            pem("PRIVATE KEY", p384.as_ref()),
            "neither RSA nor EC P-256",
        ),
        (
            "pkcs1",
            format!("-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----\n"),
            "PKCS#1 (BEGIN RSA PRIVATE KEY), not PKCS#8; convert it with `openssl pkcs8",
        ),
        (
            "sec1",
            format!("-----BEGIN EC PRIVATE KEY-----\n{body}\n-----END EC PRIVATE KEY-----\n"),
            "SEC1",
        ),
        (
            "encrypted",
            format!(
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\n{body}\n-----END ENCRYPTED PRIVATE KEY-----\n"
            ),
            "the key is encrypted",
        ),
        ("not pem", body.to_string(), "no PEM block found"),
        (
            "two keys",
            format!("{RSA_TEST_KEY}{}", ec_p256_pem()),
            "2 PEM blocks found",
        ),
        (
            "garbage in the block",
            format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n"),
            "neither RSA nor EC P-256",
        ),
    ];
    for (what, text, needle) in cases {
        let e = Signer::from_pem(&Secret::new(text), None).unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(shown.contains(needle), "{what}: {shown}");
        assert!(
            !shown.contains("secretbody"),
            "{what} quoted the key: {shown}"
        );
    }
}

#[test]
fn a_certificate_must_match_its_key() {
    let key = rcgen::KeyPair::generate().unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["tokenkeeper".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_pem = Secret::new(cert.pem());
    assert!(identity(&cert_pem, &Secret::new(key.serialize_pem())).is_ok());
    let e = identity(&cert_pem, &Secret::new(other.serialize_pem())).unwrap_err();
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("do not belong together"), "{shown}");
    let e = identity(
        &Secret::new(key.serialize_pem()),
        &Secret::new(key.serialize_pem()),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("no -----BEGIN CERTIFICATE-----"),
        "{e}"
    );
}

#[test]
fn an_echoed_assertion_is_cut_out_of_the_answer() {
    let body =
        zeroize::Zeroizing::new(br#"{"error_description":"bad eyJ.a.b and eyJ.a.b"}"#.to_vec());
    let cut = super::auth::cut_out(body, b"eyJ.a.b");
    assert_eq!(
        std::str::from_utf8(&cut).unwrap(),
        r#"{"error_description":"bad [client assertion] and [client assertion]"}"#
    );
    let plain = zeroize::Zeroizing::new(b"{}".to_vec());
    assert_eq!(&super::auth::cut_out(plain, b"eyJ")[..], b"{}");
}

/// Introspection authenticates like the token request: a fresh assertion addressed to the
/// introspection endpoint, no secret.
#[tokio::test]
async fn introspection_carries_its_own_assertion() {
    let c = Canned::start(vec![http("200 OK", "", r#"{"active":true}"#)]).await;
    let signer = Signer::from_pem(&Secret::new(ec_p256_pem()), None).unwrap();
    let public_key = signer.public_key().to_vec();
    let mut s = settings(explicit(&c.url, true), AuthMethod::PrivateKeyJwt);
    s.auth = ClientAuth::Jwt(Box::new(signer));
    let p = OAuth2::new(s).unwrap();
    let active = p.introspect(&Secret::new("t1")).await.unwrap();
    assert!(matches!(active, Introspection::Active { .. }), "{active:?}");
    let req = &c.requests().await[0];
    assert!(req.starts_with("POST /introspect HTTP/1.1\r\n"), "{req}");
    let body = req.split("\r\n\r\n").nth(1).unwrap();
    let form: Vec<(String, String)> = serde_urlencoded::from_str(body).unwrap();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("client_id"), Some("tk client:1"));
    assert_eq!(get("client_assertion_type"), Some(JWT_BEARER_ASSERTION));
    assert_eq!(get("client_secret"), None);
    let (_, claims) = verify_assertion(
        get("client_assertion").unwrap(),
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        &public_key,
    );
    // No issuer known: the token endpoint, whichever endpoint the request goes to.
    assert_eq!(claims["aud"], c.url.join("/token").unwrap().as_str());
}

/// The assertion's `aud` is the issuer as the metadata spells it when discovered, for the
/// token request and revocation alike; `assertion_audience` overrides it.
#[tokio::test]
async fn assertions_are_addressed_to_the_issuer_or_the_configured_audience() {
    for configured in [None, Some("https://localhost/o/token/")] {
        let c = Canned::start_with(|base| {
            let meta = format!(
                r#"{{"issuer":"{base}realms/ops/","token_endpoint":"{base}t","revocation_endpoint":"{base}r"}}"#
            );
            vec![
                http("200 OK", "", &meta),
                http("200 OK", "", OK),
                http("200 OK", "", ""),
            ]
        })
        .await;
        let signer = Signer::from_pem(&Secret::new(ec_p256_pem()), None)
            .unwrap()
            .with_audience(configured.map(str::to_string));
        let public_key = signer.public_key().to_vec();
        let mut s = settings(
            OAuth2Endpoints::Discover {
                issuer: c.url.join("/realms/ops").unwrap(),
            },
            AuthMethod::PrivateKeyJwt,
        );
        s.auth = ClientAuth::Jwt(Box::new(signer));
        let p = OAuth2::new(s).unwrap();
        p.issue(&["read".into()]).await.unwrap();
        p.revoke(&Secret::new("tok")).await.unwrap();
        let want = configured.map_or_else(|| format!("{}realms/ops/", c.url), str::to_string);
        for req in &c.requests().await[1..] {
            let body = req.split("\r\n\r\n").nth(1).unwrap();
            let form: Vec<(String, String)> = serde_urlencoded::from_str(body).unwrap();
            let assertion = form
                .iter()
                .find(|(k, _)| k == "client_assertion")
                .map(|(_, v)| v.as_str())
                .unwrap();
            let (_, claims) = verify_assertion(
                assertion,
                &ring::signature::ECDSA_P256_SHA256_FIXED,
                &public_key,
            );
            assert_eq!(claims["aud"], want.as_str(), "{req}");
        }
    }
}

/// A request that gets no answer names its operation once, not "token request request".
#[tokio::test]
async fn a_request_without_an_answer_says_so_without_doubling_a_word() {
    // Bound then dropped: nothing listens on the port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
    let p = OAuth2::new(settings(
        explicit(&base, true),
        AuthMethod::ClientSecretPost,
    ))
    .unwrap();
    let e = p.issue(&["x".to_string()]).await.unwrap_err();
    let text = e.to_string();
    assert!(!text.contains("request request"), "{text}");
    assert_eq!(text, "token request: no complete answer from the server");
}

/// A refusal of Basic credentials that form-encoding changed hints at servers that do not
/// decode them; credentials that encode to themselves get no such hint.
#[tokio::test]
async fn a_refused_basic_secret_that_encoding_changes_gets_a_hint() {
    let refusal = || http("401 Unauthorized", "", r#"{"error":"invalid_client"}"#);
    let c = Canned::start(vec![refusal(), refusal()]).await;
    let p = OAuth2::new(settings(
        explicit(&c.url, true),
        AuthMethod::ClientSecretBasic,
    ))
    .unwrap();
    let e = p.issue(&["x".to_string()]).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains("some servers do not decode them"), "{text}");
    assert!(text.contains("client_secret_post"), "{text}");
    assert!(!text.contains("s3cr%t"), "{text}");
    let mut plain = settings(explicit(&c.url, true), AuthMethod::ClientSecretBasic);
    plain.client_id = "plain".into();
    plain.auth = ClientAuth::basic("plain", Secret::new("plainsecret")).unwrap();
    let e = OAuth2::new(plain)
        .unwrap()
        .issue(&["x".to_string()])
        .await
        .unwrap_err();
    assert!(!e.to_string().contains("decode"), "{e}");
}
