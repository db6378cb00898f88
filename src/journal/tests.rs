use super::disk::COMPACT_SLACK;
use super::entry::Stored;
use super::writer::{LOCK_CHECK, REMOVAL_FLUSH};
use super::*;
use crate::secret::Secret;
use std::fs::Permissions;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

fn entry(fp: &str, expires_in: u64) -> Entry {
    let now = crate::clock::now_wall();
    Entry {
        set: "s".into(),
        provider: "p".into(),
        fingerprint: fp.into(),
        token: Secret::new(format!("tok-{fp}")),
        token_type: "Bearer".into(),
        scope: "api".into(),
        issued_at: now,
        expires_at: now + Duration::from_secs(expires_in),
        refresh_at: now + Duration::from_secs(expires_in / 2),
        config_hash: "h".into(),
        file: Some("/run/x".into()),
        lifetime_assumed: false,
    }
}

#[tokio::test]
async fn entries_reflect_every_change_made_before() {
    let (j, _view) = Journal::memory();
    assert!(j.entries().await.is_empty());
    j.record(entry("aa", 600)).await.unwrap();
    j.record(entry("bb", 600)).await.unwrap();
    j.remove(vec!["aa".into()]).await;
    let fps: Vec<String> = j
        .entries()
        .await
        .into_iter()
        .map(|e| e.fingerprint)
        .collect();
    assert_eq!(fps, ["bb"]);
}

#[test]
fn state_dir_is_0700_and_locked_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let lock = lock_state_dir(&dir).unwrap();
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
    let err = lock_state_dir(&dir).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    drop(lock);
    // Loosened by someone: tightened back at the next start.
    std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
    lock_state_dir(&dir).unwrap();
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
}

#[test]
fn a_handed_over_lock_is_taken_only_if_it_is_the_lock_file() {
    use std::os::fd::AsRawFd;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let lock = lock_state_dir(&dir).unwrap();
    // Another file's descriptor is refused, and left open for its owner.
    let other = tempfile::tempfile().unwrap();
    let err = lock_inherited(&dir, other.as_raw_fd()).unwrap_err();
    assert!(matches!(err, JournalError::Unsafe { .. }), "{err}");
    assert!(other.metadata().is_ok());
    assert!(lock_inherited(&dir, 1).is_err(), "a standard stream");
    // The lock's own descriptor, as an exec leaves it (open, its owner gone): taken over,
    // still held, and released with the one that took it.
    let fd = lock.raw_fd();
    std::mem::forget(lock);
    let taken = lock_inherited(&dir, fd).unwrap();
    assert!(taken.still_guards());
    assert!(lock_state_dir(&dir).is_err(), "still locked");
    drop(taken);
    assert!(lock_state_dir(&dir).is_ok());
}

#[test]
fn copies_a_killed_compaction_left_are_swept_when_the_lock_is_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let held = lock_state_dir(&dir).unwrap();
    save(&dir, &[entry("a", 900)]).unwrap();
    // Named as the compaction's temporary file is (`fsio`'s `create_temp`), and kept as a kill
    // before the rename keeps it.
    let copy = tempfile::Builder::new()
        .prefix(&format!(".{JOURNAL_FILE}."))
        .suffix(".tmp")
        .tempfile_in(&dir)
        .unwrap()
        .into_temp_path()
        .keep()
        .unwrap();
    std::fs::copy(dir.join(JOURNAL_FILE), &copy).unwrap();
    // A Square provider's refresh-token copy holds a refresh token: swept too.
    let square = dir.join(".square-shop.json.Xy12z9.tmp");
    std::fs::write(&square, "{\"token\":\"refresh\"}").unwrap();
    let others = [
        ".status.json.abc123.tmp",
        ".journal.log.abc123.tmp.x",
        "x.tmp",
        ".square-.json.abc123.tmp",
        ".square-shop.json",
        "square-shop.json.abc123.tmp",
    ];
    for o in others {
        std::fs::write(dir.join(o), "keep").unwrap();
    }
    std::fs::create_dir(dir.join(".journal.log.dir123.tmp")).unwrap();
    std::os::unix::fs::symlink(dir.join(JOURNAL_FILE), dir.join(".journal.log.lnk123.tmp"))
        .unwrap();
    // Held by another process, which may be compacting: nothing is touched.
    assert!(lock_state_dir(&dir).is_err());
    assert!(copy.exists());
    assert!(square.exists());
    drop(held);
    let _lock = lock_state_dir(&dir).unwrap();
    assert!(!copy.exists());
    assert!(!square.exists());
    for o in others {
        assert!(dir.join(o).exists(), "{o}");
    }
    assert!(dir.join(".journal.log.dir123.tmp").is_dir());
    assert!(std::fs::symlink_metadata(dir.join(".journal.log.lnk123.tmp")).is_ok());
    assert_eq!(fingerprints(&dir), ["a"]);
}

