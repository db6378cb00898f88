//! A strict fake RFC 6749 authorization server: client_credentials with
//! `client_secret_basic`, `client_secret_post` (exactly one, RFC 6749 section 2.3),
//! `private_key_jwt` (RFC 7523: the signature checked with the public key, the claims, a jti
//! never seen before) or `tls_client_auth` (RFC 8705: served over TLS that requires a client
//! certificate from the test's CA), RFC 8414 and OpenID discovery, RFC 7009 revocation,
//! RFC 7662 introspection, RFC 6749 section 5.2 errors.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::UNIX_EPOCH;

use ring::signature::{UnparsedPublicKey, VerificationAlgorithm};

use serde_json::json;

use super::{Req, Resp, Server, serve, serve_tls, token};

pub struct State {
    /// Filled in once the server is bound.
    pub base: String,
    pub issuer_path: String,
    /// Announce this issuer instead of the real one (a mix-up attack).
    pub announce_issuer: Option<String>,
    pub rfc8414: bool,
    /// The RFC 8414 document appended to the issuer (`ISSUER/.well-known/oauth-authorization-server`),
    /// where django-oauth-toolkit and others serve it.
    pub appended: bool,
    pub openid: bool,
    /// The OpenID document names the revocation endpoint (django-oauth-toolkit's does not).
    pub openid_names_revocation: bool,
    pub revocation: bool,
    pub introspection: bool,
    /// `client_secret_basic`, `client_secret_post`, `private_key_jwt` or `tls_client_auth`.
    pub method: &'static str,
    /// For `private_key_jwt`: the JWS `alg`, its verifier and the client's public key.
    pub jwt_key: Option<(&'static str, &'static dyn VerificationAlgorithm, Vec<u8>)>,
    /// The only `aud` accepted, where the server insists on one name of its own (its
    /// issuer-derived token URL, say) instead of its issuer or token endpoint.
    pub required_aud: Option<String>,
    /// For `client_assertion`: the federated JWT the platform issued last, the only one
    /// accepted, and every assertion received, in order.
    pub accepted_assertion: Option<String>,
    pub assertions: Vec<String>,
    /// Every assertion's `jti` so far: one seen twice is a replay.
    pub jtis: HashSet<String>,
    pub client_id: String,
    pub client_secret: String,
    pub expires_in: Option<u64>,
    /// Extra parameters the client must send, and may send.
    pub extra: Vec<(String, String)>,
    /// The next token request is refused with (status, error, description).
    pub refuse_next: Option<(u16, &'static str, &'static str)>,
    /// Answer with this `scope` instead of the one asked for (a provider's own text).
    pub answer_scope: Option<String>,
    /// (token, scope, revoked)
    pub tokens: Vec<(String, String, bool)>,
    pub violations: Vec<String>,
    /// Method and path of every request.
    pub requests: Vec<String>,
}

pub struct OAuth2Fake {
    pub server: Server,
    state: Arc<Mutex<State>>,
}

impl OAuth2Fake {
    pub async fn start(method: &'static str, client_id: &str, client_secret: &str) -> OAuth2Fake {
        Self::start_with(method, client_id, client_secret, None).await
    }

    /// A server whose client authenticates by `method` with no secret of the fake's
    /// (`client_assertion`: the test sets the assertion it accepts).
    pub async fn start_with_method(method: &'static str, client_id: &str) -> OAuth2Fake {
        Self::start_with(method, client_id, "", None).await
    }

    /// A `private_key_jwt` server that knows the client by its public key.
    pub async fn start_jwt(
        client_id: &str,
        alg: &'static str,
        verifier: &'static dyn VerificationAlgorithm,
        public_key: Vec<u8>,
    ) -> OAuth2Fake {
        let fake = Self::start_with("private_key_jwt", client_id, "", None).await;
        fake.state().jwt_key = Some((alg, verifier, public_key));
        fake
    }

    /// A `tls_client_auth` server on https://127.0.0.1, whose TLS `config` requires the
    /// client's certificate.
    pub async fn start_tls(client_id: &str, config: Arc<rustls::ServerConfig>) -> OAuth2Fake {
        Self::start_with("tls_client_auth", client_id, "", Some(config)).await
    }

    /// A server that authenticates its client by `method` with a secret, on https://127.0.0.1
    /// with TLS `config` (which need not ask for a client certificate).
    pub async fn start_https(
        method: &'static str,
        client_id: &str,
        client_secret: &str,
        config: Arc<rustls::ServerConfig>,
    ) -> OAuth2Fake {
        Self::start_with(method, client_id, client_secret, Some(config)).await
    }

