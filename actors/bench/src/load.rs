//! Orders posted to a gateway: the one load generator of the benchmarks and the tests.
//!
//! Two paces. [`Pace::Clients`]: `n` clients, each posting its next order as soon as its last
//! one was answered (a closed loop: how much the gateway takes; `jetflow bench`). And
//! [`Pace::Every`]: one new order every interval, whatever the answers (an open loop: a
//! steady stream while things break; the fault tests).
//!
//! With [`LoadConfig::give_up_after`] every order carries its own `Idempotency-Key` and, on a
//! 503 or a connection error, is posted again with the same key (what the API documents as
//! safe) until it gets a 202 or its deadline passes, so the set of accepted orders is exact:
//! an order whose event was stored but whose 202 was lost is accepted on the retry, under the
//! same id. Without it every POST is answered once and counted, and no key is sent (the
//! gateway's path for requests without a key, as a benchmark wants it). Anything other than a
//! 202 or a 503 is recorded as unexpected.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How new orders are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// This many clients, each posting again as soon as it was answered.
    Clients(usize),
    /// One new order every this long, whatever the answers.
    Every(Duration),
}

/// What to post, and how.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The gateway's base URL.
    pub base: String,
    /// How new orders are started.
    pub pace: Pace,
    /// How long to keep starting orders.
    pub duration: Duration,
    /// At most this many orders: with [`Pace::Clients`] exactly this many, however long they
    /// take (the duration is then ignored); with [`Pace::Every`] until the duration ends.
    pub orders: Option<usize>,
    /// Products to buy, round-robin, one unit each.
    pub products: Vec<String>,
    /// The share of express orders, 0 to 1 (every fifth order with 0.2).
    pub express: f64,
    /// Every n-th customer is `declined-*` (0: none).
    pub declined_every: usize,
    /// The number of the first order (the bodies vary with it).
    pub first: usize,
    /// Retry a 503 or a lost connection with the same `Idempotency-Key` for this long;
    /// `None`: post each order once, without a key.
    pub give_up_after: Option<Duration>,
}

impl LoadConfig {
    /// One order every 25 ms for `duration` against `base`, buying `products`, every fifth
    /// express and every seventh customer declined, each retried for up to 45 s.
    pub fn new(base: &str, products: &[&str], duration: Duration) -> Self {
        Self {
            base: base.to_string(),
            pace: Pace::Every(Duration::from_millis(25)),
            duration,
            orders: None,
            products: products.iter().map(|p| p.to_string()).collect(),
            express: 0.2,
            declined_every: 7,
            first: 0,
            give_up_after: Some(Duration::from_secs(45)),
        }
    }

    /// `clients` clients posting for `duration` as fast as they are answered, each order once
    /// and without a key, buying `products`.
    pub fn closed_loop(
        base: &str,
        products: Vec<String>,
        clients: usize,
        duration: Duration,
    ) -> Self {
        Self {
            base: base.to_string(),
            pace: Pace::Clients(clients.max(1)),
            duration,
            orders: None,
            products,
            express: 0.0,
            declined_every: 0,
            first: 0,
            give_up_after: None,
        }
    }

    /// The body of order number `n`.
    fn body(&self, n: usize) -> Value {
        let product = self
            .products
            .get(n % self.products.len().max(1))
            .cloned()
            .unwrap_or_else(|| "bench-0".to_string());
        let customer =
            if self.declined_every > 0 && n % self.declined_every == self.declined_every - 1 {
                format!("declined-{n}")
            } else {
                format!("c-{n}")
            };
        let express = self.express;
        let priority = if express > 0.0 && (n as f64 * express).fract() + express >= 1.0 {
            "express"
        } else {
            "standard"
        };
        json!({"customer_id": customer, "priority": priority,
            "items": [{"product_id": product, "quantity": 1}]})
    }
}

/// What happened.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Order ids answered 202.
    pub accepted: Vec<String>,
    /// Orders started.
    pub started: usize,
    /// Every POST: the order id of a 202 (or nothing), and how long the answer took.
    pub posts: Vec<(Option<String>, Duration)>,
    /// 503 answers.
    pub unavailable: usize,
    /// Connection errors: the gateway process was down.
    pub connection_errors: usize,
    /// Anything else: status and body.
    pub unexpected: Vec<String>,
    /// Orders that never got a 202 before their deadline.
    pub gave_up: usize,
    /// The slowest answer.
    pub slowest: Duration,
    /// From the first POST to the last answer.
    pub elapsed: Duration,
    /// Clients (tasks) that failed instead of reporting: a panic, or no HTTP client.
    pub failed: Vec<String>,
}

