use super::*;
use crate::provider::testutil::{Canned, http};
use std::path::Path;

fn in_days(days: u64) -> String {
    humantime::format_rfc3339_seconds(crate::clock::now_wall() + Duration::from_secs(days * 86400))
        .to_string()
}

fn token_answer(access: &str, refresh: &str) -> String {
    format!(
        r#"{{"access_token":"{access}","token_type":"bearer","expires_at":"{}","merchant_id":"MLQW2MYBY81PZ","refresh_token":"{refresh}","short_lived":false}}"#,
        in_days(30)
    )
}

fn square(url: &Url, dir: &Path, mode: Mode, secret: bool) -> Square {
    Square::new(Settings {
        http: crate::provider::http_client().unwrap(),
        name: "shop".into(),
        base_url: url.join("/").unwrap(),
        client_id: "sq0idp-app".into(),
        client_secret: secret.then(|| Secret::new("sq0csp-secret")),
        mode,
        seed: Secret::new("EQAAseed"),
        store: RefreshStore::new(dir.join("state/square-shop.json")),
        timeout: Duration::from_secs(5),
    })
    .unwrap()
}

fn header<'a>(req: &'a str, name: &str) -> Option<&'a str> {
    req.split("\r\n\r\n").next()?.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn body(req: &str) -> serde_json::Value {
    serde_json::from_str(req.split_once("\r\n\r\n").unwrap().1).unwrap()
}

#[test]
fn timestamps_and_lifetimes() {
    let t = |s| {
        parse_timestamp(s)
            .map(humantime::format_rfc3339_seconds)
            .map(|t| t.to_string())
    };
    assert_eq!(
        t("2025-04-03T18:31:06Z").as_deref(),
        Some("2025-04-03T18:31:06Z")
    );
    assert_eq!(
        t("2025-04-03T18:31:06.123Z").as_deref(),
        Some("2025-04-03T18:31:06Z")
    );
    assert_eq!(
        t("2025-04-03T20:31:06+02:00").as_deref(),
        Some("2025-04-03T18:31:06Z")
    );
    assert_eq!(
        t("2025-04-03T13:31:06-05:00").as_deref(),
        Some("2025-04-03T18:31:06Z")
    );
    for bad in [
        "",
        "1738945086",
        "2025-04-03",
        "2025-04-03T18:31:06Zé",
        "yesterday",
    ] {
        assert_eq!(t(bad), None, "{bad}");
    }

    let now = crate::clock::now_wall();
    let day = Duration::from_secs(86400);
    // Square's Date is the reference: a local clock an hour fast does not shorten the lifetime.
    let (left, clock) = lifetime(now + 30 * day, Some(now - Duration::from_secs(3600)), now);
    assert_eq!(left, Some(30 * day + Duration::from_secs(3600)));
    assert!(clock.unwrap().contains("1h ahead of Square's"));
    let (left, clock) = lifetime(now + 30 * day, Some(now), now);
    assert_eq!(left, Some(30 * day));
    assert!(clock.is_none());
    // No Date: the local clock, and an answer already expired by it is called out.
    let (left, clock) = lifetime(now - day, None, now);
    assert_eq!(left, None);
    assert!(clock.unwrap().contains("clock looks wrong"));
    assert_eq!(lifetime(now + 365 * day, Some(now), now).0, None);
}

