//! Where a configured path may point: its lexical normal form, the trees no file of the
//! daemon's belongs in, and where it really leads.

use std::path::{Component, Path, PathBuf};

/// Trees of kernel files (procfs, sysfs, device nodes): a token file there would be
/// written into, or deleted from, the kernel's interfaces.
pub const KERNEL_TREES: &[&str] = &["/proc", "/sys", "/dev"];
/// The system's own files (FHS): its configuration, programs, libraries and boot loader. A
/// file the daemon writes there would overwrite one of them (`/etc/passwd`, a library,
/// `/etc/cron.d/...`), and the token file is deleted at stop. Only the package manager and
/// the administrator write there; `/run`, `/var` (apart from these), `/srv`, `/opt` and
/// `/tmp` stay open to token files.
pub const SYSTEM_TREES: &[&str] = &[
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot",
];

/// Lexical normalization: `//` and `.` go, `..` stays (resolving it could be wrong across
/// a symlink), so that two spellings of one file compare equal.
pub fn normalize(path: &Path) -> PathBuf {
    let mut normal: PathBuf = path
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect();
    // Built by pushes, which leave room to grow; every set keeps its path for the daemon's life.
    normal.shrink_to_fit();
    normal
}

/// `path` with the symlinks of the part that exists resolved, and the rest (not made yet)
/// appended as written.
pub fn resolve(path: &Path) -> Option<PathBuf> {
    for base in path.ancestors() {
        if let Ok(real) = std::fs::canonicalize(base) {
            let rest = path.strip_prefix(base).ok()?;
            return Some(if rest.as_os_str().is_empty() {
                real
            } else {
                real.join(rest)
            });
        }
    }
    None
}
