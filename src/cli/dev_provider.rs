//! `tokenkeeper dev-provider`: the Voucherify-compatible development provider alone.

use std::net::SocketAddr;

use tracing::error;

use tokenkeeper::devprovider::{self, DevProviderOptions};

use super::logging::init_logging;
use super::{EXIT_OK, EXIT_OSERR};

pub(crate) async fn dev_provider(listen: SocketAddr, opts: DevProviderOptions) -> u8 {
    init_logging(None);
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let shutdown = async {
        tokio::select! {
            () = stop => {},
            () = term => {},
        }
    };
    match devprovider::serve(listen, opts, shutdown).await {
        Ok(()) => EXIT_OK,
        Err(e) => {
            error!(address = %listen, error = %e, "development provider failed");
            EXIT_OSERR
        }
    }
}
