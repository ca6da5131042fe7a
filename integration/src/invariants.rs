//! The check every fault-injection test ends with.
//!
//! Whatever was killed, redelivered or malformed, once the system is quiet again:
//! - every accepted order reached `confirmed` or `cancelled` (within a deadline),
//! - stock is conserved per product: `available + reserved + sold = initial`, nothing is left
//!   reserved, and `sold` equals the quantities of the confirmed orders,
//! - nothing was charged twice, counted at the provider (charges it made, not rows keyed by
//!   the order): at most one per order; a confirmed order is charged exactly once and still
//!   charged; a cancelled order is never left charged (a charge that landed is voided),
//! - every dead letter is accounted for: the DLQ holds exactly the expected number, each with a
//!   reason and an error.
//!
//! It reads only public interfaces (REST, the provider's ledger, the DLQ stream), so it works the
//! same for in-process apps and for `jetflow` processes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::Value;

use crate::wait::eventually;

/// What a test accepted and started with.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    /// Base URL that serves `GET /orders/{id}` and `GET /inventory/{id}`.
    pub api: String,
    /// Base URL of the payment provider (its `/charges` ledger).
    pub provider: String,
    /// Initial `available` per product.
    pub initial_stock: BTreeMap<String, i64>,
    /// Every order id that was answered 202.
    pub accepted: Vec<String>,
    /// How long orders may take to finish.
    pub deadline: Duration,
}

/// What the check found, for assertions beyond the invariants.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Orders per final status/reason (`confirmed`, `cancelled:insufficient_stock`, …).
    pub outcomes: BTreeMap<String, usize>,
    /// Every order's final JSON, by id.
    pub orders: HashMap<String, Value>,
    /// The final stock of each product.
    pub stock: BTreeMap<String, Value>,
}

impl Report {
    /// How many orders ended in `outcome` (e.g. `"confirmed"`, `"cancelled:payment_declined"`).
    pub fn count(&self, outcome: &str) -> usize {
        self.outcomes.get(outcome).copied().unwrap_or(0)
    }
}

