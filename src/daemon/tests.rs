use super::*;
use crate::budget::Budget;
use crate::config::OnShutdown;
use crate::journal::CLOCK_DOUBT_WINDOW;
use crate::provider::Introspection;
use crate::provider::{Issued, Revocation};
use crate::schedule::RefreshPolicy;
use crate::secret::Secret;
use crate::sink::{FileConfig, FileFormat, SinkError};
use crate::sink::{IssuedMeta, TokenSink};
use crate::status::SetReport;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tokio::sync::oneshot;

/// A provider whose every call is recorded with the (paused) time it happened.
#[derive(Default)]
struct Mock {
    s: Mutex<MockState>,
}

#[derive(Default)]
struct MockState {
    lifetime: Duration,
    issue_delay: Duration,
    next: u32,
    issued: Vec<(String, Instant)>,
    revoked: Vec<(String, Instant)>,
    /// Failures to return from the next issue calls (status codes; 0 = transport-like 503).
    fail: VecDeque<u16>,
    fail_all: Option<u16>,
    fail_revoke: bool,
    /// Every issue call, failed or not.
    attempts: Vec<Instant>,
    /// What `revocation()` answers; `None` is the trait's default.
    policy: Option<Revocation>,
    /// Answer with the last token issued again instead of a new one.
    repeat: bool,
    /// Answers give no lifetime: `lifetime` is the default assumed for them.
    assumed: bool,
    /// What `introspect()` answers; `None` is Inactive.
    introspection: Option<Introspection>,
    /// What `stop_turns()` answers.
    turns: Option<Arc<tokio::sync::Semaphore>>,
    /// How long a revocation takes, and how many were under way at once: now and at most.
    revoke_delay: Duration,
    revoking_now: usize,
    most_revoking: usize,
}

impl Mock {
    fn new(lifetime: Duration) -> Arc<Mock> {
        let m = Mock::default();
        m.s.lock().unwrap().lifetime = lifetime;
        Arc::new(m)
    }
    fn issued(&self) -> Vec<(String, Instant)> {
        self.s.lock().unwrap().issued.clone()
    }
    fn revoked(&self) -> Vec<(String, Instant)> {
        self.s.lock().unwrap().revoked.clone()
    }
    fn live(&self) -> Vec<String> {
        let s = self.s.lock().unwrap();
        let now = Instant::now();
        s.issued
            .iter()
            .filter(|(t, at)| *at + s.lifetime > now && !s.revoked.iter().any(|(r, _)| r == t))
            .map(|(t, _)| t.clone())
            .collect()
    }
}

fn failure(status: u16) -> ProviderError {
    if status >= 500 || status == 429 {
        ProviderError::Unavailable {
            operation: "token request",
            status,
            detail: String::new(),
            retry_after: None,
        }
    } else {
        ProviderError::Refused {
            operation: "token request",
            status,
            detail: String::new(),
        }
    }
}