impl LoadReport {
    /// Panics unless every order was accepted and every answer was a 202 or a 503 given
    /// within `max_answer`.
    #[track_caller]
    pub fn assert_clean(&self, max_answer: Duration) {
        assert!(self.failed.is_empty(), "clients failed: {:?}", self.failed);
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

    fn merge(&mut self, other: LoadReport) {
        self.accepted.extend(other.accepted);
        self.posts.extend(other.posts);
        self.unavailable += other.unavailable;
        self.connection_errors += other.connection_errors;
        self.unexpected.extend(other.unexpected);
        self.gave_up += other.gave_up;
        self.slowest = self.slowest.max(other.slowest);
        self.failed.extend(other.failed);
    }
}

/// Posts the load to its end (every started order accepted, refused or given up) and reports,
/// on an HTTP client of its own (connections idle for 2 s are not reused: the server may be
/// closing them; an answer may take 15 s).
pub async fn run(config: LoadConfig) -> LoadReport {
    let idle = match config.pace {
        Pace::Clients(n) => n.max(1),
        Pace::Every(_) => 16,
    };
    match reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(idle)
        .build()
    {
        Ok(client) => run_on(&client, config).await,
        Err(e) => LoadReport {
            failed: vec![format!("no HTTP client: {e}")],
            ..LoadReport::default()
        },
    }
}

/// [`run`] on `client` (a benchmark's, whose connections a warm-up opened).
pub async fn run_on(client: &reqwest::Client, config: LoadConfig) -> LoadReport {
    let config = Arc::new(config);
    let started = Instant::now();
    let stop_at = started + config.duration;
    let budget = Arc::new(AtomicUsize::new(config.orders.unwrap_or(usize::MAX)));
    let take = move || {
        budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
            .is_ok()
    };
    let counter = Arc::new(AtomicUsize::new(config.first));
    let mut tasks = Vec::new();
    match config.pace {
        Pace::Clients(n) => {
            for _ in 0..n.max(1) {
                let (client, config, counter, take) = (
                    client.clone(),
                    config.clone(),
                    counter.clone(),
                    take.clone(),
                );
                let limited = config.orders.is_some();
                tasks.push(tokio::spawn(async move {
                    let mut report = LoadReport::default();
                    while (limited || Instant::now() < stop_at) && take() {
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        report.started += 1;
                        report.merge(one_order(&client, &config, n).await);
                    }
                    report
                }));
            }
        }
        Pace::Every(interval) => {
            while Instant::now() < stop_at && take() {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let (client, config) = (client.clone(), config.clone());
                tasks.push(tokio::spawn(async move {
                    let mut report = one_order(&client, &config, n).await;
                    report.started = 1;
                    report
                }));
                tokio::time::sleep(interval).await;
            }
        }
    }
    let mut report = LoadReport::default();
    for task in tasks {
        match task.await {
            Ok(r) => {
                report.started += r.started;
                report.merge(r);
            }
            Err(e) => report.failed.push(format!("a client failed: {e}")),
        }
    }
    report.elapsed = started.elapsed();
    report
}

/// Posts order number `n` of `config` (again, with its key, while retries are on) on
/// `client`, and reports it.
pub async fn one_order(client: &reqwest::Client, config: &LoadConfig, n: usize) -> LoadReport {
    let mut report = LoadReport::default();
    let body = config.body(n).to_string();
    let key = config
        .give_up_after
        .map(|_| uuid::Uuid::new_v4().to_string());
    let until = config.give_up_after.map(|d| Instant::now() + d);
    loop {
        let sent = Instant::now();
        let mut request = client
            .post(format!("{}/orders", config.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        if let Some(key) = &key {
            request = request.header("Idempotency-Key", key);
        }
        let result = request.send().await;
        let answer = match result {
            Ok(r) => {
                let status = r.status().as_u16();
                Some((status, r.text().await.unwrap_or_default()))
            }
            // A hang is a failure; a refused or dropped connection (the process was killed)
            // is retried like a 503.
            Err(e) if e.is_timeout() => {
                Some((0, format!("timed out after {:?}: {e}", sent.elapsed())))
            }
            Err(_) => None,
        };
        let took = sent.elapsed();
        let retry = match answer {
            Some((202, text)) => {
                let id = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["order_id"].as_str().map(str::to_string));
                match &id {
                    Some(id) => report.accepted.push(id.clone()),
                    None => report
                        .unexpected
                        .push(format!("202 without an order id: {text}")),
                }
                report.posts.push((id, took));
                report.slowest = report.slowest.max(took);
                false
            }
            Some((503, text)) => {
                report.unavailable += 1;
                report.posts.push((None, took));
                report.slowest = report.slowest.max(took);
                if !serde_json::from_str::<Value>(&text).is_ok_and(|v| v["error"].is_string()) {
                    report
                        .unexpected
                        .push(format!("503 without a JSON error: {text}"));
                }
                true
            }
            None => {
                report.connection_errors += 1;
                report.posts.push((None, took));
                true
            }
            Some((status, text)) => {
                report.posts.push((None, took));
                report.unexpected.push(format!("{status}: {text}"));
                false
            }
        };
        let Some(until) = until.filter(|_| retry) else {
            return report;
        };
        if Instant::now() > until {
            report.gave_up += 1;
            return report;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
