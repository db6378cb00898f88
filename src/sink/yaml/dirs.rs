//! What only the file system can tell about the token paths.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::settings::{KERNEL_TREES, Problem, SYSTEM_TREES, resolve};
use crate::sink::FileConfig;

/// What only the file system can tell about the token paths: whether a directory on the way
/// to one lets another user replace the file (owned by someone other than the daemon's user
/// or root, or writable by others without the sticky bit; the way sshd's StrictModes judges a
/// home directory), and whether one is the config file under another name (a hard link, or
/// through a symlink). `files` are the token files, each with the set
/// that writes it as the config names it (`scope_sets[0] (orders)`).
pub fn check_token_dirs<'a>(
    files: impl IntoIterator<Item = (String, &'a FileConfig)>,
    state_dir: &Path,
    origin: &Path,
) -> Vec<Problem> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let config_file = std::fs::metadata(origin).ok().map(|m| (m.dev(), m.ino()));
    // Many sets share a directory: each is looked at once.
    let mut judged: HashMap<PathBuf, Option<String>> = HashMap::new();
    let mut problems = Vec::new();
    // Where each path really leads, symlinks on the way resolved: the checks on the text
    // of the paths cannot see that /run/x is /proc/self, or /run/a/t the same file as /run/b/t.
    let state_dir = resolve(state_dir);
    let mut resolved_dirs: HashMap<PathBuf, Option<PathBuf>> = HashMap::new();
    let mut real_paths: HashMap<PathBuf, (String, &Path)> = HashMap::new();
    for (set, file) in files {
        let at = format!("{set}.file.path");
        let real = match (file.path.parent(), file.path.file_name()) {
            (Some(dir), Some(name)) => resolved_dirs
                .entry(dir.to_path_buf())
                .or_insert_with(|| resolve(dir))
                .as_ref()
                .map(|d| d.join(name)),
            _ => None,
        };
        if let Some(real) = real.as_ref().filter(|r| **r != file.path) {
            let shown = |what: &str| {
                format!(
                    "path `{}` leads to {} through a symlink, {what}",
                    file.path.display(),
                    real.display()
                )
            };
            let mut found = Vec::new();
            if let Some(kernel) = KERNEL_TREES.iter().find(|k| real.starts_with(k)) {
                found.push(shown(&format!(
                    "under {kernel}, the kernel's own files, not a place for a token file"
                )));
            }
            if let Some(system) = SYSTEM_TREES.iter().find(|s| real.starts_with(s)) {
                found.push(shown(&format!(
                    "under {system}, the system's own files, not a place for a token file"
                )));
            }
            if state_dir.as_ref().is_some_and(|s| real.starts_with(s)) {
                found.push(shown(
                    "inside state_dir, which holds the journal, the lock and the status file",
                ));
            }
            for message in found {
                problems.push(Problem {
                    line: None,
                    column: None,
                    at: at.clone(),
                    message,
                });
            }
        }
        if let Some(real) = real {
            match real_paths.get(&real) {
                // The same text is already refused as a shared file.
                Some((first, first_path)) if *first_path != file.path.as_path() => {
                    problems.push(Problem {
                        line: None,
                        column: None,
                        at: at.clone(),
                        message: format!(
                            "path `{}` is the same file as the path of {first}, through a symlink",
                            file.path.display(),
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    real_paths.insert(real, (set, file.path.as_path()));
                }
            }
        }
        let mut problem = |message: String| {
            problems.push(Problem {
                line: None,
                column: None,
                at: at.clone(),
                message,
            })
        };
        if let (Some(cfg), Ok(m)) = (config_file, std::fs::metadata(&file.path))
            && (m.dev(), m.ino()) == cfg
        {
            problem(format!(
                "path `{}` is the configuration file (by another name): a token would be written over it, and the file deleted at stop",
                file.path.display()
            ));
        }
        for dir in file.path.ancestors().skip(1) {
            let verdict = judged.entry(dir.to_path_buf()).or_insert_with(|| {
                let m = std::fs::metadata(dir).ok()?;
                let mode = m.mode() & 0o7777;
                if m.uid() != me && m.uid() != 0 {
                    Some(format!(
                        "{} is owned by uid {}, neither tokenkeeper's user (uid {me}) nor root: its owner could replace the token file",
                        dir.display(),
                        m.uid()
                    ))
                } else if mode & 0o002 != 0 && mode & 0o1000 == 0 {
                    Some(format!(
                        "{} is writable by others without the sticky bit (mode {mode:04o}): anyone could replace the token file",
                        dir.display()
                    ))
                } else {
                    None
                }
            });
            if let Some(why) = verdict.clone() {
                problem(format!("the token file's directory {why}"));
                break;
            }
        }
    }
    problems
}
