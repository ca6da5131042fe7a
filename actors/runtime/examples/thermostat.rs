//! A complete effectively-once service on jetflow, with nothing about orders in it.
//!
//! It reads temperature readings from `readings.<sensor>` (`{"celsius": 31.5}`), keeps each
//! sensor's latest reading in a table, and publishes `alerts.<sensor>` when a reading crosses
//! the threshold upwards. Readings arrive in batches, each batch is one transaction (inbox,
//! state, outbox), and a reading redelivered or re-published never alerts twice.
//!
//! ```sh
//! NATS_URL=nats://127.0.0.1:4222 DATABASE_URL=sqlite://thermostat.db \
//!     cargo run -p jetflow-runtime --example thermostat
//! ```

use std::time::Duration;

use jetflow_runtime::prelude::*;
use serde::Deserialize;

const THRESHOLD: f64 = 30.0;

#[derive(Debug, Deserialize)]
struct Reading {
    celsius: f64,
}

/// Applies one reading: remembers it, and alerts when it crosses the threshold.
struct Thermostat;

impl TxHandler for Thermostat {
    type Message = Json<Reading>;

    async fn handle(
        &self,
        uow: &mut UnitOfWork,
        d: &Delivery<Json<Reading>>,
    ) -> Result<(), TxError> {
        let sensor = d.meta.subject.trim_start_matches("readings.").to_string();
        let now = d.message.0.celsius;
        let before: Option<f64> =
            sqlx::query_scalar("SELECT celsius FROM sensors WHERE sensor = $1")
                .bind(&sensor)
                .fetch_optional(uow.conn())
                .await?;
        sqlx::query(
            "INSERT INTO sensors (sensor, celsius) VALUES ($1, $2) \
             ON CONFLICT (sensor) DO UPDATE SET celsius = excluded.celsius",
        )
        .bind(&sensor)
        .bind(now)
        .execute(uow.conn())
        .await?;
        if now > THRESHOLD && before.is_none_or(|b| b <= THRESHOLD) {
            let id = format!("alert-{}", jetflow_runtime::tx_route::default_key(&d.meta));
            let body = format!(r#"{{"sensor":"{sensor}","celsius":{now}}}"#);
            uow.emit(OutgoingMessage::new(format!("alerts.{sensor}"), id, body));
        }
        Ok(())
    }
}

#[actix::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let nats = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite://thermostat.db".into());

    // The framework's tables come with `connect`; the service brings its own.
    let db = Database::connect(&DbConfig::new(url)).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS sensors (sensor TEXT PRIMARY KEY, celsius DOUBLE PRECISION NOT NULL)")
        .execute(db.pool())
        .await?;

    let topology = Topology::new()
        .stream(StreamSpec::new("READINGS", &["readings.>"]))
        .stream(StreamSpec::new("ALERTS", &["alerts.>"]));
    let bridge = NatsBridge::start(
        BridgeConfig::new(NatsConfig::new(&nats), topology),
        Health::new(),
    );
    let outbox = OutboxRelay::start(
        db.clone(),
        std::sync::Arc::new(bridge.clone()),
        RelayConfig::default(),
    );
    let consumer = ConsumerSpec::new("READINGS", "thermostat", &["readings.>"]);
    bridge
        .subscribe(TxRoute::new(consumer, Thermostat, &outbox))
        .await?;
    println!("thermostat running; Ctrl-C to stop");

    tokio::signal::ctrl_c().await?;
    bridge.drain(Duration::from_secs(10)).await; // stop pulling, finish what was pulled
    outbox.flush(Duration::from_secs(5)).await; // publish what was committed
    bridge.close().await;
    db.close().await;
    Ok(())
}