fn fingerprints(dir: &Path) -> Vec<String> {
    load(dir)
        .unwrap()
        .into_iter()
        .map(|e| e.fingerprint)
        .collect()
}

#[test]
fn a_state_dir_journal_or_lock_another_user_could_write_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    drop(lock_state_dir(&dir).unwrap());
    let refused = |why: &str| {
        let err = lock_state_dir(&dir)
            .map(|_| ())
            .and_then(|()| load(&dir).map(|_| ()))
            .unwrap_err();
        assert!(matches!(err, JournalError::Unsafe { .. }), "{err}");
        assert!(err.to_string().contains(why), "{err}");
    };
    std::fs::set_permissions(&dir, Permissions::from_mode(0o707)).unwrap();
    refused("is writable by group or others (mode 0707)");
    std::fs::set_permissions(&dir, Permissions::from_mode(0o700)).unwrap();
    save(&dir, &[entry("aa", 600)]).unwrap();
    std::fs::set_permissions(dir.join(JOURNAL_FILE), Permissions::from_mode(0o620)).unwrap();
    refused("journal.log is writable by group or others (mode 0620)");
    std::fs::remove_file(dir.join(JOURNAL_FILE)).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("elsewhere"), dir.join(JOURNAL_FILE)).unwrap();
    refused("journal.log is not a regular file (it is a symlink)");
    std::fs::remove_file(dir.join(JOURNAL_FILE)).unwrap();
    std::fs::set_permissions(dir.join(LOCK_FILE), Permissions::from_mode(0o602)).unwrap();
    refused("lock is writable by group or others (mode 0602)");
    std::fs::set_permissions(dir.join(LOCK_FILE), Permissions::from_mode(0o600)).unwrap();
    // Above it: a directory others may write without the sticky bit.
    std::fs::set_permissions(tmp.path(), Permissions::from_mode(0o777)).unwrap();
    refused("is writable by others without the sticky bit (mode 0777)");
    std::fs::set_permissions(tmp.path(), Permissions::from_mode(0o1777)).unwrap();
    lock_state_dir(&dir).unwrap();
}

#[test]
fn the_log_is_one_json_object_a_line_and_replays_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    save(tmp.path(), &[entry("aa", 600), entry("bb", 900)]).unwrap();
    let text = std::fs::read_to_string(tmp.path().join(JOURNAL_FILE)).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0], serde_json::json!({ "version": 2 }));
    assert_eq!(lines[1]["record"]["fingerprint"], "aa");
    assert_eq!(lines[2]["record"]["token"], "tok-aa".replace("aa", "bb"));
    assert!(text.ends_with('\n'));
    // Appended by hand as the writer would: a replacement moves last, a removal forgets.
    let mut more = String::new();
    let mut again = Vec::new();
    Stored::new(&entry("aa", 300), crate::clock::now_wall())
        .unwrap()
        .push_line(&mut again);
    more.push_str(std::str::from_utf8(&again).unwrap());
    more.push_str("{\"remove\":[\"bb\",\"zz\"]}\n");
    std::fs::write(tmp.path().join(JOURNAL_FILE), text + &more).unwrap();
    assert_eq!(fingerprints(tmp.path()), ["aa"]);
}

