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

/// Waits (at most `deadline`) until order `id` finished, confirmed or cancelled, as the
/// gateway at `api` shows it (`GET /orders/{id}`); returns the order.
pub async fn order_finished(api: &str, id: &str, deadline: Duration) -> serde_json::Value {
    let client = reqwest::Client::new();
    let url = format!("{api}/orders/{id}");
    eventually(&format!("order {id} to finish"), deadline, || async {
        let order: serde_json::Value = client
            .get(&url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        match order["status"].as_str() {
            Some("confirmed" | "cancelled") => Ok(order),
            _ => Err(order.to_string()),
        }
    })
    .await
}