#[tokio::test]
async fn obtain_token_sends_the_contract_request_and_saves_a_rotated_refresh_token() {
    let dir = tempfile::tempdir().unwrap();
    let c = Canned::start(vec![
        http("200 OK", "", &token_answer("EAAAone", "EQAAnext")),
        http("200 OK", "", &token_answer("EAAAtwo", "EQAAnext")),
    ])
    .await;
    let p = square(&c.url, dir.path(), Mode::RefreshToken, true);
    let issued = p
        .issue(&["ORDERS_READ".into(), "ITEMS_READ".into()])
        .await
        .unwrap();
    assert_eq!(issued.token.expose(), "EAAAone");
    assert_eq!(issued.token_type, "bearer");
    assert_eq!(issued.scope, "ORDERS_READ ITEMS_READ");
    let days = issued.lifetime.as_secs() / 86400;
    assert!((29..=30).contains(&days), "{:?}", issued.lifetime);
    let (seed, saved) = p.store.load().unwrap().unwrap();
    assert_eq!(saved.expose(), "EQAAnext");
    assert_eq!(seed, Secret::new("EQAAseed").fingerprint());

    // The next refresh presents the rotated token; an unchanged one is not saved again.
    p.issue(&["ORDERS_READ".into()]).await.unwrap();
    let reqs = c.requests().await;
    assert!(
        reqs[0].starts_with("POST /oauth2/token HTTP/1.1\r\n"),
        "{}",
        reqs[0]
    );
    assert_eq!(header(&reqs[0], "content-type"), Some("application/json"));
    assert_eq!(header(&reqs[0], "square-version"), Some(SQUARE_VERSION));
    assert_eq!(header(&reqs[0], "authorization"), None);
    assert_eq!(
        body(&reqs[0]),
        serde_json::json!({
            "client_id": "sq0idp-app",
            "client_secret": "sq0csp-secret",
            "grant_type": "refresh_token",
            "refresh_token": "EQAAseed",
            "scopes": ["ORDERS_READ", "ITEMS_READ"],
        })
    );
    assert_eq!(body(&reqs[1])["refresh_token"], "EQAAnext");

    // A restart continues from the saved token, not the spent configured one.
    let p = square(&c.url, dir.path(), Mode::RefreshToken, true);
    assert_eq!(p.current.lock().await.expose(), "EQAAnext");
}

#[tokio::test]
async fn a_new_seed_wins_over_the_saved_chain_and_pkce_sends_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let store = RefreshStore::new(dir.path().join("state/square-shop.json"));
    store.save("00000000", &Secret::new("EQAAold")).unwrap();
    let c = Canned::start(vec![http(
        "200 OK",
        "",
        &token_answer("EAAAone", "EQAAnext"),
    )])
    .await;
    let p = square(&c.url, dir.path(), Mode::RefreshToken, false);
    assert_eq!(p.current.lock().await.expose(), "EQAAseed");
    assert_eq!(p.revocation(), Revocation::Unsupported);
    p.issue(&["ORDERS_READ".into()]).await.unwrap();
    let req = &c.requests().await[0];
    assert!(body(req).get("client_secret").is_none(), "{req}");
    assert_eq!(store.load().unwrap().unwrap().1.expose(), "EQAAnext");
}

#[tokio::test]
async fn the_refresh_token_is_saved_even_when_the_rest_of_the_answer_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let c = Canned::start(vec![http(
        "200 OK",
        "",
        r#"{"access_token":"EAAAone","token_type":"bearer","expires_at":"soon","refresh_token":"EQAAnext"}"#,
    )])
    .await;
    let p = square(&c.url, dir.path(), Mode::RefreshToken, true);
    let e = p.issue(&["ORDERS_READ".into()]).await.unwrap_err();
    assert!(
        e.to_string().contains("is not an ISO 8601 timestamp"),
        "{e}"
    );
    assert_eq!(p.store.load().unwrap().unwrap().1.expose(), "EQAAnext");
    assert_eq!(p.current.lock().await.expose(), "EQAAnext");
}

#[tokio::test]
async fn a_rotated_token_that_cannot_be_saved_fails_the_issue() {
    let dir = tempfile::tempdir().unwrap();
    let c = Canned::start(vec![http(
        "200 OK",
        "",
        &token_answer("EAAAone", "EQAAnext"),
    )])
    .await;
    let p = square(&c.url, dir.path(), Mode::RefreshToken, true);
    // `state` becomes a file, so the state directory cannot be created.
    std::fs::write(dir.path().join("state"), "").unwrap();
    let e = p.issue(&["ORDERS_READ".into()]).await.unwrap_err();
    let text = crate::error_chain(&e);
    assert!(
        text.contains("cannot keep the rotated refresh token"),
        "{text}"
    );
    assert!(!text.contains("EQAA") && !text.contains("EAAA"), "{text}");
}