impl TokenProvider for Mock {
    async fn issue(&self, _scopes: &[String]) -> Result<Issued, ProviderError> {
        let issued_at = Instant::now();
        let (delay, fail) = {
            let mut s = self.s.lock().unwrap();
            s.attempts.push(issued_at);
            let fail = s.fail.pop_front().or(s.fail_all);
            (s.issue_delay, fail)
        };
        if let Some(status) = fail {
            return Err(failure(status));
        }
        let (token, lifetime, assumed) = {
            let mut s = self.s.lock().unwrap();
            if !s.repeat || s.next == 0 {
                s.next += 1;
            }
            let token = format!("tok{}", s.next);
            s.issued.push((token.clone(), issued_at));
            (token, s.lifetime, s.assumed)
        };
        // Minted first, answered later: like a slow server.
        tokio::time::sleep(delay).await;
        Ok(Issued {
            token: Secret::new(token),
            token_type: "Bearer".into(),
            scope: "api".into(),
            issued_at,
            lifetime,
            lifetime_assumed: assumed,
        })
    }
    async fn revoke(&self, token: &Secret) -> Result<(), ProviderError> {
        let delay = {
            let mut s = self.s.lock().unwrap();
            if s.fail_revoke {
                return Err(failure(403));
            }
            s.revoking_now += 1;
            s.most_revoking = s.most_revoking.max(s.revoking_now);
            s.revoke_delay
        };
        tokio::time::sleep(delay).await;
        let mut s = self.s.lock().unwrap();
        s.revoking_now -= 1;
        s.revoked.push((token.expose().to_string(), Instant::now()));
        Ok(())
    }
    async fn introspect(&self, _token: &Secret) -> Result<Introspection, ProviderError> {
        Ok(self
            .s
            .lock()
            .unwrap()
            .introspection
            .unwrap_or(Introspection::Inactive))
    }
    fn revocation(&self) -> Revocation {
        self.s.lock().unwrap().policy.unwrap_or(Revocation::Always)
    }
    fn stop_turns(&self) -> Option<Arc<tokio::sync::Semaphore>> {
        self.s.lock().unwrap().turns.clone()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Write(String, Instant),
    Remove(Instant),
}

#[derive(Clone, Default)]
struct MemSink {
    ev: Arc<Mutex<Vec<Ev>>>,
}

impl MemSink {
    fn events(&self) -> Vec<Ev> {
        self.ev.lock().unwrap().clone()
    }
    /// What a reader would see now.
    fn content(&self) -> Option<String> {
        match self.ev.lock().unwrap().last() {
            Some(Ev::Write(t, _)) => Some(t.clone()),
            _ => None,
        }
    }
}

impl TokenSink for MemSink {
    async fn write(&self, token: &Secret, _m: &IssuedMeta) -> Result<(), SinkError> {
        self.ev
            .lock()
            .unwrap()
            .push(Ev::Write(token.expose().into(), Instant::now()));
        Ok(())
    }
    async fn remove(&self) -> Result<(), SinkError> {
        self.ev.lock().unwrap().push(Ev::Remove(Instant::now()));
        Ok(())
    }
    fn location(&self) -> String {
        format!("{:p}", Arc::as_ptr(&self.ev))
    }
}

fn set_cfg(at: f64, jitter: f64) -> SetConfig {
    SetConfig {
        name: "s".into(),
        provider: "p".into(),
        scopes: vec!["api".into()],
        file: Some(FileConfig {
            path: "/nonexistent/s.token".into(),
            format: FileFormat::Raw,
            mode: 0o640,
            owner: None,
            group: None,
        }),
        refresh: RefreshPolicy {
            at,
            jitter,
            min_interval: Duration::from_secs(1),
        },
        on_shutdown: OnShutdown::Revoke,
        revoke_superseded_after: Duration::from_secs(60),
        rotate: None,
        on_rotate: None,
        never_revoke: false,
        store: None,
    }
}

struct Harness {
    stop: oneshot::Sender<Order<MemSink>>,
    rotate: broadcast::Sender<()>,
    task: tokio::task::JoinHandle<SetOutcome>,
    sink: MemSink,
}

fn start(cfg: SetConfig, p: &Arc<Mock>, u: f64) -> Harness {
    start_from(cfg, p, u, Start::default())
}

fn start_from(cfg: SetConfig, p: &Arc<Mock>, u: f64, begin: Start<MemSink>) -> Harness {
    start_with(cfg, p, u, begin, Journal::memory().0, SetReport::detached())
}

/// [`start_from`] with the set's journal and report given.
fn start_with(
    cfg: SetConfig,
    p: &Arc<Mock>,
    u: f64,
    begin: Start<MemSink>,
    journal: Journal,
    report: SetReport,
) -> Harness {
    let (stop, stop_rx) = oneshot::channel();
    let (rotate, rotate_rx) = broadcast::channel(4);
    let sink = MemSink::default();
    let task = SetTask {
        cfg: Arc::new(cfg),
        provider: Arc::clone(p),
        sink: sink.clone(),
        jitter: Arc::new(move || u),
        stop: stop_rx,
        rotate: rotate_rx,
        journal,
        budget: Budget::new(
            "p",
            1000,
            crate::budget::IssueRate {
                per_second: 1000.0,
                burst: 1000,
            },
        ),
        config_hash: "h".into(),
        start: Some(Box::new(begin)),
        report,
        ready: None,
    };
    let task = tokio::spawn(task.run());
    Harness {
        stop,
        rotate,
        task,
        sink,
    }
}

impl Harness {
    async fn stop(self, timeout: Duration) -> (SetOutcome, MemSink) {
        let _ = self.stop.send(Order::Revoke {
            deadline: Instant::now() + timeout,
            keep_file: false,
        });
        (self.task.await.unwrap(), self.sink)
    }
}

const S: fn(u64) -> Duration = Duration::from_secs;

#[tokio::test(start_paused = true)]
async fn refreshes_at_the_planned_time_and_revokes_the_superseded_token_later() {
    let t0 = Instant::now();
    let p = Mock::new(S(900));
    let h = start(set_cfg(0.66, 0.10), &p, 0.0);
    tokio::time::sleep(S(1300)).await;
    let issued: Vec<Duration> = p.issued().iter().map(|(_, at)| *at - t0).collect();
    // u = 0: exactly 66 % of 900 s = 594 s apart.
    assert_eq!(issued, vec![S(0), S(594), S(1188)]);
    let revoked: Vec<(String, Duration)> = p
        .revoked()
        .iter()
        .map(|(t, at)| (t.clone(), *at - t0))
        .collect();
    assert_eq!(
        revoked,
        vec![("tok1".into(), S(654)), ("tok2".into(), S(1248))]
    );
    assert_eq!(h.sink.content().as_deref(), Some("tok3"));
    // At most two live tokens at any time.
    assert_eq!(p.live(), vec!["tok3".to_string()]);
    let (outcome, sink) = h.stop(S(5)).await;
    assert_eq!(outcome.revoked.len(), 1);
    assert!(outcome.failed.is_empty());
    assert!(p.live().is_empty());
    assert!(matches!(sink.events().last(), Some(Ev::Remove(_))));
}

#[tokio::test(start_paused = true)]
async fn jitter_brings_the_refresh_forward() {
    let t0 = Instant::now();
    let p = Mock::new(S(900));
    let h = start(set_cfg(0.66, 0.10), &p, 0.5);
    tokio::time::sleep(S(600)).await;
    let issued: Vec<Duration> = p.issued().iter().map(|(_, at)| *at - t0).collect();
    // 594 s − 0.5 × 90 s = 549 s.
    assert_eq!(issued, vec![S(0), S(549)]);
    h.stop(S(5)).await;
}

#[tokio::test(start_paused = true)]
async fn an_outage_keeps_the_token_until_it_expires_then_removes_it_and_recovers() {
    let t0 = Instant::now();
    let p = Mock::new(S(100));
    let h = start(set_cfg(0.5, 0.0), &p, 1.0);
    tokio::time::sleep(S(1)).await;
    p.s.lock().unwrap().fail_all = Some(503);
    // Retries from 50 s on fail; the token stays in place until 100 s.
    tokio::time::sleep(S(98)).await;
    assert_eq!(h.sink.content().as_deref(), Some("tok1"));
    tokio::time::sleep(S(2)).await;
    assert_eq!(h.sink.content(), None, "{:?}", h.sink.events());
    let removed_at = h
        .sink
        .events()
        .iter()
        .find_map(|e| match e {
            Ev::Remove(at) => Some(*at - t0),
            _ => None,
        })
        .unwrap();
    assert_eq!(removed_at, S(100));
    p.s.lock().unwrap().fail_all = None;
    // Backoff is capped at 60 s, so a new token is in place within a minute.
    tokio::time::sleep(S(61)).await;
    assert_eq!(h.sink.content().as_deref(), Some("tok2"));
    h.stop(S(5)).await;
}

#[tokio::test(start_paused = true)]
async fn transient_failures_back_off_exponentially() {
    let t0 = Instant::now();
    let p = Mock::new(S(900));
    p.s.lock().unwrap().fail = VecDeque::from(vec![503, 503, 503, 503]);
    // u = 1: the backoff ceiling itself: 1, 2, 4, 8 s.
    let h = start(set_cfg(0.66, 0.0), &p, 1.0);
    tokio::time::sleep(S(20)).await;
    let issued: Vec<Duration> = p.issued().iter().map(|(_, at)| *at - t0).collect();
    assert_eq!(issued, vec![S(15)]);
    h.stop(S(5)).await;
}

#[tokio::test(start_paused = true)]
async fn refusals_are_retried_slowly() {
    let p = Mock::new(S(900));
    p.s.lock().unwrap().fail_all = Some(401);
    let h = start(set_cfg(0.66, 0.0), &p, 0.0);
    tokio::time::sleep(S(600)).await;
    let attempts = p.s.lock().unwrap().attempts.clone();
    // With u = 0 the slow class waits exactly its 30 s floor: 0, 30, …, 600 s at most.
    assert!(attempts.len() <= 21, "{} attempts", attempts.len());
    for w in attempts.windows(2) {
        assert!(
            w[1] - w[0] >= crate::schedule::SLOW_RETRY_FLOOR,
            "{:?}",
            w[1] - w[0]
        );
    }
    p.s.lock().unwrap().fail_all = None;
    tokio::time::sleep(S(31)).await;
    assert_eq!(h.sink.content().as_deref(), Some("tok1"));
    h.stop(S(5)).await;
}

#[tokio::test(start_paused = true)]
async fn stop_revokes_current_superseded_and_in_flight_tokens() {
    let p = Mock::new(S(900));
    let h = start(set_cfg(0.66, 0.0), &p, 0.0);
    tokio::time::sleep(S(595)).await; // tok2 written at 594; tok1 superseded
    p.s.lock().unwrap().issue_delay = S(3);
    let _ = h.rotate.send(());
    tokio::time::sleep(Duration::from_millis(1500)).await; // tok3 minted, answer pending
    assert_eq!(p.issued().len(), 3);
    let (outcome, sink) = h.stop(S(10)).await;
    let mut revoked: Vec<String> = p.revoked().into_iter().map(|(t, _)| t).collect();
    revoked.sort();
    assert_eq!(revoked, vec!["tok1", "tok2", "tok3"]);
    assert_eq!(outcome.revoked.len(), 3);
    assert!(p.live().is_empty());
    // tok3 was never written; the file held tok2 and is gone.
    assert_eq!(sink.content(), None);
    assert!(
        !sink
            .events()
            .iter()
            .any(|e| matches!(e, Ev::Write(t, _) if t == "tok3"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_hung_at_stop_does_not_delay_revoking_the_held_token() {
    let p = Mock::new(S(900));
    let h = start(set_cfg(0.66, 0.0), &p, 0.0);
    tokio::time::sleep(S(1)).await; // tok1 written
    p.s.lock().unwrap().issue_delay = S(3600);
    let _ = h.rotate.send(());
    tokio::time::sleep(S(2)).await; // tok2 asked for; its answer never comes in time
    assert_eq!(p.issued().len(), 2);
    let stopped = Instant::now();
    let (outcome, sink) = h.stop(S(10)).await;
    assert_eq!(p.revoked(), vec![("tok1".to_string(), stopped)]);
    assert_eq!(outcome.revoked, [Secret::new("tok1").fingerprint()]);
    assert!(outcome.failed.is_empty());
    assert_eq!(sink.content(), None);
    // The wait for the answer ended before the deadline, with room to spare.
    assert!(
        Instant::now() < stopped + S(10),
        "{:?}",
        Instant::now() - stopped
    );
}

#[tokio::test(start_paused = true)]
async fn stopping_sets_take_turns_at_their_provider() {
    let p = Mock::new(S(900));
    p.s.lock().unwrap().turns = Some(Arc::new(tokio::sync::Semaphore::new(2)));
    let sets: Vec<_> = (0..6).map(|_| start(set_cfg(0.66, 0.0), &p, 0.0)).collect();
    tokio::time::sleep(S(1)).await; // every set holds its token
    assert_eq!(p.issued().len(), 6);
    p.s.lock().unwrap().revoke_delay = S(1);
    let stopped = Instant::now();
    let outcomes = futures_util::future::join_all(sets.into_iter().map(|h| h.stop(S(30)))).await;
    for (outcome, sink) in &outcomes {
        assert_eq!(outcome.revoked.len(), 1, "{outcome:?}");
        assert!(outcome.failed.is_empty(), "{outcome:?}");
        assert_eq!(sink.content(), None);
    }
    assert_eq!(p.revoked().len(), 6);
    assert_eq!(p.s.lock().unwrap().most_revoking, 2);
    // Three turns of two sets, each revocation a second.
    let took = Instant::now() - stopped;
    assert!(took >= S(3) && took < S(4), "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_set_waiting_for_a_request_in_flight_takes_no_stop_turn() {
    // One turn: were it taken by the set whose answer hangs, the other set's token would wait
    // for that answer's deadline.
    let p = Mock::new(S(900));
    p.s.lock().unwrap().turns = Some(Arc::new(tokio::sync::Semaphore::new(1)));
    let hung = start(set_cfg(0.66, 0.0), &p, 0.0);
    let other = start(set_cfg(0.66, 0.0), &p, 0.0);
    tokio::time::sleep(S(1)).await; // both hold a token
    p.s.lock().unwrap().issue_delay = S(3600);
    let _ = hung.rotate.send(());
    tokio::time::sleep(S(2)).await; // its next token asked for; the answer never comes in time
    assert_eq!(p.issued().len(), 3);
    let stopped = Instant::now();
    let hung_stop = tokio::spawn(hung.stop(S(30)));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let (outcome, _) = other.stop(S(30)).await;
    assert_eq!(outcome.revoked.len(), 1, "{outcome:?}");
    assert_eq!(Instant::now(), stopped, "the other set waited for a turn");
    let (outcome, _) = hung_stop.await.unwrap();
    assert!(outcome.failed.is_empty(), "{outcome:?}");
}

#[tokio::test(start_paused = true)]
async fn a_token_handed_out_again_is_kept_not_revoked() {
    let p = Mock::new(S(900));
    let h = start(set_cfg(0.66, 0.0), &p, 0.0);
    tokio::time::sleep(S(1)).await;
    p.s.lock().unwrap().repeat = true;
    for _ in 0..3 {
        let _ = h.rotate.send(());
        tokio::time::sleep(S(2)).await;
    }
    // Past revoke_superseded_after (60 s) of every repeat.
    tokio::time::sleep(S(120)).await;
    assert_eq!(p.issued().len(), 4);
    assert!(p.revoked().is_empty(), "{:?}", p.revoked());
    assert_eq!(h.sink.content().as_deref(), Some("tok1"));
    let (outcome, _) = h.stop(S(5)).await;
    assert_eq!(outcome.revoked, [Secret::new("tok1").fingerprint()]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_revocation_is_reported_and_its_file_removed() {
    let p = Mock::new(S(900));
    let h = start(set_cfg(0.66, 0.0), &p, 0.0);
    tokio::time::sleep(S(1)).await;
    p.s.lock().unwrap().fail_revoke = true;
    let (outcome, sink) = h.stop(S(5)).await;
    assert_eq!(outcome.failed.len(), 1);
    // Given up on, so in no file: the provider may yet revoke it under its reader.
    assert_eq!(sink.content(), None);
}

/// A token whose answer came in while the set stopped, with the journal failing: its
/// failed record is counted (as the first token's was) and the token revoked at once.
#[tokio::test(start_paused = true)]
async fn a_token_that_cannot_be_journaled_while_settling_is_revoked_and_logged() {
    let p = Mock::new(S(900));
    let report = SetReport::detached();
    let stats = report.subscribe_stats();
    let h = start_with(
        set_cfg(0.66, 0.0),
        &p,
        0.0,
        Start::default(),
        Journal::failing(),
        report,
    );
    tokio::time::sleep(S(1)).await; // tok1 written, not journaled
    assert_eq!(h.sink.content().as_deref(), Some("tok1"));
    assert_eq!(stats.borrow().journal_failures, 1);
    p.s.lock().unwrap().issue_delay = S(3);
    let _ = h.rotate.send(());
    tokio::time::sleep(S(2)).await; // tok2 minted, its answer pending
    assert_eq!(p.issued().len(), 2);
    let (outcome, _) = h.stop(S(10)).await;
    let mut revoked: Vec<String> = p.revoked().into_iter().map(|(t, _)| t).collect();
    revoked.sort();
    assert_eq!(revoked, ["tok1", "tok2"]);
    assert!(outcome.failed.is_empty());
    let stats = stats.borrow();
    assert_eq!(stats.journal_failures, 2, "{stats:?}");
    assert!(
        stats
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("issued while stopping not journaled")),
        "{stats:?}"
    );
}

/// Tokens whose lifetime was assumed (the answers gave none) are revoked when superseded
/// even past the assumed expiry, and revoked, not forgotten, when that expiry comes with no
/// replacement: the provider may honour them far longer.
#[tokio::test(start_paused = true)]
async fn tokens_with_an_assumed_lifetime_are_revoked_not_forgotten() {
    let t0 = Instant::now();
    let p = Mock::new(S(900));
    p.s.lock().unwrap().assumed = true;
    let mut cfg = set_cfg(0.66, 0.0);
    // Longer than a superseded token has left by the assumption (900 - 594 s).
    cfg.revoke_superseded_after = S(600);
    let h = start(cfg, &p, 0.0);
    // tok2 at 594, tok3 at 1188; then every request fails, so tok3 reaches its assumed
    // expiry (2088) with no replacement.
    tokio::time::sleep(S(1190)).await;
    p.s.lock().unwrap().fail_all = Some(503);
    tokio::time::sleep(S(1000)).await;
    let revoked: Vec<(String, Duration)> = p
        .revoked()
        .iter()
        .map(|(t, at)| (t.clone(), *at - t0))
        .collect();
    assert_eq!(
        revoked,
        [
            ("tok1".to_string(), S(1194)),
            ("tok2".to_string(), S(1788)),
            ("tok3".to_string(), S(2088)),
        ]
    );
    assert_eq!(h.sink.content(), None);
    let (outcome, _) = h.stop(S(5)).await;
    assert!(outcome.failed.is_empty());
}

/// A superseded token of assumed lifetime whose revocation keeps failing is tried again past
/// its assumed expiry, ever less often, until the revocation goes through.
#[tokio::test(start_paused = true)]
async fn a_failing_revocation_of_an_assumed_lifetime_is_retried_past_it() {
    let p = Mock::new(S(900));
    {
        let mut s = p.s.lock().unwrap();
        s.assumed = true;
        s.fail_revoke = true;
    }
    let h = start(set_cfg(0.66, 0.0), &p, 0.0);
    // tok1 superseded at 594, due at 654; its assumed expiry is 900.
    tokio::time::sleep(S(1100)).await;
    p.s.lock().unwrap().fail_revoke = false;
    tokio::time::sleep(S(600)).await;
    let revoked: Vec<String> = p.revoked().into_iter().map(|(t, _)| t).collect();
    assert!(revoked.contains(&"tok1".to_string()), "{revoked:?}");
    let _ = h.stop(S(5)).await;
}

#[tokio::test(start_paused = true)]
async fn keep_leaves_the_current_token_in_place() {
    let p = Mock::new(S(900));
    let mut cfg = set_cfg(0.66, 0.0);
    cfg.on_shutdown = OnShutdown::Keep;
    let h = start(cfg, &p, 0.0);
    tokio::time::sleep(S(1)).await;
    let (outcome, sink) = h.stop(S(5)).await;
    assert!(outcome.kept.is_some());
    assert!(p.revoked().is_empty());
    assert_eq!(sink.content().as_deref(), Some("tok1"));
}

/// A budget of 10 live tokens, issuing one a second: what the adoption tests need.
fn small_budget() -> Arc<Budget> {
    Budget::new(
        "p",
        10,
        crate::budget::IssueRate {
            per_second: 1.0,
            burst: 1,
        },
    )
}

fn journaled(fp: &str, secs: u64) -> Held {
    let b = small_budget();
    Held {
        token: Secret::new(fp),
        fingerprint: fp.into(),
        expires_at: Instant::now() + S(secs),
        assumed: false,
        _slot: b.adopt(),
    }
}

/// At a restart in place the successor takes the tokens back as they were: the current one
/// without asking the provider (which here would call it inactive), on its schedule, and the
/// superseded one due when it was due, not at once.
#[tokio::test(start_paused = true)]
async fn adopt_takes_handed_over_tokens_back_as_they_were() {
    let p = Mock::new(S(900));
    let budget = small_budget();
    let (journal, _view) = Journal::memory();
    let now = crate::clock::now_wall();
    let entry = |fp: &str| Entry {
        set: "s".into(),
        provider: "p".into(),
        fingerprint: fp.into(),
        token: Secret::new(fp),
        token_type: "Bearer".into(),
        scope: "api".into(),
        issued_at: now - S(60),
        expires_at: now + S(840),
        refresh_at: now + S(500),
        config_hash: "h".into(),
        file: None,
        lifetime_assumed: false,
    };
    let plan = super::Plan {
        current: vec![("new".into(), now + S(300))],
        superseded: vec![("old".into(), now + S(20))],
    };
    let t0 = Instant::now();
    let start: Start<MemSink> = adopt(
        &set_cfg(0.66, 0.0),
        "h",
        p.as_ref(),
        &budget,
        vec![entry("old"), entry("new")],
        &journal,
        &plan.into_inherited(now),
        now,
    )
    .await;
    let (held, _, refresh) = start.current.expect("the current token is kept");
    assert_eq!(&*held.fingerprint, "new");
    assert_eq!(refresh, t0 + S(300));
    let [(old, due)] = &start.superseded[..] else {
        panic!("one superseded token");
    };
    assert_eq!(&*old.fingerprint, "old");
    assert_eq!(*due, t0 + S(20));
    // Not asked: this provider calls every token inactive.
    assert!(start.stale.is_empty());
}

/// The same journaled token, judged at three wall-clock times: before its refresh time it is
/// served until then, past it it is stale (replaced at once), past its expiry it is revoked.
#[tokio::test(start_paused = true)]
async fn adopt_judges_a_journaled_token_at_the_time_given() {
    let p = Mock::new(S(900));
    p.s.lock().unwrap().introspection = Some(Introspection::Active { remaining: None });
    let budget = small_budget();
    let (journal, _view) = Journal::memory();
    // A fixed time, not the clock: the decisions must follow the time they are given.
    let issued = SystemTime::UNIX_EPOCH + S(1_800_000_000);
    let entry = Entry {
        set: "s".into(),
        provider: "p".into(),
        fingerprint: "aa".into(),
        token: Secret::new("aa"),
        token_type: "Bearer".into(),
        scope: "api".into(),
        issued_at: issued,
        expires_at: issued + S(900),
        refresh_at: issued + S(600),
        config_hash: "h".into(),
        file: None,
        lifetime_assumed: false,
    };
    let (cfg, inherited) = (&set_cfg(0.66, 0.0), &Default::default());
    let t0 = Instant::now();
    let judge = |now: SystemTime| {
        let mine = vec![entry.clone()];
        adopt::<_, MemSink>(
            cfg,
            "h",
            p.as_ref(),
            &budget,
            mine,
            &journal,
            inherited,
            now,
        )
    };
    let start = judge(issued + S(100)).await;
    let (held, _, refresh) = start.current.expect("reused before its refresh time");
    assert_eq!((&*held.fingerprint, refresh), ("aa", t0 + S(500)));
    assert_eq!(held.expires_at, t0 + S(800));
    let start = judge(issued + S(700)).await;
    assert!(start.current.is_none() && start.superseded.is_empty());
    assert_eq!(start.stale.len(), 1, "past its refresh time: stale");
    let start = judge(issued + S(901)).await;
    assert!(start.current.is_none() && start.stale.is_empty());
    assert_eq!(start.superseded.len(), 1, "past its expiry: revoked");
}

#[tokio::test(start_paused = true)]
async fn adopt_revokes_what_the_clock_or_the_provider_calls_expired() {
    let p = Mock::new(S(900));
    // Active, but by its own figures out of time.
    p.s.lock().unwrap().introspection = Some(Introspection::Active {
        remaining: Some(Duration::ZERO),
    });
    let budget = small_budget();
    let (journal, _view) = Journal::memory();
    let now = crate::clock::now_wall();
    let entry = |fp: &str, expires_at: SystemTime, refresh_at: SystemTime| Entry {
        set: "s".into(),
        provider: "p".into(),
        fingerprint: fp.into(),
        token: Secret::new(fp),
        token_type: "Bearer".into(),
        scope: "api".into(),
        issued_at: now - S(900),
        expires_at,
        refresh_at,
        config_hash: "h".into(),
        file: None,
        lifetime_assumed: false,
    };
    let mine = vec![
        // Past its expiry by our clock, which may have jumped.
        entry("by-clock", now - S(60), now - S(300)),
        entry("by-provider", now + S(600), now + S(300)),
    ];
    let t0 = Instant::now();
    let start: Start<MemSink> = adopt(
        &set_cfg(0.66, 0.0),
        "h",
        p.as_ref(),
        &budget,
        mine,
        &journal,
        &Default::default(),
        now,
    )
    .await;
    assert!(start.current.is_none());
    // Revoked at once, not once a replacement is written and its grace has passed.
    assert!(start.stale.is_empty());
    let mut due: Vec<_> = start
        .superseded
        .iter()
        .map(|(h, at)| (h.fingerprint.to_string(), *at))
        .collect();
    due.sort();
    assert_eq!(due, [("by-clock".into(), t0), ("by-provider".into(), t0)]);
    // Revocable for the window, not just until an expiry already past.
    assert!(
        start
            .superseded
            .iter()
            .all(|(h, _)| h.expires_at >= t0 + CLOCK_DOUBT_WINDOW)
    );
    assert_eq!(budget.live(), 2);
    // A set that never revokes only drops them, once its replacement is written.
    let mut keeps = set_cfg(0.66, 0.0);
    keeps.never_revoke = true;
    let mine = vec![entry("by-clock", now - S(60), now - S(300))];
    let start: Start<MemSink> = adopt(
        &keeps,
        "h",
        p.as_ref(),
        &budget,
        mine,
        &journal,
        &Default::default(),
        now,
    )
    .await;
    assert!(start.superseded.is_empty());
    assert_eq!(start.stale.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_adopted_token_is_kept_until_its_refresh_and_stale_ones_go_at_once() {
    let t0 = Instant::now();
    let p = Mock::new(S(900));
    let meta = IssuedMeta {
        token_type: "Bearer".into(),
        scope: "api".into(),
        expires_at: crate::clock::now_wall() + S(600),
    };
    let begin = Start {
        current: Some((journaled("old", 600), meta, t0 + S(300))),
        stale: vec![journaled("older", 100)],
        ..Start::default()
    };
    let h = start_from(set_cfg(0.66, 0.0), &p, 0.0, begin);
    tokio::time::sleep(S(1)).await;
    assert_eq!(h.sink.content().as_deref(), Some("old"));
    assert_eq!(
        p.revoked()
            .iter()
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>(),
        vec!["older"]
    );
    assert!(p.issued().is_empty());
    tokio::time::sleep(S(300)).await;
    let issued: Vec<Duration> = p.issued().iter().map(|(_, at)| *at - t0).collect();
    assert_eq!(issued, vec![S(300)]);
    tokio::time::sleep(S(61)).await;
    assert!(p.revoked().iter().any(|(t, _)| t == "old"));
    h.stop(S(5)).await;
}

#[tokio::test(start_paused = true)]
async fn without_an_adopted_token_stale_ones_wait_for_the_replacement() {
    let p = Mock::new(S(900));
    p.s.lock().unwrap().fail_all = Some(503);
    let begin = Start {
        current: None,
        stale: vec![journaled("stale", 600)],
        ..Start::default()
    };
    let h = start_from(set_cfg(0.66, 0.0), &p, 1.0, begin);
    tokio::time::sleep(S(30)).await;
    // No replacement yet: the stale token (maybe still in the file) is not revoked.
    assert!(p.revoked().is_empty());
    p.s.lock().unwrap().fail_all = None;
    tokio::time::sleep(S(60 + 61)).await;
    assert!(p.revoked().iter().any(|(t, _)| t == "stale"));
    h.stop(S(5)).await;
}

#[tokio::test(start_paused = true)]
async fn never_revoke_leaves_superseded_and_current_tokens_alone() {
    let p = Mock::new(S(900));
    let mut cfg = set_cfg(0.66, 0.0);
    cfg.never_revoke = true;
    cfg.on_shutdown = OnShutdown::Keep;
    let h = start(cfg, &p, 0.0);
    tokio::time::sleep(S(700)).await;
    assert_eq!(p.issued().len(), 2);
    let (outcome, sink) = h.stop(S(5)).await;
    assert!(p.revoked().is_empty(), "{:?}", p.revoked());
    assert_eq!(outcome.kept.as_deref().map(str::len), Some(8));
    assert_eq!(sink.content().as_deref(), Some("tok2"));
}

#[tokio::test(start_paused = true)]
async fn rotate_respects_min_interval() {
    let t0 = Instant::now();
    let p = Mock::new(S(900));
    let h = start(set_cfg(0.66, 0.0), &p, 0.0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = h.rotate.send(());
    tokio::time::sleep(S(5)).await;
    let issued: Vec<Duration> = p.issued().iter().map(|(_, at)| *at - t0).collect();
    assert_eq!(issued, vec![S(0), S(1)]);
    h.stop(S(5)).await;
}

#[tokio::test(start_paused = true)]
async fn an_opt_in_provider_revokes_nothing_for_a_set_that_keeps() {
    let p = Mock::new(S(100));
    p.s.lock().unwrap().policy = Some(Revocation::OptIn);
    let mut cfg = set_cfg(0.5, 0.0);
    cfg.on_shutdown = OnShutdown::Keep;
    cfg.revoke_superseded_after = S(1);
    let h = start(cfg, &p, 0.0);
    tokio::time::sleep(S(120)).await;
    assert_eq!(p.issued().len(), 3);
    let (outcome, sink) = h.stop(S(5)).await;
    assert!(p.revoked().is_empty(), "{:?}", p.revoked());
    assert_eq!(
        outcome.kept.as_deref(),
        Some(Secret::new("tok3").fingerprint().as_str())
    );
    assert_eq!(sink.content().as_deref(), Some("tok3"));
}

#[tokio::test(start_paused = true)]
async fn an_opt_in_provider_revokes_for_a_set_that_asks() {
    let p = Mock::new(S(100));
    p.s.lock().unwrap().policy = Some(Revocation::OptIn);
    let mut cfg = set_cfg(0.5, 0.0);
    cfg.revoke_superseded_after = S(1);
    let h = start(cfg, &p, 0.0);
    tokio::time::sleep(S(60)).await;
    let (outcome, sink) = h.stop(S(5)).await;
    let revoked: Vec<String> = p.revoked().into_iter().map(|(t, _)| t).collect();
    assert_eq!(revoked, ["tok1", "tok2"]);
    assert_eq!(outcome.revoked.len(), 1);
    assert_eq!(sink.content(), None);
}

#[tokio::test(start_paused = true)]
async fn tokens_of_a_provider_that_cannot_revoke_expire_and_their_file_goes() {
    let p = Mock::new(S(100));
    p.s.lock().unwrap().policy = Some(Revocation::Unsupported);
    let mut cfg = set_cfg(0.5, 0.0);
    cfg.revoke_superseded_after = S(1);
    let h = start(cfg, &p, 0.0);
    tokio::time::sleep(S(60)).await;
    let (outcome, sink) = h.stop(S(5)).await;
    assert!(p.revoked().is_empty());
    assert!(outcome.failed.is_empty());
    assert_eq!(outcome.expiring, [Secret::new("tok2").fingerprint()]);
    assert_eq!(sink.content(), None, "{:?}", sink.events());
}

/// A provider that panics the first time it is asked to revoke a token issued for
/// `scope`, as a bug would: the stand-in for a set's task dying mid-stop.
struct PanicOnRevoke {
    inner: Arc<Mock>,
    scope: &'static str,
    scopes: Mutex<HashMap<String, String>>,
    panicked: std::sync::atomic::AtomicBool,
}

impl TokenProvider for PanicOnRevoke {
    async fn issue(&self, scopes: &[String]) -> Result<Issued, ProviderError> {
        let issued = self.inner.issue(scopes).await?;
        self.scopes
            .lock()
            .unwrap()
            .insert(issued.token.expose().into(), scopes.join(" "));
        Ok(issued)
    }
    async fn revoke(&self, token: &Secret) -> Result<(), ProviderError> {
        let scope = self.scopes.lock().unwrap().get(token.expose()).cloned();
        if scope.as_deref() == Some(self.scope)
            && !self
                .panicked
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("test double: revoke panics");
        }
        self.inner.revoke(token).await
    }
    async fn introspect(&self, token: &Secret) -> Result<Introspection, ProviderError> {
        self.inner.introspect(token).await
    }
}

#[tokio::test]
async fn a_set_whose_task_panics_at_stop_has_its_tokens_revoked_and_the_others_too() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "state_dir: {d}/state\nproviders:\n  p:\n    kind: voucherify\n    base_url: http://127.0.0.1:9\n    app_id: {{ env: TK_UNUSED_ID }}\n    app_token: {{ env: TK_UNUSED_TOKEN }}\nscope_sets:\n  - name: a\n    provider: p\n    scopes: [api]\n    file: {{ path: {d}/a.token }}\n  - name: b\n    provider: p\n    scopes: [orders]\n    file: {{ path: {d}/b.token }}\n",
        d = dir.path().display()
    );
    let config = crate::config::parse(&yaml, std::path::Path::new("test.yaml"))
        .unwrap()
        .config;
    let mock = Mock::new(S(900));
    let p = Arc::new(PanicOnRevoke {
        inner: Arc::clone(&mock),
        scope: "orders",
        scopes: Mutex::default(),
        panicked: Default::default(),
    });
    let providers = HashMap::from([("p".to_string(), Arc::clone(&p))]);
    let (journal, view) = Journal::memory();
    let (control, rx) = mpsc::channel(4);
    let ready = Arc::new(tokio::sync::Notify::new());
    let on_ready = {
        let ready = Arc::clone(&ready);
        move || ready.notify_one()
    };
    let daemon = run(
        config,
        providers,
        journal,
        Vec::new(),
        None,
        rx,
        None,
        Board::new(),
        on_ready,
    );
    let stop = async {
        tokio::time::timeout(S(10), ready.notified()).await.unwrap();
        assert_eq!(mock.live().len(), 2);
        control.send(Control::Shutdown).await.unwrap();
    };
    let (report, ()) = tokio::time::timeout(S(30), async { tokio::join!(daemon, stop) })
        .await
        .unwrap();
    let report = report.unwrap();
    assert!(p.panicked.load(std::sync::atomic::Ordering::SeqCst));
    assert!(mock.live().is_empty(), "left live: {:?}", mock.live());
    assert_eq!(report.crashed, ["b"]);
    assert!(report.failed_sets().is_empty(), "{report:?}");
    let revoked: HashMap<&str, usize> = report
        .sets
        .iter()
        .map(|s| (s.set.as_str(), s.revoked.len()))
        .collect();
    assert_eq!(revoked, HashMap::from([("a", 1), ("b", 1)]));
    assert!(view.borrow().is_empty(), "still journaled");
    assert!(!dir.path().join("a.token").exists());
    assert!(!dir.path().join("b.token").exists());
}

/// At stop, each set's end is taken as it comes; past the grace, what is still running is
/// aborted and reported unfinished, as is a removed set whose task failed (nothing to rescue
/// it with), while the others' outcomes are kept in their order.
#[tokio::test(start_paused = true)]
async fn sets_still_running_past_the_grace_are_aborted_and_reported_unfinished() {
    let outcome = |set: &str| SetOutcome {
        set: set.into(),
        ..SetOutcome::default()
    };
    let (done_early, done_late) = (outcome("early"), outcome("late"));
    let hung = tokio::spawn(std::future::pending::<SetOutcome>());
    let hung_abort = hung.abort_handle();
    let ending = vec![
        (
            Ending::Retiring {
                name: "late".into(),
                earlier: false,
            },
            tokio::spawn(async move {
                tokio::time::sleep(S(5)).await;
                done_late
            }),
        ),
        (
            Ending::Retiring {
                name: "hung".into(),
                earlier: false,
            },
            hung,
        ),
        (
            Ending::Retiring {
                name: "failed".into(),
                earlier: false,
            },
            tokio::spawn(async { panic!("a set's task panicked") }),
        ),
        (
            Ending::Retiring {
                name: "early".into(),
                earlier: false,
            },
            tokio::spawn(async move { done_early }),
        ),
    ];
    let start = Instant::now();
    let (journal, _view) = Journal::memory();
    let report = wait_for_sets::<Mock>(
        ending.into_iter(),
        &HashMap::new(),
        &journal,
        false,
        start + S(10),
        start + S(20),
    )
    .await;
    assert_eq!(start.elapsed(), S(20), "waited for the grace, no longer");
    let sets: Vec<&str> = report.sets.iter().map(|s| s.set.as_str()).collect();
    assert_eq!(sets, ["late", "early"]);
    assert_eq!(report.unfinished, ["hung", "failed"]);
    assert!(report.crashed.is_empty());
    tokio::task::yield_now().await;
    assert!(hung_abort.is_finished(), "the hung task was aborted");
}
