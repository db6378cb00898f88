//! Prometheus text exposition (format 0.0.4) of each set's state: as a textfile for
//! node_exporter's textfile collector, rewritten atomically like the token files, and
//! optionally on a loopback HTTP listener.
//!
//! The figures come from a [`Snapshot`], the same one `status.json` is written from, so the
//! status command, the metrics and `systemctl status` never disagree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::fsio::FileError;
use serde_yaml::Value;

use crate::settings::{Field, KERNEL_TREES, Problem, Report, Rule, SYSTEM_TREES, normalize};
use crate::status::{Board, Phase, SetPhase, Snapshot};

/// node_exporter runs as its own user and must read the file; nothing in it is secret.
const TEXTFILE_MODE: u32 = 0o644;

/// The exposition format's content type, as Prometheus asks for it.
const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// After a failed accept (out of file descriptors, most likely), wait before the next one
/// instead of spinning on the same error.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Connections served at once. A scraper uses one; a few Prometheus servers and a curl leave
/// room to spare. The bound keeps a local user who opens idle connections by the thousand
/// from taking the descriptors the token and journal writes need: beyond it, a connection is
/// closed as soon as it is accepted.
const MAX_CONNECTIONS: usize = 16;

/// Time a client has to send its request headers (and, on a kept-alive connection, the next
/// request). A scraper sends them at once; an idle or trickling client is cut off and its
/// place freed.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest life of one connection, whatever it does. An answer takes milliseconds and
/// Prometheus reconnects for free, so a connection older than this is someone holding a slot.
const CONNECTION_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot write the metrics textfile")]
    Textfile(#[source] FileError),
    #[error("cannot listen for metrics scrapes on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The exposition of `snap`.
pub fn render(snap: &Snapshot) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let set_labels = |set: &str, provider: &str, extra: &str| {
        format!(
            "{{set=\"{}\",provider=\"{}\"{extra}}}",
            escape(set),
            escape(provider)
        )
    };

    family(
        "tokenkeeper_up",
        "gauge",
        "1 while the daemon that wrote these figures runs; 0 once it stopped cleanly.",
        &[(
            String::new(),
            f64::from(u8::from(snap.phase != Phase::Stopped)),
        )],
    );
    family(
        "tokenkeeper_heartbeat_timestamp_seconds",
        "gauge",
        "When these figures were written (a stale value means the daemon is hung or gone).",
        &[(String::new(), unix(snap.heartbeat_at))],
    );
    let mut states = Vec::new();
    let mut expiry = Vec::new();
    let mut next = Vec::new();
    let mut refresh = Vec::new();
    let mut revoke = Vec::new();
    let mut refused = Vec::new();
    let mut journal_failures = Vec::new();
    let mut last_error = Vec::new();
    let mut live: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &snap.sets {
        for phase in SetPhase::ALL {
            let extra = format!(",state=\"{}\"", phase.as_str());
            states.push((
                set_labels(&s.name, &s.provider, &extra),
                f64::from(u8::from(s.state == phase)),
            ));
        }
        if let Some(t) = s.expires_at {
            expiry.push((set_labels(&s.name, &s.provider, ""), unix(t)));
        }
        if let Some(t) = s.next_refresh_at {
            next.push((set_labels(&s.name, &s.provider, ""), unix(t)));
        }
        for (result, n) in [("success", s.tokens_issued), ("failure", s.issue_failures)] {
            let extra = format!(",result=\"{result}\"");
            refresh.push((set_labels(&s.name, &s.provider, &extra), n as f64));
        }
        for (result, n) in [
            ("success", s.tokens_revoked),
            ("failure", s.revoke_failures),
        ] {
            let extra = format!(",result=\"{result}\"");
            revoke.push((set_labels(&s.name, &s.provider, &extra), n as f64));
        }
        refused.push((
            set_labels(&s.name, &s.provider, ""),
            s.tokens_refused as f64,
        ));
        journal_failures.push((
            set_labels(&s.name, &s.provider, ""),
            s.journal_failures as f64,
        ));
        if let Some(t) = s.last_error_at {
            last_error.push((set_labels(&s.name, &s.provider, ""), unix(t)));
        }
        *live.entry(&s.provider).or_default() += s.live_tokens;
    }
    family(
        "tokenkeeper_set_state",
        "gauge",
        "1 for the state each scope set is in: starting, fresh, refreshing, failing, expired, stopped.",
        &states,
    );
    family(
        "tokenkeeper_token_expiry_timestamp_seconds",
        "gauge",
        "When the token in each set's file expires; absent while the set has no valid token.",
        &expiry,
    );
    family(
        "tokenkeeper_next_refresh_timestamp_seconds",
        "gauge",
        "When each set next asks its provider for a token (planned refresh or retry).",
        &next,
    );
    family(
        "tokenkeeper_refresh_total",
        "counter",
        "Token requests by result.",
        &refresh,
    );
    family(
        "tokenkeeper_revoke_total",
        "counter",
        "Token revocations by result.",
        &revoke,
    );
    family(
        "tokenkeeper_refused_total",
        "counter",
        "Tokens minted in answers refused for their token_type or lifetime; each is revoked at once where the set revokes.",
        &refused,
    );
    family(
        "tokenkeeper_journal_failures_total",
        "counter",
        "Journal records that failed; a token not in use is revoked at once, one in use stays until replaced.",
        &journal_failures,
    );
    let live: Vec<(String, f64)> = live
        .into_iter()
        .map(|(p, n)| (format!("{{provider=\"{}\"}}", escape(p)), n as f64))
        .collect();
    family(
        "tokenkeeper_live_tokens",
        "gauge",
        "Tokens held that the provider still counts as live (current, superseded, being revoked).",
        &live,
    );
    family(
        "tokenkeeper_last_error_timestamp_seconds",
        "gauge",
        "When each set last failed to get or write a token; absent if it never did.",
        &last_error,
    );
    out
}

