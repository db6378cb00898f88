//! A strict fake of Square's OAuth API (`specs/oauth-contract.md` section 2): ObtainToken
//! with the refresh_token grant, RetrieveTokenStatus and RevokeToken, JSON only, with PKCE's
//! single-use refresh tokens when `rotate` is on.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tokenkeeper::secret::fingerprint;

use super::{Req, Resp, Server, serve, token};

pub struct State {
    pub client_id: String,
    /// `None`: a PKCE application, which must not send a secret.
    pub client_secret: Option<String>,
    /// Single-use refresh tokens: each refresh returns a new one and spends the old.
    pub rotate: bool,
    pub lifetime: Duration,
    /// Answer token requests with this status before looking at them (nothing is spent).
    pub outage: Option<u16>,
    /// Refresh tokens that work now.
    pub valid_refresh: Vec<String>,
    pub spent_refresh: Vec<String>,
    /// Every refresh token presented, in order.
    pub presented: Vec<String>,
    /// (access token, revoked)
    pub access: Vec<(String, bool)>,
    /// (access token, revoke_only_access_token) per RevokeToken call.
    pub revokes: Vec<(String, bool)>,
    pub violations: Vec<String>,
}

pub struct SquareFake {
    pub server: Server,
    state: Arc<Mutex<State>>,
}

fn error(status: u16, category: &str, code: &str, detail: &str) -> Resp {
    Resp::json(
        status,
        json!({"errors":[{"category": category, "code": code, "detail": detail}]}),
    )
}

impl SquareFake {
    /// `seed` is the refresh token the seller's authorization starts with.
    pub async fn start(client_secret: Option<&str>, rotate: bool, seed: &str) -> SquareFake {
        let state = Arc::new(Mutex::new(State {
            client_id: "sq0idp-tkTestApp".into(),
            client_secret: client_secret.map(str::to_string),
            rotate,
            lifetime: Duration::from_secs(30 * 86400),
            outage: None,
            valid_refresh: vec![seed.to_string()],
            spent_refresh: Vec::new(),
            presented: Vec::new(),
            access: Vec::new(),
            revokes: Vec::new(),
            violations: Vec::new(),
        }));
        let shared = Arc::clone(&state);
        let server = serve(move |req| handle(&shared, req)).await;
        SquareFake { server, state }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn live(&self) -> Vec<String> {
        self.state()
            .access
            .iter()
            .filter(|(_, revoked)| !revoked)
            .map(|(t, _)| t.clone())
            .collect()
    }
}

fn handle(shared: &Mutex<State>, req: Req) -> Resp {
    let mut s = shared.lock().unwrap();
    if req.method != "POST" {
        s.violations.push(format!("{} {}", req.method, req.path));
        return error(
            405,
            "INVALID_REQUEST_ERROR",
            "METHOD_NOT_ALLOWED",
            "POST only",
        );
    }
    if req.header("square-version").is_none() {
        s.violations
            .push(format!("{}: no Square-Version header", req.path));
    }
    match req.path.as_str() {
        "/oauth2/token" => obtain(&mut s, &req),
        "/oauth2/revoke" => revoke(&mut s, &req),
        "/oauth2/token/status" => status(&mut s, &req),
        other => {
            s.violations.push(format!("unknown path {other}"));
            error(
                404,
                "INVALID_REQUEST_ERROR",
                "NOT_FOUND",
                "no such endpoint",
            )
        }
    }
}

/// The JSON object body, or a violation.
fn json_body(s: &mut State, req: &Req, allowed: &[&str]) -> Option<serde_json::Map<String, Value>> {
    if req.header("content-type") != Some("application/json") {
        s.violations.push(format!(
            "{}: content type {:?}",
            req.path,
            req.header("content-type")
        ));
        return None;
    }
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&req.body) else {
        s.violations
            .push(format!("{}: body is not a JSON object", req.path));
        return None;
    };
    for k in map.keys() {
        if !allowed.contains(&k.as_str()) {
            s.violations
                .push(format!("{}: unexpected field {k}", req.path));
        }
    }
    Some(map)
}

