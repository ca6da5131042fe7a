//! Requests first: work that someone waits for goes before work that can wait in a stream.
//!
//! A process that both answers requests and works through streams (`jetflow all`: the
//! gateway and the saga's consumers) shares its cores, its database and its broker between
//! the two. Under a burst, sharing them fairly makes every request wait behind the
//! backlog's work, although that work could as well wait in the stream, where it is
//! durable. [`RequestsFirst`] counts the requests in flight ([`RequestsFirst::enter`], from an HTTP
//! middleware, say); [`YieldTo`] is the route layer that makes a route's work (each batch, or
//! each delivery) background work of it: while `busy_at` or more requests are in flight,
//! the routes that carry the layer take turns, one job at a time, and after each job its
//! turn is held for the rest of the busy share (as PostgreSQL's autovacuum sleeps between
//! rounds to leave the disk to queries). Otherwise they run side by side and never rest; the
//! backlog is worked off as soon as the requests ease. A route without the layer (an express
//! lane) never waits for a turn.
//!
//! An idle machine runs both alike. Nothing is dropped or reordered: a delivery waits for
//! its turn like it waits for a free core, inside the route's in-progress acks.
//!
//! ```
//! use jetflow_runtime::priority::RequestsFirst;
//!
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let requests = RequestsFirst::new(2, 0.5);
//! let first = requests.enter();
//! assert!(!requests.busy(), "one request is not a burst at busy_at 2");
//! let second = requests.enter();
//! assert!(requests.busy());
//! let _turn = requests.background_turn().await; // one at a time while busy
//! drop((first, second));
//! assert!(!requests.busy());
//! # });
//! # Ok::<(), std::io::Error>(())
//! ```

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::middleware::{BatchHandlerFn, HandlerFn, Inbound, Middleware};

/// Counts the foreground work in flight (requests), and lets background work (consumers)
/// take turns while there is any. Cheap to clone; clones share the count.
#[derive(Debug, Clone)]
pub struct RequestsFirst {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Shared by every lane of one process.
    in_flight: Arc<AtomicUsize>,
    busy_at: usize,
    turns: Arc<Semaphore>,
    /// How long a busy turn is held after its job, per second the job took.
    rest_per_work: f64,
}

/// The longest a background job's turn is held after it (a job that ran long, waiting for a
/// provider say, must not stall the others much longer).
const MAX_REST: Duration = Duration::from_secs(1);

/// One unit of foreground work in flight, until dropped.
#[derive(Debug)]
#[must_use = "the work counts as in flight until the guard is dropped"]
pub struct InFlightRequest {
    inner: Arc<Inner>,
}

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A background job's turn: held while the job runs, then given back with
/// [`BackgroundTurn::finish`] (which rests first if the foreground is busy) or by dropping it
/// (no rest). Empty when the foreground was idle.
#[derive(Debug)]
pub struct BackgroundTurn<'a> {
    foreground: &'a RequestsFirst,
    permit: Option<OwnedSemaphorePermit>,
    started: tokio::time::Instant,
}

impl BackgroundTurn<'_> {
    /// The rest owed: when the turn was taken while the foreground was busy and the
    /// foreground still is, the job's time so far times (1 ÷ share − 1), at most a second.
    fn rest(&self) -> Option<Duration> {
        let rest_per_work = self.foreground.inner.rest_per_work;
        (self.permit.is_some() && self.foreground.busy() && rest_per_work > 0.0)
            .then(|| self.started.elapsed().mul_f64(rest_per_work).min(MAX_REST))
    }

    /// Gives the turn back after the rest owed (see [`RequestsFirst::background`]).
    pub async fn finish(self) {
        if let Some(rest) = self.rest() {
            tokio::time::sleep(rest).await;
        }
    }
}

impl RequestsFirst {
    /// Busy while `busy_at` (at least 1) or more units of foreground work are in flight; then
    /// one background job runs at a time, and jobs take about `busy_share` (0 to 1) of the
    /// time: after each, its turn is held while the requests use the rest. A share of 1 (or
    /// more) never rests; the least is 0.05.
    pub fn new(busy_at: usize, busy_share: f64) -> Self {
        let share = if busy_share.is_finite() {
            busy_share.clamp(0.05, 1.0)
        } else {
            1.0
        };
        Self {
            inner: Arc::new(Inner {
                in_flight: Arc::new(AtomicUsize::new(0)),
                busy_at: busy_at.max(1),
                turns: Arc::new(Semaphore::new(1)),
                rest_per_work: 1.0 / share - 1.0,
            }),
        }
    }

    /// Another lane of background work: it counts the same foreground work, but has a turn
    /// of its own, so its jobs never wait behind this lane's (an express lane beside a
    /// standard one).
    pub fn lane(&self) -> Self {
        Self {
            inner: Arc::new(Inner {
                in_flight: Arc::clone(&self.inner.in_flight),
                busy_at: self.inner.busy_at,
                turns: Arc::new(Semaphore::new(1)),
                rest_per_work: self.inner.rest_per_work,
            }),
        }
    }