/// Seconds since the epoch, with millisecond precision (what Prometheus keeps).
fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| (d.as_millis() as f64) / 1000.0)
        .unwrap_or(0.0)
}

/// A label value as the exposition format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Write the exposition atomically, so node_exporter never reads half a file.
pub fn write_textfile(path: &Path, snap: &Snapshot) -> Result<(), MetricsError> {
    crate::fsio::write_file(path, TEXTFILE_MODE, render(snap).as_bytes())
        .map_err(MetricsError::Textfile)
}

/// Bind the metrics listener now, so that a taken port is reported at start.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Listen { addr, source })
}

/// Answer `GET /metrics` from the board's current state, until the task is dropped.
pub async fn serve(listener: TcpListener, board: Arc<Board>) {
    if let Ok(addr) = listener.local_addr() {
        info!(address = %addr, "serving metrics at /metrics");
    }
    // Connections live in the set so that dropping this future ends them all.
    let mut connections = JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        // Dropped unanswered: its descriptor is back at once.
                        debug!(%peer, limit = MAX_CONNECTIONS, "metrics listener: too many connections; closing this one");
                        continue;
                    };
                    let board = Arc::clone(&board);
                    connections.spawn(async move {
                        let _slot = slot;
                        let service = service_fn(move |req| {
                            let board = Arc::clone(&board);
                            async move { Ok::<_, std::convert::Infallible>(answer(&board, &req)) }
                        });
                        let served = http1::Builder::new()
                            .timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(HEADER_READ_TIMEOUT)
                            .serve_connection(TokioIo::new(stream), service);
                        match tokio::time::timeout(CONNECTION_DEADLINE, served).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection ended with an error"),
                            Err(_) => debug!(%peer, "metrics connection open too long; closed"),
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn answer(board: &Board, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => (
            StatusCode::OK,
            render(&board.snapshot(crate::clock::now_wall())),
        ),
        (_, "/metrics") => (StatusCode::METHOD_NOT_ALLOWED, "GET /metrics only\n".into()),
        _ => (StatusCode::NOT_FOUND, "metrics are at /metrics\n".into()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
    resp
}

/// Prometheus exposition of each set's state (see [`crate::metrics`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// A `.prom` file for node_exporter's textfile collector, rewritten atomically.
    pub textfile: Option<PathBuf>,
    /// A loopback address to serve `GET /metrics` on.
    pub listen: Option<std::net::SocketAddr>,
}

/// `metrics:` as written.
#[derive(Deserialize, Default)]
pub struct RawMetrics {
    pub textfile: Option<Field<Textfile>>,
    pub listen: Option<Field<Listen>>,
}

/// Check `metrics:`, every problem going to `report`.
pub fn from_yaml(report: &mut Report, raw: Option<&RawMetrics>) -> MetricsConfig {
    let Some(raw) = raw else {
        return MetricsConfig::default();
    };
    MetricsConfig {
        textfile: report
            .read("metrics", "textfile", raw.textfile.as_ref())
            .ok()
            .flatten(),
        listen: report
            .read("metrics", "listen", raw.listen.as_ref())
            .ok()
            .flatten(),
    }
}

/// `metrics.textfile`: an absolute `.prom` path outside the kernel's and the system's trees.
pub struct Textfile;

impl Rule for Textfile {
    type Value = PathBuf;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<PathBuf> {
        let text = r.text(parent, key, value)?;
        let path = Path::new(text);
        let why = if !path.is_absolute() {
            format!("textfile `{text}` must be an absolute path")
        } else if path.extension().is_none_or(|e| e != "prom") {
            format!(
                "textfile `{text}` must end in `.prom`: node_exporter's textfile collector reads no other files"
            )
        } else if let Some(tree) = KERNEL_TREES
            .iter()
            .chain(SYSTEM_TREES)
            .find(|t| normalize(path).starts_with(t))
        {
            format!(
                "textfile `{text}` is under {tree}, the kernel's or the system's own files: it is rewritten every few seconds, so it belongs in node_exporter's textfile directory"
            )
        } else {
            return Some(normalize(path));
        };
        r.bad(parent, key, why);
        None
    }
}

/// `metrics.listen`: a loopback address and port, since the listener asks for no credentials.
pub struct Listen;

impl Rule for Listen {
    type Value = SocketAddr;
    fn read(r: &mut Report, parent: &str, key: &str, value: &Value) -> Option<SocketAddr> {
        let text = r.text(parent, key, value)?;
        let why = match text.trim().parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => return Some(addr),
            Ok(_) => format!(
                "listen `{text}` must be a loopback address such as 127.0.0.1:9464: the listener has no authentication, so a local exporter or agent scrapes it"
            ),
            Err(_) => format!("listen `{text}` is not an address and port such as 127.0.0.1:9464"),
        };
        r.bad(parent, key, why);
        None
    }
}

/// The metrics textfile's folder must be there: the daemon does not make it (it is
/// node_exporter's, with node_exporter's owner and mode), and without it every publish fails
/// and no textfile is ever written.
pub fn check_textfile_dir(metrics: &MetricsConfig) -> Vec<Problem> {
    let Some(textfile) = &metrics.textfile else {
        return Vec::new();
    };
    let Some(dir) = textfile.parent() else {
        return Vec::new();
    };
    let why = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Vec::new(),
        Ok(_) => "is not a directory",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist",
        // Another error (permission) is the daemon's user's business at run time; the
        // publish failures are logged and counted then.
        Err(_) => return Vec::new(),
    };
    vec![Problem {
        line: None,
        column: None,
        at: "metrics.textfile".into(),
        message: format!(
            "the textfile's folder {} {why}: tokenkeeper does not create it (node_exporter's --collector.textfile.directory); create it or fix the path",
            dir.display()
        ),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::SetSnapshot;
    use std::time::Duration;

    fn snap() -> Snapshot {
        let at = |s: u64| UNIX_EPOCH + Duration::from_millis(s);
        let set = SetSnapshot {
            name: "orders-sync".into(),
            provider: "voucherify-eu".into(),
            state: SetPhase::Fresh,
            fingerprint: Some("abcd1234".into()),
            expires_at: Some(at(1_900_000_900_500)),
            next_refresh_at: Some(at(1_900_000_594_000)),
            last_error: None,
            last_error_at: None,
            tokens_issued: 3,
            issue_failures: 1,
            tokens_revoked: 2,
            revoke_failures: 0,
            tokens_refused: 4,
            journal_failures: 5,
            live_tokens: 2,
        };
        Snapshot {
            version: 1,
            pid: 1,
            phase: Phase::Running,
            started_at: at(1_900_000_000_000),
            heartbeat_at: at(1_900_000_001_000),
            heartbeat_every_secs: 10,
            ha: None,
            stores: Vec::new(),
            metrics_error: None,
            sets: vec![
                set.clone(),
                SetSnapshot {
                    name: "reports".into(),
                    state: SetPhase::Expired,
                    fingerprint: None,
                    expires_at: None,
                    last_error_at: Some(at(1_900_000_000_250)),
                    live_tokens: 0,
                    ..set
                },
            ],
        }
    }

    #[test]
    fn exposition_has_every_family_with_help_and_type() {
        let text = render(&snap());
        for line in [
            "tokenkeeper_up 1",
            "tokenkeeper_heartbeat_timestamp_seconds 1900000001",
            "tokenkeeper_set_state{set=\"orders-sync\",provider=\"voucherify-eu\",state=\"fresh\"} 1",
            "tokenkeeper_set_state{set=\"orders-sync\",provider=\"voucherify-eu\",state=\"failing\"} 0",
            "tokenkeeper_set_state{set=\"reports\",provider=\"voucherify-eu\",state=\"expired\"} 1",
            "tokenkeeper_token_expiry_timestamp_seconds{set=\"orders-sync\",provider=\"voucherify-eu\"} 1900000900.5",
            "tokenkeeper_next_refresh_timestamp_seconds{set=\"orders-sync\",provider=\"voucherify-eu\"} 1900000594",
            "tokenkeeper_refresh_total{set=\"orders-sync\",provider=\"voucherify-eu\",result=\"success\"} 3",
            "tokenkeeper_refresh_total{set=\"orders-sync\",provider=\"voucherify-eu\",result=\"failure\"} 1",
            "tokenkeeper_revoke_total{set=\"orders-sync\",provider=\"voucherify-eu\",result=\"success\"} 2",
            "tokenkeeper_refused_total{set=\"orders-sync\",provider=\"voucherify-eu\"} 4",
            "tokenkeeper_journal_failures_total{set=\"orders-sync\",provider=\"voucherify-eu\"} 5",
            "tokenkeeper_live_tokens{provider=\"voucherify-eu\"} 2",
            "tokenkeeper_last_error_timestamp_seconds{set=\"reports\",provider=\"voucherify-eu\"} 1900000000.25",
            "# TYPE tokenkeeper_refresh_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
        }
        // A set without a valid token has no expiry sample (an alert on it would misfire).
        assert!(!text.contains("tokenkeeper_token_expiry_timestamp_seconds{set=\"reports\""));
        // Every sample line belongs to a family announced with HELP and TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn the_textfile_is_world_readable_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenkeeper.prom");
        write_textfile(&path, &snap()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), render(&snap()));
    }

    #[tokio::test]
    async fn the_listener_answers_get_metrics() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let board = Board::new();
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, board));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"), "{ok}");
        assert!(ok.contains("\r\n\r\n# HELP tokenkeeper_up"), "{ok}");
        assert!(get("/").await.starts_with("HTTP/1.1 404"));
        server.abort();
    }
}