    async fn start_with(
        method: &'static str,
        client_id: &str,
        client_secret: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> OAuth2Fake {
        let state = Arc::new(Mutex::new(State {
            base: String::new(),
            issuer_path: "/realms/ops".into(),
            announce_issuer: None,
            rfc8414: true,
            appended: false,
            openid: true,
            openid_names_revocation: true,
            revocation: true,
            introspection: true,
            method,
            jwt_key: None,
            required_aud: None,
            accepted_assertion: None,
            assertions: Vec::new(),
            jtis: HashSet::new(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            expires_in: Some(3600),
            extra: Vec::new(),
            refuse_next: None,
            answer_scope: None,
            tokens: Vec::new(),
            violations: Vec::new(),
            requests: Vec::new(),
        }));
        let shared = Arc::clone(&state);
        let server = match tls {
            None => serve(move |req| handle(&shared, req)).await,
            Some(config) => serve_tls(move |req| handle(&shared, req), config).await,
        };
        state.lock().unwrap().base = server.url();
        OAuth2Fake { server, state }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn issuer(&self) -> String {
        let s = self.state();
        format!("{}{}", s.base, s.issuer_path)
    }

    pub fn live(&self) -> Vec<String> {
        self.state()
            .tokens
            .iter()
            .filter(|(_, _, revoked)| !revoked)
            .map(|(t, _, _)| t.clone())
            .collect()
    }
}

fn oauth_error(status: u16, error: &str, description: &str) -> Resp {
    Resp::json(
        status,
        json!({"error": error, "error_description": description}),
    )
}

fn handle(shared: &Mutex<State>, req: Req) -> Resp {
    let mut s = shared.lock().unwrap();
    s.requests.push(format!("{} {}", req.method, req.path));
    let rfc8414 = format!("/.well-known/oauth-authorization-server{}", s.issuer_path);
    let appended = format!("{}/.well-known/oauth-authorization-server", s.issuer_path);
    let openid = format!("{}/.well-known/openid-configuration", s.issuer_path);
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", p) if (p == rfc8414 && s.rfc8414) || (p == appended && s.appended) => {
            metadata(&s, true)
        }
        ("GET", p) if p == openid && s.openid => metadata(&s, s.openid_names_revocation),
        ("GET", _) => Resp::json(404, json!({})),
        ("POST", "/token") => issue(&mut s, &req),
        ("POST", "/revoke") if s.revocation => revoke(&mut s, &req),
        ("POST", "/introspect") if s.introspection => introspect(&mut s, &req),
        (m, p) => {
            s.violations
                .push(format!("{m} {p}: not an endpoint this server announces"));
            Resp::json(404, json!({}))
        }
    }
}

fn metadata(s: &State, names_revocation: bool) -> Resp {
    let mut m = json!({
        "issuer": s.announce_issuer.clone().unwrap_or(format!("{}{}", s.base, s.issuer_path)),
        "token_endpoint": format!("{}/token", s.base),
        "grant_types_supported": ["client_credentials"],
        // A federated assertion is a JWT client assertion to the server.
        "token_endpoint_auth_methods_supported": [if s.method == "client_assertion" { "private_key_jwt" } else { s.method }],
    });
    if s.revocation && names_revocation {
        m["revocation_endpoint"] = json!(format!("{}/revoke", s.base));
    }
    if s.introspection {
        m["introspection_endpoint"] = json!(format!("{}/introspect", s.base));
    }
    Resp::json(200, m)
}

fn b64decode(text: &str) -> Option<Vec<u8>> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let text = text.trim_end_matches('=');
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        bits = (bits << 6) | A.iter().position(|&a| a == c)? as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    Some(out)
}

fn form_decode(part: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&format!("v={part}")).ok()?;
    pairs.into_iter().next().map(|(_, v)| v)
}

