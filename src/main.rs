//! The `tokenkeeper` command: parse arguments, set up logging, call the library, and map
//! errors to exit codes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use tracing::{error, info, warn};

use tokenkeeper::config::{self, ConfigError, DEFAULT_CONFIG_PATH, Loaded};
use tokenkeeper::daemon::{self, RunReport};
use tokenkeeper::devprovider::{self, DevProvider, DevProviderOptions};
use tokenkeeper::error_chain as chain;
use tokenkeeper::journal::{self, JournalError, StateLock};
use tokenkeeper::reporter::ReporterOptions;
use tokenkeeper::status::{self, Board, Liveness, Phase};
use tokenkeeper::store::ha;
use tokenkeeper::{batch, metrics, signals, systemd};

/// `println!` that cannot panic: a closed or full stdout loses the line, nothing more.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that cannot panic (see `say!`).
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Exit codes. 78 is `EX_CONFIG` from sysexits.h: the unit's `RestartPreventExitStatus=78`
/// keeps systemd from restarting into the same bad config.
const EXIT_OK: u8 = 0;
/// Some tokens could not be revoked, or some sets failed.
const EXIT_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 78;
/// `EX_DATAERR`: the state journal cannot be read, so which tokens are live is unknown.
const EXIT_DATAERR: u8 = 65;
/// `EX_CANTCREAT`: the state directory or journal cannot be created or written.
const EXIT_CANTCREAT: u8 = 73;
/// `EX_TEMPFAIL`: another tokenkeeper process holds the state directory.
const EXIT_TEMPFAIL: u8 = 75;
/// `EX_OSERR`: the operating system refused something we need (signals, a socket).
const EXIT_OSERR: u8 = 71;
/// `once`/`exec`: `EX_UNAVAILABLE`: some set could not get a token (the provider refused or
/// could not be reached), so `exec` did not run its command.
const EXIT_UNAVAILABLE: u8 = 69;
/// `EX_USAGE`: a set named on the command line is not in the config.
const EXIT_USAGE: u8 = 64;
/// `exec`: the command exists but could not be run; what shells answer in that case.
const EXIT_CANNOT_EXECUTE: u8 = 126;
/// `exec`: no such command; what shells answer in that case.
const EXIT_NOT_FOUND: u8 = 127;
/// `once`: how long to keep trying for the tokens before giving up: a minute spans the
/// backoff's first retries (1, 2, 4, … s) without holding a cron slot for long.
const DEFAULT_ONCE_TIMEOUT: &str = "60s";
/// `exec`: the same, before the command starts.
const DEFAULT_START_TIMEOUT: &str = "60s";
/// `status`: the daemon is not running. 3 is what LSB init scripts and `systemctl status`
/// use for "program is not running", so scripts can treat both alike.
const EXIT_NOT_RUNNING: u8 = 3;
/// `status`: the state is unknown (the status file cannot be read). LSB's 4.
const EXIT_STATUS_UNKNOWN: u8 = 4;

/// At stop, how long the last status and metrics write may take before the process exits
/// without it: a write is milliseconds, and stop must not hang on a stuck disk.
const FINAL_REPORT_LIMIT: Duration = Duration::from_secs(2);