fn obtain(s: &mut State, req: &Req) -> Resp {
    if let Some(status) = s.outage {
        return error(status, "API_ERROR", "SERVICE_UNAVAILABLE", "outage");
    }
    let allowed = [
        "client_id",
        "client_secret",
        "grant_type",
        "refresh_token",
        "scopes",
    ];
    let Some(body) = json_body(s, req, &allowed) else {
        return error(
            400,
            "INVALID_REQUEST_ERROR",
            "EXPECTED_JSON_BODY",
            "bad body",
        );
    };
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    if text("client_id").as_deref() != Some(s.client_id.as_str()) {
        s.violations
            .push("ObtainToken: wrong or missing client_id".into());
    }
    if text("grant_type").as_deref() != Some("refresh_token") {
        s.violations
            .push("ObtainToken: grant_type is not refresh_token".into());
    }
    match (&s.client_secret, text("client_secret")) {
        (Some(want), Some(got)) if *want == got => {}
        (None, None) => {}
        (None, Some(_)) => s
            .violations
            .push("ObtainToken: a PKCE client sent a secret".into()),
        _ => {
            return error(
                401,
                "AUTHENTICATION_ERROR",
                "UNAUTHORIZED",
                "bad client secret",
            );
        }
    }
    if let Some(scopes) = body.get("scopes") {
        let ok = scopes.as_array().is_some_and(|a| {
            !a.is_empty()
                && a.iter().all(|v| {
                    v.as_str()
                        .is_some_and(|s| s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
                })
        });
        if !ok {
            s.violations
                .push("ObtainToken: scopes is not a list of permission names".into());
        }
    }
    let Some(refresh) = text("refresh_token") else {
        s.violations.push("ObtainToken: no refresh_token".into());
        return error(
            400,
            "INVALID_REQUEST_ERROR",
            "MISSING_REQUIRED_PARAMETER",
            "refresh_token",
        );
    };
    s.presented.push(refresh.clone());
    if s.spent_refresh.contains(&refresh) {
        s.violations.push(format!(
            "ObtainToken: spent single-use refresh token {} presented again",
            fingerprint(&refresh)
        ));
        return error(
            401,
            "AUTHENTICATION_ERROR",
            "UNAUTHORIZED",
            "refresh token already used",
        );
    }
    if !s.valid_refresh.contains(&refresh) {
        return error(
            401,
            "AUTHENTICATION_ERROR",
            "UNAUTHORIZED",
            "unknown refresh token",
        );
    }
    let next_refresh = if s.rotate {
        let next = token("EQAA");
        s.valid_refresh.retain(|t| *t != refresh);
        s.spent_refresh.push(refresh);
        s.valid_refresh.push(next.clone());
        next
    } else {
        refresh
    };
    let access = token("EAAA");
    s.access.push((access.clone(), false));
    let expires = tokenkeeper::clock::now_wall() + s.lifetime;
    let mut answer = json!({
        "access_token": access,
        "token_type": "bearer",
        "expires_at": humantime::format_rfc3339_seconds(expires).to_string(),
        "merchant_id": "MLQW2MYBY81PZ",
        "refresh_token": next_refresh,
        "short_lived": false,
    });
    if s.rotate {
        answer["refresh_token_expires_at"] = json!(
            humantime::format_rfc3339_seconds(
                tokenkeeper::clock::now_wall() + Duration::from_secs(90 * 86400)
            )
            .to_string()
        );
    }
    Resp::json(200, answer)
}

fn revoke(s: &mut State, req: &Req) -> Resp {
    let want = s.client_secret.as_ref().map(|c| format!("Client {c}"));
    if want.is_none() || req.header("authorization") != want.as_deref() {
        s.violations
            .push("RevokeToken: not authorized with Client <secret>".into());
        return error(401, "AUTHENTICATION_ERROR", "UNAUTHORIZED", "client secret");
    }
    let allowed = [
        "client_id",
        "access_token",
        "merchant_id",
        "revoke_only_access_token",
    ];
    let Some(body) = json_body(s, req, &allowed) else {
        return error(
            400,
            "INVALID_REQUEST_ERROR",
            "EXPECTED_JSON_BODY",
            "bad body",
        );
    };
    let access = body
        .get("access_token")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let only = body.get("revoke_only_access_token") == Some(&Value::Bool(true));
    s.revokes.push((access.clone(), only));
    if only {
        for (t, revoked) in &mut s.access {
            if *t == access {
                *revoked = true;
            }
        }
    } else {
        // The whole authorization ends: every token and the refresh tokens with it.
        s.violations.push(
            "RevokeToken without revoke_only_access_token: the whole authorization ended".into(),
        );
        for (_, revoked) in &mut s.access {
            *revoked = true;
        }
        let all: Vec<String> = s.valid_refresh.drain(..).collect();
        s.spent_refresh.extend(all);
    }
    Resp::json(200, json!({"success": true}))
}

fn status(s: &mut State, req: &Req) -> Resp {
    if !req.body.is_empty() {
        s.violations.push("RetrieveTokenStatus: has a body".into());
    }
    let token = req
        .header("authorization")
        .and_then(|a| a.strip_prefix("Bearer "));
    match token {
        Some(t) if s.access.iter().any(|(a, revoked)| a == t && !revoked) => Resp::json(
            200,
            json!({"scopes":["ORDERS_READ"],"expires_at":"","client_id":s.client_id,"merchant_id":"MLQW2MYBY81PZ"}),
        ),
        _ => error(401, "AUTHENTICATION_ERROR", "UNAUTHORIZED", "token"),
    }
}
