//! Stopping: SIGTERM and SIGINT stop every command in order within the shutdown timeout, with
//! exit code 0, under load; what was pulled is handled and acknowledged (nothing comes back
//! as a redelivery), a child nats-server goes too, the ports are free, and every accepted
//! order finishes after a restart. A second signal exits at once.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use jetflow_integration::binary::nats_server_bin;
use jetflow_integration::invariants::{self, Expectations};
use jetflow_integration::load::{self, LoadConfig};
use jetflow_integration::{JetflowProcess, NatsServer, TestDatabase, eventually};

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// No process runs whose command line names `needle`.
fn no_process_with(needle: &str) -> bool {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(Result::ok).all(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .map(|c| !String::from_utf8_lossy(&c).contains(needle))
                    .unwrap_or(true)
            })
        })
        .unwrap_or(true)
}

/// Every durable consumer of the saga's streams: nothing is waiting for an ack and nothing
/// was delivered twice.
async fn consumers_clean(nats_url: &str) {
    let client = async_nats::connect(nats_url).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    for stream in ["ORDERS", "INVENTORY", "PAYMENTS"] {
        let s = js.get_stream(stream).await.expect("stream");
        use futures::StreamExt;
        let names: Vec<String> = s
            .consumer_names()
            .filter_map(|n| async { n.ok() })
            .collect()
            .await;
        assert!(!names.is_empty(), "{stream} has consumers");
        for name in names {
            let info = s.consumer_info(&name).await.expect("consumer info");
            assert_eq!(
                (info.num_ack_pending, info.num_redelivered),
                (0, 0),
                "{stream}/{name}: the drain acked everything it pulled"
            );
        }
    }
}