#[derive(Parser)]
#[command(
    name = "tokenkeeper",
    version,
    about = "Keeps OAuth access tokens fresh in files, and revokes them when it stops"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Configuration file.
    #[arg(short, long, env = "TOKENKEEPER_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground until SIGTERM or SIGINT.
    Run(ConfigArg),
    /// Validate the configuration and the secrets it names; exit 0 or 78.
    Check(ConfigArg),
    /// Revoke the tokens recorded in the state journal (all sets, or those named), after a
    /// crash or before decommissioning a machine. Refuses while the daemon runs.
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        /// Scope sets to revoke; all by default.
        sets: Vec<String>,
    },
    /// Make sure each set (all by default) has a token in its file valid for at least
    /// --min-remaining, reusing the journaled one when it qualifies; then exit. Never revokes.
    Once {
        #[command(flatten)]
        config: ConfigArg,
        /// Scope sets to refresh; all by default.
        sets: Vec<String>,
        /// Least validity left for a token to be reused (default: half of its lifetime).
        #[arg(long, value_parser = bounded_duration)]
        min_remaining: Option<Duration>,
        /// Give up on sets without a token after this long.
        #[arg(long, default_value = DEFAULT_ONCE_TIMEOUT, value_parser = bounded_duration)]
        timeout: Duration,
    },
    /// Run CMD with fresh tokens for the chosen sets, kept fresh while it runs, revoked when it
    /// exits; exit with its status.
    Exec {
        #[command(flatten)]
        config: ConfigArg,
        /// A scope set to give CMD (repeat for more); all by default.
        #[arg(long = "set", value_name = "SET")]
        sets: Vec<String>,
        /// Also export each token as TOKENKEEPER_<SET>_TOKEN (it is not refreshed in the
        /// environment: long-running commands should read the file).
        #[arg(long)]
        env_token: bool,
        /// Give up without running CMD if the tokens are not there within this long.
        #[arg(long, default_value = DEFAULT_START_TIMEOUT, value_parser = bounded_duration)]
        start_timeout: Duration,
        /// The command and its arguments, after `--`.
        #[arg(required = true, last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Show each set's state, from the running daemon's status file; exit 0 if it runs, 3 if not.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Try it without credentials: a local development provider plus the daemon.
    Demo {
        /// Folder for the demo's token files and config.
        #[arg(long, default_value = "tokenkeeper-demo")]
        dir: PathBuf,
        /// Lifetime of the demo's tokens.
        #[arg(long, default_value = "30s", value_parser = bounded_duration)]
        lifetime: Duration,
    },
    /// Run the Voucherify-compatible development provider alone.
    DevProvider {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8400")]
        listen: SocketAddr,
        /// Lifetime of issued tokens (whole seconds).
        #[arg(long, default_value = "900s", value_parser = bounded_duration)]
        lifetime: Duration,
        /// The `X-App-Id` clients must send.
        #[arg(long, default_value = devprovider::DEV_APP_ID)]
        app_id: String,
        /// The `X-App-Token` clients must send.
        #[arg(long, default_value = devprovider::DEV_APP_TOKEN)]
        app_token: String,
    },
}

/// A duration on the command line, bounded like every duration in the config
/// ([`config::MAX_DURATION`]): deadlines are computed as now plus it, which must not overflow.
fn bounded_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d > config::MAX_DURATION {
        return Err(format!(
            "{text} is longer than the most allowed, {}",
            config::MAX_DURATION_TEXT
        ));
    }
    Ok(d)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The commands that hold tokens take the stop signals before anything else (the config
    // load, the runtime): a SIGTERM in their first milliseconds must not kill them.
    if matches!(
        cli.command,
        Command::Run(_) | Command::Exec { .. } | Command::Demo { .. }
    ) && let Err(e) = signals::install_early()
    {
        say_err!("tokenkeeper: cannot install signal handlers: {e}");
        return ExitCode::from(EXIT_OSERR);
    }
    let code = match cli.command {
        Command::Check(a) => check(&a.config),
        Command::Status { config, json } => show_status(&config.config, json),
        Command::Run(a) => with_runtime(|| run(&a.config)),
        Command::Revoke { config, sets } => with_runtime(|| revoke(&config.config, sets)),
        Command::Once {
            config,
            sets,
            min_remaining,
            timeout,
        } => with_runtime(|| once(&config.config, sets, min_remaining, timeout)),
        Command::Exec {
            config,
            sets,
            env_token,
            start_timeout,
            command,
        } => with_runtime(|| {
            exec(
                &config.config,
                sets,
                batch::ExecOptions {
                    command,
                    env_token,
                    start_timeout,
                },
            )
        }),
        Command::Demo { dir, lifetime } => with_runtime(|| demo(dir, lifetime)),
        Command::DevProvider {
            listen,
            lifetime,
            app_id,
            app_token,
        } => with_runtime(|| {
            dev_provider(
                listen,
                DevProviderOptions {
                    app_id,
                    app_token,
                    lifetime,
                    ..DevProviderOptions::default()
                },
            )
        }),
    };
    ExitCode::from(code)
}

/// Threads for blocking file work (token files, the journal, the status file). tokio's default
/// of 512 lets a start with thousands of sets spawn hundreds of threads, each with its own
/// stack and malloc arena (hundreds of MiB resident at 10,000 sets); sixteen keep the disk busy
/// (a slow fsync overlaps fifteen others) at a fraction of the memory.
const MAX_BLOCKING_THREADS: usize = 16;

/// At exit, how long threads still reading or writing get before the process ends without
/// them: everything the daemon must finish (revocations, the journal) is awaited before this,
/// so only abandoned work is left, and a second is plenty for a write in flight.
const BLOCKING_THREADS_AT_EXIT: Duration = Duration::from_secs(1);

