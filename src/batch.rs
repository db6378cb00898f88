//! `tokenkeeper once` (cron jobs and systemd timers) and `tokenkeeper exec` (wrap a job).
//!
//! Both run the daemon's own machinery ([`daemon::run`]) on the chosen sets only, driven by a
//! control channel of their own: the same issue, journal, budget and atomic-write path as the
//! daemon, so a token `once` leaves in the journal is one the daemon (or the next `once`)
//! reuses. The caller holds the state lock, so neither ever fights a running daemon.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout_at};
use tracing::{error, info, warn};

use crate::config::{Config, OnShutdown, SetConfig};
use crate::control::Control;
use crate::daemon::{self, DaemonError, RunReport};
use crate::journal::{self, Entry, Journal};
use crate::provider::TokenProvider;
use crate::sink;
use crate::sink::FileFormat;
use crate::status::Board;

/// How long `once` and `exec` let `on_rotate` hooks of the last tokens finish before exiting:
/// the hooks' own timeout (30 s by default) bounds each run; this bounds the wait for all.
const HOOKS_GRACE: Duration = Duration::from_secs(35);

/// After that, how long what the hooks left behind (a child in a hook's process group) gets
/// between SIGTERM and SIGKILL: the hooks had their time already.
const HOOKS_LEFTOVER_GRACE: Duration = Duration::from_secs(2);

