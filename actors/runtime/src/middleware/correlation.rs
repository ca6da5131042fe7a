//! Correlation: every log line written while a delivery is handled carries its correlation
//! id, subject and stream sequence, because the handler runs inside this span.

use tracing::Instrument;

use super::{HandlerFn, Inbound, Middleware};

/// Runs the handler inside a `delivery` span with the message's identifiers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Correlation;

impl Middleware for Correlation {
    fn wrap(&self, next: HandlerFn) -> HandlerFn {
        std::sync::Arc::new(move |inbound: Inbound| {
            let meta = &inbound.meta;
            let span = tracing::info_span!(
                "delivery",
                subject = %meta.subject,
                stream_seq = meta.stream_sequence,
                delivered = meta.delivered,
                correlation_id = meta.correlation_id().unwrap_or(""),
                traceparent = meta.traceparent().unwrap_or(""),
            );
            Box::pin(next(inbound).instrument(span))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::outcome::Outcome;

    #[tokio::test]
    async fn passes_the_outcome_through() {
        let h = Correlation.wrap(always(Outcome::Ack));
        assert_eq!(h(inbound("s", 1, 5)).await, Outcome::Ack);
    }
}
