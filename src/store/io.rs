//! The stores' own thread: the sets' store writers and the store logins run on one thread of
//! their own, with a single-threaded runtime, and not on the daemon's workers. (The start's
//! look at the stores, two requests at a fresh start, stays on the daemon's runtime: moving it
//! here meant a copy of the whole config.)
//!
//! Why: a store such as OpenBao answers a request about every half millisecond when it is
//! busy, so its answers come one by one, each to a daemon that is idle by then. On the
//! daemon's two workers each such answer woke both of them in turn (one parked in `epoll`,
//! the other woken to look for work it did not find), and a store request cost twice what a
//! provider request does in a burst (docs/performance.md, "The store path"). On a thread of
//! their own an answer wakes that thread only, and while two or more store requests are in
//! flight the thread pauses [`BATCH_PAUSE`] before it waits for the next answer, so that it
//! takes those that came meanwhile in the same wake-up. A store request then costs at most
//! that pause in latency; a lone request (a refresh) is never held back.
//!
//! On a single-threaded runtime (the unit tests, whose paused clock must drive the writers)
//! work is spawned where it is, as before.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::task::JoinHandle;

/// How long the store thread waits for more answers before it sleeps, while two or more
/// store requests are in flight. OpenBao on 2 vCPUs answered about 1.8 writes a millisecond
/// at 1,000 sets, so 2 ms gathers three or four answers a wake-up; it adds at most 2 ms to a
/// request, against a store timeout of seconds and a token lifetime of minutes to hours.
const BATCH_PAUSE: Duration = Duration::from_millis(2);

/// Store requests in flight, across every store: the pause is only worth it when more than
/// one answer can come.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// The thread's name, as `top -H` and `ps -L` show it (at most 15 bytes on Linux).
const THREAD_NAME: &str = "tk-store-io";

/// One store request in flight, from its send to the end of its answer; dropping it (the
/// request ended, failed or was cancelled) counts it out.
pub(crate) struct InFlight(&'static AtomicUsize);

impl InFlight {
    pub(crate) fn start() -> InFlight {
        InFlight::counted_in(&IN_FLIGHT)
    }

    fn counted_in(counter: &'static AtomicUsize) -> InFlight {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long the store thread pauses before it sleeps with `in_flight` requests under way.
fn pause_before_sleep(in_flight: usize) -> Option<Duration> {
    (in_flight >= 2).then_some(BATCH_PAUSE)
}

/// The store thread's runtime, started on first use; `None` if it could not be (no thread or
/// no epoll to be had), and then the store work runs on the caller's runtime as it did.
fn store_runtime() -> Option<&'static Handle> {
    static RUNTIME: OnceLock<Option<Handle>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| match start() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the stores' own thread; store requests share the daemon's threads");
                None
            }
        })
        .as_ref()
}

/// Called by the store thread's runtime when it has nothing left to run, before it waits for
/// I/O: blocking the thread here is the point, since the answers that arrive meanwhile are
/// then all taken at the next wake-up. Nothing else runs on this thread.
#[allow(clippy::disallowed_methods)] // the store thread's own pause, not a worker's
fn pause() {
    if let Some(pause) = pause_before_sleep(IN_FLIGHT.load(Ordering::Relaxed)) {
        std::thread::sleep(pause);
    }
}

fn start() -> std::io::Result<Handle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(pause)
        .build()?;
    let handle = rt.handle().clone();
    // Runs for the life of the process: its tasks belong to the stores, which end them.
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || rt.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

/// Run `f` on the store thread, or where the caller is on a single-threaded runtime.
pub(crate) fn spawn<F>(f: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let local =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread);
    match store_runtime().filter(|_| !local) {
        Some(h) => h.spawn(f),
        None => tokio::spawn(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or("").to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_the_daemons_runtime_store_work_runs_on_its_own_thread() {
        let there = spawn(async { thread_name() }).await.unwrap();
        assert_eq!(there, THREAD_NAME);
        // Its timers and sockets work there too.
        let slept = spawn(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port() > 0
        });
        assert!(slept.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn on_a_single_threaded_runtime_store_work_stays_where_it_is() {
        let me = thread_name();
        let there = spawn(async { thread_name() }).await.unwrap();
        assert_eq!(there, me);
        // The paused clock drives it: an hour passes at once.
        let start = tokio::time::Instant::now();
        spawn(tokio::time::sleep(Duration::from_secs(3600)))
            .await
            .unwrap();
        assert!(start.elapsed() >= Duration::from_secs(3600));
    }

    /// A request that ends, fails or is cancelled (its future dropped mid-way, as a stop's
    /// deadline does) is counted out: a count left behind would hold every later answer back.
    #[test]
    fn a_request_is_counted_until_it_ends_whichever_way() {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let request = |answer: Option<Result<(), ()>>| async move {
            let _counted = InFlight::counted_in(&COUNT);
            match answer {
                Some(a) => a,
                None => std::future::pending().await,
            }
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            Box::pin(request(Some(Ok(()))))
                .as_mut()
                .poll(&mut cx)
                .is_ready()
        );
        assert!(
            Box::pin(request(Some(Err(()))))
                .as_mut()
                .poll(&mut cx)
                .is_ready()
        );
        assert_eq!(COUNT.load(Ordering::Relaxed), 0);
        let mut hanging = Box::pin(request(None));
        assert!(hanging.as_mut().poll(&mut cx).is_pending());
        assert_eq!(COUNT.load(Ordering::Relaxed), 1);
        drop(hanging);
        assert_eq!(COUNT.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_thread_pauses_only_when_more_than_one_answer_can_come() {
        assert_eq!(pause_before_sleep(0), None);
        assert_eq!(pause_before_sleep(1), None);
        assert_eq!(pause_before_sleep(2), Some(BATCH_PAUSE));
        assert_eq!(pause_before_sleep(32), Some(BATCH_PAUSE));
    }
}
