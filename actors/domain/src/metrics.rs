//! Metrics of the order system (the runtime exports the framework's own).

use std::sync::LazyLock;

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts};

/// The order system's metric families.
pub struct DomainMetrics {
    /// `jetflow_orders_total{status}`: orders that reached each status.
    pub orders: IntCounterVec,
    /// `jetflow_orders_by_status{status}`: orders currently in each status, read from the
    /// database.
    pub orders_by_status: IntGaugeVec,
    /// `jetflow_payment_voids_pending`: charges of cancelled orders waiting to be voided.
    pub payment_voids_pending: IntGauge,
    /// `jetflow_stock_reservations_total{result}`: reserved, insufficient_stock, unknown_product.
    pub stock_reservations: IntCounterVec,
    /// `jetflow_payments_total{result}`: succeeded, declined, unavailable, retried, voided,
    /// void_failed.
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
    payment_voids_pending: register(
        IntGauge::new(
            "jetflow_payment_voids_pending",
            "Charges of cancelled orders waiting to be voided at the provider.",
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

/// Creates every known series at 0, so that dashboards and `increase()`-based alerts see the
/// first event (a series that appears with its first event has no increase).
pub fn init() {
    let m = domain_metrics();
    for status in crate::order_store::OrderStatus::ALL {
        m.orders.with_label_values(&[status.as_str()]);
        m.orders_by_status.with_label_values(&[status.as_str()]);
    }
    for result in ["reserved", "insufficient_stock", "unknown_product"] {
        m.stock_reservations.with_label_values(&[result]);
    }
    for result in [
        "succeeded",
        "declined",
        "unavailable",
        "retried",
        "voided",
        "void_failed",
    ] {
        m.payments.with_label_values(&[result]);
    }
    for kind in [
        "confirmed_without_reservation",
        "cancelled_after_confirmed",
        "cancel_after_confirmed",
        "paid_after_cancelled",
    ] {
        m.saga_anomalies.with_label_values(&[kind]);
    }
}