fn with_runtime<F: std::future::Future<Output = u8>>(f: impl FnOnce() -> F) -> u8 {
    tokenkeeper::memory::tune_allocator();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => {
            let code = rt.block_on(f());
            // A reload abandoned at stop may still be reading on a blocking thread (a secret
            // on a FIFO or a stuck mount); dropping the runtime would wait for it for ever.
            rt.shutdown_timeout(BLOCKING_THREADS_AT_EXIT);
            code
        }
        Err(e) => {
            say_err!("tokenkeeper: cannot start the async runtime: {e}");
            EXIT_OSERR
        }
    }
}

/// Print a config error with every problem, one per line, as `FILE:LINE:COL: AT: MESSAGE`
/// (the form editors and CI annotate), then its warnings.
fn print_config_error(e: &ConfigError) {
    match e {
        ConfigError::Invalid {
            path,
            problems,
            warnings,
        } => {
            for p in problems {
                match (p.line, p.column) {
                    (Some(line), Some(col)) => {
                        say_err!("error: {}:{line}:{col}: {}", path.display(), located(p))
                    }
                    _ => say_err!("error: {}: {}", path.display(), located(p)),
                }
            }
            print_warnings(path, warnings);
            say_err!("tokenkeeper: {e}");
        }
        other => say_err!("tokenkeeper: {}", chain(other)),
    }
}

/// `AT: MESSAGE`, or the message alone for a problem with the whole file.
fn located(p: &config::Problem) -> String {
    if p.at.is_empty() {
        p.message.clone()
    } else {
        format!("{}: {}", p.at, p.message)
    }
}

fn print_warnings(path: &Path, warnings: &[String]) {
    for w in warnings {
        say_err!("warning: {}: {w}", path.display());
    }
}

