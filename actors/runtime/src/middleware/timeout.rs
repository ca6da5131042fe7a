//! Timeout: a handler that does not answer in time gets the delivery retried, so a hung
//! dependency shows up as retries and, in the end, a dead letter — never as a stuck consumer.
//! On a batched route the whole batch is abandoned: nothing of it is acked, the route stops
//! sending in-progress acks for it, and its deliveries come back (what the actor may still
//! commit of it is recognised by the inbox when they do).

use std::time::Duration;

use super::{BatchHandlerFn, HandlerFn, Inbound, Middleware, all};
use crate::outcome::Outcome;

/// Retries deliveries whose handler takes longer than the limit.
#[derive(Debug, Clone, Copy)]
pub struct Timeout(pub Duration);

impl Default for Timeout {
    /// 30 seconds.
    fn default() -> Self {
        Self(Duration::from_secs(30))
    }
}

impl Middleware for Timeout {
    fn wrap(&self, next: HandlerFn) -> HandlerFn {
        let limit = self.0;
        std::sync::Arc::new(move |inbound: Inbound| {
            let fut = next(inbound);
            Box::pin(async move {
                match tokio::time::timeout(limit, fut).await {
                    Ok(outcome) => outcome,
                    Err(_) => Outcome::retry(format!("handler timed out after {limit:?}")),
                }
            })
        })
    }

    fn wrap_batch(&self, next: BatchHandlerFn) -> Result<BatchHandlerFn, &'static str> {
        let limit = self.0;
        Ok(std::sync::Arc::new(move |batch: Vec<Inbound>| {
            let n = batch.len();
            let fut = next(batch);
            Box::pin(async move {
                match tokio::time::timeout(limit, fut).await {
                    Ok(outcomes) => outcomes,
                    Err(_) => all(
                        n,
                        &Outcome::retry(format!("batch timed out after {limit:?}; abandoned")),
                    ),
                }
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::handler_fn;
    use super::super::test_support::*;
    use super::*;

    #[tokio::test]
    async fn slow_handler_is_retried() {
        let h = Timeout(Duration::from_millis(20)).wrap(handler_fn(|_| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Outcome::Ack
        }));
        match h(inbound("s", 1, 5)).await {
            Outcome::Retry { reason, .. } => assert!(reason.contains("timed out"), "{reason}"),
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_batch_is_abandoned_whole() {
        let h = Timeout(Duration::from_millis(20))
            .wrap_batch(std::sync::Arc::new(|batch: Vec<Inbound>| {
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    vec![Outcome::Ack; batch.len()]
                })
            }))
            .expect("a batch form");
        let out = h(vec![inbound("s", 1, 5), inbound("s", 1, 5)]).await;
        assert_eq!(out.len(), 2);
        assert!(
            out.iter().all(|o| matches!(o, Outcome::Retry { .. })),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn fast_handler_passes() {
        let h = Timeout(Duration::from_secs(1)).wrap(always(Outcome::Ack));
        assert_eq!(h(inbound("s", 1, 5)).await, Outcome::Ack);
    }
}
