//! The requests this module sends Square: their JSON bodies, their URLs, and the POST itself
//! with `Square-Version` pinned.

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Serialize;

use super::{SQUARE_VERSION, Square};
use crate::provider::{ProviderError, read_body};

#[derive(Serialize)]
pub(super) struct ObtainTokenRequest<'a> {
    pub(super) client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) client_secret: Option<&'a str>,
    pub(super) grant_type: &'static str,
    pub(super) refresh_token: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub(super) scopes: &'a [String],
}

#[derive(Serialize)]
pub(super) struct RenewTokenRequest<'a> {
    pub(super) access_token: &'a str,
}

#[derive(Serialize)]
pub(super) struct RevokeTokenRequest<'a> {
    pub(super) client_id: &'a str,
    pub(super) access_token: &'a str,
    pub(super) revoke_only_access_token: bool,
}

impl Square {
    pub(super) fn url(&self, segments: &[&str]) -> Url {
        let mut u = self.base_url.clone();
        if let Ok(mut path) = u.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        u
    }

    pub(super) async fn post(
        &self,
        operation: &'static str,
        url: Url,
        auth: Option<HeaderValue>,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, HeaderMap, zeroize::Zeroizing<Vec<u8>>), ProviderError> {
        let mut req = self
            .http
            .post(url)
            .header("Square-Version", SQUARE_VERSION)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout);
        if let Some(auth) = auth {
            req = req.header(reqwest::header::AUTHORIZATION, auth);
        }
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| ProviderError::Transport { operation, source })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = read_body(operation, resp).await?;
        Ok((status, headers, body))
    }
}