fn check(path: &Path) -> u8 {
    match config::load(path) {
        Ok(Loaded { config, warnings }) => {
            print_warnings(path, &warnings);
            say!(
                "{}: ok ({} scope set{}, {} provider{})",
                path.display(),
                config.sets.len(),
                plural(config.sets.len()),
                config.providers.len(),
                plural(config.providers.len()),
            );
            EXIT_OK
        }
        Err(e) => {
            print_config_error(&e);
            EXIT_CONFIG
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Log to journald with structured fields when systemd connected our stderr to the journal,
/// otherwise human-readable lines on stderr.
fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // RUST_LOG wins over the config, which wins over "info".
    let filter = || {
        EnvFilter::try_from_default_env()
            .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
            .unwrap_or_else(|_| EnvFilter::new("info"))
    };
    if systemd::stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(layer) => {
                // No prefix: fields arrive as SET=, PROVIDER=, FINGERPRINT=, EXPIRES_AT=, so
                // `journalctl -u tokenkeeper SET=orders-sync` works as operators expect.
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("tokenkeeper".into());
                if tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .try_init()
                    .is_ok()
                {
                    return;
                }
            }
            Err(e) => say_err!(
                "tokenkeeper: cannot reach journald's socket ({e}); logging plain lines to stderr"
            ),
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(|| LossyStderr)
        // Its report of a failed write is an `eprintln!`, which panics on the same dead stderr.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// The log's stderr, with write errors dropped. A log line that cannot be written (the `| tee`
/// or log shipper reading our stderr has died: EPIPE; a full disk: ENOSPC; a closed descriptor:
/// EBADF) is lost, but the daemon goes on keeping tokens fresh and still revokes them at stop:
/// a daemon that dies of its log leaves every token live.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Exit at once on a second stop signal: the operator has chosen speed over revocation.
fn exit_now() {
    std::process::exit(i32::from(EXIT_FAILED));
}

/// Lift the soft limit on open files to the hard one: a low soft limit starves token and
/// journal writes long before the hard limit would.
fn raise_nofile_limit() {
    match tokenkeeper::limits::raise_nofile_limit() {
        Ok(n) => tracing::debug!(limit = n, "open files limit"),
        Err(e) => warn!(error = %e, "cannot raise the open files limit"),
    }
}

async fn run(path: &Path) -> u8 {
    let Loaded { config, warnings } = match config::load(path) {
        Ok(l) => l,
        Err(e) => {
            print_config_error(&e);
            return EXIT_CONFIG;
        }
    };
    init_logging(config.log_level.as_deref());
    raise_nofile_limit();
    for w in &warnings {
        warn!("{}: {w}", path.display());
    }
    // The YAML parser's events for a large config are garbage now.
    tokenkeeper::memory::release_free();
    run_daemon(config, Some(path.to_path_buf())).await
}

/// SIGHUP re-reads `path` with the same checks as a start (every problem is logged, and the
/// daemon runs on with the old config), and builds providers for new or changed ones.
fn reloader(path: PathBuf) -> daemon::Reloader<tokenkeeper::provider::Provider> {
    let http = tokenkeeper::provider::http_client();
    daemon::Reloader {
        load: Arc::new(move || match config::load(&path) {
            Ok(Loaded { config, warnings }) => {
                for w in &warnings {
                    warn!("{}: {w}", path.display());
                }
                Ok(config)
            }
            Err(ConfigError::Invalid { problems, .. }) => Err(problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; ")),
            Err(e) => Err(chain(&e)),
        }),
        build: Box::new(move |pcfg| {
            let http = http.as_ref().map_err(|e| chain(e))?;
            tokenkeeper::provider::Provider::build(pcfg, http)
                .map(std::sync::Arc::new)
                .map_err(|e| chain(&e))
        }),
    }
}

/// Take the state directory and read its journal. The lock is held as long as the returned
/// value lives.
fn open_state(dir: &Path) -> Result<(StateLock, Vec<journal::Entry>), u8> {
    let code = |e: &JournalError| match e {
        JournalError::Locked { .. } => EXIT_TEMPFAIL,
        // Like a bad config: restarting cannot help until an operator fixes owner or mode.
        JournalError::Unsafe { .. } => EXIT_CONFIG,
        JournalError::Corrupt { .. } | JournalError::Version { .. } => EXIT_DATAERR,
        JournalError::Io { .. } | JournalError::Write(_) | JournalError::Closed => EXIT_CANTCREAT,
    };
    let lock = journal::lock_state_dir(dir).map_err(|e| {
        error!("{}", chain(&e));
        code(&e)
    })?;
    let entries = journal::load(dir).map_err(|e| {
        error!(
            "{}; move it aside to start afresh (its tokens then expire on their own)",
            chain(&e)
        );
        code(&e)
    })?;
    Ok((lock, entries))
}

async fn run_daemon(config: config::Config, path: Option<PathBuf>) -> u8 {
    // Handlers first: from here on, a stop signal means "revoke", never "die".
    let control = match signals::listen(exit_now) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot install signal handlers");
            return EXIT_OSERR;
        }
    };
    // Stopped while the config was read: nothing is issued yet, and the journal's tokens
    // (if any) wait for the next start.
    if signals::stop_requested().is_some() {
        info!("stop signal received before the start; exiting without issuing anything");
        return EXIT_OK;
    }
    let providers = match daemon::build_providers(&config) {
        Ok(p) => p,
        Err(e) => {
            error!("{}", chain(&e));
            return EXIT_CONFIG;
        }
    };
    let (lock, entries) = match open_state(&config.state_dir) {
        Ok(s) => s,
        Err(code) => return code,
    };
    // The writer holds the lock, and takes it again should the directory be removed.
    let journal = journal::Journal::start_locked(config.state_dir.clone(), entries.clone(), lock);
    let board = Board::new();
    let reporter = tokio::spawn(tokenkeeper::reporter::run(
        Arc::clone(&board),
        ReporterOptions {
            status_file: config.state_dir.join(status::STATUS_FILE),
            metrics_textfile: config.metrics.textfile.clone(),
            watchdog: systemd::watchdog_interval(),
        },
    ));
    // Metrics are advice: a taken port is logged loudly, and tokens are kept fresh regardless.
    let metrics_server = match config.metrics.listen {
        Some(addr) => match metrics::bind(addr).await {
            Ok(listener) => Some(tokio::spawn(metrics::serve(listener, Arc::clone(&board)))),
            Err(e) => {
                error!("{}; running on without it", chain(&e));
                None
            }
        },
        None => None,
    };
    // systemd starts dependants once every token file exists (Type=notify): the status
    // reporter sends READY=1 once it has published the running phase.
    let on_ready = {
        let board = Arc::clone(&board);
        move || {
            board.set_phase(Phase::Running);
            // The start's burst (a request, a journal record and a file write per set) is over.
            tokenkeeper::memory::release_free();
        }
    };
    let reload = path.map(reloader);
    // With `ha:`, stand by until this instance holds the lease; then lead with a control
    // channel that turns a stop into a handover when a standby can carry on.
    let mut control = control;
    let mut leadership = None;
    if let Some(ha) = &config.ha {
        let lease = match ha::Lease::new(&config, ha) {
            Ok(Some(l)) => Arc::new(l),
            Ok(None) => {
                error!(store = %ha.store, "ha.store is not configured");
                return EXIT_CONFIG;
            }
            Err(e) => {
                error!("{}", chain(&e));
                return EXIT_CONFIG;
            }
        };
        match stand_by(&lease, &board, &mut control).await {
            Some(l) => {
                control = l.control;
                leadership = Some((lease, l.keeper, l.lost));
            }
            None => {
                lease.leave().await;
                board.set_phase(Phase::Stopped);
                let _ = tokio::time::timeout(FINAL_REPORT_LIMIT, reporter).await;
                return EXIT_OK;
            }
        }
    }
    let result = daemon::run(
        config,
        providers,
        journal,
        entries,
        control,
        reload,
        Arc::clone(&board),
        on_ready,
    )
    .await;
    let mut lost = false;
    if let Some((lease, keeper, lost_flag)) = leadership {
        keeper.abort();
        lost = lost_flag.load(std::sync::atomic::Ordering::SeqCst);
        // The sets have stopped writing: let a standby take over now rather than at expiry.
        if let Err(e) = lease.release().await {
            warn!(error = %chain(&e), "could not release the lease; a standby takes over when it expires");
        }
        lease.leave().await;
    }
    board.set_phase(Phase::Stopped);
    let _ = tokio::time::timeout(FINAL_REPORT_LIMIT, reporter).await;
    if let Some(server) = metrics_server {
        server.abort();
    }
    match result {
        // Another instance leads now: exit non-zero so systemd restarts this one as a standby.
        Ok(_) if lost => {
            error!("lost the lease to another instance; handed the tokens over");
            EXIT_FAILED
        }
        Ok(report) => summarize(&report),
        Err(e) => {
            error!("{}", chain(&e));
            EXIT_CONFIG
        }
    }
}

/// What a standby gets once it holds the lease.
struct Leading {
    /// What `daemon::run` reads: the signals, with a stop turned into a handover when a
    /// standby is live, and a handover when the lease is lost.
    control: tokio::sync::mpsc::Receiver<tokenkeeper::control::Control>,
    /// Renews the lease while leading.
    keeper: tokio::task::JoinHandle<()>,
    /// Set when the lease was lost while leading.
    lost: Arc<std::sync::atomic::AtomicBool>,
}

/// Stand by until this instance holds the lease (`Some`), or until a stop signal (`None`).
async fn stand_by(
    lease: &Arc<ha::Lease>,
    board: &Arc<Board>,
    control: &mut tokio::sync::mpsc::Receiver<tokenkeeper::control::Control>,
) -> Option<Leading> {
    use tokenkeeper::control::Control;
    let role = |role: &str, leader: Option<String>| status::HaStatus {
        instance: lease.id.clone(),
        role: role.into(),
        leader,
    };
    board.set_ha(role("standby", None));
    info!(instance = %lease.id, "standing by for the lease");
    // A standby is a started service: systemd must not time out its start.
    systemd::ready();
    let wait = lease.wait_for_lease(|leader| board.set_ha(role("standby", leader)));
    tokio::pin!(wait);
    loop {
        tokio::select! {
            () = &mut wait => break,
            c = control.recv() => match c {
                Some(Control::Shutdown) | Some(Control::Handover) | None => {
                    info!("stopping while standing by: nothing to revoke");
                    return None;
                }
                Some(other) => info!(?other, "standing by: ignored until this instance leads"),
            },
        }
    }
    info!(instance = %lease.id, "leading: this instance holds the lease");
    board.set_ha(role("leader", Some(lease.id.clone())));
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keeper = {
        let lease = Arc::clone(lease);
        let tx = tx.clone();
        let lost = Arc::clone(&lost);
        tokio::spawn(async move {
            lease.keep().await;
            lost.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = tx.send(Control::Handover).await;
        })
    };
    // Forward the signals; a stop becomes a handover when another instance can carry on.
    let mut signals = std::mem::replace(control, tokio::sync::mpsc::channel(1).1);
    let lease = Arc::clone(lease);
    tokio::spawn(async move {
        while let Some(c) = signals.recv().await {
            let c = match c {
                Control::Shutdown => match lease.live_standby().await {
                    Ok(Some(standby)) => {
                        info!(%standby, "a standby is live: handing over instead of revoking");
                        Control::Handover
                    }
                    Ok(None) => Control::Shutdown,
                    Err(e) => {
                        warn!(error = %chain(&e), "cannot tell whether a standby is live; revoking");
                        Control::Shutdown
                    }
                },
                other => other,
            };
            if tx.send(c).await.is_err() {
                break;
            }
        }
    });
    Some(Leading {
        control: rx,
        keeper,
        lost,
    })
}

async fn revoke(path: &Path, sets: Vec<String>) -> u8 {
    let Loaded { config, .. } = match config::load(path) {
        Ok(l) => l,
        Err(e) => {
            print_config_error(&e);
            return EXIT_CONFIG;
        }
    };
    init_logging(config.log_level.as_deref());
    let providers = match daemon::build_providers(&config) {
        Ok(p) => p,
        Err(e) => {
            error!("{}", chain(&e));
            return EXIT_CONFIG;
        }
    };
    let (_lock, entries) = match open_state(&config.state_dir) {
        Ok(s) => s,
        Err(EXIT_TEMPFAIL) => {
            say_err!(
                "tokenkeeper: the daemon is running on {}; stop it instead: it revokes every token at stop",
                config.state_dir.display()
            );
            return EXIT_TEMPFAIL;
        }
        Err(code) => return code,
    };
    for s in &sets {
        if !entries.iter().any(|e| &e.set == s) {
            say!("{s}: no journaled token");
        }
    }
    let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
    let selected = |e: &journal::Entry| sets.is_empty() || sets.contains(&e.set);
    let report =
        match daemon::revoke_journaled(&config.state_dir, entries, selected, &providers, deadline)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                error!("{}", chain(&e));
                return EXIT_CANTCREAT;
            }
        };
    let mut failed = 0;
    for r in &report {
        match &r.result {
            Ok(()) => say!("{}: revoked {}", r.set, r.fingerprint),
            Err(why) => {
                failed += 1;
                say!("{}: FAILED to revoke {}: {why}", r.set, r.fingerprint);
            }
        }
    }
    say!("{} revoked, {failed} failed", report.len() - failed);
    if failed == 0 { EXIT_OK } else { EXIT_FAILED }
}

