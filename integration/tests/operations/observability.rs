//! What an operator sees: a real Prometheus scraping a loaded `jetflow all` answers every
//! Grafana panel's query with data, and the JSON logs carry `correlation_id` and `order_id`
//! on every line about an order.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use jetflow_integration::load::{self, LoadConfig};
use jetflow_integration::ports::free_port;
use jetflow_integration::{JetflowProcess, NatsServer, eventually};
use serde_json::{Value, json};

fn workspace_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_bin() -> String {
    let found = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file());
    found.map(str::to_string).unwrap_or_else(|| {
        panic!("prometheus is not installed (.ci/test.sh installs Debian's package)")
    })
}

fn start_prometheus(target_port: u16) -> Prometheus {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: jetflow\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        ),
    )
    .expect("config");
    let port = free_port();
    let child = Command::new(prometheus_bin())
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus starts");
    Prometheus {
        child,
        port,
        _dir: dir,
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn query(port: u16, expr: &str) -> Result<Vec<Value>, String> {
    let r = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{port}/api/v1/query?query={}",
            encode(expr)
        ))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: Value = r.json().await.map_err(|e| e.to_string())?;
    if body["status"] != "success" {
        return Err(format!("query failed: {body}"));
    }
    Ok(body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn start_app(nats: &NatsServer, extra: &[(&str, &str)]) -> (JetflowProcess, tempfile::TempDir) {
    let mut env = vec![("JETFLOW_RATE_LIMIT", "0")];
    env.extend_from_slice(extra);
    let (mut app, dir) = JetflowProcess::all(&nats.url(), &env);
    app.wait_ready();
    (app, dir)
}

#[test]
fn a_fresh_process_exports_every_alerted_series_at_zero_and_bounds_its_labels() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let (mut app, _dir) = start_app(&nats, &[]);
        let client = reqwest::Client::new();
        let scrape = || async {
            client
                .get(format!("{}/metrics", app.url()))
                .send()
                .await
                .expect("GET /metrics")
                .text()
                .await
                .expect("the metrics page")
        };
        let text = scrape().await;
        let value = |line_start: &str| -> Option<f64> {
            text.lines()
                .find(|l| l.starts_with(line_start))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        };
        // Counters the alerts take increase() of exist before their first event, at 0.
        for series in [
            "jetflow_dlq_messages_total{subject=\"orders.created.v2\"}",
            "jetflow_nats_publish_errors_total{subject=\"payments.succeeded\"}",
            "jetflow_outbox_dead_letters_total",
            "jetflow_outbox_publish_errors_total",
            "jetflow_saga_anomalies_total{kind=\"paid_after_cancelled\"}",
            "jetflow_actor_panics_total{actor=\"order\"}",
            "jetflow_actor_restarts_total{actor=\"stock\"}",
            "jetflow_orders_total{status=\"cancelled\"}",
        ] {
            assert_eq!(
                value(series),
                Some(0.0),
                "{series} is exported at 0 from the start"
            );
        }
        // The process collector: CPU, memory, file descriptors.
        for series in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(value(series).is_some(), "{series} is exported");
        }
        // Invented methods share one `other` series instead of adding their own.
        for method in ["BREW", "PROPFIND", "WHEN"] {
            let m = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
            client
                .request(m, format!("{}/orders", app.url()))
                .send()
                .await
                .expect("a request");
        }
        let text = scrape().await;
        assert!(
            text.contains("method=\"other\""),
            "invented methods are counted as other"
        );
        for method in ["BREW", "PROPFIND", "WHEN"] {
            assert!(!text.contains(method), "a series for {method}");
        }
        app.kill();
    })
}

#[test]
fn every_dashboard_panel_has_data_in_a_real_prometheus() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let (app, _dir) = start_app(&nats, &[("JETFLOW_BREAKER_THRESHOLD", "2")]);
        let prom = start_prometheus(app.port());
        let client = reqwest::Client::new();
        for p in ["sku-m1", "sku-m2"] {
            app.put_stock(p, 1000, 500).await;
        }
        // Traffic of every kind: orders (some declined), a bad request, a poison event.
        let load = tokio::spawn(load::run(LoadConfig::new(
            &app.url(),
            &["sku-m1", "sku-m2"],
            Duration::from_secs(4),
        )));
        let bad = client
            .post(format!("{}/orders", app.url()))
            .json(&json!({"customer_id": ""}))
            .send()
            .await
            .expect("POST");
        assert_eq!(bad.status().as_u16(), 400);
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("NATS"));
        js.publish("orders.created.v2", "poison".into())
            .await
            .expect("publish")
            .await
            .expect("PubAck");
        load.await
            .expect("load")
            .assert_clean(Duration::from_secs(5));

        let dashboard: Value = serde_json::from_str(
            &std::fs::read_to_string(workspace_file("deploy/grafana/dashboards/jetflow.json"))
                .expect("the dashboard"),
        )
        .expect("dashboard JSON");
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(panels.len() >= 12, "the dashboard has its panels");
        for panel in panels {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                let title = panel["title"].as_str().unwrap_or_default();
                eventually(
                    &format!("panel {title:?}: {expr}"),
                    Duration::from_secs(30),
                    || async {
                        let result = query(prom.port, expr).await?;
                        if result.is_empty() {
                            Err("no data".to_string())
                        } else {
                            Ok(())
                        }
                    },
                )
                .await;
            }
        }
    })
}

#[test]
fn json_logs_carry_correlation_and_order_ids() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let (mut app, _dir) = start_app(
            &nats,
            &[("JETFLOW_LOG_FORMAT", "json"), ("RUST_LOG", "info")],
        );
        let client = reqwest::Client::new();
        app.put_stock("sku-log", 10, 500).await;
        let r = client
        .post(format!("{}/orders", app.url()))
        .header("X-Correlation-ID", "corr-log-7")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .json(&json!({"customer_id": "c-log", "items": [{"product_id": "sku-log", "quantity": 1}]}))
        .send()
        .await
        .expect("POST");
        assert_eq!(r.status().as_u16(), 202);
        let id = r.json::<Value>().await.expect("JSON")["order_id"]
            .as_str()
            .expect("id")
            .to_string();
        let order =
            jetflow_integration::order_finished(&app.url(), &id, Duration::from_secs(20)).await;
        assert_eq!(order["status"], "confirmed", "{order}");
        // The confirmation's own line is written once its transaction committed.
        eventually(
            "the confirmation to be logged",
            Duration::from_secs(10),
            || async {
                let log = app.log();
                if log
                    .lines()
                    .any(|l| l.contains(&id) && l.contains("order confirmed"))
                {
                    Ok(())
                } else {
                    Err(app.log_tail())
                }
            },
        )
        .await;
        app.kill();
        let log = app.log();
        let lines: Vec<Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert!(lines.len() > 5, "JSON log lines: {}", app.log_tail());
        let about: Vec<&Value> = lines
            .iter()
            .filter(|l| l.to_string().contains(&id))
            .collect();
        assert!(
            about.len() >= 4,
            "the order's handling is logged: {about:#?}"
        );
        for line in &about {
            let text = line.to_string();
            assert!(
                text.contains("corr-log-7"),
                "a line about the order without its correlation id: {text}"
            );
            assert!(
                text.contains("order_id"),
                "a line about the order without an order_id field: {text}"
            );
        }
        // The trace id of the incoming traceparent is carried into the handlers' spans.
        assert!(
            about
                .iter()
                .any(|l| l.to_string().contains("0af7651916cd43dd8448eb211c80319c")),
            "the W3C trace id travels with the order"
        );
    })
}
