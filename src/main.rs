//! The `tokenkeeper` command: parse arguments, set up logging, call the library, and map
//! errors to exit codes. Each subcommand lives in its own file under `cli/`.

#[macro_use]
mod cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use tokenkeeper::config::{self, DEFAULT_CONFIG_PATH};
use tokenkeeper::devprovider::{self, DevProviderOptions};
use tokenkeeper::{batch, signals};

use cli::EXIT_OSERR;

// mimalloc, tuned: src/memory.rs says why, measured.
tokenkeeper::use_tuned_mimalloc!();

/// `once`: how long to keep trying for the tokens before giving up: a minute spans the
/// backoff's first retries (1, 2, 4, … s) without holding a cron slot for long.
const DEFAULT_ONCE_TIMEOUT: &str = "60s";
/// `exec`: the same, before the command starts.
const DEFAULT_START_TIMEOUT: &str = "60s";

/// `--version`: the release and the commit it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("TOKENKEEPER_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "tokenkeeper",
    version = VERSION,
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
    /// Validate the configuration and the secrets it names; exit 0 or 78. Warns when a
    /// provider's discovery metadata does not list its auth_method.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Do not fetch the providers' discovery metadata.
        #[arg(long)]
        offline: bool,
        /// Outside the service, where to look for each `{ credential: NAME }` (the folder the
        /// unit's LoadCredential= loads).
        #[arg(long, value_name = "DIR", default_value = tokenkeeper::secret::UNIT_CREDENTIALS_FOLDER)]
        credentials_dir: PathBuf,
    },
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
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page, tokenkeeper(1); with --dir, write it and one page per subcommand
    /// (tokenkeeper-run(1), ...) there. For packagers.
    #[command(hide = true)]
    Manpage {
        #[arg(long)]
        dir: Option<PathBuf>,
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
        Command::Check {
            config,
            offline,
            credentials_dir,
        } => with_runtime(move || async move {
            cli::check::check(&config.config, offline, &credentials_dir).await
        }),
        Command::Status { config, json } => cli::status::show_status(&config.config, json),
        Command::Run(a) => with_runtime(move || async move { cli::run::run(&a.config).await }),
        Command::Revoke { config, sets } => {
            with_runtime(move || async move { cli::revoke::revoke(&config.config, sets).await })
        }
        Command::Once {
            config,
            sets,
            min_remaining,
            timeout,
        } => with_runtime(move || async move {
            cli::once::once(&config.config, sets, min_remaining, timeout).await
        }),
        Command::Exec {
            config,
            sets,
            env_token,
            start_timeout,
            command,
        } => with_runtime(move || async move {
            cli::exec::exec(
                &config.config,
                sets,
                batch::ExecOptions {
                    command,
                    env_token,
                    start_timeout,
                },
            )
            .await
        }),
        Command::Demo { dir, lifetime } => with_runtime(|| cli::demo::demo(dir, lifetime)),
        Command::Completions { shell } => cli::generate::completions(Cli::command(), shell),
        Command::Manpage { dir } => cli::generate::manpage(Cli::command(), dir.as_deref()),
        Command::DevProvider {
            listen,
            lifetime,
            app_id,
            app_token,
        } => with_runtime(|| {
            cli::dev_provider::dev_provider(
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

/// How long an idle blocking thread waits for work before it exits. tokio's 10 s is the
/// status heartbeat's period, so an idle daemon made and ended a thread for every heartbeat;
/// a minute keeps one waiting between heartbeats, asleep.
const BLOCKING_THREAD_KEEP_ALIVE: Duration = Duration::from_secs(60);

/// At exit, how long threads still reading or writing get before the process ends without
/// them: everything the daemon must finish (revocations, the journal) is awaited before this,
/// so only abandoned work is left, and a second is plenty for a write in flight.
const BLOCKING_THREADS_AT_EXIT: Duration = Duration::from_secs(1);

fn with_runtime<F: std::future::Future<Output = u8> + Send + 'static>(f: impl FnOnce() -> F) -> u8 {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    match cli::worker_threads() {
        Ok(Some(n)) => {
            builder.worker_threads(n);
        }
        Ok(None) => {}
        Err(why) => {
            say_err!("tokenkeeper: {why}");
            return cli::EXIT_CONFIG;
        }
    }
    match builder
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .thread_keep_alive(BLOCKING_THREAD_KEEP_ALIVE)
        .build()
    {
        Ok(rt) => {
            let code = rt.block_on(async move {
                match tokio::spawn(f()).await {
                    Ok(code) => code,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(e) => {
                        say_err!("tokenkeeper: the command was cancelled: {e}");
                        EXIT_OSERR
                    }
                }
            });
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
