use super::contract::{FORM_CONTENT_TYPE, MAX_BODY_BYTES};
use super::state::{CLIENT_ID, TOKEN_LEN, unix_now};
use super::*;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde_json::{Value, json};

const LOCALHOST: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

async fn start(opts: DevProviderOptions) -> (DevProvider, reqwest::Client) {
    crate::init_tls();
    let provider = DevProvider::start(LOCALHOST, opts).await.expect("start");
    // No idle pool: its timers would let paused test time jump while a request waits.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    (provider, client)
}

fn post(client: &reqwest::Client, p: &DevProvider, path: &str) -> reqwest::RequestBuilder {
    client
        .post(format!("{}{path}", p.base_url()))
        .header("X-App-Id", DEV_APP_ID)
        .header("X-App-Token", DEV_APP_TOKEN)
}

async fn issue(client: &reqwest::Client, p: &DevProvider, scope: &str) -> reqwest::Response {
    post(client, p, "/v1/oauth/token")
        .form(&[("grant_type", "client_credentials"), ("scope", scope)])
        .send()
        .await
        .expect("send")
}

async fn issue_ok(client: &reqwest::Client, p: &DevProvider, scope: &str) -> String {
    let response = issue(client, p, scope).await;
    assert_eq!(response.status(), 200);
    let body: Value = body_json(response).await;
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

async fn call(client: &reqwest::Client, p: &DevProvider, path: &str, token: &str) -> (u16, String) {
    let response = post(client, p, path)
        .form(&[("access_token", token)])
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

/// reqwest is built without its `json` feature.
async fn body_json(response: reqwest::Response) -> Value {
    serde_json::from_str(&response.text().await.expect("body")).expect("json")
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, body_json(response).await)
}

#[tokio::test]
async fn issue_introspect_revoke_round_trip() {
    let (p, client) = start(DevProviderOptions::default()).await;
    let response = issue(&client, &p, "vouchers campaigns").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()[CONTENT_TYPE],
        HeaderValue::from_static("application/json")
    );
    let body: Value = body_json(response).await;
    let object = body.as_object().expect("object");
    assert_eq!(object.len(), 6, "exactly the six OAuthToken fields: {body}");
    let token = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(token.len(), TOKEN_LEN);
    assert!(token.chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(body["client_id"], CLIENT_ID);
    assert_eq!(body["expires_in"], 900);
    let expires_at = body["expires_at"].as_u64().expect("integer expires_at");
    assert!(expires_at.abs_diff(unix_now() + 900) <= 2);
    assert_eq!(body["scope"], "vouchers campaigns");
    assert_eq!(body["token_type"], "Bearer");
    assert!(p.is_live(&token));
    assert_eq!(
        p.scopes_of(&token),
        Some(vec!["vouchers".to_owned(), "campaigns".to_owned()])
    );

    let (status, text) = call(&client, &p, "/v1/oauth/introspect", &token).await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["active"], true);
    assert_eq!(body["access_token"], token.as_str());
    assert_eq!(body["scope"], "vouchers campaigns");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_at"], expires_at);
    assert!(body["expires_in"].as_u64().expect("expires_in") <= 900);

    assert_eq!(
        call(&client, &p, "/v1/oauth/token/revoke", &token).await,
        (204, String::new())
    );
    assert!(!p.is_live(&token));
    assert_eq!(
        call(&client, &p, "/v1/oauth/token/revoke", &token).await,
        (404, String::new())
    );
    let (status, text) = call(&client, &p, "/v1/oauth/introspect", &token).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&text).expect("json"),
        json!({"active": false})
    );
    let (status, text) = call(&client, &p, "/v1/oauth/introspect", "neverIssued123").await;
    assert_eq!((status, text.as_str()), (200, r#"{"active":false}"#));

    assert_eq!(p.issued_tokens(), vec![token.clone()]);
    assert_eq!(p.revoked_tokens(), vec![token]);
    assert!(p.live_tokens().is_empty());
    assert_eq!(
        p.requests(),
        RequestCounts {
            token: 1,
            introspect: 3,
            revoke: 2
        }
    );
    assert!(p.violations().is_empty(), "{:?}", p.violations());
    p.shutdown().await;
}

#[tokio::test]
async fn missing_auth_header_is_401_and_a_violation() {
    let (p, client) = start(DevProviderOptions::default()).await;
    let response = client
        .post(format!("{}/v1/oauth/token", p.base_url()))
        .header("X-App-Id", DEV_APP_ID)
        .form(&[("grant_type", "client_credentials"), ("scope", "api")])
        .send()
        .await
        .expect("send");
    assert_eq!(
        json_of(response).await,
        (
            401,
            json!({"code": 401, "key": "unauthorized", "message": "Unauthorized"})
        )
    );
    let violations = p.violations();
    assert_eq!(violations.len(), 1);
    assert!(violations[0].contains("X-App-Token"), "{violations:?}");
    assert!(p.issued_tokens().is_empty());
}

#[tokio::test]
async fn wrong_app_token_is_401_but_not_a_violation() {
    let (p, client) = start(DevProviderOptions::default()).await;
    let response = client
        .post(format!("{}/v1/oauth/token", p.base_url()))
        .header("X-App-Id", DEV_APP_ID)
        .header("X-App-Token", "not-the-token")
        .form(&[("grant_type", "client_credentials"), ("scope", "api")])
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 401);

    // A deleted API key: the old credentials stop working, new ones work.
    let token = issue_ok(&client, &p, "api").await;
    p.set_app_token("rotated-token");
    assert_eq!(issue(&client, &p, "api").await.status(), 401);
    assert_eq!(
        call(&client, &p, "/v1/oauth/token/revoke", &token).await.0,
        401
    );
    assert!(p.is_live(&token));
    let response = client
        .post(format!("{}/v1/oauth/token/revoke", p.base_url()))
        .header("X-App-Id", DEV_APP_ID)
        .header("X-App-Token", "rotated-token")
        .form(&[("access_token", token.as_str())])
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 204);
    assert!(p.violations().is_empty(), "{:?}", p.violations());
}

