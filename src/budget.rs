//! Per-provider token budget: a cap on live tokens and a token bucket on issuing.
//!
//! Voucherify allows 1000 live tokens per project; a crash-looping agent that mints a token at
//! every start exhausts that overnight. The journal's reuse keeps restarts from minting, and
//! this budget is the backstop: tokenkeeper never holds more than `max_live_tokens` from one
//! provider, and never issues faster than `issue_rate`. A [`Slot`] stands for one live token
//! and gives its place back when dropped (revoked, expired, or never issued).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IssueRate {
    /// Tokens per second, sustained.
    pub per_second: f64,
    /// Tokens that may be issued back to back before the rate applies.
    pub burst: u32,
}

/// Why the budget refused an issue.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// `live` tokens are held, the cap is `max`.
    Live { live: usize, max: usize },
    /// The rate is spent; the next issue is allowed in `wait`.
    Rate { wait: Duration },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Live { live, max } => write!(
                f,
                "token budget exhausted: {live} live tokens held, max_live_tokens is {max}"
            ),
            Refusal::Rate { wait } => write!(
                f,
                "issue rate limit reached; next issue allowed in {} ms",
                wait.as_millis()
            ),
        }
    }
}

#[derive(Debug)]
struct State {
    live: usize,
    /// Issues available now, refilled at `rate` per second up to `burst`.
    bucket: f64,
    refilled: Instant,
}

/// One provider's budget, shared by the sets that use it.
#[derive(Debug)]
pub struct Budget {
    provider: String,
    max_live: usize,
    rate: IssueRate,
    state: Mutex<State>,
}

/// One live token's place in the budget.
#[derive(Debug)]
pub struct Slot {
    budget: Arc<Budget>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.budget.lock();
        s.live = s.live.saturating_sub(1);
    }
}

impl Budget {
    pub fn new(provider: &str, max_live: usize, rate: IssueRate) -> Arc<Budget> {
        Arc::new(Budget {
            provider: provider.to_string(),
            max_live,
            rate,
            state: Mutex::new(State {
                live: 0,
                bucket: f64::from(rate.burst),
                refilled: Instant::now(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two numbers updated together; a panic elsewhere cannot leave it torn.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// Take a place for a token about to be issued, or say why not.
    pub fn acquire(self: &Arc<Self>) -> Result<Slot, Refusal> {
        let mut s = self.lock();
        if s.live >= self.max_live {
            return Err(Refusal::Live {
                live: s.live,
                max: self.max_live,
            });
        }
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.bucket = (s.bucket + elapsed * self.rate.per_second).min(f64::from(self.rate.burst));
        s.refilled = now;
        if s.bucket < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - s.bucket) / self.rate.per_second);
            return Err(Refusal::Rate { wait });
        }
        s.bucket -= 1.0;
        s.live += 1;
        drop(s);
        Ok(Slot {
            budget: Arc::clone(self),
        })
    }

    /// Count a token we already hold (from the journal at start), even over the cap: it is
    /// live whether we count it or not.
    pub fn adopt(self: &Arc<Self>) -> Slot {
        self.lock().live += 1;
        Slot {
            budget: Arc::clone(self),
        }
    }

    /// Tokens held now.
    pub fn live(&self) -> usize {
        self.lock().live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: u32) -> IssueRate {
        IssueRate { per_second, burst }
    }

    #[tokio::test(start_paused = true)]
    async fn live_cap_refuses_and_dropping_a_slot_frees_it() {
        let b = Budget::new("p", 2, rate(100.0, 100));
        let a = b.acquire().unwrap();
        let _c = b.acquire().unwrap();
        assert_eq!(b.acquire().unwrap_err(), Refusal::Live { live: 2, max: 2 });
        drop(a);
        assert_eq!(b.live(), 1);
        let _d = b.acquire().unwrap();
        // Adopted tokens count, even beyond the cap.
        let _e = b.adopt();
        assert_eq!(b.live(), 3);
        assert!(matches!(
            b.acquire(),
            Err(Refusal::Live { live: 3, max: 2 })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_allows_a_burst_then_paces() {
        let b = Budget::new("p", 1000, rate(2.0, 3));
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(b.acquire().unwrap());
        }
        let Err(Refusal::Rate { wait }) = b.acquire() else {
            panic!("burst exceeded")
        };
        assert_eq!(wait, Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(500)).await;
        held.push(b.acquire().unwrap());
        assert!(matches!(b.acquire(), Err(Refusal::Rate { .. })));
        // Refill never exceeds the burst.
        tokio::time::advance(Duration::from_secs(3600)).await;
        for _ in 0..3 {
            held.push(b.acquire().unwrap());
        }
        assert!(matches!(b.acquire(), Err(Refusal::Rate { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_says_why() {
        let b = Budget::new("p", 1, rate(1.0, 1));
        let _a = b.acquire().unwrap();
        let msg = b.acquire().unwrap_err().to_string();
        assert!(
            msg.contains("1 live tokens held, max_live_tokens is 1"),
            "{msg}"
        );
    }
}
