//! What only the file system can tell about the metrics textfile.

use super::{Config, Problem};

/// The metrics textfile's folder must be there: the daemon does not make it (it is
/// node_exporter's, with node_exporter's owner and mode), and without it every publish fails
/// and no textfile is ever written.
pub(super) fn check_textfile_dir(config: &Config) -> Vec<Problem> {
    let Some(textfile) = &config.metrics.textfile else {
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
