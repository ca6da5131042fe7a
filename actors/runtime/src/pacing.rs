//! Pacing calls to a downstream at the rate it grants: backpressure is not failure.
//!
//! A downstream that answers `429`, or `503` with `Retry-After`, is asking us to slow down,
//! not telling us it is broken. A [`Pacer`] runs every call to one downstream: it lets at most
//! `limit` calls be in flight, and adapts `limit` the way TCP and Netflix's concurrency-limits
//! (`AIMDLimit`) do: each answered call grows it a little (one more per `limit` answers),
//! each push-back halves it (once per congestion event) and pauses every call until the
//! `Retry-After` has passed. The call that was pushed back is made again, inside the same
//! delivery: no delivery attempt is spent and nothing counts as a failure (the circuit
//! breaker and the give-up count only real failures: refused connections, timeouts, `5xx`
//! without `Retry-After`).
//!
//! `jetflow_pace_limit{downstream}` shows the limit it settled on,
//! `jetflow_pace_pushbacks_total{downstream}` how often the downstream pushed back.
//!
//! ```
//! use std::time::Duration;
//! use jetflow_runtime::pacing::{Paced, Pacer};
//!
//! # tokio::runtime::Runtime::new()?.block_on(async {
//! let pacer = Pacer::new("provider", 4, 64);
//! let mut answers = vec![Paced::Done("charged"), Paced::SlowDown(Some(Duration::from_millis(10)))];
//! // The first try is pushed back; the pacer waits 10 ms and makes the call again.
//! let answer = pacer.run(|| std::future::ready(answers.pop().unwrap_or(Paced::Done("again")))).await;
//! assert_eq!(answer, "charged");
//! assert_eq!(pacer.limit(), 2, "halved by the push-back");
//! # });
//! # Ok::<(), std::io::Error>(())
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::metrics;

/// How long to pause after a push-back that names no `Retry-After`.
const DEFAULT_PAUSE: Duration = Duration::from_millis(200);

/// What one call to a paced downstream came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paced<T> {
    /// It answered (with success or with a real failure: that is the caller's to judge).
    Done(T),
    /// It asked us to slow down (`429`, or `503` with `Retry-After`), and when to come back.
    SlowDown(Option<Duration>),
}

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: usize,
    paused_until: Option<Instant>,
    /// When the limit was last cut: push-backs of calls that started before it belong to
    /// the same congestion event and cut it no further.
    last_cut: Option<Instant>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    changed: Notify,
    min: f64,
    max: f64,
    limit_gauge: IntGauge,
    pushbacks: IntCounter,
}

/// Paces the calls to one downstream (see the [module](self)). Clones share the pace.
#[derive(Debug, Clone)]
pub struct Pacer {
    inner: Arc<Inner>,
}

