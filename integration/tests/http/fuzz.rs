//! Property-based bad input at the gateway: thousands of malformed bodies, headers, ids and
//! content types at every endpoint of a running `jetflow all`. The only answers allowed are
//! the documented ones: 2xx, or a 4xx with a JSON error naming what is wrong; never a 5xx,
//! never a hang. Afterwards every event the gateway accepted must pass its schema.

use std::time::Duration;

use jetflow_integration::{JetflowProcess, NatsServer};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

struct Target {
    _nats: NatsServer,
    nats_url: String,
    app: JetflowProcess,
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Target {
    /// A `jetflow all` on its own nats-server, for one test: dropped (processes stopped,
    /// directories removed) when the test ends, even when it panics.
    fn start() -> Self {
        let nats = NatsServer::start();
        let (mut app, dir) = JetflowProcess::all(
            &nats.url(),
            &[("JETFLOW_RATE_LIMIT", "0"), ("RUST_LOG", "warn")],
        );
        app.wait_ready();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let client = reqwest::Client::builder()
            // Shorter than the server's keep-alive: never reuse a connection it is closing.
            .pool_idle_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        Target {
            nats_url: nats.url(),
            _nats: nats,
            app,
            _dir: dir,
            rt,
            client,
        }
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)),
        ".{0,40}".prop_map(Value::String),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(0)),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("customer_id".to_string()),
                    Just("items".to_string()),
                    Just("product_id".to_string()),
                    Just("quantity".to_string()),
                    Just("priority".to_string()),
                    Just("shipping_address".to_string()),
                    Just("available".to_string()),
                    Just("price_cents".to_string()),
                    "[a-z_]{1,12}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Orders that are almost right: one field broken at a time, or several.
fn near_order() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            Just(json!("c-1")),
            json_value(),
            Just(json!("")),
            Just(json!("x".repeat(300)))
        ],
        prop_oneof![
            Just(json!([{"product_id": "sku-1", "quantity": 1}])),
            json_value(),
            Just(json!([])),
            Just(json!([{"product_id": "sku-1", "quantity": 0}])),
            Just(json!([{"product_id": "sku-1", "quantity": -3}])),
            Just(json!([{"product_id": "", "quantity": 1}])),
            Just(json!([{"product_id": "sku-1", "quantity": 1e30}])),
            Just(json!([{"product_id": "sku-1"}])),
            Just(json!(
                (0..200)
                    .map(|i| json!({"product_id": format!("p{i}"), "quantity": 1}))
                    .collect::<Vec<_>>()
            )),
        ],
        prop_oneof![
            Just(json!("standard")),
            Just(json!("express")),
            json_value()
        ],
        prop::option::of(json_value()),
    )
        .prop_map(|(customer, items, priority, extra)| {
            let mut o = json!({"customer_id": customer, "items": items, "priority": priority});
            if let Some(extra) = extra {
                o["unexpected"] = extra;
            }
            o
        })
}

#[derive(Debug, Clone)]
enum Body {
    Json(Value),
    Raw(Vec<u8>),
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        4 => near_order().prop_map(Body::Json),
        2 => json_value().prop_map(Body::Json),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Body::Raw),
        1 => "\\PC{0,80}".prop_map(|s| Body::Raw(s.into_bytes())),
    ]
}

fn header_value() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        "[ -~]{0,300}",
        Just("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string()),
        Just("00-00000000000000000000000000000000-0000000000000000-01".to_string()),
    ])
}

fn path_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_.-]{1,40}",
        "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
        "%[0-9A-F]{2}[a-z]{0,5}",
        Just("x".repeat(500)),
    ]
}

#[derive(Debug, Clone)]
struct Request {
    method: &'static str,
    path: String,
    content_type: Option<String>,
    idempotency_key: Option<String>,
    correlation: Option<String>,
    traceparent: Option<String>,
    body: Body,
}