#[test]
fn a_torn_last_line_is_passed_over_and_any_other_bad_line_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    save(tmp.path(), &[entry("aa", 600)]).unwrap();
    let path = tmp.path().join(JOURNAL_FILE);
    let whole = std::fs::read_to_string(&path).unwrap();
    let mut line = Vec::new();
    Stored::new(&entry("bb", 600), crate::clock::now_wall())
        .unwrap()
        .push_line(&mut line);
    // A crash in the middle of an append: any prefix of the line, without its newline.
    for cut in [1, 10, line.len() / 2, line.len() - 1] {
        let torn = [whole.as_bytes(), &line[..cut]].concat();
        std::fs::write(&path, torn).unwrap();
        assert_eq!(fingerprints(tmp.path()), ["aa"], "cut at {cut}");
    }
    std::fs::write(&path, format!("{whole}{{\"record\":{{}}}}\n")).unwrap();
    match load(tmp.path()) {
        Err(JournalError::Corrupt { line: 3, .. }) => {}
        other => panic!("{other:?}"),
    }
    std::fs::write(&path, "{\"version\":7}\n").unwrap();
    assert!(matches!(
        load(tmp.path()),
        Err(JournalError::Version { found: 7, .. })
    ));
    std::fs::write(&path, "").unwrap();
    assert!(matches!(
        load(tmp.path()),
        Err(JournalError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn a_version_1_journal_is_read_and_migrated_by_the_first_write() {
    let tmp = tempfile::tempdir().unwrap();
    let legacy = tmp.path().join(LEGACY_JOURNAL_FILE);
    let doc = serde_json::json!({ "version": 1, "tokens": [entry("aa", 600), entry("bb", 600)] });
    std::fs::write(&legacy, doc.to_string()).unwrap();
    let entries = load(tmp.path()).unwrap();
    assert_eq!(entries.len(), 2);
    let j = Journal::start(tmp.path().to_path_buf(), entries);
    j.record(entry("cc", 600)).await.unwrap();
    assert!(!legacy.exists());
    assert_eq!(fingerprints(tmp.path()), ["aa", "bb", "cc"]);
    // A migration cut short: the log was written, the document not yet removed. The log
    // wins, whatever the document says.
    std::fs::write(&legacy, doc.to_string()).unwrap();
    j.remove(vec!["aa".into()]).await;
    j.flush().await;
    assert_eq!(fingerprints(tmp.path()), ["bb", "cc"]);
}

#[tokio::test]
async fn the_log_stays_within_twice_its_live_records_however_many_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(JOURNAL_FILE);
    let j = Journal::start(tmp.path().to_path_buf(), Vec::new());
    let line = {
        let mut v = Vec::new();
        Stored::new(&entry("00000000", 600), crate::clock::now_wall())
            .unwrap()
            .push_line(&mut v);
        v.len() as u64
    };
    // 20 live tokens, each replaced 400 times: 8,000 records, about 4 MB appended.
    let mut largest = 0;
    for round in 0..400 {
        for i in 0..20 {
            let old = format!("{i:02}{:06}", round);
            let new = format!("{i:02}{:06}", round + 1);
            j.record(entry(&new, 600)).await.unwrap();
            j.remove(vec![old]).await;
        }
        largest = largest.max(std::fs::metadata(&path).unwrap().len());
    }
    // The last round's removals are still in memory.
    j.flush().await;
    assert_eq!(fingerprints(tmp.path()).len(), 20);
    assert!(
        largest <= 2 * 20 * line + COMPACT_SLACK + 2 * line,
        "the log reached {largest} bytes for 20 records of {line}"
    );
    assert!(8_000 * line > 2 * largest, "it was compacted");
}

#[tokio::test]
async fn a_failed_write_is_caught_up_by_the_next_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    let j = Journal::start(dir.clone(), Vec::new());
    j.record(entry("aa", 600)).await.unwrap();
    // The log replaced by a directory: appends and rewrites both fail.
    let path = dir.join(JOURNAL_FILE);
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    assert!(j.record(entry("bb", 600)).await.is_err());
    std::fs::remove_dir(&path).unwrap();
    // Nothing was lost: the next commit writes everything held.
    j.record(entry("cc", 600)).await.unwrap();
    assert_eq!(fingerprints(&dir), ["aa", "bb", "cc"]);
}

#[test]
fn save_and_load_round_trip_with_an_owner_only_file() {
    let tmp = tempfile::tempdir().unwrap();
    let e = vec![entry("aa", 600), entry("bb", 900)];
    save(tmp.path(), &e).unwrap();
    let path = tmp.path().join(JOURNAL_FILE);
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o600);
    let back = load(tmp.path()).unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!(back[1].token.expose(), "tok-bb");
    // Times survive to the millisecond.
    let d = back[0]
        .expires_at
        .duration_since(e[0].expires_at)
        .unwrap_or_else(|e| e.duration());
    assert!(d < Duration::from_millis(1));
    assert!(load(&tmp.path().join("none")).unwrap().is_empty());
}

#[test]
fn a_corrupt_version_1_journal_is_an_error_not_an_empty_one() {
    let tmp = tempfile::tempdir().unwrap();
    let legacy = tmp.path().join(LEGACY_JOURNAL_FILE);
    std::fs::write(&legacy, "{\"version\":1,\"tok").unwrap();
    assert!(matches!(
        load(tmp.path()),
        Err(JournalError::Corrupt { .. })
    ));
    std::fs::write(&legacy, "{\"version\":9,\"tokens\":[]}").unwrap();
    assert!(matches!(
        load(tmp.path()),
        Err(JournalError::Version { found: 9, .. })
    ));
}