#[tokio::test]
async fn json_body_is_400_and_a_violation() {
    let (p, client) = start(DevProviderOptions::default()).await;
    let response = post(&client, &p, "/v1/oauth/token")
        .header(CONTENT_TYPE, "application/json")
        .body(json!({"grant_type": "client_credentials", "scope": "api"}).to_string())
        .send()
        .await
        .expect("send");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], 400);
    let violations = p.violations();
    assert_eq!(violations.len(), 1);
    assert!(violations[0].contains("application/json"), "{violations:?}");
    assert!(p.issued_tokens().is_empty());

    // A charset parameter is fine.
    let response = post(&client, &p, "/v1/oauth/token")
        .header(
            CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body("grant_type=client_credentials&scope=api+vouchers")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(p.violations().len(), 1);
}

#[tokio::test]
async fn malformed_scope_is_invalid_scope_and_a_violation() {
    let (p, client) = start(DevProviderOptions::default()).await;
    let (status, body) = json_of(issue(&client, &p, "vouchers,campaigns").await).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"code": 400, "key": "invalid_scope", "message": "Invalid scope: vouchers,campaigns"})
    );
    assert_eq!(p.violations().len(), 1);
    for scope in ["vouchers  campaigns", " api", "api ", "api\tvouchers"] {
        assert_eq!(issue(&client, &p, scope).await.status(), 400, "{scope:?}");
    }
    assert_eq!(p.violations().len(), 5, "{:?}", p.violations());
    assert!(p.issued_tokens().is_empty());
}

#[tokio::test]
async fn unknown_scope_is_invalid_scope_but_not_a_violation() {
    let (p, client) = start(DevProviderOptions::default()).await;
    let (status, body) = json_of(issue(&client, &p, "api teleport").await).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"code": 400, "key": "invalid_scope", "message": "Invalid scope: api teleport"})
    );
    assert!(p.violations().is_empty(), "{:?}", p.violations());
    assert!(p.issued_tokens().is_empty());
}

