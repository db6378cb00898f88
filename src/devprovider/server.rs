//! The HTTP side: accepting connections, serving each one, and routing a request (after the
//! connection-level faults) to the contract checks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::contract::process;
use super::state::Shared;
use super::wire::{CloseConnection, Endpoint, Reply, quote};

/// How long [`DevProvider::shutdown`] lets requests in progress finish before cutting them
/// off: enough for an ordinary answer, short enough that Ctrl-C on `demo` feels immediate.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Pause after a failed `accept` (for example out of file descriptors) so the loop doesn't
/// spin while the condition lasts; short enough that nobody notices once it clears.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Accept connections until told to stop, then give open ones [`SHUTDOWN_GRACE`] to finish.
pub(super) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // A sent value and a dropped handle both mean stop.
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(stream, peer, Arc::clone(&shared), stop.clone()));
                }
                Err(err) => {
                    warn!(error = %err, "dev provider: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            // Reap finished connections so the set doesn't grow for ever.
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(err) = joined {
                    warn!(error = %err, "dev provider: connection task ended abnormally");
                }
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        debug!("dev provider: cutting off connections still busy after the grace period");
    }
    connections.shutdown().await;
}

/// Serve one HTTP/1.1 connection (keep-alive, hyper's default) until it ends or the server
/// stops.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { handle(&shared, req).await }
    });
    let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop.changed() => {
            // Finish the request in progress, if any, then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        // Clients hanging up and injected drops land here; neither is the server's problem.
        debug!(%peer, error = %err, "dev provider: connection ended with an error");
    }
}

/// Answer one request.
async fn handle(
    shared: &Shared,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, CloseConnection> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let endpoint = Endpoint::from_path(&path);
    // An unknown path is logged only if it looks like a name: a client could put a token in it.
    let path = endpoint.map_or_else(|| quote(&path), |e| e.path().to_owned());
    let (drop_connection, outage) = {
        let mut state = shared.lock();
        match endpoint {
            Some(Endpoint::Token) => state.counts.token += 1,
            Some(Endpoint::Introspect) => state.counts.introspect += 1,
            Some(Endpoint::Revoke) => state.counts.revoke += 1,
            None => {}
        }
        (state.drop_connections, state.outage)
    };
    if drop_connection {
        debug!(%method, %path, "dev provider: dropping the connection (injected)");
        return Err(CloseConnection("connection dropped by fault injection"));
    }
    let reply = match (outage, endpoint) {
        (Some(status), _) => Reply::injected(status),
        (None, None) => Reply::error(StatusCode::NOT_FOUND, "not_found", "Resource not found"),
        (None, Some(endpoint)) if method != Method::POST => {
            shared.violation(endpoint, format!("method {method} instead of POST"));
            let mut reply = Reply::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "Method not allowed",
            );
            reply
                .headers
                .push((ALLOW, HeaderValue::from_static("POST")));
            reply
        }
        (None, Some(endpoint)) => process(shared, endpoint, req).await?,
    };
    debug!(
        %method,
        %path,
        status = reply.status.as_u16(),
        token = %reply.token_fp.as_deref().unwrap_or("-"),
        "dev provider request"
    );
    Ok(reply.into_response())
}