/// Let the hooks of the last tokens finish, then end what is left of their process groups.
async fn finish_hooks() {
    crate::hooks::finish(Instant::now() + HOOKS_GRACE).await;
    crate::hooks::end_all(HOOKS_LEFTOVER_GRACE).await;
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("no scope set named {name}; configured sets: {known}")]
    UnknownSet { name: String, known: String },
    #[error("the token machinery stopped")]
    Daemon(#[source] DaemonError),
    #[error("the token machinery's task failed")]
    Join(#[source] tokio::task::JoinError),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

/// `config` with only the sets `names` (every set when empty), in the config's order.
pub fn select(config: &Config, names: &[String]) -> Result<Config, BatchError> {
    for n in names {
        if !config.sets.iter().any(|s| &s.name == n) {
            let known: Vec<&str> = config.sets.iter().map(|s| s.name.as_str()).collect();
            return Err(BatchError::UnknownSet {
                name: n.clone(),
                known: known.join(", "),
            });
        }
    }
    let mut chosen = config.clone();
    chosen
        .sets
        .retain(|s| names.is_empty() || names.contains(&s.name));
    Ok(chosen)
}

/// The journaled tokens `once` may reuse: per chosen set, the longest-lived one still valid
/// for at least `min_remaining` (default: half of its own lifetime). Its refresh time is moved
/// to that threshold, which is what the daemon's adoption checks. The others are not handed
/// to the daemon machinery at all, so `once` never revokes them: they stay in the journal for
/// the daemon (or `revoke`).
pub fn reusable(
    entries: &[Entry],
    sets: &[SetConfig],
    min_remaining: Option<Duration>,
    now: SystemTime,
) -> Vec<Entry> {
    let mut out = Vec::new();
    for set in sets {
        let best = entries
            .iter()
            .filter(|e| e.set == set.name && e.provider == set.provider)
            .filter_map(|e| {
                let lifetime = e.expires_at.duration_since(e.issued_at).unwrap_or_default();
                let need = min_remaining.unwrap_or(lifetime / 2);
                let remaining = journal::remaining(e, now);
                (remaining >= need && !remaining.is_zero()).then(|| {
                    let mut e = e.clone();
                    e.refresh_at = e.expires_at.checked_sub(need).unwrap_or(now);
                    e
                })
            })
            .max_by_key(|e| e.expires_at);
        out.extend(best);
    }
    out
}

/// The daemon machinery running on a filtered config, seen from the code that drives it.
struct Session {
    ready: oneshot::Receiver<()>,
    board: Arc<Board>,
}

impl Session {
    /// Whether every set had a token in place by `deadline`.
    async fn ready_by(&mut self, deadline: Instant) -> bool {
        matches!(timeout_at(deadline, &mut self.ready).await, Ok(Ok(())))
    }

    /// Each set's token expiry, as the board shows it now.
    fn expiry(&self) -> Vec<(String, Option<SystemTime>)> {
        self.board
            .snapshot(crate::clock::now_wall())
            .sets
            .into_iter()
            .map(|s| (s.name.to_string(), s.expires_at))
            .collect()
    }

    /// Sets without a token, each with its last error.
    fn failing(&self) -> Vec<(String, String)> {
        self.board
            .snapshot(crate::clock::now_wall())
            .sets
            .into_iter()
            .filter(|s| !s.state.has_token())
            .map(|s| {
                let why = s
                    .last_error
                    .unwrap_or_else(|| "no token yet (still trying)".into());
                (s.name.to_string(), why)
            })
            .collect()
    }
}

/// Run the daemon machinery on `config` while `body` runs, then stop it (revoking what the
/// sets' `on_shutdown` says) and report. Both run on this task: the daemon's future is not
/// `Send`, and nothing here needs another thread.
async fn with_daemon<P, F, Fut, T>(
    config: Config,
    providers: HashMap<String, Arc<P>>,
    journal: Journal,
    entries: Vec<Entry>,
    body: F,
) -> Result<(RunReport, T), BatchError>
where
    P: TokenProvider + 'static,
    F: FnOnce(Session) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    // Shutdown is the only message sent, once.
    let (control, control_rx) = mpsc::channel(1);
    let (ready_tx, ready) = oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let board = Board::new();
    let run = daemon::run(
        config,
        providers,
        journal,
        entries,
        None,
        control_rx,
        None,
        Arc::clone(&board),
        move || {
            if let Some(tx) = ready_tx.take() {
                let _ = tx.send(());
            }
        },
    );
    let driver = async move {
        let t = body(Session { ready, board }).await;
        let _ = control.send(Control::Shutdown).await;
        t
    };
    let (report, t) = tokio::join!(run, driver);
    Ok((report.map_err(BatchError::Daemon)?, t))
}

/// What `once` did.
#[derive(Debug, Default)]
pub struct OnceOutcome {
    /// Sets with a valid token in their file.
    pub ok: Vec<String>,
    /// Sets without, and why.
    pub failed: Vec<(String, String)>,
}

/// Make sure each set of `config` (already [`select`]ed) has a token in its file valid for at
/// least `min_remaining`, within `timeout`; never revoke a token that was written.
pub async fn once<P: TokenProvider + 'static>(
    mut config: Config,
    providers: HashMap<String, Arc<P>>,
    journal: Journal,
    entries: &[Entry],
    min_remaining: Option<Duration>,
    timeout: Duration,
) -> Result<OnceOutcome, BatchError> {
    // Keep: at the end the tokens stay in their files and in the journal.
    for s in &mut config.sets {
        s.on_shutdown = OnShutdown::Keep;
        s.never_revoke = true;
    }
    let reuse = reusable(
        entries,
        &config.sets,
        min_remaining,
        crate::clock::now_wall(),
    );
    let names: Vec<String> = config.sets.iter().map(|s| s.name.clone()).collect();
    let deadline = Instant::now() + timeout;
    let (report, (failing, expiry)) =
        with_daemon(config, providers, journal, reuse, |mut s| async move {
            let failing = if s.ready_by(deadline).await {
                Vec::new()
            } else {
                s.failing()
            };
            (failing, s.expiry())
        })
        .await?;
    let now = crate::clock::now_wall();
    finish_hooks().await;
    let mut outcome = OnceOutcome::default();
    for name in names {
        let kept = report
            .sets
            .iter()
            .any(|s| s.set == name && s.kept.is_some());
        let short = min_remaining.and_then(|need| {
            let expires = expiry.iter().find(|(n, _)| *n == name)?.1?;
            too_short(expires, need, now)
        });
        if let (true, Some(why)) = (kept, &short) {
            outcome.failed.push((name, why.clone()));
        } else if kept {
            outcome.ok.push(name);
        } else {
            let why = failing
                .iter()
                .find(|(n, _)| *n == name)
                .map_or_else(|| "no token by the deadline".into(), |(_, w)| w.clone());
            outcome.failed.push((name, why));
        }
    }
    Ok(outcome)
}

