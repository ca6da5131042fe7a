//! A steady stream of orders, as a well-behaved client sends them while things break.
//!
//! Every order carries its own `Idempotency-Key`; on a 503 or a connection error the client
//! retries with the same key (what the API documents as safe) until it gets a 202 or its
//! deadline passes. So the set of accepted orders is exact: an order whose event was stored
//! but whose 202 was lost is accepted on the retry, under the same id. Anything other than 202
//! or 503 is recorded as unexpected: the fault tests assert there is none (no 500, no hang).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The gateway's base URL.
    pub base: String,
    /// Products to buy, round-robin, one unit each.
    pub products: Vec<String>,
    /// How long to keep starting orders.
    pub duration: Duration,
    /// Time between two new orders.
    pub interval: Duration,
    /// How long one order may keep retrying.
    pub give_up_after: Duration,
    /// Every n-th customer is `declined-*` (0: none).
    pub declined_every: usize,
    /// Every n-th order is express (0: none).
    pub express_every: usize,
}

impl LoadConfig {
    /// One order every 25 ms for `duration` against `base`, buying `products`.
    pub fn new(base: &str, products: &[&str], duration: Duration) -> Self {
        Self {
            base: base.to_string(),
            products: products.iter().map(|p| p.to_string()).collect(),
            duration,
            interval: Duration::from_millis(25),
            give_up_after: Duration::from_secs(45),
            declined_every: 7,
            express_every: 5,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Order ids answered 202.
    pub accepted: Vec<String>,
    /// Orders started.
    pub started: usize,
    /// 503 answers (each retried).
    pub unavailable: usize,
    /// Connection errors (each retried): the gateway process was down.
    pub connection_errors: usize,
    /// Anything else: status and body.
    pub unexpected: Vec<String>,
    /// Orders that never got a 202 before their deadline.
    pub gave_up: usize,
    /// The slowest single answer.
    pub slowest: Duration,
}

impl LoadReport {
    /// Panics unless every order was accepted and every answer was a 202 or a 503 given
    /// promptly.
    #[track_caller]
    pub fn assert_clean(&self, max_answer: Duration) {
        assert!(
            self.unexpected.is_empty(),
            "unexpected answers: {:?}",
            self.unexpected
        );
        assert_eq!(self.gave_up, 0, "orders never accepted: {self:?}");
        assert_eq!(self.accepted.len(), self.started, "{self:?}");
        assert!(
            self.slowest <= max_answer,
            "an answer took {:?} (limit {max_answer:?})",
            self.slowest
        );
    }
}

/// Runs the load to its end (every started order accepted or given up) and reports.
pub async fn run(config: LoadConfig) -> LoadReport {
    let client = reqwest::Client::builder()
        // Shorter than the server's keep-alive: never reuse a connection it is closing.
        .pool_idle_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(16)
        .build()
        .expect("an HTTP client");
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut i = 0usize;
    while started.elapsed() < config.duration {
        let product = &config.products[i % config.products.len()];
        let customer = if config.declined_every > 0
            && i % config.declined_every == config.declined_every - 1
        {
            format!("declined-{i}")
        } else {
            format!("c-{i}")
        };
        let priority = if config.express_every > 0 && i.is_multiple_of(config.express_every) {
            "express"
        } else {
            "standard"
        };
        let body = json!({"customer_id": customer, "priority": priority,
            "items": [{"product_id": product, "quantity": 1}]});
        tasks.push(tokio::spawn(one_order(
            client.clone(),
            config.clone(),
            body,
            report.clone(),
        )));
        i += 1;
        tokio::time::sleep(config.interval).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut r = report.lock().map(|r| r.clone()).unwrap_or_default();
    r.started = i;
    r
}

async fn one_order(
    client: reqwest::Client,
    config: LoadConfig,
    body: Value,
    report: Arc<Mutex<LoadReport>>,
) {
    let key = uuid::Uuid::new_v4().to_string();
    let until = Instant::now() + config.give_up_after;
    loop {
        let sent = Instant::now();
        let result = client
            .post(format!("{}/orders", config.base))
            .header("Idempotency-Key", &key)
            .json(&body)
            .send()
            .await;
        let took = sent.elapsed();
        let outcome = match result {
            Ok(r) => {
                let status = r.status().as_u16();
                let text = r.text().await.unwrap_or_default();
                Some((status, text))
            }
            // A hang is a failure; a refused or dropped connection (the process was killed)
            // is retried like a 503.
            Err(e) if e.is_timeout() => Some((0, format!("timed out after {took:?}: {e}"))),
            Err(_) => None,
        };
        let done = {
            let mut rep = match report.lock() {
                Ok(r) => r,
                Err(p) => p.into_inner(),
            };
            match outcome {
                Some((202, text)) => {
                    let id = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["order_id"].as_str().map(str::to_string));
                    match id {
                        Some(id) => rep.accepted.push(id),
                        None => rep
                            .unexpected
                            .push(format!("202 without an order id: {text}")),
                    }
                    rep.slowest = rep.slowest.max(took);
                    true
                }
                Some((503, text)) => {
                    rep.unavailable += 1;
                    rep.slowest = rep.slowest.max(took);
                    if !serde_json::from_str::<Value>(&text).is_ok_and(|v| v["error"].is_string()) {
                        rep.unexpected
                            .push(format!("503 without a JSON error: {text}"));
                    }
                    false
                }
                None => {
                    rep.connection_errors += 1;
                    false
                }
                Some((status, text)) => {
                    rep.unexpected.push(format!("{status}: {text}"));
                    true
                }
            }
        };
        if done {
            return;
        }
        if Instant::now() > until {
            if let Ok(mut rep) = report.lock() {
                rep.gave_up += 1;
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
