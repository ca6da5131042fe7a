//! Metrics of the order system (the runtime exports the framework's own).

use std::sync::LazyLock;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

/// The order system's metric families.
pub struct DomainMetrics {
    /// `jetflow_orders_total{status}`: orders that reached each status.
    pub orders: IntCounterVec,
    /// `jetflow_orders_by_status{status}`: orders currently in each status, read from the
    /// database.
    pub orders_by_status: IntGaugeVec,
    /// `jetflow_outbox_pending`: outbox rows not yet acknowledged by JetStream.
    pub outbox_pending: IntGauge,
    /// `jetflow_outbox_published_total`: outbox rows published.
    pub outbox_published: IntCounter,
    /// `jetflow_outbox_publish_errors_total`: outbox publishes that failed (retried later).
    pub outbox_publish_errors: IntCounter,
    /// `jetflow_stock_reservations_total{result}`: reserved, insufficient_stock, unknown_product.
    pub stock_reservations: IntCounterVec,
    /// `jetflow_payments_total{result}`: succeeded, declined, unavailable, retried, voided.
    pub payments: IntCounterVec,
    /// `jetflow_saga_anomalies_total{kind}`: events that contradict an order's state.
    pub saga_anomalies: IntCounterVec,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    prometheus::register(Box::new(c.clone())).expect("metric registered once");
    c
}

static METRICS: LazyLock<DomainMetrics> = LazyLock::new(|| DomainMetrics {
    orders: register(
        IntCounterVec::new(
            Opts::new("jetflow_orders_total", "Orders that reached each status."),
            &["status"],
        )
        .expect("valid metric"),
    ),
    orders_by_status: register(
        IntGaugeVec::new(
            Opts::new(
                "jetflow_orders_by_status",
                "Orders currently in each status (read from the database).",
            ),
            &["status"],
        )
        .expect("valid metric"),
    ),
    outbox_pending: register(
        IntGauge::new(
            "jetflow_outbox_pending",
            "Outbox rows not yet acknowledged by JetStream.",
        )
        .expect("valid metric"),
    ),
    outbox_published: register(
        IntCounter::new("jetflow_outbox_published_total", "Outbox rows published.")
            .expect("valid metric"),
    ),
    outbox_publish_errors: register(
        IntCounter::new(
            "jetflow_outbox_publish_errors_total",
            "Outbox publishes that failed and will be retried.",
        )
        .expect("valid metric"),
    ),
    stock_reservations: register(
        IntCounterVec::new(
            Opts::new(
                "jetflow_stock_reservations_total",
                "Reservation attempts, by result.",
            ),
            &["result"],
        )
        .expect("valid metric"),
    ),
    payments: register(
        IntCounterVec::new(
            Opts::new("jetflow_payments_total", "Payment attempts, by result."),
            &["result"],
        )
        .expect("valid metric"),
    ),
    saga_anomalies: register(
        IntCounterVec::new(
            Opts::new(
                "jetflow_saga_anomalies_total",
                "Events that contradict an order's state (logged with the order id).",
            ),
            &["kind"],
        )
        .expect("valid metric"),
    ),
});

/// The order system's metrics, registered on first use.
pub fn domain_metrics() -> &'static DomainMetrics {
    &METRICS
}
