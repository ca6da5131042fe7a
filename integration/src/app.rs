//! The application in-process, on free ports (Zero To Production's `spawn_app`).
//!
//! A test builds the roles it needs against its own nats-server and database, gets the HTTP
//! address, and talks to it over real HTTP. Defaults are tuned for tests: short ack waits
//! and retry delays so redeliveries and exhausted retries happen within seconds.

use std::net::SocketAddr;
use std::time::Duration;

use jetflow_domain::{Database, SagaConfig};
use jetflow_gateway::configuration::Settings;
use jetflow_gateway::startup::{Application, Roles};
use jetflow_runtime::{ActorRef, NatsBridge};
use serde_json::{Value, json};

use crate::ports::free_port;
use crate::wait::eventually;

/// The saga settings tests use unless told otherwise.
pub fn test_saga() -> SagaConfig {
    SagaConfig {
        ack_wait: Duration::from_secs(2),
        max_deliver: 5,
        payment_max_deliver: 5,
        payment_retry_base: Duration::from_millis(100),
        payment_retry_max: Duration::from_millis(800),
        created_versions: vec![2],
        stream_replicas: 1,
        concurrency: 32,
        order_timeout: Duration::from_secs(600),
    }
}

/// How to build a [`TestApp`].
#[derive(Debug, Clone)]
pub struct TestAppBuilder {
    /// The settings (mutable before `start`).
    pub settings: Settings,
    /// The roles.
    pub roles: Roles,
    sqlite_dir: Option<std::path::PathBuf>,
}

impl TestAppBuilder {
    /// Every role against `nats_url`, with a fresh SQLite database.
    pub fn new(nats_url: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("jetflow-db-")
            .tempdir()
            .expect("a temp dir")
            .keep();
        let provider: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        Self {
            settings: Settings {
                role_name: "test".to_string(),
                nats_url: nats_url.to_string(),
                nats_creds: None,
                nats_user: None,
                nats_password: None,
                database_url: format!("sqlite://{}/jetflow.db", dir.display()),
                http_addr: ([127, 0, 0, 1], 0).into(),
                provider_addr: provider,
                payment_provider_url: format!("http://{provider}"),
                payment_timeout: Duration::from_millis(500),
                breaker_threshold: 3,
                breaker_open: Duration::from_millis(500),
                publish_timeout: Duration::from_secs(2),
                rate_limit: 0,
                rate_burst: 0,
                http_workers: Some(2),
                saga: test_saga(),
            },
            roles: Roles::all(),
            sqlite_dir: Some(dir),
        }
    }

    /// Uses this database instead of a fresh SQLite file.
    pub fn database(mut self, url: &str) -> Self {
        self.settings.database_url = url.to_string();
        self.sqlite_dir = None;
        self
    }

    /// Runs only these roles.
    pub fn roles(mut self, roles: Roles) -> Self {
        self.roles = roles;
        self
    }

    /// Changes the settings.
    pub fn with(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        f(&mut self.settings);
        self
    }

    /// Builds and serves the application (inside an actix system: see [`crate::run`]).
    pub async fn start(self) -> TestApp {
        crate::init_tracing();
        let app = Application::build(self.settings.clone(), self.roles)
            .await
            .unwrap_or_else(|e| panic!("the application did not start: {e}"));
        let address = format!("http://{}", app.http_addr());
        let provider = app.provider_addr().map(|a| format!("http://{a}"));
        let handles = app.server_handles();
        let bridge = app.bridge().cloned();
        let db = app.database().cloned();
        let outbox = app.outbox().cloned();
        actix_rt::spawn(app.run_until_stopped());
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        TestApp {
            address,
            provider,
            client,
            handles,
            bridge,
            db,
            outbox,
            settings: self.settings,
            _sqlite_dir: self.sqlite_dir.map(DirGuard),
        }
    }
}

