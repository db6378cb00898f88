//! The performance benchmark behind docs/performance.md. Run it with `bench/run.sh`, which
//! builds everything in release mode first.
//!
//! One binary, three roles, so a fresh clone needs nothing but cargo:
//! - `bench fake`: the development Voucherify provider (the one `tokenkeeper dev-provider`
//!   serves), with room for any number of live tokens, in its own process so its CPU is never
//!   counted as the daemon's. Prints its base URL, serves until killed.
//! - `bench client URL N C`: the bare keep-alive HTTP client baseline: N token requests with C
//!   in flight, through one reqwest client built like the daemon's. Prints seconds taken.
//! - `bench store`: files only beside files + OpenBao at 1,000 sets ([`store`]).
//! - `bench [run]`: the driver ([`scenario`]). Starts the fake, measures its ceiling, runs the
//!   idle scenario and the scaling scenarios in the production layout (token files on a tmpfs,
//!   the state directory on a real disk) and prints the figures beside their targets
//!   ([`report`]).
//!
//! This is a harness, not daemon code: it reads the monotonic clock directly and unwraps
//! set-up failures (a benchmark that cannot start has nothing to report).
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

mod procfs;
mod report;
mod scenario;
mod store;

use std::io::Write;
use std::time::{Duration, Instant};

use tokenkeeper::devprovider::{DEV_APP_ID, DEV_APP_TOKEN, DevProvider, DevProviderOptions};

// The daemon's allocator, tuned the same way, so that the bare client it is compared with
// allocates as it does.
tokenkeeper::use_tuned_mimalloc!();

/// Token lifetime the fake grants: long, so nothing is refreshed during a scenario and the
/// idle scenario is truly idle between refreshes.
const LIFETIME: Duration = Duration::from_secs(900);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fake") => fake(),
        Some("client") => client(&args[1], args[2].parse().unwrap(), args[3].parse().unwrap()),
        None | Some("run") => scenario::driver(),
        Some("store") => store::driver(),
        Some(other) => {
            eprintln!(
                "usage: bench [run | store | fake | client URL N CONCURRENCY] (got {other:?})"
            );
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fake provider and the bare client.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn fake() {
    runtime().block_on(async {
        let opts = DevProviderOptions {
            lifetime: LIFETIME,
            // Every scenario's tokens at once, several runs over: the provider's own cap must
            // never be what a scenario measures.
            max_live_tokens: 10_000_000,
            ..DevProviderOptions::default()
        };
        let p = DevProvider::start(([127, 0, 0, 1], 0).into(), opts)
            .await
            .unwrap();
        println!("{}", p.base_url());
        std::io::stdout().flush().unwrap();
        std::future::pending::<()>().await;
    });
}

fn client(url: &str, n: usize, concurrency: usize) {
    let secs = runtime().block_on(async {
        tokenkeeper::init_tls();
        let http = tokenkeeper::provider::http_client().unwrap();
        let url = format!("{url}/v1/oauth/token");
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = Instant::now();
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (http, url, next) = (http.clone(), url.clone(), next.clone());
                tokio::spawn(async move {
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                        let resp = http
                            .post(&url)
                            .header("x-app-id", DEV_APP_ID)
                            .header("x-app-token", DEV_APP_TOKEN)
                            .header("accept", "application/json")
                            .form(&[("grant_type", "client_credentials"), ("scope", "api")])
                            .send()
                            .await
                            .unwrap();
                        assert!(resp.status().is_success(), "{}", resp.status());
                        let body = resp.bytes().await.unwrap();
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        assert!(v["access_token"].is_string());
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        start.elapsed().as_secs_f64()
    });
    println!("{secs}");
}