/// Why a token `once` obtained, expiring at `expires`, does not meet `--min-remaining` `need`
/// at wall-clock time `now`, if it does not: a freshly issued token is as long-lived as the
/// provider makes it, so asking again would not help.
fn too_short(expires: SystemTime, need: Duration, now: SystemTime) -> Option<String> {
    let left = expires.duration_since(now).unwrap_or_default();
    (left < need).then(|| {
        format!(
            "the provider's token is valid for {} more, less than --min-remaining {}; \
         it grants no token that lasts that long (the token stays in the file)",
            humantime::format_duration(Duration::from_secs(left.as_secs())),
            humantime::format_duration(need),
        )
    })
}

/// How `exec` should run its command.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The command and its arguments (no shell).
    pub command: Vec<String>,
    /// Also export each token itself as `TOKENKEEPER_<SET>_TOKEN`.
    pub env_token: bool,
    /// How long to wait for every set's first token before giving up without running it.
    pub start_timeout: Duration,
}

/// How `exec` ended.
#[derive(Debug)]
pub enum ExecOutcome {
    /// The command ran; `code` is its exit status as a shell reports it (128+N for signal N).
    Ran {
        code: u8,
        /// Sets with a token that could not be revoked afterwards.
        revoke_failed: Vec<String>,
    },
    /// Tokens could not be obtained before the start; the command was not run.
    NoTokens { failed: Vec<(String, String)> },
    /// The command could not be started (`not_found`: no such program).
    SpawnFailed { not_found: bool, error: String },
    /// A stop signal came before the command started.
    Interrupted { signal: i32 },
}

/// `TOKENKEEPER_<SET>` for `set` (upper case, `-` → `_`).
pub fn env_prefix(set: &str) -> String {
    format!("TOKENKEEPER_{}", sink::env_name(set))
}

/// A child's status as a shell reports it: its code, or 128+N when signal N killed it.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c & 0xff).unwrap_or(1),
        (None, Some(sig)) => u8::try_from((128 + sig) & 0xff).unwrap_or(1),
        (None, None) => 1,
    }
}

/// The token in a file of `format` written for `set`.
pub fn token_in_file(format: &FileFormat, text: &str, set: &str) -> Option<String> {
    match format {
        FileFormat::Raw => Some(text.to_string()),
        FileFormat::Header => text
            .trim_end()
            .strip_prefix("Authorization: Bearer ")
            .map(str::to_string),
        FileFormat::Json => serde_json::from_str::<serde_json::Value>(text)
            .ok()?
            .get("access_token")?
            .as_str()
            .map(str::to_string),
        FileFormat::Env => {
            let key = format!("{}_TOKEN=", sink::env_name(set));
            text.lines()
                .find_map(|l| l.strip_prefix(&key))
                .map(str::to_string)
        }
        // The token may stand anywhere in a rendered file, in any quoting.
        FileFormat::Template(_) => None,
    }
}

/// Run `opts.command` with fresh tokens for each set of `config` (already [`select`]ed), kept
/// fresh while it runs; forward SIGINT, SIGTERM and SIGHUP to it; revoke the tokens after it
/// exits (sets with `on_shutdown: keep` keep theirs).
pub async fn exec<P: TokenProvider + 'static>(
    config: Config,
    providers: HashMap<String, Arc<P>>,
    journal: Journal,
    entries: Vec<Entry>,
    opts: ExecOptions,
) -> Result<ExecOutcome, BatchError> {
    // Handlers first: from here on these signals are ours to forward, never a silent death
    // that leaves tokens live.
    let mut signals =
        signal_hook_tokio::Signals::new([SIGINT, SIGTERM, SIGHUP]).map_err(BatchError::Signals)?;
    let handle = signals.handle();
    // Only the chosen sets' tokens: the others belong to sets this command leaves alone.
    let mine: Vec<Entry> = entries
        .into_iter()
        .filter(|e| config.sets.iter().any(|s| s.name == e.set))
        .collect();
    let sets = config.sets.clone();
    let deadline = Instant::now() + opts.start_timeout;
    let (report, outcome) = with_daemon(config, providers, journal, mine, |mut session| async move {
        // A stop signal that came before these handlers (see `signals::install_early`).
        let early = crate::signals::stop_requested();
        let ready = tokio::select! {
            biased;
            sig = async { match early {
                Some(sig) => sig,
                None => next_stop(&mut signals).await,
            } } => Err(sig),
            r = session.ready_by(deadline) => Ok(r),
        };
        match ready {
            Ok(true) => run_child(&sets, &opts, &mut signals).await,
            Ok(false) => {
                let failed = session.failing();
                for (set, why) in &failed {
                    error!(set = %set, error = %why, "no token before the start; not running the command");
                }
                ExecOutcome::NoTokens { failed }
            }
            Err(signal) => {
                warn!(signal, "stop signal before the command started; revoking and exiting");
                ExecOutcome::Interrupted { signal }
            }
        }
    })
    .await?;
    handle.close();
    finish_hooks().await;
    Ok(match outcome {
        ExecOutcome::Ran { code, .. } => ExecOutcome::Ran {
            code,
            revoke_failed: report.failed_sets(),
        },
        other => other,
    })
}

