//! The HTTP contract beyond the happy path: a known path with a method it does not serve
//! answers 405 with `Allow`; HEAD works wherever GET does; the probes and metrics move to
//! `JETFLOW_ADMIN_ADDR` when it is set; past the backlog bound, orders are refused with 503
//! and `Retry-After`, and nothing of them is stored.

use std::time::Duration;

use jetflow_domain::{Role, SagaConfig, topology};
use jetflow_integration::{NatsServer, TestAppBuilder, eventually};
use jetflow_schemas::Priority;
use reqwest::Method;
use serde_json::{Value, json};

#[test]
fn past_the_backlog_bound_orders_are_refused_with_503_and_nothing_is_stored() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        // A gateway whose saga does not keep up: its first consumer exists, nobody pulls.
        let app = TestAppBuilder::new(&nats.url())
            .roles(jetflow_app::startup::Roles {
                gateway: true,
                ..Default::default()
            })
            .with(|s| s.max_backlog = 10)
            .start()
            .await;
        app.wait_ready().await;
        let js = app.bridge().jetstream().expect("connected");
        let spec = topology::consumer(
            &SagaConfig::default(),
            Role::Inventory,
            topology::ORDERS,
            Priority::Standard,
        );
        jetflow_runtime::topology::ensure_consumer(&js, &spec)
            .await
            .expect("the saga's first consumer");
        app.put_stock("sku-bl", 1000, 100).await;
        let client = reqwest::Client::new();
        let post = |i: usize| {
            let client = client.clone();
            let url = format!("{}/orders", app.address);
            async move {
                client
                    .post(url)
                    .json(&json!({"customer_id": format!("c-{i}"), "items": [{"product_id": "sku-bl", "quantity": 1}]}))
                    .send()
                    .await
                    .expect("POST")
            }
        };
        let accepted = std::sync::atomic::AtomicUsize::new(0);
        for i in 0..15 {
            assert_eq!(post(i).await.status().as_u16(), 202, "under the bound");
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        // Once the gateway has read the backlog (every second): refused, and told when to
        // come back.
        let refused = eventually("orders to be refused", Duration::from_secs(10), || async {
            let r = post(100).await;
            match r.status().as_u16() {
                503 => Ok(r),
                202 => {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    Err("accepted".to_string())
                }
                other => Err(format!("{other}")),
            }
        })
        .await;
        assert!(refused.headers().get("Retry-After").is_some());
        let e: Value = refused.json().await.expect("a JSON error");
        assert_eq!(e["error"], "backlogged", "{e}");
        for i in 0..5 {
            assert_eq!(post(200 + i).await.status().as_u16(), 503);
        }
        // Only what was accepted is in the stream: a 503 stored nothing.
        let stored = jetflow_integration::nats::stored(&js, topology::ORDERS).await;
        assert_eq!(
            stored,
            accepted.load(std::sync::atomic::Ordering::SeqCst) as u64
        );
        app.stop().await;
    })
}

#[test]
fn wrong_methods_answer_405_with_allow_and_head_works_wherever_get_does() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let app = TestAppBuilder::new(&nats.url()).start().await;
        app.wait_ready().await;
        app.put_stock("sku-h1", 5, 100).await;
        let order = app.order("c-h1", "sku-h1", 1).await;
        let client = reqwest::Client::new();
        let url = |path: &str| format!("{}{path}", app.address);

        // (path, a method it does not serve, the methods Allow must list)
        let cases = [
            ("/orders", Method::GET, &["POST"][..]),
            ("/orders", Method::DELETE, &["POST"][..]),
            (
                &format!("/orders/{order}"),
                Method::POST,
                &["GET", "HEAD"][..],
            ),
            (
                "/inventory/sku-h1",
                Method::DELETE,
                &["GET", "HEAD", "PUT"][..],
            ),
            ("/health", Method::POST, &["GET", "HEAD"][..]),
            ("/ready", Method::PUT, &["GET", "HEAD"][..]),
            ("/metrics", Method::DELETE, &["GET", "HEAD"][..]),
            ("/openapi.json", Method::POST, &["GET", "HEAD"][..]),
        ];
        for (path, method, allowed) in cases {
            let r = client
                .request(method.clone(), url(path))
                .send()
                .await
                .expect("an answer");
            assert_eq!(r.status().as_u16(), 405, "{method} {path}");
            let allow = r
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            for m in allowed {
                assert!(
                    allow.contains(m),
                    "{method} {path}: Allow {allow:?} lacks {m}"
                );
            }
            let body: serde_json::Value = r.json().await.expect("a JSON error");
            assert_eq!(
                body["error"], "method_not_allowed",
                "{method} {path}: {body}"
            );
        }
        // Unknown paths stay 404.
        let r = client.get(url("/nope")).send().await.expect("an answer");
        assert_eq!(r.status().as_u16(), 404);

        // HEAD: the GET's status and headers, no body.
        for (path, status) in [
            ("/health".to_string(), 200),
            ("/ready".to_string(), 200),
            ("/metrics".to_string(), 200),
            ("/openapi.json".to_string(), 200),
            (format!("/orders/{order}"), 200),
            (
                "/orders/00000000-0000-4000-8000-000000000000".to_string(),
                404,
            ),
            ("/inventory/sku-h1".to_string(), 200),
            ("/inventory/unknown-sku".to_string(), 404),
        ] {
            let get = client.get(url(&path)).send().await.expect("GET");
            let head = client.head(url(&path)).send().await.expect("HEAD");
            assert_eq!(get.status().as_u16(), status, "GET {path}");
            assert_eq!(head.status().as_u16(), status, "HEAD {path}");
            assert_eq!(
                head.headers().get("content-type"),
                get.headers().get("content-type"),
                "HEAD {path}"
            );
            assert!(
                head.bytes().await.expect("HEAD body").is_empty(),
                "HEAD {path} has a body"
            );
        }
        app.stop().await;
    })
}

#[test]
fn probes_and_metrics_move_to_the_admin_address_when_it_is_set() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let admin_port = jetflow_integration::ports::free_port();
        let app = TestAppBuilder::new(&nats.url())
            .with(|s| s.http.admin_addr = Some(([127, 0, 0, 1], admin_port).into()))
            .start()
            .await;
        app.wait_ready().await;
        assert_eq!(app.admin.map(|a| a.port()), Some(admin_port));
        let client = reqwest::Client::new();
        let admin = format!("http://127.0.0.1:{admin_port}");
        for path in ["/health", "/ready", "/metrics"] {
            let r = client
                .get(format!("{admin}{path}"))
                .send()
                .await
                .expect("admin");
            assert_eq!(r.status().as_u16(), 200, "admin {path}");
            let r = client
                .get(format!("{}{path}", app.address))
                .send()
                .await
                .expect("public");
            assert_eq!(
                r.status().as_u16(),
                404,
                "{path} is not on the public address"
            );
        }
        let metrics = client
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(metrics.contains("jetflow_http_requests_total"), "{metrics}");
        // The API stays where it was.
        let r = client
            .get(format!("{}/openapi.json", app.address))
            .send()
            .await
            .expect("openapi");
        assert_eq!(r.status().as_u16(), 200);
        app.stop().await;
    })
}