    /// Marks one unit of foreground work in flight until the guard is dropped.
    pub fn enter(&self) -> InFlightRequest {
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlightRequest {
            inner: self.inner.clone(),
        }
    }

    /// RequestsFirst work in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Whether the foreground is busy: `busy_at` or more units of work in flight.
    pub fn busy(&self) -> bool {
        self.in_flight() >= self.inner.busy_at
    }

    /// A background job's turn: at once while the foreground is idle; otherwise once no
    /// other background job holds it.
    pub async fn background_turn(&self) -> BackgroundTurn<'_> {
        let permit = if self.busy() {
            // The semaphore is never closed.
            Arc::clone(&self.inner.turns).acquire_owned().await.ok()
        } else {
            None
        };
        BackgroundTurn {
            foreground: self,
            permit,
            started: tokio::time::Instant::now(),
        }
    }

    /// Runs `work` as a background job: in its turn ([`RequestsFirst::background_turn`]), given
    /// back with [`BackgroundTurn::finish`], so that while the foreground is busy the
    /// requests get the rest of the time. Idle, it runs at once and rests not at all.
    pub async fn background<F: Future>(&self, work: F) -> F::Output {
        let turn = self.background_turn().await;
        let output = work.await;
        turn.finish().await;
        output
    }
}

/// The route layer that makes a route's work (each batch, or each delivery) background
/// work of a [`RequestsFirst`]: while it is busy, such jobs take turns and rest. The turn and the
/// rest are taken inside the route's in-progress acks, before the route pulls again, so the
/// stream keeps what arrives meanwhile and the next batch takes it all (a route that pulled
/// during the rest would wait with a small batch, and commit more often).
#[derive(Debug, Clone)]
pub struct YieldTo(pub RequestsFirst);

impl Middleware for YieldTo {
    fn wrap(&self, next: HandlerFn) -> HandlerFn {
        let fg = self.0.clone();
        Arc::new(move |inbound: Inbound| {
            let (fg, next) = (fg.clone(), next.clone());
            Box::pin(async move {
                let turn = fg.background_turn().await;
                let outcome = next(inbound).await;
                turn.finish().await;
                outcome
            })
        })
    }

    fn wrap_batch(&self, next: BatchHandlerFn) -> Result<BatchHandlerFn, &'static str> {
        let fg = self.0.clone();
        Ok(Arc::new(move |batch: Vec<Inbound>| {
            let (fg, next) = (fg.clone(), next.clone());
            Box::pin(async move {
                let turn = fg.background_turn().await;
                let outcomes = next(batch).await;
                turn.finish().await;
                outcomes
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How long `fg.background` takes for a job of `work` (on tokio's paused clock).
    async fn background_takes(fg: &RequestsFirst, work: Duration) -> Duration {
        let started = tokio::time::Instant::now();
        fg.background(tokio::time::sleep(work)).await;
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn busy_background_jobs_rest_for_the_share_the_requests_get_and_idle_ones_do_not() {
        let ms = Duration::from_millis;
        let half = RequestsFirst::new(2, 0.5);
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
        let fifth = RequestsFirst::new(2, 0.2);
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
        let whole = RequestsFirst::new(2, 1.0);
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
        let fg = RequestsFirst::new(2, 1.0);
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

    #[tokio::test(start_paused = true)]
    async fn lanes_count_the_same_requests_and_never_wait_for_each_others_turn() {
        let standard = RequestsFirst::new(1, 1.0);
        let express = standard.lane();
        let _request = standard.enter();
        assert!(express.busy(), "the express lane sees the same requests");
        let _held = standard.background_turn().await;
        let express_turn = express.background_turn();
        tokio::pin!(express_turn);
        assert!(
            futures::poll!(express_turn.as_mut()).is_ready(),
            "the express lane does not wait behind the standard lane's turn"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_yields_while_busy_and_rests_after_answering() {
        use crate::outcome::Outcome;
        let fg = RequestsFirst::new(1, 0.5);
        let work: BatchHandlerFn = Arc::new(|batch: Vec<Inbound>| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                vec![Outcome::Ack; batch.len()]
            })
        });
        let route = YieldTo(fg.clone()).wrap_batch(work).expect("a batch form");
        let inbound = || Inbound {
            payload: bytes::Bytes::new(),
            meta: crate::DeliveryMeta::new("s"),
        };
        let _request = fg.enter();
        let started = tokio::time::Instant::now();
        let (a, b) = tokio::join!(route(vec![inbound()]), route(vec![inbound()]));
        assert_eq!((a.len(), b.len()), (1, 1));
        // One at a time, each followed by its rest (100 ms): the second starts at 200 ms.
        assert_eq!(started.elapsed(), Duration::from_millis(400));
    }
}
