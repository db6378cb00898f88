use super::*;
use std::path::Path;
use std::time::SystemTime;
use tokio::time::Instant;

const S: fn(u64) -> Duration = Duration::from_secs;

fn fresh(next: Instant) -> SetState {
    SetState::Fresh {
        fingerprint: "abcd1234".into(),
        expires_at: next + S(300),
        next_refresh: next,
    }
}

#[tokio::test(start_paused = true)]
async fn the_board_follows_each_sets_state_and_counters() {
    let board = Board::new();
    let a = board.register("a", "vf");
    let b = board.register("b", "vf");
    let now = crate::clock::now_wall();
    let snap = board.snapshot(now);
    assert_eq!(snap.phase, Phase::Starting);
    assert_eq!(
        snap.sets.iter().map(|s| s.state).collect::<Vec<_>>(),
        vec![SetPhase::Starting, SetPhase::Starting]
    );
    assert_eq!(summary(&snap, now), "starting: 0 of 2 sets have a token");

    a.stats(|s| {
        s.issue_started();
        s.issue_succeeded();
        s.written("abcd1234", now + S(900), Instant::now() + S(594));
    });
    a.state(fresh(Instant::now() + S(594)));
    b.stats(|s| s.issue_failed("HTTP 503".into(), Instant::now() + S(2)));
    board.set_phase(Phase::Running);
    let snap = board.snapshot(now);
    let sa = &snap.sets[0];
    assert_eq!(sa.state, SetPhase::Fresh);
    assert_eq!(sa.fingerprint.as_deref(), Some("abcd1234"));
    assert_eq!(sa.tokens_issued, 1);
    let sb = &snap.sets[1];
    assert_eq!(sb.state, SetPhase::Failing);
    assert_eq!(sb.last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(sb.issue_failures, 1);
    assert_eq!(
        summary(&snap, now),
        "1 of 2 tokens fresh; b failing, next refresh in 2s"
    );

    a.stats(SetStats::issue_started);
    assert_eq!(board.snapshot(now).sets[0].state, SetPhase::Refreshing);
    a.stats(SetStats::token_expired);
    a.state(SetState::Failing {
        has_token: false,
        error: "token expired with no replacement".into(),
    });
    let snap = board.snapshot(now);
    assert_eq!(snap.sets[0].state, SetPhase::Expired);
    assert_eq!(snap.sets[0].expires_at, None);

    board.remove("b");
    assert_eq!(board.snapshot(now).sets.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn every_change_wakes_the_reporter() {
    let board = Board::new();
    let report = board.register("a", "vf");
    // The registration itself is a change.
    tokio::time::timeout(S(1), board.changed()).await.unwrap();
    report.stats(|s| s.revoke_result(true));
    tokio::time::timeout(S(1), board.changed()).await.unwrap();
    report.state(SetState::Stopped);
    tokio::time::timeout(S(1), board.changed()).await.unwrap();
    // A change that changes nothing wakes no one.
    report.stats_if(|_| false);
    assert!(
        tokio::time::timeout(S(1), board.changed()).await.is_err(),
        "woken with nothing changed"
    );
}

fn snap_at(now: SystemTime) -> Snapshot {
    Snapshot {
        version: FORMAT_VERSION,
        pid: 4242,
        phase: Phase::Running,
        started_at: now - S(7260),
        heartbeat_at: now - S(3),
        heartbeat_every_secs: 10,
        ha: None,
        stores: Vec::new(),
        metrics_error: None,
        sets: vec![
            SetSnapshot {
                name: "orders-sync".into(),
                provider: "voucherify-eu".into(),
                state: SetPhase::Fresh,
                fingerprint: Some("abcd1234".into()),
                expires_at: Some(now + S(890)),
                next_refresh_at: Some(now + S(492)),
                last_error: None,
                last_error_at: None,
                tokens_issued: 3,
                issue_failures: 0,
                tokens_revoked: 2,
                revoke_failures: 0,
                tokens_refused: 0,
                journal_failures: 0,
                live_tokens: 1,
            },
            SetSnapshot {
                name: "reports".into(),
                provider: "voucherify-eu".into(),
                state: SetPhase::Failing,
                fingerprint: Some("0011aabb".into()),
                expires_at: Some(now + S(100)),
                next_refresh_at: Some(now + S(4)),
                last_error: Some("provider voucherify-eu: HTTP 503".into()),
                last_error_at: Some(now - S(65)),
                tokens_issued: 1,
                issue_failures: 2,
                tokens_revoked: 0,
                revoke_failures: 0,
                tokens_refused: 0,
                journal_failures: 0,
                live_tokens: 1,
            },
        ],
    }
}

#[test]
fn the_file_round_trips_and_says_who_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    // A state directory that does not exist yet is created, for the owner alone.
    let path = dir.path().join("state/status.json");
    let now = humantime::parse_rfc3339("2030-01-01T00:00:00.250Z").unwrap();
    let snap = snap_at(now);
    write_status_file(&path, &snap).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()) & !0o700, 0);
    assert_eq!(read_status_file(&path).unwrap(), snap);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["pid"], 4242);
    assert_eq!(v["heartbeat_at"], "2029-12-31T23:59:57.250Z");
    assert_eq!(v["sets"][0]["state"], "fresh");
    assert_eq!(v["sets"][0]["expires_at"], "2030-01-01T00:14:50.250Z");
}

