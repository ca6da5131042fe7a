//! The application in-process, on free ports (Zero To Production's `spawn_app`).
//!
//! A test builds the roles it needs against its own nats-server and database, gets the HTTP
//! address, and talks to it over real HTTP. Settings start from the binary's own defaults
//! ([`Settings::default`]) with what tests need changed: short ack waits and retry delays so
//! redeliveries and exhausted retries happen within seconds. A SQLite database lives in a
//! temporary directory that goes with the app.

use std::net::SocketAddr;
use std::time::Duration;

use jetflow_app::settings::Settings;
use jetflow_app::startup::{Application, Roles, StopReport};
use jetflow_runtime::{Bridge, Database, DbConfig, OutboxHandle};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::ports::free_port;
use crate::wait::eventually;

/// The settings tests use unless told otherwise.
pub fn test_settings(nats_url: &str, database_url: &str) -> Settings {
    let mut s = Settings {
        role_name: "test".to_string(),
        ..Settings::default()
    };
    s.nats.url = Some(nats_url.to_string());
    s.nats.publish_timeout = Duration::from_secs(2);
    s.database = DbConfig::new(database_url);
    s.http.addr = ([127, 0, 0, 1], 0).into();
    s.http.workers = Some(2);
    s.http.rate_limit = 0;
    s.http.shutdown_timeout = Duration::from_secs(10);
    s.provider.addr = ([127, 0, 0, 1], free_port()).into();
    s.provider.timeout = Duration::from_millis(500);
    s.provider.breaker_threshold = 3;
    s.provider.breaker_open = Duration::from_millis(500);
    s.saga.ack_wait = Duration::from_secs(2);
    s.saga.payment_retry_base = Duration::from_millis(100);
    s.saga.payment_retry_max = Duration::from_millis(800);
    s.saga.order_timeout = Duration::from_secs(600);
    s.saga.void_scan_interval = Duration::from_millis(500);
    s
}

/// How to build a [`TestApp`].
#[derive(Debug)]
pub struct TestAppBuilder {
    /// The settings (mutable before `start`).
    pub settings: Settings,
    /// The roles.
    pub roles: Roles,
    sqlite_dir: Option<tempfile::TempDir>,
}

impl TestAppBuilder {
    /// Every role against `nats_url`, with a fresh SQLite database.
    pub fn new(nats_url: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("jetflow-db-")
            .tempdir()
            .expect("a temp dir");
        let url = format!("sqlite://{}/jetflow.db", dir.path().display());
        Self {
            settings: test_settings(nats_url, &url),
            roles: Roles::all(),
            sqlite_dir: Some(dir),
        }
    }

    /// The database URL the app will use.
    pub fn database_url(&self) -> String {
        self.settings.database.url.clone()
    }

    /// Uses this database instead of a fresh SQLite file (the fresh file's directory goes,
    /// unless `url` is that very file).
    pub fn database(mut self, url: &str) -> Self {
        if self.settings.database.url != url {
            self.sqlite_dir = None;
        }
        self.settings.database = DbConfig::new(url);
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

    /// Builds the application and serves it (inside an actix system: see [`crate::run`]).
    pub async fn start(self) -> TestApp {
        crate::init_tracing();
        let app = Application::build(self.settings.clone(), self.roles)
            .await
            .unwrap_or_else(|e| panic!("the application did not start: {e}"));
        let address = format!("http://{}", app.http_addr());
        let provider = app.provider_addr().map(|a| format!("http://{a}"));
        let admin = app.admin_addr();
        let bridge = app.bridge().cloned();
        let db = app.database().cloned();
        let outbox = app.outbox().cloned();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel();
        actix_rt::spawn(async move {
            let report = app
                .run(async move {
                    let _ = stop_rx.await;
                })
                .await;
            let _ = done_tx.send(report);
        });
        let client = reqwest::Client::builder()
            // Shorter than the server's keep-alive: never reuse a connection it is closing.
            .pool_idle_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        TestApp {
            address,
            provider,
            admin,
            client,
            bridge,
            db,
            outbox,
            settings: self.settings,
            stop: std::sync::Mutex::new(Some(stop_tx)),
            done: std::sync::Mutex::new(Some(done_rx)),
            _sqlite_dir: self.sqlite_dir,
        }
    }
}

/// A running application.
pub struct TestApp {
    /// `http://127.0.0.1:<port>` of the main server.
    pub address: String,
    /// The simulated provider's base URL, when this app runs it.
    pub provider: Option<String>,
    /// The admin server's address, when it has one.
    pub admin: Option<SocketAddr>,
    /// An HTTP client.
    pub client: reqwest::Client,
    bridge: Option<Bridge>,
    db: Option<Database>,
    outbox: Option<OutboxHandle>,
    /// The settings it runs with.
    pub settings: Settings,
    stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    done: std::sync::Mutex<Option<oneshot::Receiver<StopReport>>>,
    _sqlite_dir: Option<tempfile::TempDir>,
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
    pub fn bridge(&self) -> &Bridge {
        self.bridge.as_ref().expect("this app uses NATS")
    }

    /// The outbox relay.
    pub fn outbox(&self) -> Option<&OutboxHandle> {
        self.outbox.as_ref()
    }

    /// Waits until `/ready` answers 200 (NATS connected, database up).
    pub async fn wait_ready(&self) {
        let ready = match self.admin {
            Some(a) => format!("http://{a}/ready"),
            None => format!("{}/ready", self.address),
        };
        eventually("the app to be ready", Duration::from_secs(20), || async {
            match self.client.get(&ready).send().await {
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
        crate::gateway::put_stock(&self.client, &self.address, product, available, price_cents)
            .await;
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

    fn provider_base(&self) -> String {
        self.provider
            .clone()
            .unwrap_or_else(|| self.settings.provider.url())
    }

    /// Every account at the provider (`GET /charges`).
    pub async fn charges(&self) -> Vec<Value> {
        self.client
            .get(format!("{}/charges", self.provider_base()))
            .send()
            .await
            .expect("the provider answers")
            .json()
            .await
            .expect("JSON")
    }

    /// One order's account at the provider (`GET /charges/{order_id}`): status, call counts.
    pub async fn charge(&self, order_id: &str) -> Option<Value> {
        let r = self
            .client
            .get(format!("{}/charges/{order_id}", self.provider_base()))
            .send()
            .await
            .expect("the provider answers");
        (r.status().as_u16() == 200).then_some(())?;
        r.json().await.ok()
    }

    /// Sets the provider's fault switches.
    pub async fn provider_control(&self, fail: bool, latency_ms: u64) {
        self.provider_control_json(json!({"fail": fail, "latency_ms": latency_ms}))
            .await;
    }

    /// Sets the provider's fault switches from a JSON body.
    pub async fn provider_control_json(&self, body: Value) {
        let r = self
            .client
            .put(format!("{}/_control", self.provider_base()))
            .json(&body)
            .send()
            .await
            .expect("the provider answers");
        assert!(r.status().is_success());
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let url = match self.admin {
            Some(a) => format!("http://{a}/metrics"),
            None => format!("{}/metrics", self.address),
        };
        self.client
            .get(url)
            .send()
            .await
            .expect("GET /metrics answers")
            .text()
            .await
            .expect("text")
    }

    /// Stops the application the way a signal does (in order, draining), and reports how
    /// (once; later calls answer `None`).
    pub async fn stop(&self) -> Option<StopReport> {
        let stop = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        tokio::time::timeout(Duration::from_secs(30), done)
            .await
            .ok()?
            .ok()
    }
}
