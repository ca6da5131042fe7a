//! The walking skeleton against a real nats-server: an accepted order is an event in the
//! stream with its headers; NATS going away flips `/ready` and makes `POST /orders` answer 503
//! (never hang), and the bridge reconnects by itself when NATS comes back.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use jetflow_app::startup::Roles;
use jetflow_integration::{NatsServer, TestApp, TestAppBuilder, eventually};
use serde_json::{Value, json};

#[test]
fn an_accepted_order_is_an_event_in_the_stream_with_its_headers() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let app = TestApp::spawn(&nats.url()).await;
        app.wait_ready().await;

        let correlation = "corr-skeleton-1";
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let r = app
            .client
            .post(format!("{}/orders", app.address))
            .header("X-Correlation-ID", correlation)
            .header("traceparent", traceparent)
            .json(&json!({"customer_id": "c-1", "items": [{"product_id": "sku-1", "quantity": 2}]}))
            .send()
            .await
            .expect("POST /orders");
        assert_eq!(r.status().as_u16(), 202);
        assert_eq!(
            r.headers()
                .get("X-Correlation-ID")
                .and_then(|v| v.to_str().ok()),
            Some(correlation)
        );
        let location = r
            .headers()
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body: Value = r.json().await.expect("JSON");
        let order_id = body["order_id"].as_str().expect("order_id").to_string();
        assert_eq!(
            location.as_deref(),
            Some(format!("/orders/{order_id}").as_str())
        );

        // The PubAck came before the 202: the event is in the stream now.
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = jetstream::new(client);
        let stream = js
            .get_stream("ORDERS")
            .await
            .expect("the ORDERS stream exists");
        let msg = stream
            .get_last_raw_message_by_subject("orders.created.v2")
            .await
            .expect("the order event is stored");
        let event: Value = serde_json::from_slice(&msg.payload).expect("JSON event");
        assert_eq!(event["order_id"], order_id.as_str());
        assert_eq!(event["customer_id"], "c-1");
        assert_eq!(event["items"][0]["quantity"], 2);
        let header = |name: &str| {
            msg.headers
                .get(name)
                .map(|v| v.as_str().to_string())
                .unwrap_or_else(|| panic!("header {name} missing: {:?}", msg.headers))
        };
        let event_id = event["event_id"].as_str().expect("event_id");
        assert!(
            header("Nats-Msg-Id").starts_with(event_id),
            "Nats-Msg-Id is the event id"
        );
        assert_eq!(header("X-Correlation-ID"), correlation);
        let tp = header("traceparent");
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "the trace id is carried: {tp}"
        );
        // The event validates against its published schema.
        jetflow_schemas::decode("orders.created.v2", &msg.payload)
            .expect("the event matches its schema");
        app.stop().await;
    })
}

/// A publish whose PubAck does not come in time may have been stored: the saga may already
/// run the order. The gateway keeps the order (it never withdraws it), hands its events to
/// the outbox (the same ids, so JetStream keeps one of each however often they go again) and
/// answers 202. Before, it deleted the order and answered 503 "not accepted", and a client
/// that believed it and retried without a key got a second order (and a second charge).
#[test]
fn an_unconfirmed_publish_is_accepted_through_the_outbox_and_never_withdrawn() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let gateway = Roles {
            gateway: true,
            ..Roles::default()
        };
        // No PubAck ever arrives in time; every publish is sent, and stored.
        let app = TestAppBuilder::new(&nats.url())
            .roles(gateway)
            .with(|s| s.nats.publish_timeout = Duration::from_nanos(1))
            .start()
            .await;
        app.wait_ready().await;
        let r = app
            .post_order(&json!({"customer_id": "c-unconfirmed", "items": [{"product_id": "sku-1", "quantity": 1}]}))
            .await;
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("JSON");
        assert_eq!(status, 202, "{body}");
        let order_id = body["order_id"].as_str().expect("order_id").to_string();
        let (status, order) = app.get_order(&order_id).await;
        assert_eq!(
            (status, order["status"].as_str()),
            (200, Some("pending")),
            "{order}"
        );
        // Its events are stored once each, however often the outbox publishes them again.
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = jetstream::new(client);
        let versions = app.settings.saga.created_versions.len() as u64;
        eventually(
            "the events to be stored",
            Duration::from_secs(10),
            || async {
                match jetflow_integration::nats::stored(&js, "ORDERS").await {
                    n if n == versions => Ok(()),
                    n => Err(format!("{n} stored")),
                }
            },
        )
        .await;
        let outbox = app.outbox().expect("the gateway has an outbox");
        for _ in 0..3 {
            outbox.sweep_now().await;
        }
        assert_eq!(
            jetflow_integration::nats::stored(&js, "ORDERS").await,
            versions
        );
        app.stop().await;
    })
}

#[test]
fn ready_flips_while_nats_is_down_and_the_bridge_reconnects_by_itself() {
    jetflow_integration::run(async {
        let mut nats = NatsServer::start();
        let app = TestApp::spawn(&nats.url()).await;
        app.wait_ready().await;
        app.put_stock("sku-r", 10, 100).await;

        nats.kill();
        eventually("/ready to answer 503", Duration::from_secs(15), || async {
            let r = app
                .client
                .get(format!("{}/ready", app.address))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            match r.status().as_u16() {
                503 => Ok(r.json::<Value>().await.map_err(|e| e.to_string())?),
                s => Err(format!("{s}")),
            }
        })
        .await;
        let health = app
            .client
            .get(format!("{}/health", app.address))
            .send()
            .await
            .expect("/health");
        assert_eq!(
            health.status().as_u16(),
            200,
            "the process is alive, only not ready"
        );

        // An order while NATS is down: a prompt 503 with a JSON error, never a hang or a 500.
        let started = Instant::now();
        let r = app
            .post_order(
                &json!({"customer_id": "c-2", "items": [{"product_id": "sku-r", "quantity": 1}]}),
            )
            .await;
        assert_eq!(r.status().as_u16(), 503);
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "answered in {:?}",
            started.elapsed()
        );
        let body: Value = r.json().await.expect("a JSON error");
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{body}"
        );

        nats.restart();
        app.wait_ready().await;
        let id = app.order("c-2", "sku-r", 1).await;
        let order = app.wait_finished(&id, Duration::from_secs(30)).await;
        assert_eq!(order["status"], "confirmed", "{order}");
        app.stop().await;
    })
}
