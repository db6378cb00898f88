//! High availability against a real OpenBao dev server: two and three instances of the built
//! binary share one config and store; one leads, the others stand by. A leader stopped by
//! SIGTERM hands over, one killed by SIGKILL is replaced when its lease runs out, and the
//! new leader carries on with the tokens in the store. The fake provider checks that each
//! set was issued one token in all, and that none is live once the last instance stops.
#![allow(clippy::disallowed_methods)] // integration tests live in real time

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::bao::{self, Bao};
use common::*;
use nix::sys::signal::Signal;
use tokenkeeper::devprovider::DevProvider;

/// The lease: short, so the tests are; a standby polls every quarter of it.
const LEASE: &str = "2s";

const SETS: [&str; 2] = ["orders", "vouchers"];

/// The shared config for instance `n` (only `state_dir` differs, as on separate machines).
fn instance_config(p: &DevProvider, b: &Bao, dir: &Path, n: usize) -> std::path::PathBuf {
    instance_config_with(p, b, dir, n, "")
}

/// [`instance_config`] with `set_keys` (a line of YAML, indented by four spaces) in each set.
fn instance_config_with(
    p: &DevProvider,
    b: &Bao,
    dir: &Path,
    n: usize,
    set_keys: &str,
) -> std::path::PathBuf {
    let token = bao::secret_file(dir, "bao-token", bao::ROOT);
    let top = format!(
        "shutdown_timeout: 15s\n{}ha: {{ store: bao, lease: {LEASE} }}\n",
        bao::stores_yaml(
            b,
            &format!("{{ token: {{ file: {} }} }}", token.display()),
            ""
        )
    );
    let sets: String = SETS
        .iter()
        .map(|name| {
            format!(
                "  - name: {name}\n    provider: dev\n    scopes: [{name}]\n    file: {{ path: {}/out/{name}.token }}\n    store: {{ name: bao, path: tokenkeeper/{name} }}\n{set_keys}",
                dir.display()
            )
        })
        .collect();
    let own = dir.join(format!("i{n}"));
    std::fs::create_dir_all(&own).unwrap();
    write_config(&own, &config(p, &own, &top, &sets))
}

fn start(cfg: &Path) -> Daemon {
    Daemon::spawn(
        cfg.parent().unwrap(),
        &["run", "-c", cfg.to_str().unwrap()],
        0o022,
        &[],
    )
}

const LEADING: &str = "leading: this instance holds the lease";

/// What every test here starts from: a folder for the members, a real OpenBao, and a provider
/// issuing 15-minute tokens.
async fn group() -> (
    tempfile::TempDir,
    Bao,
    tokenkeeper::devprovider::DevProvider,
) {
    let dir = tempfile::tempdir().unwrap();
    let b = Bao::start(dir.path()).await;
    let p = provider(Duration::from_secs(900)).await;
    (dir, b, p)
}

async fn store_tokens(b: &Bao) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for s in SETS {
        out.push(b.token(&format!("tokenkeeper/{s}")).await);
    }
    out
}

/// Wait until exactly one of `ds` logs that it leads; returns its index and how long it took.
async fn new_leader(ds: &[&Daemon], since: Instant) -> (usize, Duration) {
    let mut found = None;
    assert!(
        wait_until(PATIENCE, || {
            found = ds.iter().position(|d| d.output().contains(LEADING));
            found.is_some()
        })
        .await,
        "no standby took over"
    );
    let took = since.elapsed();
    let leaders = ds.iter().filter(|d| d.output().contains(LEADING)).count();
    assert_eq!(leaders, 1, "two instances lead at once");
    (found.unwrap_or_default(), took)
}

