use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A one-shot HTTP server answering with `response` (raw bytes) and handing back the
/// request it received.
async fn canned(response: Vec<u8>) -> (Url, tokio::task::JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
    let h = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        // Read headers, then the body by Content-Length.
        loop {
            let n = s.read(&mut buf).await.unwrap();
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req).to_string();
            if let Some(i) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if req.len() >= i + 4 + len {
                    break;
                }
            }
        }
        s.write_all(&response).await.unwrap();
        let _ = s.shutdown().await;
        String::from_utf8(req).unwrap()
    });
    (url, h)
}

fn http(status: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn client(url: Url) -> Voucherify {
    Voucherify::new(
        super::super::http_client().unwrap(),
        url,
        &Secret::new("app-id-1"),
        &Secret::new("app-token-1"),
        Duration::from_secs(5),
    )
    .unwrap()
}

const OK: &str = r#"{"access_token":"1ABCde","client_id":"c","expires_at":1738945086,"expires_in":900,"scope":"api vouchers","token_type":"Bearer"}"#;

#[tokio::test]
async fn issue_sends_the_contract_request_and_reads_the_answer() {
    let (url, req) = canned(http("200 OK", "Content-Type: application/json\r\n", OK)).await;
    let issued = client(url)
        .issue(&["api".into(), "vouchers".into()])
        .await
        .unwrap();
    assert_eq!(issued.token.expose(), "1ABCde");
    assert_eq!(issued.lifetime, Duration::from_secs(900));
    assert_eq!(issued.scope, "api vouchers");
    let req = req.await.unwrap();
    let lower = req.to_ascii_lowercase();
    assert!(
        req.starts_with("POST /v1/oauth/token HTTP/1.1\r\n"),
        "{req}"
    );
    assert!(lower.contains("x-app-id: app-id-1\r\n"), "{req}");
    assert!(lower.contains("x-app-token: app-token-1\r\n"), "{req}");
    assert!(lower.contains("content-type: application/x-www-form-urlencoded\r\n"));
    assert!(lower.contains("user-agent: tokenkeeper/"), "{req}");
    assert!(
        req.ends_with("\r\n\r\ngrant_type=client_credentials&scope=api+vouchers"),
        "{req}"
    );
}

/// A well-formed token in an answer refused for its token_type or its lifetime was minted
/// all the same: the error carries it for revocation, and shows only its fingerprint.
#[test]
fn refused_answers_with_a_minted_token_carry_it() {
    let answer = |token_type: &str, expires_in: &str| {
        format!(
            r#"{{"access_token":"1MintedTok","client_id":"c","expires_at":1,"expires_in":{expires_in},"scope":"api","token_type":"{token_type}"}}"#
        )
    };
    for (token_type, expires_in, want) in [
        ("mac", "900", "is not Bearer"),
        ("Bearer", "0", "not a sane lifetime"),
        ("Bearer", "-5", "not a sane lifetime"),
        ("Bearer", "1000000000000", "not a sane lifetime"),
    ] {
        let body = answer(token_type, expires_in);
        let e = parse_token_answer(200, None, body.as_bytes(), Instant::now()).unwrap_err();
        assert_eq!(e.minted().map(Secret::expose), Some("1MintedTok"), "{e}");
        assert_eq!(e.retry_class(), crate::schedule::RetryClass::Slow);
        let text = format!("{e} {e:?}");
        assert!(text.contains(want), "{text}");
        assert!(!text.contains("1MintedTok"), "{text}");
        assert!(
            text.contains(&crate::secret::fingerprint("1MintedTok")),
            "{text}"
        );
    }
    // A token that is not a bearer token is never used, not even to revoke it.
    let body = br#"{"access_token":"a b","client_id":"c","expires_at":1,"expires_in":900,"scope":"api","token_type":"mac"}"#;
    let e = parse_token_answer(200, None, body, Instant::now()).unwrap_err();
    assert!(e.minted().is_none(), "{e:?}");
}

/// A 200 answer with a well-formed token that cannot be read whole (a field missing, of the
/// wrong type, out of range) still minted it: the refusal carries it.
#[test]
fn every_token_in_a_malformed_answer_is_carried_for_revocation() {
    let whole = serde_json::json!({"access_token":"1MintedTok","client_id":"c","expires_at":1,
        "expires_in":900,"scope":"api","token_type":"Bearer"});
    let cases: [(&str, Option<serde_json::Value>); 9] = [
        ("expires_in", None),
        ("expires_in", Some(serde_json::json!("900"))),
        ("expires_in", Some(serde_json::Value::Null)),
        ("expires_in", Some(serde_json::json!(900.5))),
        ("expires_in", Some(serde_json::json!(true))),
        ("expires_in", Some(serde_json::json!(u64::MAX))),
        ("token_type", None),
        ("scope", Some(serde_json::json!(3))),
        ("client_id", None),
    ];
    for (field, value) in cases {
        let mut body = whole.clone();
        match &value {
            Some(v) => body[field] = v.clone(),
            None => {
                body.as_object_mut().unwrap().remove(field);
            }
        }
        let body = body.to_string();
        let e = parse_token_answer(200, None, body.as_bytes(), Instant::now()).unwrap_err();
        assert_eq!(
            e.minted().map(Secret::expose),
            Some("1MintedTok"),
            "{body}: {e:?}"
        );
        assert!(!format!("{e} {e:?}").contains("1MintedTok"), "{e:?}");
    }
    // Text after the answer's JSON does not hide its token.
    let body = format!("{whole} trailing");
    let e = parse_token_answer(200, None, body.as_bytes(), Instant::now()).unwrap_err();
    assert_eq!(e.minted().map(Secret::expose), Some("1MintedTok"), "{e:?}");
    // Not a 200: no token was minted, whatever the body says.
    let body = whole.to_string();
    let e = parse_token_answer(500, None, body.as_bytes(), Instant::now()).unwrap_err();
    assert!(e.minted().is_none(), "{e:?}");
}

#[tokio::test]
async fn bad_answers_are_errors_never_panics() {
    let huge = format!(
        r#"{{"pad":"{}"}}"#,
        "x".repeat(super::super::MAX_BODY_BYTES)
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
            (http("200 OK", "", r#"{"access_token":"a","client_id":"c","expires_at":1,"expires_in":"900","scope":"api","token_type":"Bearer"}"#), "invalid type"),
            (http("200 OK", "", r#"{"access_token":"a","expires_at":1,"expires_in":900,"scope":"api","token_type":"Bearer"}"#), "missing field `client_id`"),
            (http("200 OK", "", r#"{"access_token":"a\nB=c","client_id":"c","expires_at":1,"expires_in":900,"scope":"api","token_type":"Bearer"}"#), "characters a bearer token cannot have"),
            (http("200 OK", "", r#"{"access_token":"a","client_id":"c","expires_at":1,"expires_in":0,"scope":"api","token_type":"Bearer"}"#), "not a sane lifetime"),
            (http("200 OK", "", r#"{"access_token":"a","client_id":"c","expires_at":1,"expires_in":900,"scope":"api","token_type":"MAC"}"#), "is not Bearer"),
            (http("200 OK", "", r#"{"access_token":"a","#), "EOF"),
            (http("200 OK", "", "<html>"), "not an OAuth token"),
            (http("200 OK", "", &huge), "larger than"),
            // Promises more body than it sends: a truncated answer.
            (b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\nConnection: close\r\n\r\n{\"access_token\":".to_vec(), "no complete answer"),
        ];
    for (resp, want) in cases {
        let (url, _req) = canned(resp).await;
        let err = client(url).issue(&["api".into()]).await.unwrap_err();
        let text = crate::error_chain(&err);
        assert!(text.contains(want), "want {want:?} in {text:?}");
        assert_eq!(
            err.retry_class(),
            if want == "no complete answer" {
                crate::schedule::RetryClass::Transient
            } else {
                crate::schedule::RetryClass::Slow
            }
        );
    }
}

/// Found by the `voucherify_token` fuzz target: an escaped quote inside a quoted value
/// ended the blanking early, printing the rest of the value and blanking the position.
#[test]
fn json_errors_blank_values_with_escaped_quotes() {
    for body in [
        r#""ab\"SECRET""#,
        r#""a\"SECRET\"b""#,
        r#""ab\\\"SECRET\\""#,
        r#"{"access_token":"a","client_id":"c","expires_at":1,"expires_in":"x\"SECRET","scope":"api","token_type":"Bearer"}"#,
    ] {
        let err = parse_token_answer(200, None, body.as_bytes(), Instant::now()).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("SECRET"), "{body}: {text}");
        assert!(
            text.contains(r#"invalid type: string "…""#),
            "{body}: {text}"
        );
        assert!(text.contains(" at line 1 column "), "{body}: {text}");
    }
}

#[test]
fn introspection_believes_the_earlier_of_expires_in_and_expires_at() {
    let now = 1_900_000_000;
    let active = |body: &str| match parse_introspect_answer(200, None, body.as_bytes(), now) {
        Ok(Introspection::Active { remaining }) => remaining,
        other => panic!("{other:?}"),
    };
    let s = Duration::from_secs;
    assert_eq!(
        active(r#"{"active":true,"expires_in":600,"expires_at":1900000100}"#),
        Some(s(100))
    );
    assert_eq!(
        active(r#"{"active":true,"expires_in":60,"expires_at":1900000100}"#),
        Some(s(60))
    );
    // Already past by the answer's own date, whatever expires_in says.
    assert_eq!(
        active(r#"{"active":true,"expires_in":800,"expires_at":1899999000}"#),
        Some(s(0))
    );
    assert_eq!(active(r#"{"active":true,"expires_in":-5}"#), Some(s(0)));
    assert_eq!(
        active(r#"{"active":true,"expires_at":1900000042}"#),
        Some(s(42))
    );
    assert_eq!(active(r#"{"active":true}"#), None);
}

/// serde_json's own syntax messages keep their position, even the one with a quote.
#[test]
fn json_syntax_errors_keep_their_position() {
    let err = parse_introspect_answer(200, None, b"{1:2}", 0).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("key must be a string at line 1 column 2"),
        "{err}"
    );
    let err = parse_introspect_answer(200, None, b"{\"active\" true}", 0).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("expected `:` at line 1 column 11"),
        "{err}"
    );
}

#[tokio::test]
async fn a_wrong_typed_token_never_reaches_the_error_text() {
    let (url, _r) = canned(http("200 OK", "", r#"{"access_token":"1SECRETtok","client_id":"c","expires_at":1,"expires_in":"1SECRETtok","scope":"api","token_type":"Bearer"}"#)).await;
    let err = client(url).issue(&["api".into()]).await.unwrap_err();
    let text = format!("{} {err:?}", crate::error_chain(&err));
    assert!(!text.contains("SECRET"), "{text}");
}

#[tokio::test]
async fn errors_are_classified_and_carry_key_and_message() {
    let (url, _r) = canned(http(
        "401 Unauthorized",
        "",
        r#"{"code":401,"key":"unauthorized","message":"Unauthorized"}"#,
    ))
    .await;
    let err = client(url).issue(&["api".into()]).await.unwrap_err();
    assert!(matches!(err, ProviderError::Refused { status: 401, .. }));
    assert!(
        err.to_string()
            .contains(r#"key=unauthorized message="Unauthorized""#),
        "{err}"
    );

    let (url, _r) = canned(http(
        "400 Bad Request",
        "",
        r#"{"code":400,"key":"invalid_scope","message":"Invalid scope: a,b"}"#,
    ))
    .await;
    let err = client(url).issue(&["api".into()]).await.unwrap_err();
    assert!(err.to_string().contains("key=invalid_scope"), "{err}");
    assert_eq!(err.retry_class(), crate::schedule::RetryClass::Slow);

    let (url, _r) = canned(http(
        "429 Too Many Requests",
        "Retry-After: 7\r\n",
        r#"{"code":429,"message":"Too many requests hit the API too quickly."}"#,
    ))
    .await;
    let err = client(url).issue(&["api".into()]).await.unwrap_err();
    assert_eq!(err.retry_class(), crate::schedule::RetryClass::Transient);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));

    let (url, _r) = canned(http("503 Service Unavailable", "", "")).await;
    let err = client(url).issue(&["api".into()]).await.unwrap_err();
    assert_eq!(err.retry_class(), crate::schedule::RetryClass::Transient);
    assert!(err.to_string().contains("empty body"), "{err}");
}

#[tokio::test]
async fn redirects_are_never_followed_so_credentials_stay_put() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere = l.local_addr().unwrap();
    let (url, _r) = canned(http(
        "307 Temporary Redirect",
        &format!("Location: http://{elsewhere}/v1/oauth/token\r\n"),
        "",
    ))
    .await;
    let err = client(url).issue(&["api".into()]).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::Refused { status: 307, .. }),
        "{err}"
    );
    // Nobody connected to the redirect target.
    let accepted = tokio::time::timeout(Duration::from_millis(200), l.accept()).await;
    assert!(accepted.is_err(), "the redirect was followed");
}

#[tokio::test]
async fn revoke_counts_204_and_404_as_revoked() {
    for status in ["204 No Content", "404 Not Found"] {
        let (url, req) = canned(http(status, "", "")).await;
        client(url).revoke(&Secret::new("tok")).await.unwrap();
        let req = req.await.unwrap();
        assert!(req.starts_with("POST /v1/oauth/token/revoke "), "{req}");
        assert!(req.ends_with("\r\n\r\naccess_token=tok"), "{req}");
    }
    let (url, _r) = canned(http("500 Internal Server Error", "", "")).await;
    assert!(client(url).revoke(&Secret::new("tok")).await.is_err());
}

#[tokio::test]
async fn introspect_reads_active_and_inactive() {
    let (url, req) = canned(http("200 OK", "", r#"{"active":false}"#)).await;
    assert_eq!(
        client(url).introspect(&Secret::new("tok")).await.unwrap(),
        Introspection::Inactive
    );
    assert!(req.await.unwrap().starts_with("POST /v1/oauth/introspect "));
    // OK's expires_at is long past, and the earlier expiry wins: date this one in 2100.
    let body = OK
        .replace("\"expires_in\":900", "\"expires_in\":555")
        .replace("1738945086", "4102444800")
        .replace('}', ",\"active\":true}");
    let (url, _r) = canned(http("200 OK", "", &body)).await;
    assert_eq!(
        client(url).introspect(&Secret::new("tok")).await.unwrap(),
        Introspection::Active {
            remaining: Some(Duration::from_secs(555))
        }
    );
}
