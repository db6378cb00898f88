use std::fs::Permissions;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;

#[test]
fn ensure_dir_makes_exact_modes_and_refuses_a_file_in_the_way() {
    let tmp = tempfile::tempdir().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    let nested = tmp.path().join("a/b/c");
    // A umask that would strip the group's bits from a naive create.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let made = ensure_dir(&nested, 0o750, Existing::Keep);
    nix::sys::stat::umask(old);
    made.unwrap();
    for d in ["a", "a/b", "a/b/c"] {
        assert_eq!(mode(&tmp.path().join(d)), 0o750, "{d}");
    }

    // An existing directory: kept, or given the mode; its existing parents never touched.
    std::fs::set_permissions(&nested, Permissions::from_mode(0o755)).unwrap();
    ensure_dir(&nested, 0o750, Existing::Keep).unwrap();
    assert_eq!(mode(&nested), 0o755);
    ensure_dir(&nested, 0o700, Existing::SetMode).unwrap();
    assert_eq!(mode(&nested), 0o700);
    assert_eq!(mode(&tmp.path().join("a/b")), 0o750);

    // A symlink to a directory is that directory.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&nested, &link).unwrap();
    ensure_dir(&link, 0o750, Existing::Keep).unwrap();
    assert_eq!(mode(&nested), 0o700);

    // A file in the way, as the directory or as a parent: an error naming it, file intact.
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
    for (dir, existing) in [
        (file.clone(), Existing::Keep),
        (file.clone(), Existing::SetMode),
        (file.join("sub"), Existing::Keep),
    ] {
        let err = ensure_dir(&dir, 0o700, existing).unwrap_err();
        assert_eq!(err.path, file);
        let text = crate::error_chain(&err);
        assert!(text.starts_with("create directory "), "{text}");
        assert!(
            text.contains("neither a directory nor a symlink to one"),
            "{text}"
        );
    }
    assert_eq!(mode(&file), 0o644);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");

    // So is a symlink to nothing, which is left dangling rather than followed.
    let dangling = tmp.path().join("dangling");
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).unwrap();
    let err = ensure_dir(&dangling, 0o700, Existing::SetMode).unwrap_err();
    assert_eq!(err.path, dangling);
    assert!(!tmp.path().join("nowhere").exists());
}

#[test]
fn a_directory_in_the_way_is_an_error_and_leaves_no_temp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.token");
    std::fs::create_dir(&path).unwrap();
    let err = write_file(&path, 0o640, b"x").unwrap_err();
    assert!(err.to_string().contains("rename"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn the_temporary_file_is_owner_only_from_its_creation() {
    let dir = tempfile::tempdir().unwrap();
    // Even with no umask at all, the token is never readable by others mid-write.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let tmp = atomic::create_temp(dir.path(), std::ffi::OsStr::new("t.token"));
    nix::sys::stat::umask(old);
    let tmp = tmp.unwrap();
    assert_eq!(tmp.as_file().metadata().unwrap().mode() & 0o7777, 0o600);
}

#[test]
fn stale_temps_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.token");
    std::fs::write(dir.path().join(".t.token.abc123.tmp"), "x").unwrap();
    std::fs::write(dir.path().join("other"), "x").unwrap();
    remove_stale_temps(&path);
    assert!(!dir.path().join(".t.token.abc123.tmp").exists());
    assert!(dir.path().join("other").exists());
}