#[tokio::test]
async fn bad_form_fields_are_violations() {
    let (p, client) = start(DevProviderOptions::default()).await;
    let cases = [
        (
            "/v1/oauth/token",
            "grant_type=client_credentials&scope=api&scope=vouchers",
        ),
        (
            "/v1/oauth/token",
            "grant_type=client_credentials&scope=api&client_id=x",
        ),
        ("/v1/oauth/token", "grant_type=password&scope=api"),
        ("/v1/oauth/token", "scope=api"),
        ("/v1/oauth/token", "grant_type=client_credentials&scope=%zz"),
        ("/v1/oauth/token", "grant_type=client_credentials&scope=%FF"),
        ("/v1/oauth/introspect", "token=abc"),
        ("/v1/oauth/token/revoke", ""),
    ];
    for (path, body) in cases {
        let response = post(&client, &p, path)
            .header(CONTENT_TYPE, FORM_CONTENT_TYPE)
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 400, "{path} {body}");
    }
    assert_eq!(p.violations().len(), cases.len(), "{:?}", p.violations());
    let (status, body) = json_of(
        post(&client, &p, "/v1/oauth/introspect")
            .form(&[("nothing", "")])
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], 400);
    assert!(p.issued_tokens().is_empty());
}

#[tokio::test]
async fn violations_never_quote_secrets() {
    let (p, client) = start(DevProviderOptions::default()).await;
    let token = issue_ok(&client, &p, "api").await;
    // The token sent as a field name, in the query, and as a grant type.
    for (path, body) in [
        ("/v1/oauth/token/revoke", token.clone()),
        ("/v1/oauth/token", format!("grant_type={token}&scope=api")),
    ] {
        let response = post(&client, &p, path)
            .header(CONTENT_TYPE, FORM_CONTENT_TYPE)
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 400);
    }
    let response = post(
        &client,
        &p,
        &format!("/v1/oauth/token/revoke?access_token={token}"),
    )
    .form(&[("access_token", token.as_str())])
    .send()
    .await
    .expect("send");
    assert_eq!(response.status(), 400);
    let violations = p.violations();
    assert_eq!(violations.len(), 3, "{violations:?}");
    for v in &violations {
        assert!(!v.contains(&token) && !v.contains(DEV_APP_TOKEN), "{v}");
    }
}

/// Collects log output in memory.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_name_tokens_by_fingerprint_only() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The test runtime has one thread, so the server's tasks log through this too.
    let _guard = tracing::subscriber::set_default(subscriber);
    let (p, client) = start(DevProviderOptions::default()).await;
    let token = issue_ok(&client, &p, "api").await;
    call(&client, &p, "/v1/oauth/introspect", &token).await;
    call(&client, &p, "/v1/oauth/token/revoke", &token).await;
    let response = post(&client, &p, &format!("/v1/{token}"))
        .header(CONTENT_TYPE, FORM_CONTENT_TYPE)
        .body(token.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 404);
    let response = post(&client, &p, "/v1/oauth/introspect")
        .header(CONTENT_TYPE, FORM_CONTENT_TYPE)
        .body(token.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    p.shutdown().await;
    let text = String::from_utf8(logs.0.lock().expect("logs").clone()).expect("utf-8");
    assert!(text.contains(&fingerprint(&token)), "{text}");
    assert!(text.contains("/v1/oauth/token/revoke"), "{text}");
    assert!(!text.contains(&token), "{text}");
    assert!(!text.contains(DEV_APP_TOKEN), "{text}");
}

#[tokio::test]
async fn fail_next_issues_with_retry_after() {
    let (p, client) = start(DevProviderOptions::default()).await;
    p.fail_next_issues(2, 429, Some(7));
    for _ in 0..2 {
        let response = issue(&client, &p, "api").await;
        assert_eq!(response.headers()[RETRY_AFTER], "7");
        assert_eq!(
            json_of(response).await,
            (
                429,
                json!({"code": 429, "message": "Too many requests hit the API too quickly."})
            )
        );
    }
    issue_ok(&client, &p, "api").await;

    p.fail_next_issues(1, 503, None);
    let response = issue(&client, &p, "api").await;
    assert!(response.headers().get(RETRY_AFTER).is_none());
    assert_eq!(
        json_of(response).await,
        (503, json!({"code": 503, "message": "Service unavailable"}))
    );
    issue_ok(&client, &p, "api").await;
    assert_eq!(p.issued_tokens().len(), 2);
    assert_eq!(p.requests().token, 5);
    assert!(p.violations().is_empty());
}