/// A place in flight, given back on drop.
struct Slot<'a>(&'a Inner);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).in_flight -= 1;
        self.0.changed.notify_waiters();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    match state.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Pacer {
    /// A pacer for the downstream `name` (its metrics' label), starting with `initial` calls
    /// in flight and never letting more than `max` (nor fewer than one) through.
    pub fn new(name: &str, initial: usize, max: usize) -> Self {
        let max = max.max(1) as f64;
        let m = metrics();
        let limit_gauge = m.pace_limit.with_label_values(&[name]);
        let initial = (initial.max(1) as f64).min(max);
        limit_gauge.set(initial as i64);
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    limit: initial,
                    in_flight: 0,
                    paused_until: None,
                    last_cut: None,
                }),
                changed: Notify::new(),
                min: 1.0,
                max,
                limit_gauge,
                pushbacks: m.pace_pushbacks.with_label_values(&[name]),
            }),
        }
    }

    /// Calls in flight allowed now.
    pub fn limit(&self) -> usize {
        lock(&self.inner.state).limit as usize
    }

    /// Makes `call` until it is not pushed back, in a place in flight each time, and
    /// answers what it came to.
    pub async fn run<T, F, Fut>(&self, mut call: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Paced<T>>,
    {
        loop {
            let (slot, started) = self.acquire().await;
            let answer = call().await;
            drop(slot);
            match answer {
                Paced::Done(t) => {
                    self.answered();
                    return t;
                }
                Paced::SlowDown(after) => self.pushed_back(started, after),
            }
        }
    }

    /// Waits for a place in flight and for any pause to end.
    async fn acquire(&self) -> (Slot<'_>, Instant) {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait = {
                let mut st = lock(&self.inner.state);
                let now = Instant::now();
                match st.paused_until {
                    Some(until) if until > now => Some(until),
                    _ if st.in_flight < (st.limit as usize).max(1) => {
                        st.in_flight += 1;
                        return (Slot(&self.inner), now);
                    }
                    _ => None,
                }
            };
            match wait {
                Some(until) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        () = &mut changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    fn answered(&self) {
        let mut st = lock(&self.inner.state);
        let grown = (st.limit + 1.0 / st.limit).min(self.inner.max);
        st.limit = grown;
        self.inner.limit_gauge.set(grown as i64);
        drop(st);
        self.inner.changed.notify_waiters();
    }

    fn pushed_back(&self, started: Instant, after: Option<Duration>) {
        self.inner.pushbacks.inc();
        let now = Instant::now();
        let mut st = lock(&self.inner.state);
        if st.last_cut.is_none_or(|cut| started > cut) {
            st.limit = (st.limit / 2.0).max(self.inner.min);
            st.last_cut = Some(now);
            self.inner.limit_gauge.set(st.limit as i64);
        }
        let until = now + after.unwrap_or(DEFAULT_PAUSE);
        st.paused_until = Some(st.paused_until.map_or(until, |p| p.max(until)));
        tracing::debug!(
            limit = st.limit,
            pause_ms = after.unwrap_or(DEFAULT_PAUSE).as_millis() as u64,
            "downstream pushed back; slowing down"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn answers_grow_the_limit_and_a_burst_of_push_backs_halves_it_once() {
        let pacer = Pacer::new("pace-grow", 4, 8);
        for _ in 0..40 {
            pacer.run(|| std::future::ready(Paced::Done(()))).await;
        }
        assert_eq!(pacer.limit(), 8, "grown to the most");
        // Four calls in flight at once are pushed back (one congestion event), then answered.
        let tries = Arc::new(AtomicUsize::new(0));
        let calls = (0..4).map(|_| {
            let tries = tries.clone();
            let pacer = pacer.clone();
            async move {
                let mut first = true;
                pacer
                    .run(|| {
                        tries.fetch_add(1, Ordering::SeqCst);
                        let answer = if std::mem::take(&mut first) {
                            Paced::SlowDown(Some(Duration::from_secs(1)))
                        } else {
                            Paced::Done(())
                        };
                        async move {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            answer
                        }
                    })
                    .await
            }
        });
        let started = Instant::now();
        futures::future::join_all(calls).await;
        assert_eq!(tries.load(Ordering::SeqCst), 8, "each made again once");
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "the pause was kept"
        );
        assert_eq!(pacer.limit(), 4, "halved once, not four times");
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_than_the_limit_is_ever_in_flight() {
        let pacer = Pacer::new("pace-bound", 3, 3);
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let calls = (0..20).map(|_| {
            let (now, most, pacer) = (now.clone(), most.clone(), pacer.clone());
            async move {
                pacer
                    .run(|| {
                        let (now, most) = (now.clone(), most.clone());
                        async move {
                            let here = now.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(here, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            now.fetch_sub(1, Ordering::SeqCst);
                            Paced::Done(())
                        }
                    })
                    .await
            }
        });
        futures::future::join_all(calls).await;
        assert_eq!(most.load(Ordering::SeqCst), 3);
    }
}