/// Start the command with its sets' environment, forward signals to it until it exits, and
/// report its status.
async fn run_child(
    sets: &[SetConfig],
    opts: &ExecOptions,
    signals: &mut signal_hook_tokio::Signals,
) -> ExecOutcome {
    let Some((program, args)) = opts.command.split_first() else {
        return ExecOutcome::SpawnFailed {
            not_found: true,
            error: "no command given".into(),
        };
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args);
    // The command gets its sets' tokens, never the keys they were issued with.
    for name in crate::secret::hidden_env() {
        cmd.env_remove(name);
    }
    for s in sets {
        let prefix = env_prefix(&s.name);
        let Some(file) = &s.file else {
            // A store-only set: its consumers read the store, not a file.
            warn!(set = %s.name, "the set writes to a store only; {prefix}_FILE and {prefix}_TOKEN not set");
            continue;
        };
        cmd.env(format!("{prefix}_FILE"), &file.path);
        if opts.env_token {
            let path: PathBuf = file.path.clone();
            let text =
                zeroize::Zeroizing::new(tokio::fs::read_to_string(&path).await.unwrap_or_default());
            match token_in_file(&file.format, &text, &s.name) {
                Some(t) => {
                    cmd.env(
                        format!("{prefix}_TOKEN"),
                        zeroize::Zeroizing::new(t).as_str(),
                    );
                }
                None => {
                    warn!(set = %s.name, "cannot read the token back from its file; {prefix}_TOKEN not set")
                }
            }
        }
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            error!(command = %program, error = %e, "cannot start the command");
            return ExecOutcome::SpawnFailed {
                not_found: e.kind() == std::io::ErrorKind::NotFound,
                error: e.to_string(),
            };
        }
    };
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    info!(command = %program, pid = ?pid, sets = sets.len(), "command started");
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Some(sig) = signals.next() => {
                if let (Some(pid), Ok(signal)) = (pid, Signal::try_from(sig)) {
                    info!(signal = %signal, pid, "forwarding signal to the command");
                    if let Err(e) = kill(Pid::from_raw(pid), signal) {
                        warn!(signal = %signal, pid, error = %e, "could not forward the signal");
                    }
                }
            }
        }
    };
    let code = match status {
        Ok(s) => exit_code(s),
        Err(e) => {
            error!(error = %e, "lost track of the command");
            1
        }
    };
    info!(code, "command exited; revoking its tokens");
    ExecOutcome::Ran {
        code,
        revoke_failed: Vec::new(),
    }
}