fn request() -> impl Strategy<Value = Request> {
    (
        prop_oneof![
            4 => Just(("POST", "/orders".to_string())),
            1 => path_id().prop_map(|id| ("GET", format!("/orders/{id}"))),
            1 => path_id().prop_map(|id| ("GET", format!("/inventory/{id}"))),
            1 => path_id().prop_map(|id| ("PUT", format!("/inventory/{id}"))),
            1 => Just(("DELETE", "/orders".to_string())),
        ],
        prop::option::of(prop_oneof![
            Just("application/json".to_string()),
            Just("application/json; charset=utf-8".to_string()),
            Just("text/plain".to_string()),
            Just("application/x-www-form-urlencoded".to_string()),
            "[ -~]{0,40}",
        ]),
        header_value(),
        header_value(),
        header_value(),
        body(),
    )
        .prop_map(
            |((method, path), content_type, idempotency_key, correlation, traceparent, body)| {
                Request {
                    method,
                    path,
                    content_type,
                    idempotency_key,
                    correlation,
                    traceparent,
                    body,
                }
            },
        )
}

fn send(t: &Target, req: &Request) -> Result<(u16, String), String> {
    let url = format!("{}{}", t.app.url(), req.path);
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut b = t.client.request(method, url);
    for (name, value) in [
        ("Content-Type", &req.content_type),
        ("Idempotency-Key", &req.idempotency_key),
        ("X-Correlation-ID", &req.correlation),
        ("traceparent", &req.traceparent),
    ] {
        if let Some(v) = value
            && let Ok(v) = reqwest::header::HeaderValue::from_str(v)
        {
            b = b.header(name, v);
        }
    }
    b = match &req.body {
        Body::Json(v) => b.body(serde_json::to_vec(v).map_err(|e| e.to_string())?),
        Body::Raw(bytes) => b.body(bytes.clone()),
    };
    t.rt.block_on(async {
        let r = b.send().await.map_err(|e| format!("no answer: {e}"))?;
        let status = r.status().as_u16();
        Ok((status, r.text().await.unwrap_or_default()))
    })
}

#[test]
fn only_documented_answers() {
    let t = Target::start();
    let mut runner = TestRunner::new(Config {
        cases: 2500,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&request(), |req| {
        let (status, body) = send(&t, &req).map_err(TestCaseError::fail)?;
        prop_assert!(status < 500, "{status} for {req:?}: {body}");
        prop_assert!(
            [200, 202, 400, 404, 405, 413, 415, 422].contains(&status),
            "undocumented {status} for {req:?}: {body}"
        );
        if status >= 400 {
            let e: Value = serde_json::from_str(&body).map_err(|_| {
                TestCaseError::fail(format!("{status} without a JSON body for {req:?}: {body}"))
            })?;
            prop_assert!(
                e["error"].is_string() && e["message"].is_string(),
                "{status} {body}"
            );
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}\nlog:\n{}", t.app.log_tail());
    }
}

#[test]
fn every_accepted_order_event_passes_its_schema() {
    // Its own orders, so it never passes vacuously.
    let t = Target::start();
    for i in 0..20 {
        let req = Request {
            method: "POST",
            path: "/orders".into(),
            content_type: Some("application/json".into()),
            idempotency_key: None,
            correlation: None,
            traceparent: None,
            body: Body::Json(
                json!({"customer_id": format!("c-{i}"), "items": [{"product_id": "sku-1", "quantity": 1}]}),
            ),
        };
        assert_eq!(send(&t, &req).expect("answer").0, 202);
    }
    t.rt.block_on(async {
        let client = async_nats::connect(&t.nats_url).await.expect("NATS");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("ORDERS").await.expect("ORDERS");
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                filter_subject: "orders.created.>".into(),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut messages = consumer.messages().await.expect("messages");
        let mut seen = 0;
        use futures::StreamExt;
        while let Ok(Some(Ok(msg))) =
            tokio::time::timeout(Duration::from_secs(2), messages.next()).await
        {
            jetflow_schemas::decode(&msg.subject, &msg.payload).unwrap_or_else(|e| {
                panic!("an accepted order fails its schema: {e}: {:?}", msg.payload)
            });
            seen += 1;
        }
        assert!(seen >= 20, "read {seen} events");
    });
}