#[tokio::test]
async fn the_writer_records_removes_and_prunes_expired_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::start(tmp.path().to_path_buf(), Vec::new());
    j.record(entry("old", 0)).await.unwrap();
    j.record(entry("aa", 600)).await.unwrap();
    j.record(entry("bb", 600)).await.unwrap();
    assert_eq!(fingerprints(tmp.path()), ["aa", "bb"]);
    j.remove(vec!["aa".into()]).await;
    j.flush().await;
    assert_eq!(fingerprints(tmp.path()), ["bb"]);
}

/// What the journal held at start may be expired only by a clock that jumped: it stays
/// while the daemon offers it for revocation, then goes. Tokens recorded while running
/// leave by the daemon's own clock, not the wall clock's.
#[tokio::test(start_paused = true)]
async fn tokens_expired_by_the_wall_clock_stay_until_the_doubt_window_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::start(tmp.path().to_path_buf(), vec![entry("old", 0)]);
    j.record(entry("aa", 60)).await.unwrap();
    assert_eq!(fingerprints(tmp.path()), ["old", "aa"]);
    tokio::time::advance(Duration::from_secs(61)).await;
    j.record(entry("bb", 6000)).await.unwrap();
    assert_eq!(fingerprints(tmp.path()), ["old", "bb"]);
    tokio::time::advance(CLOCK_DOUBT_WINDOW).await;
    j.record(entry("cc", 6000)).await.unwrap();
    assert_eq!(fingerprints(tmp.path()), ["bb", "cc"]);
}

/// A record's deadline on the daemon's clock is what is left of the token at the wall-clock
/// time it is recorded at, or the floor once that is nothing.
#[tokio::test(start_paused = true)]
async fn a_records_deadline_is_what_is_left_of_the_token_at_the_time_given() {
    let t0 = tokio::time::Instant::now();
    let e = entry("aa", 600);
    let s = |now, floor| Stored::kept_for(&e, floor, now).unwrap().deadline - t0;
    let issued = e.expires_at - Duration::from_secs(600);
    assert_eq!(
        Stored::new(&e, issued).unwrap().deadline - t0,
        Duration::from_secs(600)
    );
    let later = issued + Duration::from_secs(100);
    assert_eq!(s(later, Duration::ZERO), Duration::from_secs(500));
    // Past its expiry by the time given: kept for the floor only.
    let past = e.expires_at + Duration::from_secs(1);
    assert_eq!(s(past, CLOCK_DOUBT_WINDOW), CLOCK_DOUBT_WINDOW);
    // The floor (15 min) also when it is longer than what is left.
    assert_eq!(s(later, CLOCK_DOUBT_WINDOW), CLOCK_DOUBT_WINDOW);
}

/// A token whose expiry was assumed stays journaled past it, until it is revoked (removed),
/// whether recorded while running or found at start; one whose expiry is known goes.
#[tokio::test(start_paused = true)]
async fn tokens_of_assumed_lifetime_stay_past_it_until_removed() {
    let assumed = |fp: &str, secs: u64| Entry {
        lifetime_assumed: true,
        ..entry(fp, secs)
    };
    let tmp = tempfile::tempdir().unwrap();
    let j = Journal::start(tmp.path().to_path_buf(), vec![assumed("old", 0)]);
    j.record(assumed("aa", 60)).await.unwrap();
    j.record(entry("bb", 60)).await.unwrap();
    tokio::time::advance(CLOCK_DOUBT_WINDOW + Duration::from_secs(61)).await;
    j.record(entry("cc", 6000)).await.unwrap();
    assert_eq!(fingerprints(tmp.path()), ["old", "aa", "cc"]);
    j.remove(vec!["old".into(), "aa".into()]).await;
    j.flush().await;
    assert_eq!(fingerprints(tmp.path()), ["cc"]);
    // The flag survives the disk, and is left out where it is false.
    let text = std::fs::read_to_string(tmp.path().join("journal.log")).unwrap();
    assert!(!text.contains("lifetime_assumed\":false"), "{text}");
    let j = Journal::start(tmp.path().to_path_buf(), Vec::new());
    j.record(assumed("dd", 60)).await.unwrap();
    let loaded = load(tmp.path()).unwrap();
    assert!(
        loaded
            .iter()
            .any(|e| e.fingerprint == "dd" && e.lifetime_assumed)
    );
    assert!(
        loaded
            .iter()
            .all(|e| e.fingerprint == "dd" || !e.lifetime_assumed)
    );
}

