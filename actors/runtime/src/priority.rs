//! Requests first: work that someone waits for goes before work that can wait in a stream.
//!
//! A process that both answers requests and works through streams (`jetflow all`: the
//! gateway and the saga's consumers) shares its cores, its database and its broker between
//! the two. Under a burst, sharing them fairly makes every request wait behind the
//! backlog's work, although that work could as well wait in the stream, where it is
//! durable. Two tools put the requests first:
//!
//! - [`Foreground`] counts the requests in flight ([`Foreground::enter`], from an HTTP
//!   middleware, say). Given to [`BridgeConfig::yield_to`](crate::BridgeConfig::yield_to),
//!   it makes the consumers' batches take turns while requests are in flight (two or more,
//!   [`BUSY_AT`]): one batch (or delivery) at a time instead of one per route, so the
//!   database and the broker serve the requests' statements between them. Otherwise the
//!   consumers run side by side again; the backlog is worked off as soon as the requests
//!   ease.
//! - [`background_runtime`] builds a tokio runtime whose worker threads run at a lower CPU
//!   priority (a higher nice value); given to
//!   [`BridgeConfig::consumers_on`](crate::BridgeConfig::consumers_on), the consumers' own
//!   CPU work takes what the requests leave. Raising a thread's nice value needs no
//!   privilege. Give such consumers a database pool of their own: a connection opened from
//!   these threads is driven by them (and on SQLite runs on a thread that keeps their nice
//!   value), also when it later serves a request. On Linux the nice value belongs to each thread; elsewhere `setpriority`
//!   would lower the whole process, so there the threads keep the process's priority.
//!
//! An idle machine runs both alike. Nothing is dropped or reordered: a delivery waits for
//! its turn like it waits for a free core.
//!
//! ```
//! use jetflow_runtime::priority::{Foreground, background_runtime};
//!
//! let work = background_runtime("work", 2, 10)?;
//! let requests = Foreground::new(1, 0.5);
//! work.block_on(async {
//!     let first = requests.enter();
//!     assert!(!requests.busy(), "a lone request is not a burst");
//!     let second = requests.enter();
//!     assert!(requests.busy());
//!     let _turn = requests.background_turn().await; // one at a time while busy
//!     drop((first, second));
//!     assert!(!requests.busy());
//! });
//! # Ok::<(), std::io::Error>(())
//! ```

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::runtime::{Builder, Runtime};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Foreground work in flight from which background work yields: a lone request (a client
/// polling an order, one order placed at a time) is not a burst, and its order's own saga
/// steps should not wait behind it.
pub const BUSY_AT: usize = 2;

/// The highest nice value (the lowest priority) Linux knows.
pub const MAX_NICE: u8 = 19;

/// A multi-thread runtime of `threads` workers named `name`, each `nice` steps below the
/// priority of the thread that builds it (like `nice -n`; at most [`MAX_NICE`]) on Linux.
/// Every thread the runtime starts (its blocking pool too) gets that same nice value.
pub fn background_runtime(name: &str, threads: usize, nice: u8) -> std::io::Result<Runtime> {
    let target = (current_nice() + i32::from(nice)).min(i32::from(MAX_NICE));
    Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_all()
        .on_thread_start(move || set_this_thread(target))
        .build()
}

/// The nice value of the calling thread (0 where threads have none of their own).
pub fn current_nice() -> i32 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: errno is the calling thread's own; getpriority reads the calling thread's
        // nice value (who = 0 is the calling thread on Linux) and takes no memory. It
        // answers -1 both for a nice value of -1 and on an error, which only errno tells
        // apart.
        unsafe {
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
            if nice == -1 && *libc::__errno_location() != 0 {
                0
            } else {
                nice
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

fn set_this_thread(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority changes the calling thread's nice value (who = 0 is the
        // calling thread on Linux, whose nice values are per thread); no memory is passed,
        // and raising a nice value needs no privilege.
        let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        if done != 0 {
            tracing::warn!(
                nice,
                error = %std::io::Error::last_os_error(),
                "cannot lower this thread's CPU priority; it keeps the process's"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// Counts the foreground work in flight (requests), and lets background work (consumers)
/// take turns while there is any. Cheap to clone; clones share the count.
#[derive(Debug, Clone)]
pub struct Foreground {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    in_flight: AtomicUsize,
    turns: Semaphore,
    /// How long a busy turn is held after its job, per second the job took.
    rest_per_work: f64,
}

/// The longest a background job's turn is held after it (a job that ran long, waiting for a
/// provider say, must not stall the others much longer).
const MAX_REST: Duration = Duration::from_secs(1);

/// One unit of foreground work in flight, until dropped.
#[derive(Debug)]
#[must_use = "the work counts as in flight until the guard is dropped"]
pub struct ForegroundGuard {
    inner: Arc<Inner>,
}

impl Drop for ForegroundGuard {
    fn drop(&mut self) {
        self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A background job's turn: held while the job runs, then given back with
/// [`BackgroundTurn::finish`] (which rests first if the foreground is busy) or by dropping it
/// (no rest). Empty when the foreground was idle.
#[derive(Debug)]
pub struct BackgroundTurn<'a> {
    foreground: &'a Foreground,
    permit: Option<SemaphorePermit<'a>>,
    started: tokio::time::Instant,
}

impl BackgroundTurn<'_> {
    /// Gives the turn back. When it was taken while the foreground was busy and the
    /// foreground still is, it is held first for the rest the busy share asks: the job's
    /// time so far times (1 ÷ share − 1), at most a second.
    pub async fn finish(self) {
        let rest_per_work = self.foreground.inner.rest_per_work;
        if self.permit.is_some() && self.foreground.busy() && rest_per_work > 0.0 {
            let rest = self.started.elapsed().mul_f64(rest_per_work).min(MAX_REST);
            tokio::time::sleep(rest).await;
        }
    }
}

impl Foreground {
    /// While foreground work is in flight, at most `busy_turns` (at least 1) background jobs
    /// run at once, and jobs run through [`Foreground::background`] take about `busy_share`
    /// (0 to 1) of the time: after each, its turn is held while the requests use the rest
    /// (as PostgreSQL's autovacuum sleeps between rounds to leave the disk to queries). A
    /// share of 1 (or more) never rests; the least is 0.05.
    pub fn new(busy_turns: usize, busy_share: f64) -> Self {
        let share = if busy_share.is_finite() {
            busy_share.clamp(0.05, 1.0)
        } else {
            1.0
        };
        Self {
            inner: Arc::new(Inner {
                in_flight: AtomicUsize::new(0),
                turns: Semaphore::new(busy_turns.max(1)),
                rest_per_work: 1.0 / share - 1.0,
            }),
        }
    }

    /// Marks one unit of foreground work in flight until the guard is dropped.
    pub fn enter(&self) -> ForegroundGuard {
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        ForegroundGuard {
            inner: self.inner.clone(),
        }
    }

    /// Foreground work in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Whether the foreground is busy: [`BUSY_AT`] or more units of work in flight.
    pub fn busy(&self) -> bool {
        self.in_flight() >= BUSY_AT
    }

    /// A background job's turn: at once while the foreground is idle; otherwise once fewer
    /// than `busy_turns` background jobs hold one.
    pub async fn background_turn(&self) -> BackgroundTurn<'_> {
        let permit = if self.busy() {
            // The semaphore is never closed.
            self.inner.turns.acquire().await.ok()
        } else {
            None
        };
        BackgroundTurn {
            foreground: self,
            permit,
            started: tokio::time::Instant::now(),
        }
    }

    /// Runs `work` as a background job: in its turn ([`Foreground::background_turn`]), given
    /// back with [`BackgroundTurn::finish`], so that while the foreground is busy the
    /// requests get the rest of the time. Idle, it runs at once and rests not at all.
    pub async fn background<F: Future>(&self, work: F) -> F::Output {
        let turn = self.background_turn().await;
        let output = work.await;
        turn.finish().await;
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long `fg.background` takes for a job of `work` (on tokio's paused clock).
    async fn background_takes(fg: &Foreground, work: Duration) -> Duration {
        let started = tokio::time::Instant::now();
        fg.background(tokio::time::sleep(work)).await;
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn busy_background_jobs_rest_for_the_share_the_requests_get_and_idle_ones_do_not() {
        let ms = Duration::from_millis;
        let half = Foreground::new(1, 0.5);
        assert_eq!(
            background_takes(&half, ms(100)).await,
            ms(100),
            "idle: no rest"
        );
        let request = (half.enter(), half.enter());
        assert_eq!(
            background_takes(&half, ms(100)).await,
            ms(200),
            "busy: as long again"
        );
        let fifth = Foreground::new(1, 0.2);
        let _others = (fifth.enter(), fifth.enter());
        assert_eq!(
            background_takes(&fifth, ms(100)).await,
            ms(500),
            "a fifth: four times"
        );
        assert_eq!(
            background_takes(&fifth, ms(1000)).await,
            ms(2000),
            "the rest is at most a second"
        );
        let whole = Foreground::new(1, 1.0);
        let _thirds = (whole.enter(), whole.enter());
        assert_eq!(
            background_takes(&whole, ms(100)).await,
            ms(100),
            "a share of 1 never rests"
        );
        // The turn is held during the rest: a second job starts only after it.
        let second = async {
            tokio::time::sleep(ms(10)).await;
            let started = tokio::time::Instant::now();
            let _turn = half.background_turn().await;
            started.elapsed()
        };
        let (_, waited) = tokio::join!(half.background(tokio::time::sleep(ms(100))), second);
        assert_eq!(
            waited,
            ms(190),
            "the second job waited for the first job and its rest"
        );
        drop(request);
    }

    #[tokio::test]
    async fn background_jobs_run_side_by_side_when_idle_and_take_turns_while_busy() {
        let fg = Foreground::new(1, 1.0);
        // Idle: any number of turns at once.
        let (a, b) = (fg.background_turn().await, fg.background_turn().await);
        drop((a, b));
        let lone = fg.enter();
        assert!(!fg.busy(), "a lone request is not a burst");
        let request = (lone, fg.enter());
        assert_eq!(fg.in_flight(), 2);
        let first = fg.background_turn().await;
        let second = fg.background_turn();
        tokio::pin!(second);
        assert!(
            futures::poll!(second.as_mut()).is_pending(),
            "a second job waits while the first holds the turn"
        );
        drop(first);
        let _second = second.await;
        drop(request);
        assert!(!fg.busy());
        // Idle again: no turn is waited for, although one is held.
        let _third = fg.background_turn().await;
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_workers_run_at_the_given_nice_value_and_the_caller_keeps_its_own() {
        let before = current_nice();
        let rt = background_runtime("nice-test", 2, 7).expect("runtime");
        let seen = rt.block_on(async {
            let a = tokio::spawn(async { current_nice() });
            // A blocking-pool thread is started by a worker, already lowered: it gets the
            // same value, not seven steps more.
            let b = tokio::spawn(async { tokio::task::spawn_blocking(current_nice).await });
            (
                a.await.expect("task"),
                b.await.expect("task").expect("blocking"),
            )
        });
        // block_on runs on this thread; spawned tasks run on the workers.
        assert_eq!(seen, ((before + 7).min(19), (before + 7).min(19)));
        assert_eq!(current_nice(), before);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn nice_steps_past_the_lowest_priority_stop_there() {
        let rt = background_runtime("nice-clamp", 1, 200).expect("runtime");
        let seen = rt.block_on(async { tokio::spawn(async { current_nice() }).await });
        assert_eq!(seen.expect("task"), 19);
    }
}