#[tokio::test]
async fn issue_delay_mints_before_answering() {
    let (p, client) = start(DevProviderOptions::default()).await;
    p.set_issue_delay(Duration::from_secs(2));
    let base = p.base_url();
    let pending = tokio::spawn(async move {
        let response = client
            .post(format!("{base}/v1/oauth/token"))
            .header("X-App-Id", DEV_APP_ID)
            .header("X-App-Token", DEV_APP_TOKEN)
            .form(&[("grant_type", "client_credentials"), ("scope", "api")])
            .send()
            .await
            .expect("send");
        body_json(response).await
    });
    let started = Instant::now();
    while p.issued_tokens().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(2), "nothing minted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let token = p.issued_tokens().remove(0);
    assert!(p.is_live(&token));
    assert!(!pending.is_finished(), "answered before the delay");
    let body = pending.await.expect("join");
    assert_eq!(body["access_token"], token.as_str());
}

#[tokio::test]
async fn hung_issues_mint_nothing_and_never_answer_while_revoke_works() {
    let (p, client) = start(DevProviderOptions::default()).await;
    let token = issue_ok(&client, &p, "api").await;
    p.set_hang_issues(true);
    let hung = tokio::time::timeout(Duration::from_millis(300), issue(&client, &p, "api"));
    assert!(hung.await.is_err(), "a hung token request was answered");
    assert_eq!(p.issued_tokens().len(), 1);
    assert_eq!(p.requests().token, 2);
    assert_eq!(
        call(&client, &p, "/v1/oauth/token/revoke", &token).await.0,
        204
    );
    p.set_hang_issues(false);
    issue_ok(&client, &p, "api").await;
    assert!(p.violations().is_empty());
}

#[tokio::test]
async fn repeat_tokens_answers_with_the_live_token_of_the_same_scopes() {
    let (p, client) = start(DevProviderOptions::default()).await;
    let first = issue_ok(&client, &p, "api").await;
    p.set_repeat_tokens(true);
    assert_eq!(issue_ok(&client, &p, "api").await, first);
    let other = issue_ok(&client, &p, "orders").await;
    assert_ne!(other, first);
    assert_eq!(p.issued_tokens().len(), 2);
    call(&client, &p, "/v1/oauth/token/revoke", &first).await;
    let fresh = issue_ok(&client, &p, "api").await;
    assert_ne!(fresh, first, "a revoked token was handed out again");
}

#[tokio::test]
async fn hostile_answers_still_mint_the_token() {
    let (p, client) = start(DevProviderOptions::default()).await;
    p.set_answer_token_type(Some("mac"));
    p.set_answer_expires_in(Some(-5));
    let (status, body) = json_of(issue(&client, &p, "api").await).await;
    assert_eq!(status, 200);
    assert_eq!(body["token_type"], "mac");
    assert_eq!(body["expires_in"], -5);
    let token = body["access_token"].as_str().expect("access_token");
    assert!(p.is_live(token));
    p.set_answer_token_type(None);
    p.set_answer_expires_in(None);
    let (_, body) = json_of(issue(&client, &p, "api").await).await;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
}