/// What `once` and `exec` share: load the config, choose the sets, build their providers,
/// take the state directory and start its journal.
async fn batch_setup(
    path: &Path,
    sets: &[String],
) -> Result<
    (
        config::Config,
        std::collections::HashMap<String, Arc<tokenkeeper::provider::Provider>>,
        StateLock,
        journal::Journal,
        Vec<journal::Entry>,
    ),
    u8,
> {
    let Loaded { config, warnings } = config::load(path).map_err(|e| {
        print_config_error(&e);
        EXIT_CONFIG
    })?;
    init_logging(config.log_level.as_deref());
    for w in &warnings {
        warn!("{}: {w}", path.display());
    }
    let chosen = batch::select(&config, sets).map_err(|e| {
        say_err!("tokenkeeper: {e}");
        EXIT_USAGE
    })?;
    let providers = daemon::build_providers(&chosen).map_err(|e| {
        error!("{}", chain(&e));
        EXIT_CONFIG
    })?;
    let (lock, entries) = match open_state(&chosen.state_dir) {
        Ok(s) => s,
        Err(EXIT_TEMPFAIL) => {
            say_err!(
                "tokenkeeper: another tokenkeeper (the daemon, or another once/exec) holds {}; it keeps the tokens fresh already, or try again when it is done",
                chosen.state_dir.display()
            );
            return Err(EXIT_TEMPFAIL);
        }
        Err(code) => return Err(code),
    };
    let journal = journal::Journal::start(chosen.state_dir.clone(), entries.clone());
    Ok((chosen, providers, lock, journal, entries))
}

