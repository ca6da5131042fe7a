//! The HTTP client of the payment provider.
//!
//! Every charge carries the order id as `Idempotency-Key`, so a charge retried after a
//! timeout (the provider may have charged and the answer got lost) is answered with the
//! first result instead of charging twice. A 402 is a decline (a business answer, not a
//! failure of the provider); 5xx, timeouts and connection errors are failures, which the
//! circuit breaker counts. A 429 (or a 503 with `Retry-After`) is neither: the provider
//! asks us to slow down, and the payment actor's pacer does (see
//! `jetflow_runtime::pacing`). Only a connection that was never made, or a 429, proves that
//! nothing was charged: a 5xx may come from a proxy in front of a provider that did charge,
//! so it counts as uncertain, like a timeout.
//!
//! HTTPS is verified against the system's roots plus an extra CA bundle when one is given
//! (`PAYMENT_PROVIDER_CA`), through rustls.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Makes ring the process's TLS crypto provider (once; a provider installed before stays).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// What the provider answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeResult {
    /// Charged.
    Succeeded {
        /// The provider's reference.
        payment_id: String,
    },
    /// The customer's payment was declined.
    Declined {
        /// The provider's reason, if any.
        reason: Option<String>,
    },
    /// The provider asked us to slow down (`429`, or `503` with `Retry-After`): nothing was
    /// charged, and it is no failure (the breaker counts it as an answer); the call is made
    /// again after `retry_after`.
    Throttled {
        /// How long the provider asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
}

/// Why the provider could not give an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Unreachable, or refused the request (429): the charge certainly did not happen.
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
    /// The request was sent but no clear answer came back (a 5xx, a timeout, a broken
    /// connection, an unreadable body): the charge may have gone through.
    #[error("payment provider gave no clear answer: {0}")]
    Uncertain(String),
    /// An answer that makes no sense (a bug on one side).
    #[error("unexpected payment provider answer: {0}")]
    Unexpected(String),
}

/// A `Retry-After` in seconds (`2`, or `0.5` from providers that give fractions); an HTTP
/// date is not used by any provider we know and is read as "not said".
pub fn retry_after(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

#[derive(Debug, Serialize)]
struct ChargeRequest<'a> {
    order_id: &'a str,
    customer_id: &'a str,
    amount_cents: i64,
}

#[derive(Debug, Deserialize)]
struct ChargeResponse {
    status: String,
    #[serde(default)]
    payment_id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// A client of one provider.
#[derive(Debug, Clone)]
pub struct PaymentClient {
    http: reqwest::Client,
    base_url: String,
}

impl PaymentClient {
    /// A client for the provider at `base_url`, each request limited to `timeout`, trusting
    /// the certificates in the PEM file `extra_ca` besides the system's.
    pub fn new(
        base_url: &str,
        timeout: Duration,
        extra_ca: Option<&Path>,
    ) -> Result<Self, ProviderError> {
        install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(path) = extra_ca {
            let pem = std::fs::read(path).map_err(|e| {
                ProviderError::Unexpected(format!(
                    "PAYMENT_PROVIDER_CA: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                ProviderError::Unexpected(format!(
                    "PAYMENT_PROVIDER_CA: {} holds no PEM certificates: {e}",
                    path.display()
                ))
            })?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| ProviderError::Unexpected(format!("cannot build HTTP client: {e}")))?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
        })
    }

    /// The provider's base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Charges an order (idempotently, keyed by the order id).
    pub async fn charge(
        &self,
        order_id: &str,
        customer_id: &str,
        amount_cents: i64,
    ) -> Result<ChargeResult, ProviderError> {
        let response = self
            .http
            .post(format!("{}/charges", self.base_url))
            .header("Idempotency-Key", order_id)
            .json(&ChargeRequest {
                order_id,
                customer_id,
                amount_cents,
            })
            .send()
            .await
            .map_err(send_error)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after);
        if status.as_u16() == 429 || (status.as_u16() == 503 && retry_after.is_some()) {
            return Ok(ChargeResult::Throttled { retry_after });
        }
        if status.is_server_error() {
            return Err(ProviderError::Uncertain(format!("HTTP {status}")));
        }
        let body: ChargeResponse = response.json().await.map_err(|e| {
            ProviderError::Uncertain(format!("HTTP {status}, unreadable body: {e}"))
        })?;
        match (status.as_u16(), body.status.as_str()) {
            (200, "succeeded") => Ok(ChargeResult::Succeeded {
                payment_id: body.payment_id.unwrap_or_else(|| format!("pay-{order_id}")),
            }),
            (402, _) | (200, "declined") => Ok(ChargeResult::Declined {
                reason: body.reason,
            }),
            (code, s) => Err(ProviderError::Unexpected(format!(
                "HTTP {code} with status {s:?}"
            ))),
        }
    }

    /// Voids whatever was charged under this order's idempotency key, and makes the provider
    /// refuse any later charge with it (a slow request still in flight). Idempotent.
    pub async fn void(&self, order_id: &str) -> Result<(), ProviderError> {
        let response = self
            .http
            .post(format!("{}/charges/{order_id}/void", self.base_url))
            .send()
            .await
            .map_err(send_error)?;
        match response.status().as_u16() {
            200 => Ok(()),
            code => Err(ProviderError::Unavailable(format!(
                "void answered HTTP {code}"
            ))),
        }
    }
}

/// A request that failed before the provider could see it (connect error) certainly did not
/// charge; any other failure (a timeout, a reset after sending) may have.
fn send_error(e: reqwest::Error) -> ProviderError {
    let text = chain(&e);
    if e.is_connect() {
        ProviderError::Unavailable(text)
    } else {
        ProviderError::Uncertain(text)
    }
}

/// An error with its causes (`error sending request: … : invalid peer certificate: …`), so
/// that the reason reaches the log line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds_and_fractions() {
        assert_eq!(retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(" 0.5 "), Some(Duration::from_millis(500)));
        assert_eq!(retry_after("Wed, 21 Oct 2026 07:28:00 GMT"), None);
        assert_eq!(retry_after("-1"), None);
    }
}