fn client() -> reqwest::Client {
    jetflow_domain::payment_client::install_crypto_provider();
    reqwest::Client::builder()
        // Shorter than the server's keep-alive: never reuse a connection it is closing.
        .pool_idle_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

async fn get_json(client: &reqwest::Client, url: &str) -> Result<(u16, Value), String> {
    let r = client.get(url).send().await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let body = r.json().await.map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// Waits for every accepted order to finish, then checks stock and charges. Panics with a
/// precise message on any violation.
pub async fn check(exp: &Expectations) -> Report {
    let client = client();
    let mut report = Report::default();

    // 1. Every accepted order is terminal.
    let unique: std::collections::BTreeSet<&String> = exp.accepted.iter().collect();
    assert_eq!(
        unique.len(),
        exp.accepted.len(),
        "the gateway handed out an order id twice"
    );
    for id in &exp.accepted {
        let url = format!("{}/orders/{id}", exp.api);
        let body = eventually(
            &format!("order {id} to be confirmed or cancelled"),
            exp.deadline,
            || async {
                let (status, body) = get_json(&client, &url).await?;
                // Terminal, and complete: an order first heard of through a later event gets
                // its items when its (redelivered) `orders.created` arrives.
                match body["status"].as_str() {
                    Some("confirmed" | "cancelled")
                        if status == 200 && body["items"].is_array() =>
                    {
                        Ok(body)
                    }
                    _ => Err(format!("{status} {body}")),
                }
            },
        )
        .await;
        let outcome = match body["status"].as_str() {
            Some("cancelled") => format!("cancelled:{}", body["reason"].as_str().unwrap_or("?")),
            Some(s) => s.to_string(),
            None => unreachable!("checked above"),
        };
        *report.outcomes.entry(outcome).or_default() += 1;
        report.orders.insert(id.clone(), body);
    }

    // 2. Stock is conserved, nothing stays reserved, sold matches the confirmed orders.
    let mut sold_by_orders: BTreeMap<String, i64> = BTreeMap::new();
    for order in report.orders.values() {
        if order["status"] == "confirmed" {
            for item in order["items"].as_array().into_iter().flatten() {
                let product = item["product_id"].as_str().unwrap_or_default().to_string();
                *sold_by_orders.entry(product).or_default() +=
                    item["quantity"].as_i64().unwrap_or(0);
            }
        }
    }
    for (product, initial) in &exp.initial_stock {
        let url = format!("{}/inventory/{product}", exp.api);
        // Releases of cancelled orders may still be in flight for a moment.
        let stock = eventually(
            &format!("{product} to have nothing reserved"),
            exp.deadline,
            || async {
                let (status, body) = get_json(&client, &url).await?;
                if status == 200 && body["reserved"].as_i64() == Some(0) {
                    Ok(body)
                } else {
                    Err(format!("{status} {body}"))
                }
            },
        )
        .await;
        let available = stock["available"].as_i64().expect("available");
        let reserved = stock["reserved"].as_i64().expect("reserved");
        let sold = stock["sold"].as_i64().expect("sold");
        assert!(
            available >= 0 && reserved >= 0 && sold >= 0,
            "negative stock: {stock}"
        );
        assert_eq!(
            available + reserved + sold,
            *initial,
            "stock of {product} is not conserved: {stock}, initially {initial}"
        );
        let expected_sold = sold_by_orders.get(product).copied().unwrap_or(0);
        assert_eq!(
            sold, expected_sold,
            "{product}: sold {sold} but the confirmed orders hold {expected_sold}: {stock}"
        );
        report.stock.insert(product.clone(), stock);
    }

    // 3. Counted at the provider: no order charged twice; a confirmed order charged exactly
    //    once and still charged; a cancelled order never left charged (a charge that landed
    //    anyway is voided, eventually).
    // What an account says is final once no call is in flight (a slow provider may still be
    // charging an order that was cancelled meanwhile).
    let accounts = eventually(
        "the provider to answer every call in flight",
        exp.deadline,
        || async {
            let accounts = provider_accounts(&client, &exp.provider).await;
            match accounts
                .values()
                .find(|a| a["in_flight"].as_u64() != Some(0))
            {
                None => Ok(accounts),
                Some(busy) => Err(busy.to_string()),
            }
        },
    )
    .await;
    for (order, account) in &accounts {
        let made = account["charges_made"].as_u64().unwrap_or(u64::MAX);
        assert!(
            made <= 1,
            "order {order} was charged {made} times at the provider: {account}"
        );
    }
    for (id, order) in &report.orders {
        let account = accounts.get(id);
        let made = account
            .and_then(|a| a["charges_made"].as_u64())
            .unwrap_or(0);
        match order["status"].as_str() {
            Some("confirmed") => {
                let status = account.map(|a| a["status"].clone());
                assert!(
                    made == 1 && status == Some(Value::from("succeeded")),
                    "confirmed order {id} is not charged exactly once: {account:?}"
                );
                assert!(order["amount_cents"].as_i64().unwrap_or(0) >= 0, "{order}");
            }
            _ if made == 0 => {}
            _ => {
                // Charged, then cancelled (a lost answer, a charge that landed late): the
                // voider gives it back.
                let url = format!("{}/charges/{id}", exp.provider);
                eventually(
                    &format!("the charge of cancelled order {id} to be voided"),
                    exp.deadline,
                    || async {
                        let (_, body) = get_json(&client, &url).await?;
                        if body["status"] == "voided" {
                            Ok(())
                        } else {
                            Err(body.to_string())
                        }
                    },
                )
                .await;
            }
        }
    }
    report
}

/// Waits until the process serving `api` has published everything it committed: its
/// `jetflow_outbox_pending` gauge (counted from the outbox table) is back to 0.
pub async fn check_outbox_drained(api: &str, deadline: Duration) {
    let client = client();
    let url = format!("{api}/metrics");
    eventually("the outbox to drain", deadline, || async {
        let text = client
            .get(&url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let pending = crate::scenarios::metric_sum(&text, "jetflow_outbox_pending", &[]);
        if text.contains("jetflow_outbox_pending") && pending == 0.0 {
            Ok(())
        } else {
            Err(format!("{pending} rows pending"))
        }
    })
    .await;
}

/// Every account at the provider, by order id.
async fn provider_accounts(client: &reqwest::Client, provider: &str) -> HashMap<String, Value> {
    let (status, accounts) = get_json(client, &format!("{provider}/charges"))
        .await
        .expect("the provider's accounts");
    assert_eq!(status, 200, "GET /charges: {accounts}");
    accounts
        .as_array()
        .expect("a list of accounts")
        .iter()
        .map(|a| {
            (
                a["order_id"].as_str().unwrap_or_default().to_string(),
                a.clone(),
            )
        })
        .collect()
}

/// Checks the dead-letter stream: exactly `expected` dead letters, each with a reason and an
/// error and the subject it came from; returns them.
pub async fn check_dead_letters(
    nats_url: &str,
    expected: usize,
) -> Vec<jetflow_runtime::dead_letter::DeadLetter> {
    let client = async_nats::connect(nats_url)
        .await
        .expect("NATS for the DLQ check");
    let js = async_nats::jetstream::new(client);
    let letters = match jetflow_runtime::dead_letter::list(&js).await {
        Ok(l) => l,
        Err(e) if expected == 0 => {
            tracing::debug!(%e, "no DLQ stream");
            Vec::new()
        }
        Err(e) => panic!("the DLQ cannot be read: {e}"),
    };
    assert_eq!(
        letters.len(),
        expected,
        "expected {expected} dead letters, found {}: {:#?}",
        letters.len(),
        letters
    );
    for l in &letters {
        assert!(
            !l.reason.is_empty(),
            "a dead letter without a reason: {l:?}"
        );
        assert!(!l.error.is_empty(), "a dead letter without an error: {l:?}");
        assert!(
            !l.subject.is_empty(),
            "a dead letter without its subject: {l:?}"
        );
    }
    letters
}