async fn once(
    path: &Path,
    sets: Vec<String>,
    min_remaining: Option<Duration>,
    timeout: Duration,
) -> u8 {
    let (config, providers, _lock, journal, entries) = match batch_setup(path, &sets).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    match batch::once(config, providers, journal, &entries, min_remaining, timeout).await {
        Ok(outcome) => {
            for s in &outcome.ok {
                say!("{s}: ok");
            }
            for (s, why) in &outcome.failed {
                say!("{s}: FAILED: {why}");
            }
            if outcome.failed.is_empty() {
                EXIT_OK
            } else {
                let names: Vec<&str> = outcome.failed.iter().map(|(s, _)| s.as_str()).collect();
                say_err!("tokenkeeper: no valid token for: {}", names.join(", "));
                EXIT_UNAVAILABLE
            }
        }
        Err(e) => {
            error!("{}", chain(&e));
            EXIT_FAILED
        }
    }
}

async fn exec(path: &Path, sets: Vec<String>, opts: batch::ExecOptions) -> u8 {
    let (config, providers, _lock, journal, entries) = match batch_setup(path, &sets).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    match batch::exec(config, providers, journal, entries, opts).await {
        Ok(batch::ExecOutcome::Ran {
            code,
            revoke_failed,
        }) => {
            if !revoke_failed.is_empty() {
                error!(
                    "could not revoke every token of: {}; they stay in the journal for the next start or `tokenkeeper revoke`",
                    revoke_failed.join(", ")
                );
            }
            code
        }
        Ok(batch::ExecOutcome::NoTokens { failed }) => {
            let names: Vec<&str> = failed.iter().map(|(s, _)| s.as_str()).collect();
            say_err!(
                "tokenkeeper: no token for {}; the command was not run",
                names.join(", ")
            );
            EXIT_UNAVAILABLE
        }
        Ok(batch::ExecOutcome::SpawnFailed { not_found, error }) => {
            say_err!("tokenkeeper: cannot run the command: {error}");
            if not_found {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_EXECUTE
            }
        }
        Ok(batch::ExecOutcome::Interrupted { signal }) => {
            u8::try_from(128 + signal).unwrap_or(EXIT_FAILED)
        }
        Err(e) => {
            error!("{}", chain(&e));
            EXIT_FAILED
        }
    }
}