#[tokio::test]
async fn both_error_shapes_are_surfaced() {
    let dir = tempfile::tempdir().unwrap();
    let c = Canned::start(vec![
        http(
            "401 Unauthorized",
            "",
            r#"{"errors":[{"category":"AUTHENTICATION_ERROR","code":"UNAUTHORIZED","detail":"Invalid refresh token"}]}"#,
        ),
        http(
            "400 Bad Request",
            "",
            r#"{"message":"cannot renew revoked token","type":"bad_request"}"#,
        ),
        http(
            "429 Too Many Requests",
            "Retry-After: 3\r\n",
            r#"{"errors":[{"category":"RATE_LIMIT_ERROR","code":"RATE_LIMITED"}]}"#,
        ),
        http(
            "200 OK",
            "",
            r#"{"errors":[{"category":"INVALID_REQUEST_ERROR","code":"INVALID_VALUE","field":"scopes"}]}"#,
        ),
        http(
            "200 OK",
            "",
            &token_answer("EAAAone", "EQAAseed").replace("\"bearer\"", "\"mac\""),
        ),
    ])
    .await;
    let p = square(&c.url, dir.path(), Mode::RefreshToken, true);
    let scopes = ["ORDERS_READ".to_string()];
    let e = p.issue(&scopes).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "ObtainToken refused with HTTP 401: code=UNAUTHORIZED category=AUTHENTICATION_ERROR detail=\"Invalid refresh token\""
    );
    let e = p.issue(&scopes).await.unwrap_err();
    assert!(
        e.to_string()
            .ends_with("type=bad_request message=\"cannot renew revoked token\""),
        "{e}"
    );
    let e = p.issue(&scopes).await.unwrap_err();
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    let e = p.issue(&scopes).await.unwrap_err();
    assert!(e.to_string().contains("code=INVALID_VALUE"), "{e}");
    assert!(e.to_string().contains("field=scopes"), "{e}");
    let e = p.issue(&scopes).await.unwrap_err();
    assert!(e.to_string().contains("is not bearer"), "{e}");
    // Nothing rotated: the unchanged refresh token was never saved.
    assert!(p.store.load().unwrap().is_none());
}

