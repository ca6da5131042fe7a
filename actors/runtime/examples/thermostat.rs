//! A complete effectively-once service on jetflow, with nothing about orders in it.
//!
//! It reads temperature readings from `readings.<sensor>` (`{"celsius": 31.5}`), keeps each
//! sensor's latest reading in a table, and publishes `alerts.<sensor>` when a reading crosses
//! the threshold upwards. Readings arrive in batches, each batch is one transaction (inbox,
//! state, outbox) in a supervised actor, and a reading redelivered or re-published never
//! alerts twice. `Service` derives the streams and consumer, prunes the inbox, and stops in
//! order on Ctrl-C or SIGTERM.
//!
//! ```sh
//! NATS_URL=nats://127.0.0.1:4222 DATABASE_URL=sqlite://thermostat.db \
//!     cargo run -p jetflow-runtime --example thermostat
//! ```

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
        d: &Delivery<Self::Message>,
    ) -> Result<(), TxError> {
        let sensor = d.meta.subject.trim_start_matches("readings.").to_string();
        let now = d.message.0.celsius;
        let before: Option<f64> = query("SELECT celsius FROM sensors WHERE sensor = $1")
            .bind(&sensor)
            .fetch_optional_scalar(uow.conn())
            .await?;
        query(
            "INSERT INTO sensors (sensor, celsius) VALUES ($1, $2) \
             ON CONFLICT (sensor) DO UPDATE SET celsius = excluded.celsius",
        )
        .bind(&sensor)
        .bind(now)
        .execute(uow.conn())
        .await?;
        if now > THRESHOLD && before.is_none_or(|b| b <= THRESHOLD) {
            let body = format!(r#"{{"sensor":"{sensor}","celsius":{now}}}"#);
            uow.publish(format!("alerts.{sensor}"), body);
        }
        Ok(())
    }
}

#[actix::main]
async fn main() -> Result<(), ServiceError> {
    Service::new("thermostat")
        .schema("CREATE TABLE IF NOT EXISTS sensors (sensor TEXT PRIMARY KEY, celsius DOUBLE PRECISION NOT NULL)")
        .route("readings.>", Thermostat)
        .emits("alerts.>")
        .run()
        .await
}
