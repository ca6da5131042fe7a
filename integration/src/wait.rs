//! Waiting for a condition, always with a deadline.

use std::time::{Duration, Instant};

/// Polls `f` until it returns `Ok`, for at most `deadline`; panics with `what` and the last
/// failure otherwise.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let until = Instant::now() + deadline;
    loop {
        let last = match f().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() >= until {
            panic!("timed out after {deadline:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The blocking variant of [`eventually`].
pub fn eventually_sync<T>(
    what: &str,
    deadline: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let until = Instant::now() + deadline;
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() >= until {
            panic!("timed out after {deadline:?} waiting for {what}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
