//! Poison events and a database outage under a steady stream of orders. Each ends with the
//! invariant check.

use std::time::Duration;

use jetflow_integration::load::{self, LoadConfig};
use jetflow_integration::scenarios::{Backend, Env};
use jetflow_integration::{eventually, invariants};

#[test]
fn poison_lands_in_the_dlq_with_a_reason_and_the_consumers_keep_going() {
    let _shared = super::beside_others();
    jetflow_integration::run(async {
        let mut env = Env::start(Backend::Sqlite, |b| b).await;
        env.stock("sku-q1", 100, 120).await;
        env.stock("sku-q2", 100, 80).await;
        let js = env.js().await;
        let load = tokio::spawn(load::run(LoadConfig::new(
            &env.app.address,
            &["sku-q1", "sku-q2"],
            Duration::from_secs(3),
        )));
        tokio::time::sleep(Duration::from_millis(800)).await;
        let v2_payload = br#"{"event_id":"0190a0e0-0000-7000-8000-00000000000a","order_id":"0190a0e0-0000-7000-8000-00000000000b","correlation_id":"c","version":2,"occurred_at":"2026-01-01T00:00:00Z","customer_id":"c","items":[{"product_id":"sku-q1","quantity":1}],"priority":"standard"}"#;
        let poison: [(&str, &[u8]); 4] = [
        ("orders.created.v2", b"\x00\x01 not json at all"),
        ("inventory.reserved", br#"{"order_id": "not-a-uuid", "amount_cents": -1}"#),
        (
            "payments.succeeded",
            br#"{"event_id":"0190a0e0-0000-7000-8000-00000000000c","order_id":"0190a0e0-0000-7000-8000-00000000000d","correlation_id":"c","version":9,"occurred_at":"2026-01-01T00:00:00Z","amount_cents":1,"payment_id":"p"}"#,
        ),
        // A valid v2 payload on the v1 subject: the wrong version for its subject.
        ("orders.created", v2_payload),
    ];
        for (subject, payload) in poison {
            js.publish(subject.to_string(), payload.to_vec().into())
                .await
                .expect("publish")
                .await
                .expect("PubAck");
        }
        let report = load.await.expect("the load ran");
        report.assert_clean(Duration::from_secs(5));
        env.accepted.extend(report.accepted);
        let result = env.check().await;
        assert!(result.count("confirmed") > 0, "{:?}", result.outcomes);
        let letters = eventually("four dead letters", Duration::from_secs(20), || async {
            let l = jetflow_runtime::dead_letter::list(&js)
                .await
                .map_err(|e| e.to_string())?;
            if l.len() >= 4 {
                Ok(l)
            } else {
                Err(format!("{} so far", l.len()))
            }
        })
        .await;
        let mut subjects: Vec<&str> = letters.iter().map(|l| l.subject.as_str()).collect();
        subjects.sort();
        assert_eq!(
            subjects,
            [
                "inventory.reserved",
                "orders.created",
                "orders.created.v2",
                "payments.succeeded"
            ]
        );
        for l in &letters {
            assert_eq!(l.reason, "poison", "{l:?}");
        }
        invariants::check_dead_letters(&env.nats.url(), 4).await;
        let metrics = env.app.metrics().await;
        assert!(
            metrics.contains("jetflow_dlq_messages_total{subject=\"orders.created.v2\"}"),
            "dead letters are counted per subject"
        );
        // Once per letter, however many consumers saw the poison message.
        assert_eq!(
            jetflow_integration::scenarios::metric_sum(&metrics, "jetflow_dlq_messages_total", &[]),
            4.0,
            "{}",
            metrics
                .lines()
                .filter(|l| l.starts_with("jetflow_dlq_messages_total"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    })
}

#[test]
fn a_database_outage_is_reported_and_nothing_is_acked_that_was_not_committed() {
    let _shared = super::beside_others();
    jetflow_integration::run(async {
        let mut env = Env::start(Backend::Postgres, |b| b).await;
        env.stock("sku-o1", 100, 120).await;
        env.stock("sku-o2", 100, 80).await;
        let load = tokio::spawn(load::run(LoadConfig::new(
            &env.app.address,
            &["sku-o1", "sku-o2"],
            Duration::from_secs(5),
        )));
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let db = env.pg.as_ref().expect("PostgreSQL");
        db.take_offline().await;
        eventually(
            "/ready to report the database",
            Duration::from_secs(10),
            || async {
                let r = env
                    .app
                    .client
                    .get(format!("{}/ready", env.app.address))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = r.status().as_u16();
                let body = r.text().await.unwrap_or_default();
                if status == 503 && body.contains("database") {
                    Ok(())
                } else {
                    Err(format!("{status} {body}"))
                }
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        db.bring_online().await;
        env.app.wait_ready().await;
        let report = load.await.expect("the load ran");
        report.assert_clean(Duration::from_secs(8));
        assert!(
            report.unavailable > 0,
            "clients saw the outage as 503s: {report:?}"
        );
        env.accepted.extend(report.accepted);
        let result = env.check().await;
        assert!(result.count("confirmed") > 0, "{:?}", result.outcomes);
        invariants::check_dead_letters(&env.nats.url(), 0).await;
    })
}
