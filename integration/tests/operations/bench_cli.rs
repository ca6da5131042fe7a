//! `jetflow bench` runs and reports ratios against baselines measured in the same run (a smoke
//! test of the benchmark itself; speed is never asserted here).

use std::process::Command;

use jetflow_integration::binary::{jetflow_bin, nats_server_bin};
use jetflow_integration::ports::free_port;
use jetflow_integration::{JetflowProcess, NatsServer};
use serde_json::Value;

#[test]
fn bench_bridge_reports_both_paths_and_their_ratios() {
    let report = bench_json(&[
        "bridge",
        "--messages",
        "600",
        "--in-flight",
        "16",
        "--no-sync-compare",
    ]);
    let broker = report.as_array().and_then(|a| a.first()).unwrap_or(&report);
    for key in [
        "publish_raw",
        "publish_bridge",
        "consume_raw",
        "consume_bridge",
        "consume_raw_batches",
        "consume_route_batches",
    ] {
        assert!(
            broker[key]["per_second"].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {broker}"
        );
    }
    // Consume latencies are a distribution of every message, not one figure per run.
    for key in [
        "consume_raw",
        "consume_bridge",
        "consume_raw_batches",
        "consume_route_batches",
    ] {
        let l = &broker[key]["latency"];
        let (p50, max) = (l["p50_ms"].as_f64(), l["max_ms"].as_f64());
        assert!(
            p50.is_some_and(|p| p > 0.0) && max.is_some_and(|m| Some(m) > p50),
            "{key}: latencies {l}"
        );
    }
    for key in ["publish_ratio", "consume_ratio", "consume_batches_ratio"] {
        assert!(
            broker[key].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {broker}"
        );
    }
}

/// Runs `jetflow bench <args> --json` in a temporary working directory, with nothing of this
/// environment but the nats-server binary, and checks that it succeeded, logged no warning or
/// error, and left nothing in the working directory (the system it started is gone with it).
/// Returns the JSON report.
fn bench_json(args: &[&str]) -> Value {
    let dir = tempfile::Builder::new()
        .prefix("jetflow-bench-test-")
        .tempdir()
        .expect("temp dir");
    let out = Command::new(jetflow_bin())
        .arg("bench")
        .args(args)
        .arg("--json")
        .env_clear()
        .env("NATS_SERVER_BIN", nats_server_bin())
        .current_dir(dir.path())
        .output()
        .expect("jetflow bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("a JSON report ({e}): {stdout}"));
    for level in [" WARN ", " ERROR "] {
        assert!(
            !stderr.contains(level),
            "a successful run logged{level}lines:\n{stderr}"
        );
    }
    let listing = std::fs::read_dir(dir.path())
        .expect("the working directory")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect::<Vec<_>>();
    assert!(
        listing.is_empty(),
        "left in the working directory: {listing:?}"
    );
    report
}

/// `n` orders posted and accepted, counted by the client, and `n` created, counted by the
/// system itself (`jetflow_orders_total{status="pending"}`).
fn assert_counted(r: &Value, n: u64) {
    assert_eq!(r["posted"], n, "{r}");
    assert_eq!(r["accepted"], n, "{r}");
    assert_eq!(
        r["created"], n,
        "the system recorded exactly the orders asked for: {r}"
    );
}

/// The CPU of the processes the bench started was read, per order, and how busy the machine
/// was (SQLite: no PostgreSQL). The kernel counts in 10 ms ticks: a few orders may cost none.
fn assert_cpu_read(r: &Value) {
    for key in ["jetflow_ms", "nats_ms"] {
        assert!(
            r["cpu"][key].as_f64().is_some_and(|v| v >= 0.0),
            "cpu.{key}: {r}"
        );
    }
    assert!(r["cpu"]["postgres_ms"].is_null(), "{r}");
    assert!(
        r["cpu"]["machine_busy"]
            .as_f64()
            .is_some_and(|b| b > 0.0 && b <= 1.0),
        "{r}"
    );
}

#[test]
fn bench_orders_places_exactly_the_orders_asked_for_and_a_clean_run_logs_no_warning() {
    let r = bench_json(&[
        "orders",
        "--orders",
        "25",
        "--unloaded",
        "3",
        "--clients",
        "4",
        "--baseline-orders",
        "200",
        "--idle",
        "1s",
    ]);
    // 25 asked, 25 placed, 25 finished.
    assert_counted(&r, 25);
    assert_eq!(r["confirmed"], 25, "{r}");
    assert_eq!(r["cancelled"], 0, "{r}");
    assert!(r["ratio"].as_f64().is_some_and(|v| v > 0.0), "{r}");
    assert_cpu_read(&r);
    assert!(
        r["baseline_cpu_ms"].as_f64().is_some_and(|v| v >= 0.0),
        "{r}"
    );
}

#[test]
fn bench_accept_posts_exactly_the_orders_asked_for_to_the_gateway_alone() {
    let r = bench_json(&[
        "accept",
        "--orders",
        "40",
        "--clients",
        "4",
        "--baseline-messages",
        "200",
    ]);
    // The warm-up's orders are not counted.
    assert_counted(&r, 40);
    assert_eq!(r["refused"], 0, "{r}");
    assert!(
        r["accept"]["latency"]["p99_ms"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "{r}"
    );
    assert_cpu_read(&r);
    assert!(
        r["baseline"]["per_second"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "{r}"
    );
    assert!(r["ratio"].as_f64().is_some_and(|v| v > 0.0), "{r}");
}

/// A running system whose `/ready` and `/metrics` have an address of their own
/// (`JETFLOW_ADMIN_ADDR`, as deployed) is driven with `--admin-url`: without it the bench
/// would wait for `/ready` on the gateway, which answers 404 there.
#[test]
fn bench_orders_drives_a_running_system_with_its_own_admin_address() {
    let nats = NatsServer::start();
    let admin = format!("127.0.0.1:{}", free_port());
    let (system, _dir) = JetflowProcess::all(&nats.url(), &[("JETFLOW_ADMIN_ADDR", &admin)]);
    let r = bench_json(&[
        "orders",
        "--gateway-url",
        &system.url(),
        "--admin-url",
        &system.admin_url(),
        "--nats-url",
        &nats.url(),
        "--orders",
        "12",
        "--unloaded",
        "2",
        "--clients",
        "3",
        "--baseline-orders",
        "100",
        "--idle",
        "1s",
    ]);
    assert_counted(&r, 12);
    assert_eq!(r["confirmed"], 12, "{r}");
}
