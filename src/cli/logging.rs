//! Where the log goes: journald when systemd reads our stderr, plain lines on stderr otherwise.

use tokenkeeper::systemd;

/// Log to journald with structured fields when systemd connected our stderr to the journal,
/// otherwise human-readable lines on stderr.
pub(crate) fn init_logging(level: Option<&str>) {
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
        .fmt_fields(EscapedFields)
        .with_env_filter(filter())
        .with_writer(|| LossyStderr)
        // Its report of a failed write is an `eprintln!`, which panics on the same dead stderr.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Log fields as the default formatter writes them (the message bare, the others as
/// `name=value`, space-separated, the `log.` fields of a `log` record left out), with every
/// value escaped ([`tokenkeeper::shown`]): a value may quote a provider, a store or a lease
/// holder, and a newline in it would forge a log line, an ESC drive the terminal that shows
/// the log.
struct EscapedFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for EscapedFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = EscapingVisitor {
            writer: &mut writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'a, 'w> {
    writer: &'a mut tracing_subscriber::fmt::format::Writer<'w>,
    result: std::fmt::Result,
    first: bool,
}

impl tracing::field::Visit for EscapingVisitor<'_, '_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        // A message is written bare, any other string quoted, as the default formatter does.
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let text = format!("{value:?}");
        let text = tokenkeeper::shown(&text);
        let sep = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        self.result = if field.name() == "message" {
            write!(self.writer, "{sep}{text}")
        } else {
            write!(self.writer, "{sep}{}={text}", field.name())
        };
    }
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
