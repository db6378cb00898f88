//! A counting TCP relay on 127.0.0.1 in front of a server (the store): what the daemon does to
//! the store, seen from outside it. It counts the connections open now and at most at once,
//! and notes each HTTP/1.1 request line that passes, so a test can bound both the sockets the
//! daemon holds and the requests a token costs.
//!
//! Shut, it accepts connections and holds them unanswered (a store that hangs); once opened,
//! it forwards them, the ones it held included.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Methods a request line may start with (LIST is Vault's own).
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "LIST", "PATCH", "HEAD"];

#[derive(Default)]
struct Counts {
    open: AtomicUsize,
    peak: AtomicUsize,
    /// `METHOD /path`, in the order they passed.
    requests: Mutex<Vec<String>>,
}

pub struct Relay {
    /// `http://127.0.0.1:PORT`, to put in the config in place of the server's address.
    pub addr: String,
    counts: Arc<Counts>,
    open: watch::Sender<bool>,
}

/// Counts a connection open from its accept to its close, whichever side ends it.
struct Held(Arc<Counts>);

impl Held {
    fn new(c: &Arc<Counts>) -> Held {
        let now = c.open.fetch_add(1, Ordering::SeqCst) + 1;
        c.peak.fetch_max(now, Ordering::SeqCst);
        Held(Arc::clone(c))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Relay {
    /// A relay to `to` (`http://host:port`), forwarding at once when `open`.
    pub async fn start(to: &str, open: bool) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", l.local_addr().unwrap());
        let to = to.trim_start_matches("http://").to_string();
        let counts = Arc::new(Counts::default());
        let (open_tx, open_rx) = watch::channel(open);
        let c = Arc::clone(&counts);
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let held = Held::new(&c);
                let (to, mut open) = (to.clone(), open_rx.clone());
                tokio::spawn(async move {
                    if open.wait_for(|o| *o).await.is_err() {
                        return;
                    }
                    if let Ok(up) = TcpStream::connect(&to).await {
                        forward(s, up, &held.0).await;
                    }
                    drop(held);
                });
            }
        });
        Relay {
            addr,
            counts,
            open: open_tx,
        }
    }

    /// Forward from now on, the connections held so far included.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.counts.open.load(Ordering::SeqCst)
    }

    /// The most connections that were ever open at once.
    pub fn peak(&self) -> usize {
        self.counts.peak.load(Ordering::SeqCst)
    }

    /// Every request line that passed, as `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        self.counts.requests.lock().unwrap().clone()
    }
}

/// Copy both ways until either side closes, noting the client's request lines.
async fn forward(client: TcpStream, up: TcpStream, counts: &Counts) {
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();
    let to_server = async {
        let mut buf = vec![0u8; 16 * 1024];
        // The text since the last line end: a request line may arrive in pieces.
        let mut line = Vec::new();
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for &b in &buf[..n] {
                line.push(b);
                if line.ends_with(b"\r\n") {
                    if let Some(r) = request_line(&line) {
                        counts.requests.lock().unwrap().push(r);
                    }
                    line.clear();
                }
            }
            if uw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = uw.shutdown().await;
    };
    let to_client = async {
        let _ = tokio::io::copy(&mut ur, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    // Either side closing ends the connection: the daemon's pool closing an idle socket
    // must count as closed at once, whatever the server does.
    tokio::select! {
        () = to_server => {}
        () = to_client => {}
    }
}

/// `METHOD /path` if `line` ends with a request line. A body has no line end of its own, so
/// the next request's line follows it in the same line: the method is looked for inside it.
fn request_line(line: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(line).ok()?;
    let text = text.strip_suffix(" HTTP/1.1\r\n")?;
    let start = METHODS
        .iter()
        .filter_map(|m| text.find(&format!("{m} /")))
        .min()?;
    Some(text[start..].to_string())
}
