//! Security: NATS authentication (user/password, a wrong password), secrets kept out of logs,
//! the gateway's limits (body size, content type, request rate per client), each answering
//! its documented status with a JSON error, and the admin token that writes other than order
//! submission need.

mod tls;

use std::time::Duration;

use jetflow_integration::{JetflowProcess, NatsServer, TestDatabase};
use serde_json::{Value, json};

const PASSWORD: &str = "s3cr3t-Pa55-do-not-log";
const DB_PASSWORD: &str = "db-pw-never-logged";

async fn order_through(api: &str) -> Value {
    let client = reqwest::Client::new();
    let r = client
        .put(format!("{api}/inventory/sku-sec"))
        .json(&json!({"available": 5, "price_cents": 100}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status().as_u16(), 200);
    let r = client
        .post(format!("{api}/orders"))
        .json(&json!({"customer_id": "c-sec", "items": [{"product_id": "sku-sec", "quantity": 1}]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 202);
    let id = r.json::<Value>().await.expect("JSON")["order_id"]
        .as_str()
        .expect("id")
        .to_string();
    let order = jetflow_integration::order_finished(api, &id, Duration::from_secs(30)).await;
    assert_eq!(order["status"], "confirmed", "{order}");
    order
}

#[test]
fn user_and_password_work_and_never_reach_the_logs() {
    jetflow_integration::run(async {
        let nats = NatsServer::builder()
            .user_password("jetflow", PASSWORD)
            .start();
        let (mut app, _dir) = JetflowProcess::all(
            &nats.url(),
            &[
                ("NATS_USER", "jetflow"),
                ("NATS_PASSWORD", PASSWORD),
                ("RUST_LOG", "debug"),
                ("JETFLOW_LOG_FORMAT", "json"),
            ],
        );
        app.until("/ready").await;
        order_through(&app.url()).await;
        app.kill();
        let log = app.log();
        assert!(log.contains("NATS connected"), "{}", app.log_tail());
        assert!(!log.contains(PASSWORD), "the NATS password was logged");
    })
}

#[test]
fn a_wrong_password_keeps_the_service_unready_with_a_clear_error() {
    jetflow_integration::run(async {
        let nats = NatsServer::builder()
            .user_password("jetflow", PASSWORD)
            .start();
        let db = TestDatabase::create().await;
        // Trust auth ignores the password; what matters is that it never reaches a log.
        let db_url = db.url().replacen(
            "postgres://postgres@",
            &format!("postgres://postgres:{DB_PASSWORD}@"),
            1,
        );
        assert!(db_url.contains(DB_PASSWORD), "{db_url}");
        let mut app = JetflowProcess::start(
            &["orders"],
            &[
                ("NATS_URL", nats.url().as_str()),
                ("NATS_USER", "jetflow"),
                ("NATS_PASSWORD", "wrong-password-also-secret"),
                ("DATABASE_URL", db_url.as_str()),
                ("RUST_LOG", "debug"),
            ],
        );
        // The refusal is seen (and retried, with backoff) ...
        jetflow_integration::eventually(
            "the log to report the refused authorization twice",
            Duration::from_secs(20),
            || async {
                let n = app.log().to_lowercase().matches("authorization").count();
                if n >= 2 {
                    Ok(())
                } else {
                    Err(format!("{n} so far"))
                }
            },
        )
        .await;
        // ... and all the while the service says it is not ready, and why.
        let r = reqwest::get(format!("{}/ready", app.url()))
            .await
            .expect("/ready");
        assert_eq!(r.status().as_u16(), 503);
        let body = r.text().await.unwrap_or_default();
        assert!(
            body.contains("nats"),
            "/ready names what is missing: {body}"
        );
        app.kill();
        let log = app.log();
        assert!(
            !log.contains("wrong-password-also-secret"),
            "the NATS password was logged"
        );
        assert!(
            !log.contains(DB_PASSWORD),
            "the database password was logged"
        );
    })
}

/// A client that sends its headers and part of a body, then nothing, is answered `408` once
/// the body timeout passes: it holds neither the request (and the consumers that yield to
/// requests in flight) nor a stop for ever.
#[test]
fn a_body_that_stops_arriving_is_answered_408_in_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let app = jetflow_integration::TestAppBuilder::new(&nats.url())
            .start()
            .await;
        app.wait_ready().await;
        let addr = app.address.trim_start_matches("http://").to_string();
        let mut stalled = Vec::new();
        for _ in 0..2 {
            let mut conn = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            conn.write_all(
                b"POST /orders HTTP/1.1\r\nHost: jetflow\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"customer_id\"",
            )
            .await
            .expect("write");
            stalled.push(conn);
        }
        let started = std::time::Instant::now();
        for mut conn in stalled {
            let mut answer = vec![0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut answer))
                .await
                .expect("answered within the body timeout and then some")
                .expect("read");
            let text = String::from_utf8_lossy(&answer[..n]).to_string();
            assert!(text.starts_with("HTTP/1.1 408"), "{text}");
            assert!(text.contains("body_timeout"), "{text}");
        }
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(5),
            "{waited:?}: answered before the timeout"
        );
        // Requests are answered meanwhile and after: nothing is stuck.
        app.put_stock("sku-stall", 1, 100).await;
        app.stop().await;
    })
}