#[tokio::test]
async fn outage_answers_everything_with_the_status() {
    let (p, client) = start(DevProviderOptions::default()).await;
    let token = issue_ok(&client, &p, "api").await;
    p.set_outage(Some(503));
    assert_eq!(
        json_of(issue(&client, &p, "api").await).await,
        (503, json!({"code": 503, "message": "Service unavailable"}))
    );
    assert_eq!(
        call(&client, &p, "/v1/oauth/token/revoke", &token).await.0,
        503
    );
    // Even requests that break the contract: nothing is looked at.
    let response = client
        .get(format!("{}/v1/oauth/token", p.base_url()))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 503);
    assert!(p.is_live(&token));
    assert_eq!(p.issued_tokens().len(), 1);
    assert!(p.violations().is_empty());
    p.set_outage(None);
    assert_eq!(
        call(&client, &p, "/v1/oauth/token/revoke", &token).await.0,
        204
    );
}

#[tokio::test]
async fn dropped_connections_get_no_answer() {
    let (p, client) = start(DevProviderOptions::default()).await;
    p.set_drop_connections(true);
    let result = post(&client, &p, "/v1/oauth/token")
        .form(&[("grant_type", "client_credentials"), ("scope", "api")])
        .send()
        .await;
    assert!(result.is_err(), "{result:?}");
    assert!(p.issued_tokens().is_empty());
    p.set_drop_connections(false);
    issue_ok(&client, &p, "api").await;
}

#[tokio::test]
async fn revoke_status_keeps_the_token() {
    let (p, client) = start(DevProviderOptions::default()).await;
    let token = issue_ok(&client, &p, "api").await;
    p.set_revoke_status(Some(500));
    let (status, text) = call(&client, &p, "/v1/oauth/token/revoke", &token).await;
    assert_eq!(status, 500);
    assert_eq!(
        serde_json::from_str::<Value>(&text).expect("json"),
        json!({"code": 500, "message": "Internal server error"})
    );
    assert!(p.is_live(&token));
    p.set_revoke_status(None);
    assert_eq!(
        call(&client, &p, "/v1/oauth/token/revoke", &token).await.0,
        204
    );
}

#[tokio::test]
async fn revoke_delay_revokes_only_once_it_is_over() {
    let (p, client) = start(DevProviderOptions::default()).await;
    let token = issue_ok(&client, &p, "api").await;
    p.set_revoke_delay(Duration::from_millis(500));
    let (q, t) = (p.base_url(), token.clone());
    let pending = tokio::spawn(async move {
        client
            .post(format!("{q}/v1/oauth/token/revoke"))
            .header("X-App-Id", DEV_APP_ID)
            .header("X-App-Token", DEV_APP_TOKEN)
            .form(&[("access_token", t.as_str())])
            .send()
            .await
            .expect("send")
            .status()
            .as_u16()
    });
    let started = Instant::now();
    while p.requests().revoke == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no revoke request"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(p.is_live(&token), "revoked before the delay");
    assert_eq!(pending.await.expect("join"), 204);
    assert!(!p.is_live(&token));
}