/// The form fields after client authentication, or the answer refusing it.
fn authenticate(s: &mut State, req: &Req, op: &str) -> Result<Vec<(String, String)>, Resp> {
    if req.header("content-type") != Some("application/x-www-form-urlencoded") {
        s.violations.push(format!(
            "{op}: content type {:?}",
            req.header("content-type")
        ));
        return Err(oauth_error(400, "invalid_request", "form body required"));
    }
    let Ok(mut form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&req.body) else {
        s.violations.push(format!("{op}: body is not a form"));
        return Err(oauth_error(400, "invalid_request", "bad form"));
    };
    if ["private_key_jwt", "tls_client_auth", "client_assertion"].contains(&s.method) {
        return authenticate_by_key(s, req, op, form);
    }
    let basic = req
        .header("authorization")
        .and_then(|a| a.strip_prefix("Basic "));
    let in_body = form
        .iter()
        .any(|(k, _)| k == "client_id" || k == "client_secret");
    let creds = match (basic, in_body) {
        (Some(_), true) => {
            s.violations
                .push(format!("{op}: two client authentication methods at once"));
            return Err(oauth_error(400, "invalid_request", "more than one method"));
        }
        (Some(b), false) => {
            if s.method != "client_secret_basic" {
                s.violations
                    .push(format!("{op}: basic auth, configured for {}", s.method));
            }
            b64decode(b)
                .and_then(|raw| String::from_utf8(raw).ok())
                .and_then(|text| {
                    let (id, secret) = text.split_once(':')?;
                    Some((form_decode(id)?, form_decode(secret)?))
                })
        }
        (None, true) => {
            if s.method != "client_secret_post" {
                s.violations.push(format!(
                    "{op}: credentials in the body, configured for {}",
                    s.method
                ));
            }
            let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let creds = get("client_id").zip(get("client_secret"));
            form.retain(|(k, _)| k != "client_id" && k != "client_secret");
            creds
        }
        (None, false) => None,
    };
    if creds != Some((s.client_id.clone(), s.client_secret.clone())) {
        return Err(oauth_error(
            401,
            "invalid_client",
            "client authentication failed",
        ));
    }
    Ok(form)
}

fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    if text.contains(['+', '/', '=']) {
        return None;
    }
    b64decode(&text.replace('-', "+").replace('_', "/"))
}

/// RFC 7523 / RFC 8705 client authentication: no secret anywhere, the client named in the
/// body; for a JWT, the assertion verified as a real server would.
fn authenticate_by_key(
    s: &mut State,
    req: &Req,
    op: &str,
    mut form: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, Resp> {
    let refuse = |s: &mut State, why: String| {
        s.violations.push(format!("{op}: {why}"));
        Err(oauth_error(
            401,
            "invalid_client",
            "client authentication failed",
        ))
    };
    if req.header("authorization").is_some() || form.iter().any(|(k, _)| k == "client_secret") {
        return refuse(s, format!("a client secret sent to a {} client", s.method));
    }
    let take = |form: &mut Vec<(String, String)>, key: &str| {
        let i = form.iter().position(|(k, _)| k == key)?;
        Some(form.remove(i).1)
    };
    let client_id = take(&mut form, "client_id");
    if client_id.as_deref() != Some(s.client_id.as_str()) {
        return refuse(s, "client_id missing or wrong".into());
    }
    let assertion_type = take(&mut form, "client_assertion_type");
    let assertion = take(&mut form, "client_assertion");
    if s.method == "tls_client_auth" {
        // The TLS layer has already required a certificate from the test's CA.
        if assertion.is_some() || assertion_type.is_some() {
            return refuse(s, "an assertion sent to a tls_client_auth client".into());
        }
        return Ok(form);
    }
    if assertion_type.as_deref() != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer") {
        return refuse(s, "client_assertion_type missing or wrong".into());
    }
    let Some(jwt) = assertion else {
        return refuse(s, "no client_assertion".into());
    };
    if s.method == "client_assertion" {
        // The platform signed it; the fake knows what the platform issued last.
        s.assertions.push(jwt.clone());
        if s.accepted_assertion.as_deref() != Some(jwt.as_str()) {
            return refuse(
                s,
                "the client_assertion is not the one the platform issued last".into(),
            );
        }
        return Ok(form);
    }
    let Some((alg, verifier, public_key)) = s.jwt_key.clone() else {
        return refuse(s, "the fake has no key".into());
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return refuse(s, "the assertion is not a JWS compact serialization".into());
    };
    let signed = format!("{header}.{claims}");
    let verified = b64url_decode(signature).is_some_and(|sig| {
        UnparsedPublicKey::new(verifier, &public_key)
            .verify(signed.as_bytes(), &sig)
            .is_ok()
    });
    if !verified {
        return refuse(s, "the assertion's signature does not verify".into());
    }
    let json = |part: &str| {
        b64url_decode(part).and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    };
    let (Some(header), Some(claims)) = (json(header), json(claims)) else {
        return refuse(s, "the assertion's header or claims are not JSON".into());
    };
    if header["alg"] != alg {
        return refuse(s, format!("alg {} where {alg} was expected", header["alg"]));
    }
    let now = tokenkeeper::clock::now_wall()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // draft-ietf-oauth-rfc7523bis: the issuer identifier, or the token endpoint where the
    // client does not know the issuer; the same for every endpoint the assertion goes to.
    let token_endpoint = format!("{}/token", s.base);
    let issuer = format!("{}{}", s.base, s.issuer_path);
    let aud_ok = match &s.required_aud {
        Some(required) => claims["aud"] == required.as_str(),
        None => claims["aud"] == token_endpoint.as_str() || claims["aud"] == issuer.as_str(),
    };
    let exp = claims["exp"].as_u64().unwrap_or(0);
    let problems = [
        (
            claims["iss"] != s.client_id.as_str(),
            "iss is not the client_id",
        ),
        (
            claims["sub"] != s.client_id.as_str(),
            "sub is not the client_id",
        ),
        (!aud_ok, "aud is neither the issuer nor the token endpoint"),
        (exp <= now, "the assertion has expired"),
        (exp > now + 60, "exp is more than 60 s ahead"),
        (
            claims["iat"].as_u64().is_none_or(|iat| iat > now),
            "iat missing or in the future",
        ),
    ];
    if let Some((_, why)) = problems.iter().find(|(bad, _)| *bad) {
        return refuse(s, (*why).to_string());
    }
    let Some(jti) = claims["jti"].as_str().filter(|j| !j.is_empty()) else {
        return refuse(s, "no jti".into());
    };
    if !s.jtis.insert(jti.to_string()) {
        return refuse(s, "a jti was used again (a replayed assertion)".into());
    }
    Ok(form)
}