const ADMIN_TOKEN: &str = "admin-t0ken-never-logged";

#[test]
fn stock_writes_need_the_admin_token_and_orders_and_reads_stay_open() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let (mut app, _dir) = JetflowProcess::all(
            &nats.url(),
            &[("JETFLOW_ADMIN_TOKEN", ADMIN_TOKEN), ("RUST_LOG", "debug")],
        );
        app.until("/ready").await;
        let client = reqwest::Client::new();
        let stock = format!("{}/inventory/sku-admin", app.url());
        let body = json!({"available": 5, "price_cents": 0});
        // No token: 401, a JSON error, and how to authenticate.
        let r = client.put(&stock).json(&body).send().await.expect("PUT");
        assert_eq!(r.status().as_u16(), 401);
        assert_eq!(
            r.headers()
                .get("WWW-Authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer")
        );
        let e: Value = r.json().await.expect("a JSON error");
        assert_eq!(e["error"], "unauthorized", "{e}");
        // Another token: 403, though the client is on loopback.
        let r = client
            .put(&stock)
            .bearer_auth("guess")
            .json(&body)
            .send()
            .await
            .expect("PUT");
        assert_eq!(r.status().as_u16(), 403);
        assert_eq!(r.json::<Value>().await.expect("JSON")["error"], "forbidden");
        // Nothing was written.
        let r = client.get(&stock).send().await.expect("GET");
        assert_eq!(r.status().as_u16(), 404);
        // The token: written; reads and orders need none.
        let r = client
            .put(&stock)
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"available": 5, "price_cents": 100}))
            .send()
            .await
            .expect("PUT");
        assert_eq!(r.status().as_u16(), 200);
        let r = client.get(&stock).send().await.expect("GET");
        assert_eq!(r.status().as_u16(), 200);
        let r = client
            .post(format!("{}/orders", app.url()))
            .json(&json!({"customer_id": "c-admin", "items": [{"product_id": "sku-admin", "quantity": 1}]}))
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status().as_u16(), 202);
        let doc: Value = client
            .get(format!("{}/openapi.json", app.url()))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON");
        assert_eq!(
            doc["components"]["securitySchemes"]["admin_token"]["scheme"],
            "bearer"
        );
        app.kill();
        let log = app.log();
        assert!(
            log.contains("need the bearer token of JETFLOW_ADMIN_TOKEN"),
            "{}",
            app.log_tail()
        );
        assert!(!log.contains(ADMIN_TOKEN), "the admin token was logged");
    })
}