/// Whether `tokenkeeper status` soon shows `needle` (the status file follows within moments).
async fn status_shows(cfg: &Path, needle: &str) -> bool {
    wait_until(PATIENCE, || {
        tokenkeeper(&["status", "-c", cfg.to_str().unwrap()])
            .stdout
            .contains(needle)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_hand_over_at_sigterm_and_the_last_one_revokes() {
    let (dir, b, p) = group().await;
    let ca = instance_config(&p, &b, dir.path(), 0);
    let cb = instance_config(&p, &b, dir.path(), 1);
    let mut a = start(&ca);
    a.wait_for_log(LEADING).await;
    a.wait_for_log("ready: every set has a valid token").await;
    assert!(
        wait_until(PATIENCE, || p.issued_tokens().len() == 2).await,
        "{}",
        a.output()
    );
    let deadline = Instant::now() + PATIENCE;
    let before = loop {
        let now = store_tokens(&b).await;
        if now.iter().all(Option::is_some) {
            break now;
        }
        assert!(Instant::now() < deadline, "{}", a.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut bd = start(&cb);
    bd.wait_for_log("standing by").await;
    // Status names the leader, from the standby's side.
    assert!(
        status_shows(&cb, "is standby; leader: ").await,
        "{}",
        tokenkeeper(&["status", "-c", cb.to_str().unwrap()]).stdout
    );

    let t0 = Instant::now();
    a.signal(Signal::SIGTERM);
    let status = a.wait(PATIENCE).await;
    assert!(status.success(), "{}", a.output());
    assert!(
        a.output().contains("handing over instead of revoking"),
        "{}",
        a.output()
    );
    let (_, took) = new_leader(&[&bd], t0).await;
    eprintln!(
        "FAILOVER sigterm handover (2 instances): {} ms",
        took.as_millis()
    );
    bd.wait_for_log("reusing the token it already holds").await;
    // Nothing new was issued, nothing revoked: the same tokens serve on.
    assert_eq!(p.issued_tokens().len(), 2);
    assert!(p.revoked_tokens().is_empty(), "{:?}", p.revoked_tokens());
    assert_eq!(store_tokens(&b).await, before);
    assert!(
        status_shows(&cb, "is leader").await,
        "{}",
        tokenkeeper(&["status", "-c", cb.to_str().unwrap()]).stdout
    );

    // The last instance revokes and empties the store.
    bd.signal(Signal::SIGTERM);
    assert!(bd.wait(PATIENCE).await.success(), "{}", bd.output());
    assert!(p.live_tokens().is_empty(), "leaked: {:?}", p.live_tokens());
    assert_eq!(store_tokens(&b).await, vec![None, None]);
    assert_eq!(p.issued_tokens().len(), 2, "a set was issued twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_survive_a_sigkill_and_a_sigterm_with_one_issuer_per_set() {
    let (dir, b, p) = group().await;
    let cfgs: Vec<_> = (0..3)
        .map(|n| instance_config(&p, &b, dir.path(), n))
        .collect();
    let mut first = start(&cfgs[0]);
    first.wait_for_log(LEADING).await;
    first
        .wait_for_log("ready: every set has a valid token")
        .await;
    let mut others = vec![start(&cfgs[1]), start(&cfgs[2])];
    for d in &others {
        d.wait_for_log("standing by").await;
    }
    assert!(
        wait_until(PATIENCE, || p.issued_tokens().len() == 2).await,
        "{}",
        first.output()
    );
    // Let the store writes land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = store_tokens(&b).await;
    assert!(before.iter().all(Option::is_some));

    // The leader dies without a word: a standby takes over when the lease runs out.
    let t0 = Instant::now();
    first.signal(Signal::SIGKILL);
    let _ = first.wait(PATIENCE).await;
    let (i, took) = new_leader(&[&others[0], &others[1]], t0).await;
    eprintln!("FAILOVER sigkill (3 instances): {} ms", took.as_millis());
    others[i]
        .wait_for_log("reusing the token it already holds")
        .await;
    assert_eq!(p.issued_tokens().len(), 2, "the new leader issued early");
    assert_eq!(store_tokens(&b).await, before);

    // That leader is stopped while the third stands by: it hands over.
    let mut leader = others.remove(i);
    let last = others.remove(0);
    let t1 = Instant::now();
    leader.signal(Signal::SIGTERM);
    assert!(leader.wait(PATIENCE).await.success(), "{}", leader.output());
    let (_, took) = new_leader(&[&last], t1).await;
    eprintln!(
        "FAILOVER sigterm handover (3 instances): {} ms",
        took.as_millis()
    );
    last.wait_for_log("reusing the token it already holds")
        .await;
    assert_eq!(p.issued_tokens().len(), 2);
    assert!(p.revoked_tokens().is_empty(), "{:?}", p.revoked_tokens());

    let mut last = last;
    last.signal(Signal::SIGTERM);
    assert!(last.wait(PATIENCE).await.success(), "{}", last.output());
    assert!(p.live_tokens().is_empty(), "leaked: {:?}", p.live_tokens());
    assert_eq!(store_tokens(&b).await, vec![None, None]);
    assert_eq!(p.issued_tokens().len(), 2, "at most one issue per set");
}

/// How long a standby may take to lead once a lease claimed far ahead is in the store: the
/// lease believed for at most one lease period, then a quarter-lease poll, with a generous
/// margin for a loaded machine; the hostile lease itself would hold for years.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(4 * 2);

/// A lease written by another client of the store, expiring years from now, holds an instance
/// off for at most about one lease: it is believed only as far as a lease reaches. A member
/// record claiming years is no standby to hand over to: the daemon revokes at stop.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_claimed_far_ahead_is_believed_only_for_a_lease() {
    let (dir, b, p) = group().await;
    let ten_years_ms = 10 * 365 * 24 * 3600 * 1000_u64;
    let now_ms = u64::try_from(
        tokenkeeper::clock::now_wall()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let (status, v) = b
        .call(
            "POST",
            "secret/data/tokenkeeper/lease",
            Some(serde_json::json!({ "data": {
                "holder": "squatter\u{1b}]0;owned\u{7}",
                "expires_ms": now_ms + ten_years_ms,
                "lease_ms": 2000,
            } })),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    // And a standby that says it is here for years: at stop the daemon would hand over to it
    // and leave its tokens live.
    let (status, v) = b
        .call(
            "POST",
            "secret/data/tokenkeeper/lease-members/phantom",
            Some(serde_json::json!({ "data": { "expires_ms": now_ms + ten_years_ms } })),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let mut d = start(&instance_config(&p, &b, dir.path(), 0));
    d.wait_for_log("standing by").await;
    assert!(
        wait_until(TAKEOVER_LIMIT, || d.output().contains(LEADING)).await,
        "still standing by for the squatter:\n{}",
        d.output()
    );
    d.wait_for_log("ready: every set has a valid token").await;
    assert!(!d.output().contains('\u{1b}'), "{}", d.output());
    d.signal(Signal::SIGTERM);
    assert!(d.wait(PATIENCE).await.success(), "{}", d.output());
    assert!(p.live_tokens().is_empty(), "leaked: {:?}", p.live_tokens());
}

/// The member records in the store, by name.
async fn members(b: &Bao) -> Vec<String> {
    let (status, v) = b
        .call("LIST", "secret/metadata/tokenkeeper/lease-members", None)
        .await;
    assert!(status == 200 || status == 404, "list: {status} {v}");
    serde_json::from_value(v["data"]["keys"].clone()).unwrap_or_default()
}

/// How long a killed instance's member record may stay: its last expiry (one lease after its
/// last heartbeat) plus the two leases it is kept past it, plus the leader's once-a-lease
/// sweep, with a lease's margin for a loaded machine. Before the fix it stayed for good.
const MEMBER_GONE_LIMIT: Duration = Duration::from_secs(5 * 2);

/// A SIGKILLed instance cannot remove its member record; the leader removes it once it has
/// not heartbeated for a few leases, and keeps its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_members_record_is_expired() {
    let (dir, b, p) = group().await;
    let mut a = start(&instance_config(&p, &b, dir.path(), 0));
    a.wait_for_log(LEADING).await;
    let deadline = Instant::now() + PATIENCE;
    let dead = loop {
        let now = members(&b).await;
        if now.len() == 1 || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead.len(), 1, "the first instance's record: {dead:?}");
    let t0 = Instant::now();
    a.signal(Signal::SIGKILL);
    let _ = a.wait(PATIENCE).await;
    assert_eq!(
        members(&b).await,
        dead,
        "the killed instance's record stays"
    );

    let mut live = start(&instance_config(&p, &b, dir.path(), 1));
    new_leader(&[&live], t0).await;
    let deadline = t0 + MEMBER_GONE_LIMIT;
    let left = loop {
        let now = members(&b).await;
        if !now.contains(&dead[0]) || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !left.contains(&dead[0]),
        "{:?} still holds the dead member's record after {:?}:\n{}",
        left,
        t0.elapsed(),
        live.output()
    );
    eprintln!(
        "EXPIRED dead member record: {} ms after SIGKILL",
        t0.elapsed().as_millis()
    );
    assert_eq!(left.len(), 1, "the live leader's own record went: {left:?}");
    assert!(
        live.output().contains("removed the record of a member"),
        "{}",
        live.output()
    );
    live.signal(Signal::SIGTERM);
    assert!(live.wait(PATIENCE).await.success(), "{}", live.output());
}

/// `tokenkeeper revoke` run in the background with test credentials, bounded by PATIENCE.
/// Start the instance of `cfg` and wait until it leads with every set's token written; the
/// tokens it serves, as the store holds them.
async fn first_leader(b: &Bao, cfg: &Path) -> (Daemon, Vec<String>) {
    let a = start(cfg);
    a.wait_for_log(LEADING).await;
    a.wait_for_log("ready: every set has a valid token").await;
    let served = stored_tokens(b, &a).await;
    (a, served)
}

/// Start the instance of `cfg` and wait until it stands by with its first heartbeat written
/// (it names the leader only after that): a leader stopping from then on sees a standby to
/// hand over to.
async fn standing_by(cfg: &Path) -> Daemon {
    let d = start(cfg);
    d.wait_for_log("standing by leader=").await;
    d
}

/// SIGKILL `leader` and wait until one of `standbys` leads in its place.
async fn kill_and_replace(leader: &mut Daemon, standbys: &[&Daemon]) {
    let t0 = Instant::now();
    leader.signal(Signal::SIGKILL);
    let _ = leader.wait(PATIENCE).await;
    new_leader(standbys, t0).await;
}

async fn revoke_with(cfg: &Path) -> Output {
    let cfg = cfg.to_str().unwrap().to_string();
    tokio::task::spawn_blocking(move || run_bounded(&["revoke", "-c", &cfg], None))
        .await
        .unwrap()
}

/// The store's tokens once every set has one.
async fn stored_tokens(b: &Bao, d: &Daemon) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = store_tokens(b).await;
        if now.iter().all(Option::is_some) {
            return now.into_iter().flatten().collect();
        }
        assert!(Instant::now() < deadline, "{}", d.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After a SIGKILLed leader is replaced, `tokenkeeper revoke` with its config (what the docs
/// advise after a crash) leaves alone the tokens the new leader adopted and serves, and the
/// files it writes. Once the whole group is gone, the same command with the last leader's
/// config revokes them: the new leader journaled what it adopted, so nobody's crash leaves
/// them to nobody.
/// Before the fix it revoked the new leader's tokens and removed its files.
#[tokio::test(flavor = "multi_thread")]
async fn revoke_after_a_crash_leaves_the_new_leaders_tokens_live() {
    let (dir, b, p) = group().await;
    let ca = instance_config(&p, &b, dir.path(), 0);
    let cb = instance_config(&p, &b, dir.path(), 1);
    let (mut a, served) = first_leader(&b, &ca).await;
    let mut bd = standing_by(&cb).await;

    kill_and_replace(&mut a, &[&bd]).await;
    assert!(
        wait_until(PATIENCE, || bd
            .output()
            .matches("reusing the token it already holds")
            .count()
            == SETS.len())
        .await,
        "{}",
        bd.output()
    );

    let out = revoke_with(&ca).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    for (set, token) in SETS.iter().zip(&served) {
        assert!(
            p.is_live(token),
            "{set}: the new leader's token was revoked:\n{}{}",
            out.stdout,
            out.stderr
        );
        let file = dir.path().join(format!("out/{set}.token"));
        assert_eq!(
            read(&file).as_deref().map(str::trim),
            Some(token.as_str()),
            "{set}: the new leader's file"
        );
        assert!(
            out.stdout.contains(&format!("{set}: left live")),
            "{}",
            out.stdout
        );
    }
    assert!(p.revoked_tokens().is_empty(), "{:?}", p.revoked_tokens());
    assert_eq!(
        store_tokens(&b).await,
        served.iter().cloned().map(Some).collect::<Vec<_>>()
    );
    // Still the new leader's: asked again, the dead instance's journal leaves them again.
    let again = revoke_with(&ca).await;
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(
        again.stdout.contains("0 revoked, 0 failed, 2 left live"),
        "{}",
        again.stdout
    );
    assert!(bd.output().contains(LEADING) && bd.child.try_wait().unwrap().is_none());

    // The whole group is gone: nobody serves them, and the last leader's revoke revokes them.
    bd.signal(Signal::SIGKILL);
    let _ = bd.wait(PATIENCE).await;
    let out = revoke_with(&cb).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(
        p.live_tokens().is_empty(),
        "leaked: {:?}\n{}",
        p.live_tokens(),
        out.stdout
    );
    assert_eq!(
        p.issued_tokens().len(),
        SETS.len(),
        "a set was issued twice"
    );
    // Nor does the store go on handing them out: each path that held a revoked token is gone.
    assert_eq!(
        store_tokens(&b).await,
        vec![None; SETS.len()],
        "{}",
        out.stdout
    );
    for set in SETS {
        assert!(
            out.stdout
                .contains(&format!("{set}: removed it from the store")),
            "{}",
            out.stdout
        );
    }
}

/// When the store cannot say whether another member serves a crashed leader's tokens,
/// `tokenkeeper revoke` revokes none of them (one a live leader serves would be cut off from
/// every reader of the store) and fails, keeping them journaled; run again once the store
/// answers and no member serves them, it revokes them. Before the fix it revoked them blind.
#[tokio::test(flavor = "multi_thread")]
async fn revoke_keeps_what_a_silent_store_cannot_vouch_for_until_it_answers() {
    let (dir, b, p) = group().await;
    let ca = instance_config(&p, &b, dir.path(), 0);
    let (mut a, served) = first_leader(&b, &ca).await;
    a.signal(Signal::SIGKILL);
    let _ = a.wait(PATIENCE).await;

    b.seal().await;
    let out = revoke_with(&ca).await;
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    for (set, token) in SETS.iter().zip(&served) {
        assert!(p.is_live(token), "{set}: revoked blind:\n{}", out.stdout);
        assert!(
            out.stdout.contains(&format!("{set}: NOT revoked")),
            "{}",
            out.stdout
        );
    }
    assert!(p.revoked_tokens().is_empty(), "{:?}", p.revoked_tokens());

    b.unseal().await;
    let out = revoke_with(&ca).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("2 revoked, 0 failed"), "{}", out.stdout);
    assert!(p.live_tokens().is_empty(), "leaked: {:?}", p.live_tokens());
}

/// Each set's store metadata (its versions and when they changed): any write changes it.
async fn store_metadata(b: &Bao) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for s in SETS {
        let m = b.metadata(&format!("tokenkeeper/{s}")).await;
        out.push(serde_json::json!({
            "current_version": m["current_version"],
            "updated_time": m["updated_time"],
        }));
    }
    out
}

/// What a leader logs as its store writer deals with an adopted token: a write, or none.
const WRITTEN: &str = "token written to the store";
const UNCHANGED: &str = "the store already holds the token";

/// Wait until `d`'s store writers have dealt with every set's adopted token.
async fn store_settled(d: &Daemon) {
    assert!(
        wait_until(PATIENCE, || {
            let out = d.output();
            out.matches(WRITTEN).count() + out.matches(UNCHANGED).count() >= SETS.len()
        })
        .await,
        "{}",
        d.output()
    );
}

/// A take-over reuses the tokens the store holds and writes none of them back: the entries
/// are what the new leader would write (same token, same times), so their versions and
/// metadata stay as they were. Before the fix each entry was written again, with a new
/// `written_at`: four requests a set, and the refresh schedule moved.
#[tokio::test(flavor = "multi_thread")]
async fn a_take_over_writes_no_unchanged_entry() {
    let (dir, b, p) = group().await;
    let (mut a, served) = first_leader(&b, &instance_config(&p, &b, dir.path(), 0)).await;
    store_settled(&a).await;
    let before = store_metadata(&b).await;
    let mut bd = standing_by(&instance_config(&p, &b, dir.path(), 1)).await;

    kill_and_replace(&mut a, &[&bd]).await;
    store_settled(&bd).await;
    assert_eq!(
        bd.output().matches(WRITTEN).count(),
        0,
        "the new leader wrote unchanged entries:\n{}",
        bd.output()
    );
    assert_eq!(store_metadata(&b).await, before, "the entries were written");
    assert_eq!(
        store_tokens(&b).await,
        served.into_iter().map(Some).collect::<Vec<_>>()
    );
    assert_eq!(p.issued_tokens().len(), SETS.len());
    stop_clean(&mut bd).await;
    assert!(p.live_tokens().is_empty(), "leaked: {:?}", p.live_tokens());
}

/// How far apart two leaders' refresh times for one token may be: the store keeps times to
/// the second, and the first leader's own time is not rounded. Before the fix each take-over
/// moved it by nine tenths of the time since the last (with `at: 10%`), over 2 s a take-over.
const SCHEDULE_TOLERANCE: Duration = Duration::from_millis(1500);

/// Each set's next refresh as `d`'s status shows it, once it shows one for every set.
async fn next_refreshes(cfg: &Path) -> Vec<SystemTime> {
    let mut found = Vec::new();
    let shown = wait_until(PATIENCE, || {
        let v = status_json(cfg);
        found = SETS
            .iter()
            .filter_map(|s| {
                let set = v["sets"].as_array()?.iter().find(|x| x["name"] == *s)?;
                humantime::parse_rfc3339_weak(set["next_refresh_at"].as_str()?).ok()
            })
            .collect();
        found.len() == SETS.len()
    })
    .await;
    assert!(
        shown,
        "{}",
        tokenkeeper(&["status", "--json", "-c", cfg.to_str().unwrap()]).stdout
    );
    found
}

fn apart(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b)
        .or_else(|_| b.duration_since(a).map_err(|_| ()))
        .unwrap_or_default()
}

/// Three take-overs in a row (each leader SIGKILLed): every new leader schedules each
/// token's refresh when the first leader did, from the issue time the store keeps.
#[tokio::test(flavor = "multi_thread")]
async fn repeated_take_overs_keep_the_refresh_schedule() {
    let (dir, b, p) = group().await;
    // Early in the lifetime and without jitter: a moved written time moves the refresh by nine
    // tenths of it, and the first leader's schedule is exactly what the store implies.
    let keys = "    refresh: { at: 10%, jitter: 0% }\n";
    let cfgs: Vec<_> = (0..4)
        .map(|n| instance_config_with(&p, &b, dir.path(), n, keys))
        .collect();
    let mut leader = start(&cfgs[0]);
    leader.wait_for_log(LEADING).await;
    leader
        .wait_for_log("ready: every set has a valid token")
        .await;
    stored_tokens(&b, &leader).await;
    store_settled(&leader).await;
    let first = next_refreshes(&cfgs[0]).await;
    let mut standbys: Vec<(Daemon, usize)> = (1..4).map(|n| (start(&cfgs[n]), n)).collect();
    for (d, _) in &standbys {
        d.wait_for_log("standing by").await;
    }
    for round in 1..=3 {
        let t0 = Instant::now();
        leader.signal(Signal::SIGKILL);
        let _ = leader.wait(PATIENCE).await;
        let ds: Vec<&Daemon> = standbys.iter().map(|(d, _)| d).collect();
        let (i, _) = new_leader(&ds, t0).await;
        let (next, n) = standbys.remove(i);
        leader = next;
        assert!(
            wait_until(PATIENCE, || leader
                .output()
                .matches("reusing the token it already holds")
                .count()
                == SETS.len())
            .await,
            "{}",
            leader.output()
        );
        store_settled(&leader).await;
        let now = next_refreshes(&cfgs[n]).await;
        for ((set, a), b) in SETS.iter().zip(&first).zip(&now) {
            assert!(
                apart(*a, *b) <= SCHEDULE_TOLERANCE,
                "take-over {round}, {set}: the first leader refreshes at {}, this one at {}",
                humantime::format_rfc3339_millis(*a),
                humantime::format_rfc3339_millis(*b)
            );
        }
    }
    assert_eq!(
        p.issued_tokens().len(),
        SETS.len(),
        "a set was issued again"
    );
    stop_clean(&mut leader).await;
}

/// A crashed member restarted with its journal (the other path that acts on journaled tokens)
/// stands by while another member serves them, and once it leads again reuses them from the
/// store: nothing is revoked or issued on the way, and its last stop revokes them all.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_member_revokes_nothing_another_member_served() {
    let (dir, b, p) = group().await;
    let ca = instance_config(&p, &b, dir.path(), 0);
    let cb = instance_config(&p, &b, dir.path(), 1);
    let (mut a, served) = first_leader(&b, &ca).await;
    let mut bd = standing_by(&cb).await;
    kill_and_replace(&mut a, &[&bd]).await;
    store_settled(&bd).await;

    // Restarted on its journal, it stands by and revokes nothing the leader serves.
    let mut again = standing_by(&ca).await;
    assert!(p.revoked_tokens().is_empty(), "{:?}", p.revoked_tokens());
    let t1 = Instant::now();
    bd.signal(Signal::SIGTERM);
    assert!(bd.wait(PATIENCE).await.success(), "{}", bd.output());
    new_leader(&[&again], t1).await;
    assert!(
        wait_until(PATIENCE, || again
            .output()
            .matches("reusing the token it already holds")
            .count()
            == SETS.len())
        .await,
        "{}\n--- the leader it took over from:\n{}",
        again.output(),
        bd.output()
    );
    for token in &served {
        assert!(p.is_live(token), "{}", again.output());
    }
    assert!(p.revoked_tokens().is_empty(), "{:?}", p.revoked_tokens());
    assert_eq!(
        p.issued_tokens().len(),
        SETS.len(),
        "a set was issued again"
    );
    stop_clean(&mut again).await;
    assert!(p.live_tokens().is_empty(), "leaked: {:?}", p.live_tokens());
}

/// The leader `revoke` names is whatever a writer of the lease put there: it reaches the
/// terminal escaped. Here a client of the store keeps renewing a lease under a name with an
/// escape sequence while the crashed leader's config is revoked.
#[tokio::test(flavor = "multi_thread")]
async fn revoke_names_a_leader_with_escape_sequences_escaped() {
    let (dir, b, p) = group().await;
    let ca = instance_config(&p, &b, dir.path(), 0);
    let (mut a, served) = first_leader(&b, &ca).await;
    a.signal(Signal::SIGKILL);
    let _ = a.wait(PATIENCE).await;

    let renewing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let squatter = {
        let (addr, renewing) = (b.addr(), std::sync::Arc::clone(&renewing));
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while renewing.load(std::sync::atomic::Ordering::SeqCst) {
                let now_ms = u64::try_from(
                    tokenkeeper::clock::now_wall()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis(),
                )
                .unwrap();
                let body = serde_json::json!({ "data": {
                    "holder": "evil\u{1b}]0;owned\u{7}",
                    "expires_ms": now_ms + 2000,
                    "lease_ms": 2000,
                } });
                let _ = http
                    .post(format!("{addr}/v1/secret/data/tokenkeeper/lease"))
                    .header("X-Vault-Token", bao::ROOT)
                    .body(body.to_string())
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let out = revoke_with(&ca).await;
    renewing.store(false, std::sync::atomic::Ordering::SeqCst);
    let _ = squatter.await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("left live"), "{}", out.stdout);
    assert!(!out.stdout.contains('\u{1b}'), "{:?}", out.stdout);
    assert!(!out.stdout.contains('\u{7}'), "{:?}", out.stdout);
    for token in &served {
        assert!(p.is_live(token));
    }
}