#[derive(Debug)]
struct DirGuard(std::path::PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running application.
pub struct TestApp {
    /// `http://127.0.0.1:<port>` of the main server.
    pub address: String,
    /// The simulated provider's base URL, when this app runs it.
    pub provider: Option<String>,
    /// An HTTP client.
    pub client: reqwest::Client,
    handles: Vec<actix_web::dev::ServerHandle>,
    bridge: Option<ActorRef<NatsBridge>>,
    db: Option<Database>,
    outbox: Option<jetflow_domain::OutboxHandle>,
    /// The settings it runs with.
    pub settings: Settings,
    _sqlite_dir: Option<DirGuard>,
}

impl TestApp {
    /// Every role against `nats_url`, SQLite, test defaults.
    pub async fn spawn(nats_url: &str) -> Self {
        TestAppBuilder::new(nats_url).start().await
    }

    /// The database.
    pub fn db(&self) -> &Database {
        self.db.as_ref().expect("this app has a database")
    }

    /// The bridge.
    pub fn bridge(&self) -> &ActorRef<NatsBridge> {
        self.bridge.as_ref().expect("this app uses NATS")
    }

    /// The outbox relay.
    pub fn outbox(&self) -> Option<&jetflow_domain::OutboxHandle> {
        self.outbox.as_ref()
    }

    /// Waits until `/ready` answers 200 (NATS connected, database up).
    pub async fn wait_ready(&self) {
        eventually("the app to be ready", Duration::from_secs(20), || async {
            match self
                .client
                .get(format!("{}/ready", self.address))
                .send()
                .await
            {
                Ok(r) if r.status().as_u16() == 200 => Ok(()),
                Ok(r) => Err(format!(
                    "{} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    }

    /// `PUT /inventory/{product}`.
    pub async fn put_stock(&self, product: &str, available: i64, price_cents: i64) {
        let r = self
            .client
            .put(format!("{}/inventory/{product}", self.address))
            .json(&json!({"available": available, "price_cents": price_cents}))
            .send()
            .await
            .expect("PUT /inventory answers");
        assert_eq!(
            r.status().as_u16(),
            200,
            "{}",
            r.text().await.unwrap_or_default()
        );
    }

    /// `GET /inventory/{product}` as JSON.
    pub async fn stock(&self, product: &str) -> Value {
        self.client
            .get(format!("{}/inventory/{product}", self.address))
            .send()
            .await
            .expect("GET /inventory answers")
            .json()
            .await
            .expect("JSON")
    }

    /// `POST /orders` with `body`.
    pub async fn post_order(&self, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/orders", self.address))
            .json(body)
            .send()
            .await
            .expect("POST /orders answers")
    }

    /// Places an order of `quantity` × `product` for `customer`; returns its id (asserts 202).
    pub async fn order(&self, customer: &str, product: &str, quantity: u32) -> String {
        let r = self
            .post_order(&json!({"customer_id": customer, "items": [{"product_id": product, "quantity": quantity}]}))
            .await;
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("JSON");
        assert_eq!(status, 202, "{body}");
        body["order_id"].as_str().expect("an order id").to_string()
    }

    /// `GET /orders/{id}` as (status, JSON).
    pub async fn get_order(&self, id: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}/orders/{id}", self.address))
            .send()
            .await
            .expect("GET /orders answers");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Waits until the order is confirmed or cancelled; returns it.
    pub async fn wait_finished(&self, id: &str, deadline: Duration) -> Value {
        eventually(&format!("order {id} to finish"), deadline, || async {
            let (status, body) = self.get_order(id).await;
            match body["status"].as_str() {
                Some("confirmed" | "cancelled") if status == 200 => Ok(body),
                _ => Err(format!("{status} {body}")),
            }
        })
        .await
    }

    /// The provider's charges (`GET /charges`).
    pub async fn charges(&self) -> Vec<Value> {
        let base = self
            .provider
            .clone()
            .unwrap_or_else(|| self.settings.payment_provider_url.clone());
        self.client
            .get(format!("{base}/charges"))
            .send()
            .await
            .expect("the provider answers")
            .json()
            .await
            .expect("JSON")
    }

    /// Sets the provider's fault switches.
    pub async fn provider_control(&self, fail: bool, latency_ms: u64) {
        let base = self
            .provider
            .clone()
            .unwrap_or_else(|| self.settings.payment_provider_url.clone());
        let r = self
            .client
            .put(format!("{base}/_control"))
            .json(&json!({"fail": fail, "latency_ms": latency_ms}))
            .send()
            .await
            .expect("the provider answers");
        assert!(r.status().is_success());
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .expect("GET /metrics answers")
            .text()
            .await
            .expect("text")
    }

    /// Stops the HTTP servers (the actors stop with the test's actix system).
    pub async fn stop(&self) {
        // Stopping the main server makes the application stop the others.
        if let Some(h) = self.handles.first()
            && tokio::time::timeout(Duration::from_secs(5), h.stop(false))
                .await
                .is_err()
        {
            tracing::warn!("the HTTP server did not stop within 5 s");
        }
    }
}