fn issue(s: &mut State, req: &Req) -> Resp {
    let form = match authenticate(s, req, "token") {
        Ok(f) => f,
        Err(r) => return r,
    };
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if get("grant_type").as_deref() != Some("client_credentials") {
        s.violations
            .push("token: grant_type is not client_credentials".into());
        return oauth_error(400, "unsupported_grant_type", "client_credentials only");
    }
    for (k, v) in &s.extra.clone() {
        if get(k).as_deref() != Some(v) {
            s.violations
                .push(format!("token: extra parameter {k} missing or wrong"));
        }
    }
    for (k, _) in &form {
        if k != "grant_type" && k != "scope" && !s.extra.iter().any(|(e, _)| e == k) {
            s.violations
                .push(format!("token: unexpected parameter {k}"));
        }
    }
    if let Some((status, error, description)) = s.refuse_next.take() {
        return oauth_error(status, error, description);
    }
    let scope = get("scope").unwrap_or_default();
    let t = token("at-");
    s.tokens.push((t.clone(), scope.clone(), false));
    let scope = s.answer_scope.clone().unwrap_or(scope);
    let mut answer = json!({"access_token": t, "token_type": "Bearer", "scope": scope});
    if let Some(e) = s.expires_in {
        answer["expires_in"] = json!(e);
    }
    Resp::json(200, answer)
}

fn hinted_token(s: &mut State, form: &[(String, String)], op: &str) -> Option<String> {
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    if get("token_type_hint").as_deref() != Some("access_token") {
        s.violations
            .push(format!("{op}: token_type_hint is not access_token"));
    }
    get("token")
}

fn revoke(s: &mut State, req: &Req) -> Resp {
    let form = match authenticate(s, req, "revoke") {
        Ok(f) => f,
        Err(r) => return r,
    };
    let token = hinted_token(s, &form, "revoke");
    for (t, _, revoked) in &mut s.tokens {
        if Some(&*t) == token.as_ref() {
            *revoked = true;
        }
    }
    // RFC 7009 section 2.2: 200 whether or not the token was known.
    Resp::json(200, json!({}))
}

fn introspect(s: &mut State, req: &Req) -> Resp {
    let form = match authenticate(s, req, "introspect") {
        Ok(f) => f,
        Err(r) => return r,
    };
    let token = hinted_token(s, &form, "introspect");
    let found = s
        .tokens
        .iter()
        .find(|(t, _, revoked)| Some(t) == token.as_ref() && !revoked);
    match found {
        Some((_, scope, _)) => Resp::json(200, json!({"active": true, "scope": scope})),
        None => Resp::json(200, json!({"active": false})),
    }
}