/// The next SIGINT or SIGTERM (SIGHUP before the start has nothing to reload: logged).
async fn next_stop(signals: &mut signal_hook_tokio::Signals) -> i32 {
    while let Some(sig) = signals.next().await {
        if sig == SIGHUP {
            info!("SIGHUP before the command started: nothing to forward it to");
            continue;
        }
        return sig;
    }
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn entry(set: &str, fp: &str, issued_ago: u64, lifetime: u64, now: SystemTime) -> Entry {
        let issued_at = now - Duration::from_secs(issued_ago);
        Entry {
            set: set.into(),
            provider: "p".into(),
            fingerprint: fp.into(),
            token: Secret::new(fp),
            token_type: "Bearer".into(),
            scope: "api".into(),
            issued_at,
            expires_at: issued_at + Duration::from_secs(lifetime),
            refresh_at: issued_at + Duration::from_secs(lifetime * 2 / 3),
            config_hash: "h".into(),
            file: None,
            lifetime_assumed: false,
        }
    }

    fn set(name: &str) -> SetConfig {
        let text = format!(
            "providers:\n  p: {{ kind: voucherify, app_id: a, app_token: b }}\nscope_sets:\n  - {{ name: {name}, provider: p, scopes: [api], file: {{ path: /t/{name} }} }}\n"
        );
        crate::config::parse(&text, std::path::Path::new("t"))
            .unwrap()
            .config
            .sets
            .remove(0)
    }

    #[test]
    fn min_remaining_is_judged_at_the_time_given() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let expires = now + Duration::from_secs(600);
        let need = Duration::from_secs(300);
        assert_eq!(too_short(expires, need, now), None);
        let why = too_short(expires, need, now + Duration::from_secs(400)).unwrap();
        assert!(
            why.contains("valid for 3m 20s more, less than --min-remaining 5m"),
            "{why}"
        );
        assert!(too_short(expires, need, expires + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn reuse_needs_half_the_lifetime_by_default_or_the_given_minimum() {
        let now = crate::clock::now_wall();
        let s = set("a");
        // 900 s tokens: 600 s left qualifies, 300 s left does not (half is 450 s).
        let young = entry("a", "young", 300, 900, now);
        let old = entry("a", "old", 600, 900, now);
        let other = entry("b", "other", 0, 900, now);
        let got = reusable(
            &[old.clone(), young.clone(), other],
            std::slice::from_ref(&s),
            None,
            now,
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].fingerprint, "young");
        // Adoption reuses a token before its refresh time: moved to the threshold.
        assert_eq!(
            got[0].refresh_at,
            young.expires_at - Duration::from_secs(450)
        );
        assert!(
            reusable(
                std::slice::from_ref(&old),
                std::slice::from_ref(&s),
                None,
                now
            )
            .is_empty()
        );
        let got = reusable(
            &[old],
            std::slice::from_ref(&s),
            Some(Duration::from_secs(60)),
            now,
        );
        assert_eq!(got[0].fingerprint, "old");
        let young2 = entry("a", "young2", 100, 900, now);
        let got = reusable(&[young, young2], &[s], None, now);
        assert_eq!(got.len(), 1, "one token per set, the longest-lived");
        assert_eq!(got[0].fingerprint, "young2");
    }

    #[test]
    fn names_codes_and_tokens_read_back() {
        assert_eq!(env_prefix("orders-sync"), "TOKENKEEPER_ORDERS_SYNC");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(
            token_in_file(&FileFormat::Raw, "abc", "s").as_deref(),
            Some("abc")
        );
        assert_eq!(
            token_in_file(&FileFormat::Header, "Authorization: Bearer abc\n", "s").as_deref(),
            Some("abc")
        );
        assert_eq!(
            token_in_file(&FileFormat::Json, r#"{"access_token":"abc"}"#, "s").as_deref(),
            Some("abc")
        );
        assert_eq!(
            token_in_file(
                &FileFormat::Env,
                "MY_SET_TOKEN=abc\nMY_SET_TOKEN_EXPIRES_AT=x\n",
                "my-set"
            )
            .as_deref(),
            Some("abc")
        );
    }

    #[test]
    fn select_keeps_the_named_sets_and_refuses_unknown_names() {
        let text = "providers:\n  p: { kind: voucherify, app_id: a, app_token: b }\nscope_sets:\n  - { name: a, provider: p, scopes: [api], file: { path: /t/a } }\n  - { name: b, provider: p, scopes: [api], file: { path: /t/b } }\n";
        let cfg = crate::config::parse(text, std::path::Path::new("t"))
            .unwrap()
            .config;
        assert_eq!(select(&cfg, &[]).unwrap().sets.len(), 2);
        let one = select(&cfg, &["b".into()]).unwrap();
        assert_eq!(one.sets.len(), 1);
        assert_eq!(one.sets[0].name, "b");
        let e = select(&cfg, &["c".into()]).unwrap_err();
        assert_eq!(e.to_string(), "no scope set named c; configured sets: a, b");
    }
}