/// Log the one-line stop summary and pick the exit code.
fn summarize(report: &RunReport) -> u8 {
    let failed = report.failed_sets();
    let kept: usize = report.sets.iter().filter(|s| s.kept.is_some()).count();
    let sets = report.sets.len();
    let expiring: usize = report.sets.iter().map(|s| s.expiring.len()).sum();
    let expiring_note = if expiring > 0 {
        format!(
            "; {expiring} token{} left to expire on {} own (not revocable)",
            plural(expiring),
            if expiring == 1 { "its" } else { "their" }
        )
    } else {
        String::new()
    };
    if !report.crashed.is_empty() {
        error!(
            revoked = report.revoked_count(),
            "stopped: revoked {} token{}, but the task of {} failed (a bug: please report it){}",
            report.revoked_count(),
            plural(report.revoked_count()),
            report.crashed.join(", "),
            if failed.is_empty() {
                "; its journaled tokens were revoked in its place".to_string()
            } else {
                format!("; could not revoke every token of: {}", failed.join(", "))
            }
        );
        EXIT_FAILED
    } else if failed.is_empty() {
        info!(
            revoked = report.revoked_count(),
            kept,
            expiring,
            "stopped: revoked {} token{} across {sets} set{}{expiring_note}",
            report.revoked_count(),
            plural(report.revoked_count()),
            plural(sets)
        );
        EXIT_OK
    } else {
        error!(
            revoked = report.revoked_count(),
            "stopped: revoked {} token{}, but could not revoke every token of: {}",
            report.revoked_count(),
            plural(report.revoked_count()),
            failed.join(", ")
        );
        EXIT_FAILED
    }
}

/// `tokenkeeper status`: read the status file the daemon keeps in its state directory.
fn show_status(path: &Path, json: bool) -> u8 {
    // The config only tells where the state directory is; its secrets are not needed (and
    // not readable outside the service), so they are not checked.
    let text = match config::read_text(path) {
        Ok(t) => t,
        Err(e) => {
            say_err!("tokenkeeper: {}", chain(&e));
            return EXIT_CONFIG;
        }
    };
    let config = match config::parse(&text, path) {
        Ok(l) => l.config,
        Err(e) => {
            print_config_error(&e);
            return EXIT_CONFIG;
        }
    };
    let file = config.state_dir.join(status::STATUS_FILE);
    let snap = match status::read_status_file(&file) {
        Ok(s) => s,
        Err(status::StatusError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            say_err!(
                "tokenkeeper is not running: no status file at {} (has the daemon ever run with this config's state_dir?)",
                file.display()
            );
            return EXIT_NOT_RUNNING;
        }
        Err(e) => {
            let hint = match &e {
                status::StatusError::Read { source, .. }
                    if source.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    " (the state directory is the daemon's alone: run this as root)"
                }
                _ => "",
            };
            say_err!("tokenkeeper: {}{hint}", chain(&e));
            return EXIT_STATUS_UNKNOWN;
        }
    };
    let now = SystemTime::now();
    let live = status::liveness(&snap, now, status::pid_alive);
    if json {
        let v = status::render_json(&snap, &live, now);
        say!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        );
    } else {
        use std::io::Write as _;
        let _ = write!(
            std::io::stdout(),
            "{}",
            status::render_table(&snap, &live, now)
        );
    }
    if live == Liveness::Running {
        EXIT_OK
    } else {
        if json {
            // The table says it in its first line; JSON readers get it on stderr too.
            say_err!("{}", status::not_running_message(&snap, &live, now));
        }
        EXIT_NOT_RUNNING
    }
}