#[tokio::test]
async fn revoke_ends_only_the_access_token() {
    let dir = tempfile::tempdir().unwrap();
    let c = Canned::start(vec![
        http("200 OK", "", r#"{"success":true}"#),
        http(
            "404 Not Found",
            "",
            r#"{"errors":[{"category":"INVALID_REQUEST_ERROR","code":"NOT_FOUND"}]}"#,
        ),
        http(
            "401 Unauthorized",
            "",
            r#"{"errors":[{"category":"AUTHENTICATION_ERROR","code":"ACCESS_TOKEN_REVOKED"}]}"#,
        ),
        http(
            "401 Unauthorized",
            "",
            r#"{"errors":[{"category":"AUTHENTICATION_ERROR","code":"UNAUTHORIZED"}]}"#,
        ),
    ])
    .await;
    let p = square(&c.url, dir.path(), Mode::RefreshToken, true);
    assert_eq!(p.revocation(), Revocation::OptIn);
    let t = Secret::new("EAAAtok");
    p.revoke(&t).await.unwrap();
    p.revoke(&t).await.unwrap();
    p.revoke(&t).await.unwrap();
    let e = p.revoke(&t).await.unwrap_err();
    assert!(
        matches!(e, ProviderError::Refused { status: 401, .. }),
        "{e}"
    );
    let req = &c.requests().await[0];
    assert!(req.starts_with("POST /oauth2/revoke HTTP/1.1\r\n"), "{req}");
    assert_eq!(header(req, "authorization"), Some("Client sq0csp-secret"));
    assert_eq!(
        body(req),
        serde_json::json!({"client_id":"sq0idp-app","access_token":"EAAAtok","revoke_only_access_token":true})
    );
}

#[tokio::test]
async fn token_status_reads_active_inactive_and_never_expiring() {
    let dir = tempfile::tempdir().unwrap();
    let c = Canned::start(vec![
        http(
            "200 OK",
            "",
            &format!(
                r#"{{"scopes":["ORDERS_READ"],"expires_at":"{}","client_id":"sq0idp-app","merchant_id":"MLQW2MYBY81PZ"}}"#,
                in_days(2)
            ),
        ),
        http("200 OK", "", r#"{"scopes":["ORDERS_READ"],"expires_at":"","client_id":"c","merchant_id":"MLQW2MYBY81PZ"}"#),
        http("401 Unauthorized", "", r#"{"errors":[{"category":"AUTHENTICATION_ERROR","code":"UNAUTHORIZED"}]}"#),
    ])
    .await;
    let p = square(&c.url, dir.path(), Mode::RefreshToken, true);
    let t = Secret::new("EAAAtok");
    let Introspection::Active {
        remaining: Some(left),
    } = p.introspect(&t).await.unwrap()
    else {
        panic!("not active with an expiry")
    };
    assert!(left > Duration::from_secs(86400), "{left:?}");
    assert_eq!(
        p.introspect(&t).await.unwrap(),
        Introspection::Active { remaining: None }
    );
    assert_eq!(p.introspect(&t).await.unwrap(), Introspection::Inactive);
    let req = &c.requests().await[0];
    assert!(
        req.starts_with("POST /oauth2/token/status HTTP/1.1\r\n"),
        "{req}"
    );
    assert_eq!(header(req, "authorization"), Some("Bearer EAAAtok"));
    assert!(req.ends_with("\r\n\r\n"), "no body: {req}");
    assert_eq!(header(req, "content-type"), None);
}

#[tokio::test]
async fn renew_mode_renews_the_latest_access_token_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let renewed = |t: &str| {
        format!(
            r#"{{"access_token":"{t}","token_type":"bearer","expires_at":"{}","merchant_id":"MLQW2MYBY81PZ"}}"#,
            in_days(30)
        )
    };
    let c = Canned::start(vec![
        http("200 OK", "", &renewed("EAAAr1")),
        http("200 OK", "", &renewed("EAAAr2")),
    ])
    .await;
    let p = square(&c.url, dir.path(), Mode::Renew, true);
    assert_eq!(p.issue(&[]).await.unwrap().token.expose(), "EAAAr1");
    assert_eq!(p.issue(&[]).await.unwrap().token.expose(), "EAAAr2");
    let reqs = c.requests().await;
    assert!(
        reqs[0].starts_with("POST /oauth2/clients/sq0idp-app/access-token/renew HTTP/1.1\r\n"),
        "{}",
        reqs[0]
    );
    assert_eq!(
        header(&reqs[0], "authorization"),
        Some("Client sq0csp-secret")
    );
    assert_eq!(
        body(&reqs[0]),
        serde_json::json!({"access_token":"EQAAseed"})
    );
    assert_eq!(body(&reqs[1]), serde_json::json!({"access_token":"EAAAr1"}));
    assert_eq!(p.store.load().unwrap().unwrap().1.expose(), "EAAAr2");
}

/// `body` as a 200 answer to `op`, read now.
fn answer_200(op: &'static str, body: &[u8]) -> Result<TokenAnswer, ProviderError> {
    parse_token_answer(op, 200, None, body, None, crate::clock::now_wall())
}

/// A 200 whose access token is unusable still hands back the refresh token: the old one may
/// already be spent, so the caller must be able to save the new one before failing.
#[test]
fn a_bad_access_token_still_hands_back_the_refresh_token() {
    let body = br#"{"access_token":"bad token","token_type":"bearer","expires_at":"2025-05-03T18:31:06Z","refresh_token":"EQAAnext"}"#;
    let answer = answer_200("ObtainToken", body).unwrap();
    assert_eq!(
        answer.refresh_token.as_ref().map(Secret::expose),
        Some("EQAAnext")
    );
    let err = answer.access.unwrap_err();
    assert!(!err.to_string().contains("bad token"), "{err}");
}

/// A refresh token in the answer must be one Square could take back (b64token characters,
/// 2 to 1024 of them): the caller saves it over the working one before anything else.
#[test]
fn a_refresh_token_square_would_not_issue_fails_the_answer() {
    let answer = |refresh: &str| {
        let body = serde_json::json!({
            "access_token": "EAAAone",
            "token_type": "bearer",
            "expires_at": "2025-05-03T18:31:06Z",
            "refresh_token": refresh,
        })
        .to_string();
        answer_200("ObtainToken", body.as_bytes())
    };
    let longest = "E".repeat(1024);
    for good in ["EQ", "EQAAnext", "EQAA-._~+/abc==", longest.as_str()] {
        let got = answer(good).map(|a| a.refresh_token.map(|t| t.expose().to_string()));
        assert_eq!(got.ok().flatten().as_deref(), Some(good));
    }
    let too_long = "E".repeat(1025);
    for bad in [
        "",
        "E",
        "==",
        "EQAA next",
        "EQAA\nnext",
        "EQAA\"next",
        "EQAAnéxt",
        "=EQAA",
        too_long.as_str(),
    ] {
        let Err(e) = answer(bad) else {
            panic!("{bad:?} accepted");
        };
        // The access token beside it was minted all the same: the refusal carries it.
        assert_eq!(e.minted().map(Secret::expose), Some("EAAAone"), "{e:?}");
        assert!(
            e.to_string().ends_with(
                "refresh_token is not a token Square issues (2 to 1024 token characters)"
            ),
            "{e}"
        );
    }
    // No refresh token at all is fine: RenewToken answers carry none.
    let body =
        br#"{"access_token":"EAAAone","token_type":"bearer","expires_at":"2025-05-03T18:31:06Z"}"#;
    let a = answer_200("RenewToken", body).unwrap();
    assert!(a.refresh_token.is_none());
}

/// Through issue(): a broken rotated refresh token fails the issue and replaces nothing.
#[tokio::test]
async fn a_broken_rotated_refresh_token_is_never_saved() {
    let dir = tempfile::tempdir().unwrap();
    let c = Canned::start(vec![http(
        "200 OK",
        "",
        &token_answer("EAAAone", "EQAA next"),
    )])
    .await;
    let p = square(&c.url, dir.path(), Mode::RefreshToken, true);
    let e = p.issue(&["ORDERS_READ".into()]).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains("is not a token Square issues"), "{text}");
    assert!(!text.contains("EQAA") && !text.contains("EAAA"), "{text}");
    assert!(p.store.load().unwrap().is_none());
    assert_eq!(p.current.lock().await.expose(), "EQAAseed");
}

/// RetrieveTokenStatus: 401 is an inactive token, not an error; 503 is a retryable one.
#[test]
fn status_answers_are_classified() {
    let now = crate::clock::now_wall();
    assert!(matches!(
        parse_status_answer(401, None, b"", now),
        Ok(Introspection::Inactive)
    ));
    assert!(matches!(
        parse_status_answer(200, None, br#"{"expires_at":""}"#, now),
        Ok(Introspection::Active { remaining: None })
    ));
    let err = parse_status_answer(503, Some("7"), b"", now).unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
}

/// An access token in an answer refused for its token_type or expires_at was minted: the
/// error carries it for revocation.
#[test]
fn refused_access_tokens_are_carried_for_revocation() {
    for body in [
        br#"{"access_token":"EAAAone","token_type":"mac","expires_at":"2999-01-01T00:00:00Z"}"#
            .as_slice(),
        br#"{"access_token":"EAAAone","token_type":"bearer","expires_at":"soon"}"#,
        br#"{"access_token":"EAAAone","token_type":"bearer","expires_at":"2000-01-01T00:00:00Z"}"#,
    ] {
        let a = answer_200("RenewToken", body).unwrap();
        let e = a.access.unwrap_err();
        assert_eq!(e.minted().map(Secret::expose), Some("EAAAone"), "{e}");
        assert!(!format!("{e} {e:?}").contains("EAAAone"), "{e:?}");
    }
}

/// A 200 answer with a well-formed access token that cannot be read whole (a field of the
/// wrong type, an error list beside the token) still minted it: the refusal carries it.
#[test]
fn every_token_in_a_malformed_answer_is_carried_for_revocation() {
    for body in [
        r#"{"access_token":"EAAAmint","token_type":"bearer","expires_at":17}"#,
        r#"{"access_token":"EAAAmint","token_type":7,"expires_at":"2025-05-03T18:31:06Z"}"#,
        r#"{"access_token":"EAAAmint","errors":[{"code":"X","category":"API_ERROR"}]}"#,
        r#"{"access_token":"EAAAmint","errors":"none"}"#,
        r#"{"access_token":"EAAAmint","refresh_token":5}"#,
    ] {
        let e = answer_200("ObtainToken", body.as_bytes())
            .err()
            .or_else(|| {
                answer_200("ObtainToken", body.as_bytes())
                    .ok()
                    .and_then(|a| a.access.err())
            })
            .unwrap_or_else(|| panic!("{body} accepted"));
        assert_eq!(
            e.minted().map(Secret::expose),
            Some("EAAAmint"),
            "{body}: {e:?}"
        );
        assert!(!format!("{e} {e:?}").contains("EAAAmint"), "{e:?}");
    }
    // No token, or not a string: nothing to carry.
    for body in [r#"{"access_token":7}"#, r#"{"errors":[{"code":"X"}]}"#, "{"] {
        let e = answer_200("ObtainToken", body.as_bytes())
            .err()
            .unwrap_or_else(|| panic!("{body} accepted"));
        assert!(e.minted().is_none(), "{body}: {e:?}");
    }
}
