//! The gateway's HTTP API as the tests use it, whether the application runs in-process
//! ([`TestApp`](crate::TestApp)) or as a process ([`JetflowProcess`](crate::JetflowProcess)).

use std::time::Duration;

use serde_json::json;

use crate::scenarios::metric_sum;
use crate::wait::eventually;

/// `PUT {base}/inventory/{product}`, asserting it answers 200.
pub async fn put_stock(
    client: &reqwest::Client,
    base: &str,
    product: &str,
    available: i64,
    price_cents: i64,
) {
    let r = client
        .put(format!("{base}/inventory/{product}"))
        .json(&json!({"available": available, "price_cents": price_cents}))
        .send()
        .await
        .expect("PUT /inventory answers");
    assert_eq!(
        r.status().as_u16(),
        200,
        "{}",
        r.text().await.unwrap_or_default()
    );
}

/// Waits up to `deadline` until the series `name` with `labels`, summed, reaches `at_least`
/// on `{base}/metrics`.
pub async fn until_metric(
    base: &str,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
    deadline: Duration,
) {
    let url = format!("{base}/metrics");
    eventually(
        &format!("{name}{labels:?} to reach {at_least}"),
        deadline,
        || async {
            let text = reqwest::get(&url)
                .await
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            let n = metric_sum(&text, name, labels);
            if n >= at_least {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        },
    )
    .await;
}