async fn dev_provider(listen: SocketAddr, opts: DevProviderOptions) -> u8 {
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

/// The demo's config, in the same YAML an operator writes: it goes through the real loader.
fn demo_config(dir: &Path, base_url: &str) -> String {
    let d = dir.display();
    format!(
        r#"# Written by `tokenkeeper demo`. The same file runs against `tokenkeeper dev-provider`.
state_dir: {d}/state
shutdown_timeout: 10s
defaults:
  refresh: {{ at: 66%, jitter: 10%, min_interval: 1s }}
  file: {{ mode: "0640", format: raw }}
  revoke_superseded_after: 5s
providers:
  dev:
    kind: voucherify
    base_url: {base_url}
    # The development provider's well-known credentials; real keys belong in
    # {{ credential: NAME }}, {{ file: PATH }} or {{ env: NAME }}.
    app_id: {app_id}
    app_token: {app_token}
scope_sets:
  - name: orders-sync
    provider: dev
    scopes: [orders, customers]
    file: {{ path: {d}/orders-sync.token }}
  - name: reports
    provider: dev
    scopes: [vouchers, campaigns]
    file: {{ path: {d}/reports.json, format: json }}
  - name: legacy-app
    provider: dev
    scopes: [api]
    file: {{ path: {d}/legacy-app.env, format: env, mode: "0600" }}
"#,
        app_id = devprovider::DEV_APP_ID,
        app_token = devprovider::DEV_APP_TOKEN,
    )
}

async fn demo(dir: PathBuf, lifetime: Duration) -> u8 {
    init_logging(None);
    let dir = match std::path::absolute(&dir) {
        Ok(d) => d,
        Err(e) => {
            error!(dir = %dir.display(), error = %e, "cannot resolve the demo folder");
            return EXIT_OSERR;
        }
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        error!(dir = %dir.display(), error = %e, "cannot create the demo folder");
        return EXIT_OSERR;
    }
    let opts = DevProviderOptions {
        lifetime,
        ..DevProviderOptions::default()
    };
    let provider = match DevProvider::start(SocketAddr::from(([127, 0, 0, 1], 0)), opts).await {
        Ok(p) => p,
        Err(e) => {
            error!(error = %e, "cannot start the development provider");
            return EXIT_OSERR;
        }
    };
    let cfg_path = dir.join("demo-config.yaml");
    if let Err(e) = std::fs::write(&cfg_path, demo_config(&dir, &provider.base_url())) {
        error!(path = %cfg_path.display(), error = %e, "cannot write the demo config");
        return EXIT_OSERR;
    }
    let config = match config::load(&cfg_path) {
        Ok(l) => l.config,
        Err(e) => {
            print_config_error(&e);
            return EXIT_CONFIG;
        }
    };
    say_err!(
        "\ntokenkeeper demo\n  development provider: {url} (Voucherify OAuth v1, {life}s tokens)\n  token files:          {d}/\n  config it runs:       {cfg}\n\n  Watch the files change:  watch -n1 'ls -l {d}; cat {d}/orders-sync.token; echo'\n  Ctrl-C revokes every token and removes the files.\n",
        url = provider.base_url(),
        life = lifetime.as_secs(),
        d = dir.display(),
        cfg = cfg_path.display(),
    );
    let code = run_daemon(config, Some(cfg_path.clone())).await;
    let live = provider.live_tokens().len();
    let issued = provider.issued_tokens().len();
    say_err!(
        "\ndemo over: the provider issued {issued} token{} and now holds {live} live one{}.",
        plural(issued),
        plural(live)
    );
    provider.shutdown().await;
    code
}