#[test]
fn a_file_that_is_not_ours_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("status.json");
    std::fs::write(&path, "{\"hello\": 1}").unwrap();
    let e = read_status_file(&path).unwrap_err();
    assert!(matches!(e, StatusError::Parse { .. }));
    assert!(e.to_string().contains("status.json"));
}

#[test]
fn a_status_file_that_is_a_fifo_or_a_device_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("status.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Neither blocks (nobody writes the FIFO) nor reads without end (`/dev/zero`).
    let zero = dir.path().join("zero.json");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    for path in [fifo, zero] {
        let e = read_status_file(&path).unwrap_err();
        let text = crate::error_chain(&e);
        assert!(text.contains("not a regular file"), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
    }
}

#[test]
fn liveness_needs_both_the_pid_and_a_recent_heartbeat() {
    let now = crate::clock::now_wall();
    let mut s = snap_at(now);
    assert_eq!(liveness(&s, now, |_| true), Liveness::Running);
    assert_eq!(liveness(&s, now, |_| false), Liveness::Gone);
    assert_eq!(
        liveness(&s, now + S(40), |_| true),
        Liveness::NotResponding(S(43))
    );
    s.phase = Phase::Stopped;
    assert_eq!(liveness(&s, now, |_| false), Liveness::Stopped);
    assert!(pid_alive(std::process::id()));
}

#[test]
fn the_table_is_readable() {
    let now = crate::clock::now_wall();
    let s = snap_at(now);
    let table = render_table(&s, &Liveness::Running, now);
    let expected = "\
tokenkeeper running (pid 4242, up 2h1m), 1 of 2 tokens fresh; reports failing, next refresh in 4s; heartbeat 3s ago
SET          PROVIDER       STATE    TOKEN     EXPIRES IN  NEXT REFRESH  ISSUED  LAST ERROR
orders-sync  voucherify-eu  fresh    abcd1234  14m50s      8m12s         3       -
reports      voucherify-eu  failing  0011aabb  1m40s       4s            1       1m5s ago: provider voucherify-eu: HTTP 503
";
    assert_eq!(table, expected);
    let gone = render_table(&s, &Liveness::Gone, now);
    assert!(
        gone.starts_with("tokenkeeper is not running: pid 4242 is gone without a clean stop"),
        "{gone}"
    );
}

#[test]
fn json_adds_the_verdict_and_countdowns() {
    let now = crate::clock::now_wall();
    let s = snap_at(now);
    let v = render_json(&s, &Liveness::Running, now);
    assert_eq!(v["running"], true);
    assert_eq!(v["sets"][0]["expires_in_secs"], 890);
    assert_eq!(v["sets"][1]["next_refresh_in_secs"], 4);
    assert_eq!(
        v["sets"][1]["last_error"],
        "provider voucherify-eu: HTTP 503"
    );
    let v = render_json(&s, &Liveness::NotResponding(S(45)), now);
    assert_eq!(v["running"], false);
    assert_eq!(v["liveness"], "not_responding");
    assert!(v["message"].as_str().unwrap().contains("45s old"));
}

#[test]
fn summary_is_one_short_line() {
    let now = crate::clock::now_wall();
    let mut s = snap_at(now);
    s.sets[1].state = SetPhase::Fresh;
    s.sets.push(SetSnapshot {
        name: "third".into(),
        ..s.sets[0].clone()
    });
    s.sets[1].next_refresh_at = Some(now + S(600));
    assert_eq!(summary(&s, now), "3 tokens fresh, next refresh in 8m12s");
    s.phase = Phase::Stopping;
    assert_eq!(summary(&s, now), "stopping: revoking every token");
}

#[test]
fn short_durations() {
    assert_eq!(short(S(0)), "0s");
    assert_eq!(short(S(45)), "45s");
    assert_eq!(short(S(492)), "8m12s");
    assert_eq!(short(S(3720)), "1h2m");
    assert_eq!(short(S(90000)), "1d1h");
}
