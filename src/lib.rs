//! tokenkeeper: keeps OAuth access tokens fresh in files that applications read, and revokes
//! them when it stops.
//!
//! Data flows one way: [`config`] → one task per scope set in [`daemon`] → [`provider`] →
//! [`sink`] → file. Each set's task owns its tokens, so there is no shared cache or lock.

pub mod batch;
pub mod budget;
pub mod clock;
pub mod config;
pub mod control;
pub mod cron;
pub mod daemon;
pub mod devprovider;
pub mod hooks;
pub mod journal;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod provider;
pub mod reporter;
pub mod schedule;
pub mod secret;
pub mod signals;
pub mod sink;
pub mod status;
pub mod store;
pub mod systemd;
pub mod trust;

/// Install rustls' ring crypto provider as the process default. reqwest is built without a
/// provider of its own (ring builds faster and smaller than aws-lc); every client needs one.
/// Calling it again is harmless.
pub fn init_tls() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An error and its sources on one line, `outer: inner: cause`, for logs and messages.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