#[test]
fn body_size_content_type_and_rate_limits_answer_their_documented_status() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let (mut app, _dir) = JetflowProcess::all(
            &nats.url(),
            &[("JETFLOW_RATE_LIMIT", "5")], // a burst of 10
        );
        app.until("/ready").await;
        let client = reqwest::Client::new();
        let url = format!("{}/orders", app.url());

        let big = json!({"customer_id": "c", "items": [{"product_id": "x".repeat(70 * 1024), "quantity": 1}]});
        let r = client.post(&url).json(&big).send().await.expect("POST");
        assert_eq!(r.status().as_u16(), 413);
        let e: Value = r.json().await.expect("a JSON error");
        assert!(e["error"].is_string() && e["message"].is_string(), "{e}");

        let r = client
            .post(&url)
            .header("Content-Type", "text/plain")
            .body("customer_id=c")
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status().as_u16(), 415);
        let e: Value = r.json().await.expect("a JSON error");
        assert!(e["error"].is_string(), "{e}");

        // Burst of 10, then 5 per second: 30 at once must meet 429s with Retry-After.
        let mut limited = 0;
        for _ in 0..30 {
            let r = client
                .get(format!(
                    "{}/orders/00000000-0000-4000-8000-000000000000",
                    app.url()
                ))
                .send()
                .await
                .expect("GET");
            if r.status().as_u16() == 429 {
                limited += 1;
                assert!(r.headers().contains_key("Retry-After"));
                let e: Value = r.json().await.expect("a JSON error");
                assert!(e["error"].is_string() && e["message"].is_string(), "{e}");
            }
        }
        assert!(limited >= 15, "only {limited} of 30 requests were limited");
        // Probes are never limited.
        let r = client
            .get(format!("{}/health", app.url()))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status().as_u16(), 200);
        app.kill();
    })
}

#[test]
fn a_creds_file_works_against_an_operator_mode_server_and_its_seed_is_not_logged() {
    jetflow_integration::run(async {
        let setup = jetflow_integration::creds::OperatorSetup::new();
        let nats = NatsServer::builder()
            .config_extra(&setup.server_config)
            .start();
        let dir = tempfile::tempdir().expect("temp dir");
        let creds = dir.path().join("jetflow.creds");
        std::fs::write(&creds, &setup.creds).expect("creds file");
        // Without credentials the server refuses us.
        assert!(
            async_nats::connect(nats.url()).await.is_err() || {
                let c = async_nats::connect(nats.url()).await.expect("connect");
                c.flush().await.is_err()
            }
        );
        let creds_path = creds.display().to_string();
        let (mut app, _db_dir) = JetflowProcess::all(
            &nats.url(),
            &[("NATS_CREDS", creds_path.as_str()), ("RUST_LOG", "debug")],
        );
        app.until("/ready").await;
        order_through(&app.url()).await;
        app.kill();
        assert!(
            !app.log().contains(&setup.user_seed),
            "the NKEY seed was logged"
        );
    })
}

/// Behind a trusted proxy every client keeps a bucket of its own (keyed on
/// `X-Forwarded-For`); a peer that is not a trusted proxy cannot pick a bucket by sending the
/// header.
#[test]
fn the_rate_limit_keys_on_the_real_client_behind_a_trusted_proxy_only() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let limited = |trusted: &str| {
            let trusted = jetflow_gateway::rate_limit::parse_proxies(trusted).expect("CIDRs");
            jetflow_integration::TestAppBuilder::new(&nats.url()).with(move |s| {
                s.http.rate_limit = 1;
                s.http.rate_burst = 2;
                s.http.trusted_proxies = trusted;
            })
        };
        let get = |app: &jetflow_integration::TestApp, client_ip: &'static str| {
            let req = app
                .client
                .get(format!("{}/inventory/none", app.address))
                .header("X-Forwarded-For", format!("198.51.100.9, {client_ip}"));
            async move { req.send().await.expect("answer").status().as_u16() }
        };
        // The test talks from 127.0.0.1: here that is a trusted proxy.
        let behind_proxy = limited("127.0.0.1/32").start().await;
        behind_proxy.wait_ready().await;
        let a: Vec<u16> = [
            get(&behind_proxy, "203.0.113.1").await,
            get(&behind_proxy, "203.0.113.1").await,
            get(&behind_proxy, "203.0.113.1").await,
        ]
        .into();
        assert_eq!(a[..2], [404, 404], "{a:?}");
        assert_eq!(a[2], 429, "client A used its burst: {a:?}");
        assert_eq!(
            get(&behind_proxy, "203.0.113.2").await,
            404,
            "client B has its own bucket"
        );
        behind_proxy.stop().await;

        // No trusted proxy: the header is ignored, everyone from 127.0.0.1 shares a bucket.
        let direct = limited("").start().await;
        direct.wait_ready().await;
        let seen = [
            get(&direct, "203.0.113.1").await,
            get(&direct, "203.0.113.2").await,
            get(&direct, "203.0.113.3").await,
        ];
        assert_eq!(seen, [404, 404, 429], "the header picked no bucket");
        direct.stop().await;
    })
}