#[tokio::test]
async fn token_budget_is_enforced() {
    let opts = DevProviderOptions {
        max_live_tokens: 2,
        ..DevProviderOptions::default()
    };
    let (p, client) = start(opts).await;
    let first = issue_ok(&client, &p, "api").await;
    issue_ok(&client, &p, "api").await;
    assert_eq!(
        json_of(issue(&client, &p, "api").await).await,
        (
            400,
            json!({"code": 400, "key": "limit_exceeded", "message": "Limit of OAuth tokens per project exceeded"})
        )
    );
    assert!(p.violations().is_empty());
    assert_eq!(
        call(&client, &p, "/v1/oauth/token/revoke", &first).await.0,
        204
    );
    issue_ok(&client, &p, "api").await;
    assert_eq!(p.live_tokens().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_budget_counts_expiry_and_revocation_once_each() {
    let opts = DevProviderOptions {
        max_live_tokens: 2,
        lifetime: Duration::from_secs(60),
        ..DevProviderOptions::default()
    };
    let (p, client) = start(opts).await;
    let a = issue_ok(&client, &p, "api").await;
    tokio::time::advance(Duration::from_secs(30)).await;
    let b = issue_ok(&client, &p, "api").await;
    assert_eq!(issue(&client, &p, "api").await.status(), 400);
    // `a` expires: one slot frees, and revoking it afterwards frees nothing more.
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(call(&client, &p, "/v1/oauth/token/revoke", &a).await.0, 404);
    let c = issue_ok(&client, &p, "api").await;
    assert_eq!(issue(&client, &p, "api").await.status(), 400);
    // `b` is revoked before it expires: its slot frees at once and not again at expiry.
    assert_eq!(call(&client, &p, "/v1/oauth/token/revoke", &b).await.0, 204);
    tokio::time::advance(Duration::from_secs(1)).await;
    let d = issue_ok(&client, &p, "api").await;
    assert_eq!(issue(&client, &p, "api").await.status(), 400);
    // Past `b`'s expiry (it was revoked), `c` and `d` still fill the budget.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(issue(&client, &p, "api").await.status(), 400);
    let mut live = p.live_tokens();
    live.sort();
    let mut want = vec![c, d];
    want.sort();
    assert_eq!(live, want);
}

#[tokio::test(start_paused = true)]
async fn tokens_expire() {
    let (p, client) = start(DevProviderOptions::default()).await;
    let token = issue_ok(&client, &p, "api").await;
    tokio::time::advance(Duration::from_secs(345)).await;
    let (status, text) = call(&client, &p, "/v1/oauth/introspect", &token).await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["active"], true);
    assert_eq!(body["expires_in"], 555);

    p.set_lifetime(Duration::from_millis(10)); // raised to 1 s
    let short = issue_ok(&client, &p, "api").await;
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(!p.is_live(&short));
    assert!(p.is_live(&token));

    tokio::time::advance(Duration::from_secs(555)).await;
    assert!(!p.is_live(&token));
    assert!(p.live_tokens().is_empty());
    let (status, text) = call(&client, &p, "/v1/oauth/introspect", &token).await;
    assert_eq!((status, text.as_str()), (200, r#"{"active":false}"#));
    assert_eq!(
        call(&client, &p, "/v1/oauth/token/revoke", &token).await.0,
        404
    );
    assert!(p.revoked_tokens().is_empty());
    assert_eq!(p.issued_tokens().len(), 2);
}

#[tokio::test]
async fn wrong_paths_methods_and_sizes() {
    let (p, client) = start(DevProviderOptions::default()).await;
    let (status, body) = json_of(
        post(&client, &p, "/v1/vouchers")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            404,
            json!({"code": 404, "message": "Resource not found", "key": "not_found"})
        )
    );
    let response = client
        .get(format!("{}/v1/oauth/token", p.base_url()))
        .send()
        .await
        .expect("send");
    assert_eq!(response.headers()[ALLOW], "POST");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 405);
    assert_eq!(body["code"], 405);
    assert_eq!(p.violations().len(), 1);

    let big = format!(
        "grant_type=client_credentials&scope={}",
        "a".repeat(MAX_BODY_BYTES)
    );
    let response = post(&client, &p, "/v1/oauth/token")
        .header(CONTENT_TYPE, FORM_CONTENT_TYPE)
        .body(big)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 413);
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let (p, client) = start(DevProviderOptions::default()).await;
    issue_ok(&client, &p, "api").await;
    let base = p.base_url();
    p.shutdown().await;
    let result = client.post(format!("{base}/v1/oauth/token")).send().await;
    assert!(result.is_err());
}

#[tokio::test]
async fn serve_runs_until_shutdown() {
    crate::init_tls();
    // Find a free port, then serve on it.
    let probe = TcpListener::bind(LOCALHOST).await.expect("bind");
    let addr = probe.local_addr().expect("addr");
    drop(probe);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(addr, DevProviderOptions::default(), async {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();
    let mut answered = false;
    for _ in 0..100 {
        let result = client
            .post(format!("http://{addr}/v1/oauth/token"))
            .header("X-App-Id", DEV_APP_ID)
            .header("X-App-Token", DEV_APP_TOKEN)
            .form(&[("grant_type", "client_credentials"), ("scope", "api")])
            .send()
            .await;
        if let Ok(response) = result {
            assert_eq!(response.status(), 200);
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(answered);
    tx.send(()).expect("send");
    server.await.expect("join").expect("serve");
}