#[tokio::test]
async fn a_removed_state_dir_is_locked_again_and_rewritten_at_the_next_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let j = Journal::start_locked(dir.clone(), Vec::new(), lock_state_dir(&dir).unwrap());
    j.record(entry("aa", 600)).await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(lock_state_dir(&dir).is_ok(), "nothing guards it now");
    std::fs::remove_dir_all(&dir).unwrap();
    j.record(entry("bb", 600)).await.unwrap();
    let on_disk: Vec<String> = load(&dir)
        .unwrap()
        .into_iter()
        .map(|e| e.fingerprint)
        .collect();
    assert_eq!(on_disk, vec!["aa", "bb"]);
    assert!(matches!(
        lock_state_dir(&dir),
        Err(JournalError::Locked { .. })
    ));
}

#[tokio::test(start_paused = true)]
#[allow(clippy::disallowed_methods)] // the writer's blocking thread runs in real time
async fn a_removed_state_dir_is_locked_again_without_a_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let j = Journal::start_locked(dir.clone(), Vec::new(), lock_state_dir(&dir).unwrap());
    j.record(entry("aa", 600)).await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    // Each pause lets a check run. Only read meanwhile: a lock taken here would be in the
    // writer's way.
    let fingerprints = || -> Vec<String> {
        load(&dir)
            .map(|es| es.into_iter().map(|e| e.fingerprint).collect())
            .unwrap_or_default()
    };
    for _ in 0..200 {
        tokio::time::sleep(LOCK_CHECK).await;
        if !fingerprints().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(fingerprints(), vec!["aa"]);
    assert!(matches!(
        lock_state_dir(&dir),
        Err(JournalError::Locked { .. })
    ));
}

/// Records are flushed before they are acknowledged; removals are not even written, and get
/// one write and flush within REMOVAL_FLUSH, or at once when asked, or with the next record.
#[tokio::test(start_paused = true)]
#[allow(clippy::disallowed_methods)] // the writer's blocking thread runs in real time
async fn removals_are_flushed_together_within_a_second_and_records_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let syncs = || {
        super::disk::SYNCS
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|m| m.get(&dir).copied())
            .unwrap_or(0)
    };
    let j = Journal::start(dir.clone(), Vec::new());
    for i in 0..10 {
        j.record(entry(&format!("r{i}"), 600)).await.unwrap();
    }
    // The first commit is a compaction; each record after it is flushed before its ack.
    assert_eq!(syncs(), 10);
    for i in 0..10 {
        j.remove(vec![format!("r{i}")]).await;
    }
    assert_eq!(syncs(), 10, "a removal waits for a flush of its own");
    assert_eq!(
        fingerprints(&dir).len(),
        10,
        "nor is it written before then: it waits in memory"
    );
    assert!(j.entries().await.is_empty(), "yet each is made");
    // One flush for all ten, once REMOVAL_FLUSH has passed.
    let mut waited = Duration::ZERO;
    while syncs() == 10 && waited < 100 * REMOVAL_FLUSH {
        tokio::time::sleep(REMOVAL_FLUSH / 10).await;
        waited += REMOVAL_FLUSH / 10;
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(syncs(), 11);
    assert!(waited >= REMOVAL_FLUSH, "flushed after {waited:?}");
    assert!(
        fingerprints(&dir).is_empty(),
        "all ten written with the flush"
    );
    tokio::time::sleep(10 * REMOVAL_FLUSH).await;
    assert_eq!(syncs(), 11, "nothing left to flush");
    // Asked for, the flush is made at once; with nothing waiting, none is.
    j.record(entry("a", 600)).await.unwrap();
    j.remove(vec!["a".into()]).await;
    assert_eq!(syncs(), 12);
    j.flush().await;
    assert_eq!(syncs(), 13);
    j.flush().await;
    assert_eq!(syncs(), 13);
    // A record flushes the removals before it too, and no flush of their own follows.
    j.record(entry("b", 600)).await.unwrap();
    j.remove(vec!["b".into()]).await;
    j.record(entry("c", 600)).await.unwrap();
    assert_eq!(syncs(), 15);
    tokio::time::sleep(10 * REMOVAL_FLUSH).await;
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(syncs(), 15);
    assert_eq!(fingerprints(&dir), ["c"]);
}

#[test]
fn debug_never_shows_the_token() {
    let e = entry("aa", 600);
    assert!(!format!("{e:?}").contains("tok-aa"));
}
