//! Which proxies the environment may route the daemon's requests through.
//!
//! reqwest, left to itself, reads `HTTP_PROXY`, `http_proxy`, `ALL_PROXY` and `all_proxy`
//! and sends a plain-http request through the proxy they name as it is: headers and form
//! body, API keys and client secrets included, in clear to whoever runs the proxy. Every
//! client of the process is built without that, and honours a proxy from the environment
//! only for https destinations, where it asks the proxy for a tunnel (`CONNECT host:443`)
//! and runs TLS through it end to end: the proxy learns the host name, never a secret. Plain
//! http, which the config allows to loopback hosts only, always goes direct.

use reqwest::{ClientBuilder, NoProxy, Proxy, Url};

/// The variables that name a proxy for https, in the order curl reads them: the specific one
/// first, then the catch-all. `HTTP_PROXY`/`http_proxy` are not among them: they name a proxy
/// for plain http, which never goes through one.
pub const HTTPS_PROXY_VARS: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];

/// A proxy variable whose value is not a proxy URL. Names the variable, never its value,
/// which may carry the proxy's password.
#[derive(Debug, thiserror::Error)]
#[error(
    "${var} is not an http:// or https:// proxy URL (such as http://proxy.example:3128); correct or unset it"
)]
pub struct ProxyError {
    pub var: &'static str,
}

/// `builder` with the process's proxy policy: no proxy of reqwest's own choosing, and the
/// proxy of [`HTTPS_PROXY_VARS`] (if one is set) for https destinations only, except hosts
/// that `NO_PROXY`/`no_proxy` exclude.
///
/// And `localhost` pinned to the loopback addresses: `http://` is allowed only to loopback
/// hosts, judged on the URL's text, so `localhost` must not connect wherever a resolver
/// (a container without `/etc/hosts`, a hostile DNS) says it is, keys in clear.
pub fn with_proxy_policy(builder: ClientBuilder) -> Result<ClientBuilder, ProxyError> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    // Port 0: the URL's port is used, as reqwest documents.
    let loopback = [
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
    ];
    let builder = builder.no_proxy().resolve_to_addrs("localhost", &loopback);
    match https_proxy(|name| std::env::var(name).ok())? {
        None => Ok(builder),
        Some((var, url)) => {
            let proxy = Proxy::https(url)
                .map_err(|_| ProxyError { var })?
                .no_proxy(NoProxy::from_env());
            Ok(builder.proxy(proxy))
        }
    }
}

/// The first of [`HTTPS_PROXY_VARS`] that `env` has set and not empty, and the proxy URL it
/// names; a value without a scheme is taken as http://, as curl takes it.
fn https_proxy(
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<(&'static str, Url)>, ProxyError> {
    let Some((var, value)) = HTTPS_PROXY_VARS
        .iter()
        .find_map(|&var| env(var).filter(|v| !v.trim().is_empty()).map(|v| (var, v)))
    else {
        return Ok(None);
    };
    let value = value.trim();
    let text = if value.contains("://") {
        value.to_string()
    } else {
        format!("http://{value}")
    };
    match Url::parse(&text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Ok(Some((var, url)))
        }
        _ => Err(ProxyError { var }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn only_the_variables_for_https_name_a_proxy() {
        let plain_only = [
            ("HTTP_PROXY", "http://p:3128"),
            ("http_proxy", "http://p:3128"),
        ];
        assert!(https_proxy(env(&plain_only)).unwrap().is_none());
        let (var, url) = https_proxy(env(&[("all_proxy", "p.example:8080")]))
            .unwrap()
            .unwrap();
        assert_eq!((var, url.as_str()), ("all_proxy", "http://p.example:8080/"));
        // The specific variable wins over the catch-all, and an empty one counts as unset.
        let (var, _) = https_proxy(env(&[
            ("ALL_PROXY", "http://all:1"),
            ("HTTPS_PROXY", ""),
            ("https_proxy", "http://tls:1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(var, "https_proxy");
    }

    #[test]
    fn a_bad_proxy_url_names_the_variable_not_its_value() {
        for bad in ["socks5://u:hunter2@p:1080", "http://", "::"] {
            let err = https_proxy(env(&[("HTTPS_PROXY", bad)])).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("$HTTPS_PROXY"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }
}