/// Starts a nats-server on the store `jetflow all` left behind (with the configuration it
/// wrote), so the consumers' state can be read while nothing consumes.
fn standalone_nats(nats_data: &std::path::Path) -> std::process::Child {
    let mut cmd = std::process::Command::new(nats_server_bin());
    cmd.arg("-c")
        .arg(nats_data.join("nats.conf"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    jetflow_runtime::local_nats::die_with_parent(&mut cmd, libc::SIGKILL);
    cmd.spawn().expect("nats-server")
}

/// The client port of the nats-server that `jetflow all` started on `nats_data` (4222, or a
/// free one when 4222 is taken), as its configuration file says.
fn local_nats_port(nats_data: &std::path::Path) -> u16 {
    let config = std::fs::read_to_string(nats_data.join("nats.conf")).expect("nats.conf");
    config
        .lines()
        .find_map(|line| line.trim().strip_prefix("listen: 127.0.0.1:"))
        .and_then(|port| port.trim().parse().ok())
        .unwrap_or_else(|| panic!("no listen line in nats.conf:\n{config}"))
}

async fn stop_all_under_load(signal: i32) {
    let data = tempfile::Builder::new()
        .prefix("jetflow-all-")
        .tempdir()
        .expect("dir");
    // The local nats-server keeps its streams beside the SQLite database.
    let nats_data = data.path().join("nats");
    let db = format!("sqlite://{}/jetflow.db", data.path().display());
    // The provider's ledger must outlive the restart to be checked: its own process.
    let provider = JetflowProcess::provider();
    let provider_url = provider.url();
    let bin = nats_server_bin();
    let env = [
        ("NATS_SERVER_BIN", bin.to_str().expect("utf-8")),
        ("DATABASE_URL", db.as_str()),
        ("PAYMENT_PROVIDER_URL", provider_url.as_str()),
        ("JETFLOW_RATE_LIMIT", "0"),
        ("JETFLOW_SHUTDOWN_TIMEOUT", "15s"),
    ];
    let mut app = JetflowProcess::start(&["all"], &env);
    app.until("/ready").await;
    let http_port = app.port();
    let nats_port = local_nats_port(&nats_data);
    let api = app.url();
    for p in ["sku-l1", "sku-l2"] {
        app.put_stock(p, 10_000, 100).await;
    }
    let load = tokio::spawn(load::run(LoadConfig::new(
        &api,
        &["sku-l1", "sku-l2"],
        Duration::from_secs(4),
    )));
    // Orders under way.
    app.until_metric(
        "jetflow_orders_total",
        &[("status", "confirmed")],
        20.0,
        Duration::from_secs(20),
    )
    .await;
    let started = Instant::now();
    let code = app.signal_and_wait(signal, Duration::from_secs(20));
    let took = started.elapsed();
    assert_eq!(code, Some(0), "a clean stop; log:\n{}", app.log_tail());
    assert!(
        took < Duration::from_secs(15),
        "stopped within the timeout: {took:?}"
    );
    assert!(app.log().contains("clean=true"), "{}", app.log_tail());
    let needle = nats_data.to_str().expect("utf-8").to_string();
    eventually(
        "the child nats-server to be gone",
        Duration::from_secs(5),
        || async {
            if no_process_with(&needle) {
                Ok(())
            } else {
                Err("still running".to_string())
            }
        },
    )
    .await;
    assert!(port_free(nats_port), "the NATS port is free");
    assert!(port_free(http_port), "the HTTP port is free");

    // What the consumers pulled before the stop was handled and acknowledged.
    let mut inspector = standalone_nats(&nats_data);
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    eventually(
        "the store to be readable",
        Duration::from_secs(15),
        || async {
            async_nats::connect(&nats_url)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;
    consumers_clean(&nats_url).await;
    let _ = inspector.kill();
    let _ = inspector.wait();
    eventually(
        "the NATS port to be free again",
        Duration::from_secs(5),
        || async {
            if port_free(nats_port) {
                Ok(())
            } else {
                Err("taken".to_string())
            }
        },
    )
    .await;

    // Start again on the same data: every order accepted before, during and after finishes.
    app.respawn();
    app.until("/ready").await;
    let report = load.await.expect("the load ran");
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    let mut initial = BTreeMap::new();
    initial.insert("sku-l1".to_string(), 10_000);
    initial.insert("sku-l2".to_string(), 10_000);
    let result = invariants::check(&Expectations {
        api: api.clone(),
        provider: provider_url.clone(),
        initial_stock: initial,
        accepted: report.accepted.clone(),
        deadline: Duration::from_secs(60),
    })
    .await;
    assert!(result.count("confirmed") > 0, "{:?}", result.outcomes);
    assert_eq!(
        app.signal_and_wait(libc::SIGTERM, Duration::from_secs(20)),
        Some(0)
    );
}

/// SIGTERM, then SIGINT, one after the other: each `jetflow all` starts its own nats-server on
/// 4222 when that is free, and two at once would take it from each other between a stop and
/// the inspection that follows it.
#[test]
fn sigterm_and_sigint_stop_jetflow_all_and_its_nats_server_cleanly_under_load() {
    jetflow_integration::run(async {
        stop_all_under_load(libc::SIGTERM).await;
        stop_all_under_load(libc::SIGINT).await;
    })
}

#[test]
fn each_role_as_its_own_process_stops_cleanly_under_load() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let db = TestDatabase::create().await;
        let provider = JetflowProcess::provider();
        let env = [
            ("NATS_URL", nats.url()),
            ("DATABASE_URL", db.url().to_string()),
            ("PAYMENT_PROVIDER_URL", provider.url()),
            ("JETFLOW_RATE_LIMIT", "0".to_string()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut roles: Vec<JetflowProcess> = ["gateway", "orders", "inventory", "payments"]
            .iter()
            .map(|r| JetflowProcess::start(&[r], &env))
            .collect();
        for r in &roles {
            r.until("/ready").await;
        }
        let api = roles[0].url();
        roles[0].put_stock("sku-r", 10_000, 100).await;
        let load = tokio::spawn(load::run(LoadConfig::new(
            &api,
            &["sku-r"],
            Duration::from_secs(3),
        )));
        // Orders accepted.
        roles[0]
            .until_metric(
                "jetflow_http_requests_total",
                &[("route", "/orders"), ("status", "202")],
                20.0,
                Duration::from_secs(20),
            )
            .await;
        // Each role stops on its own signal, the gateway first, then the consumers.
        for (i, role) in roles.iter_mut().enumerate() {
            let port = role.port();
            let signal = if i % 2 == 0 {
                libc::SIGTERM
            } else {
                libc::SIGINT
            };
            let code = role.signal_and_wait(signal, Duration::from_secs(20));
            assert_eq!(code, Some(0), "{}", role.log_tail());
            assert!(port_free(port), "port {port} is free");
        }
        // Nothing consumes now: what was pulled before the stop was acknowledged.
        consumers_clean(&nats.url()).await;
        for role in roles.iter_mut() {
            role.respawn();
        }
        for r in &roles {
            r.until("/ready").await;
        }
        let report = load.await.expect("the load ran");
        let mut initial = BTreeMap::new();
        initial.insert("sku-r".to_string(), 10_000);
        invariants::check(&Expectations {
            api: api.clone(),
            provider: provider.url(),
            initial_stock: initial,
            accepted: report.accepted.clone(),
            deadline: Duration::from_secs(60),
        })
        .await;
    })
}

#[test]
fn a_second_signal_during_a_slow_drain_exits_at_once() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let db = TestDatabase::create().await;
        let provider = JetflowProcess::provider();
        let env = [
            ("NATS_URL", nats.url()),
            ("DATABASE_URL", db.url().to_string()),
            ("PAYMENT_PROVIDER_URL", provider.url()),
            ("JETFLOW_PAYMENT_TIMEOUT", "20s".to_string()),
            ("JETFLOW_SHUTDOWN_TIMEOUT", "30s".to_string()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut all = JetflowProcess::start(&["all"], &env);
        all.until("/ready").await;
        let client = reqwest::Client::new();
        // The provider answers after 15 s: a charge is in flight when the stop begins.
        let r = client
            .put(format!("{}/_control", provider.url()))
            .json(&serde_json::json!({"latency_ms": 15000}))
            .send()
            .await
            .expect("control");
        assert!(r.status().is_success());
        all.put_stock("sku-slow", 5, 100).await;
        let r = client
            .post(format!("{}/orders", all.url()))
            .json(&serde_json::json!({"customer_id": "c", "items": [{"product_id": "sku-slow", "quantity": 1}]}))
            .send()
            .await
            .expect("POST");
        let id = r.json::<serde_json::Value>().await.expect("JSON")["order_id"]
            .as_str()
            .expect("id")
            .to_string();
        eventually(
            "the charge to reach the provider",
            Duration::from_secs(20),
            || async {
                let r = client
                    .get(format!("{}/charges/{id}", provider.url()))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status().as_u16() == 200 {
                    Ok(())
                } else {
                    Err(r.status().to_string())
                }
            },
        )
        .await;
        all.signal(libc::SIGTERM);
        eventually("the stop to begin", Duration::from_secs(5), || async {
            if all.log().contains("stopping") {
                Ok(())
            } else {
                Err(all.log_tail())
            }
        })
        .await;
        let started = Instant::now();
        let code = all.signal_and_wait(libc::SIGTERM, Duration::from_secs(5));
        assert_eq!(
            code,
            Some(143),
            "exited at once on the second signal: {}",
            all.log_tail()
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    })
}

/// Two `jetflow all` on one machine want the same port for their nats-server (4222) at the same
/// moment: each ends up with a server of its own, never the other's.
#[test]
fn two_local_nats_servers_wanting_one_port_each_get_their_own() {
    use jetflow_runtime::local_nats::LocalNats;
    let port = jetflow_integration::ports::free_port();
    let dirs = [(); 2].map(|()| {
        tempfile::Builder::new()
            .prefix("jetflow-nats-")
            .tempdir()
            .expect("dir")
    });
    // Each server is started and kept by a thread of its own (a child dies with the thread
    // that started it), until both have started.
    let started = std::sync::Barrier::new(3);
    let urls: Vec<Result<String, String>> = std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel();
        for dir in &dirs {
            let (tx, started) = (tx.clone(), &started);
            s.spawn(move || {
                let server = LocalNats::start(dir.path(), port, false);
                let _ = tx.send(
                    server
                        .as_ref()
                        .map(|n| n.url().to_string())
                        .map_err(|e| e.to_string()),
                );
                started.wait();
                drop(server);
            });
        }
        drop(tx);
        let urls = rx.iter().take(2).collect();
        started.wait();
        urls
    });
    let logs = || {
        dirs.iter()
            .map(|d| std::fs::read_to_string(d.path().join("nats.log")).unwrap_or_default())
            .collect::<Vec<_>>()
    };
    let servers: Vec<String> = urls
        .into_iter()
        .map(|url| url.unwrap_or_else(|e| panic!("a server of its own: {e}; logs: {:?}", logs())))
        .collect();
    assert_ne!(servers[0], servers[1]);
    assert!(
        servers
            .iter()
            .any(|url| *url == format!("nats://127.0.0.1:{port}")),
        "one of them on the port both wanted: {servers:?}"
    );
    // Each served from its own directory: the port in its configuration file is its URL's (the order of
    // the URLs is the order they started in, so compare as sets).
    let mut listens: Vec<String> = dirs
        .iter()
        .map(|dir| format!("nats://127.0.0.1:{}", local_nats_port(dir.path())))
        .collect();
    let mut servers = servers;
    listens.sort();
    servers.sort();
    assert_eq!(servers, listens);
}
