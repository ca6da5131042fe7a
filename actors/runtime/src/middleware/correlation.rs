//! Correlation: every log line written while a delivery is handled carries its correlation
//! id, trace id, subject and stream sequence, because the handler runs inside the delivery's
//! span ([`delivery_span`](crate::span::delivery_span)).

use tracing::Instrument;

use super::{BatchHandlerFn, HandlerFn, Inbound, Middleware};
use crate::span::delivery_span;

/// Runs the handler inside a `delivery` span with the message's identifiers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Correlation;

impl Middleware for Correlation {
    fn wrap(&self, next: HandlerFn) -> HandlerFn {
        std::sync::Arc::new(move |inbound: Inbound| {
            let span = delivery_span("route", &inbound.meta);
            Box::pin(next(inbound).instrument(span))
        })
    }

    /// A batch's deliveries are handled by an actor, each in its own delivery span (with
    /// its correlation id): the batch needs no span of its own.
    fn wrap_batch(&self, next: BatchHandlerFn) -> Result<BatchHandlerFn, &'static str> {
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::super::handler_fn;
    use super::super::test_support::*;
    use super::*;
    use crate::headers;
    use crate::outcome::Outcome;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut g) = self.0.lock() {
                g.extend_from_slice(b);
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn what_the_handler_logs_carries_the_correlation_and_trace_ids() {
        let out = Buffer::default();
        let w = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let h = Correlation.wrap(handler_fn(|_| async {
            tracing::info!("handling");
            Outcome::Ack
        }));
        let mut delivery = inbound("readings.taken", 2, 5);
        delivery.meta = delivery
            .meta
            .with_header(headers::CORRELATION_ID, "corr-42")
            .with_header(
                headers::TRACEPARENT,
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            );
        assert_eq!(h(delivery).await, Outcome::Ack);
        let text = String::from_utf8(out.0.lock().map(|g| g.clone()).unwrap_or_default())
            .unwrap_or_default();
        let line = text
            .lines()
            .find(|l| l.contains("handling"))
            .unwrap_or_default();
        assert!(line.contains("corr-42"), "{text}");
        assert!(line.contains("4bf92f3577b34da6a3ce929d0e0e4736"), "{text}");
        assert!(
            line.contains("readings.taken") && line.contains("delivered=2"),
            "{text}"
        );
    }
}
