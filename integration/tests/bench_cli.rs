//! `jetflow bench` runs and reports bridge/raw ratios measured in the same run (a smoke test of
//! the benchmark itself; speed is never asserted here).

use std::process::Command;

use jetflow_integration::binary::{jetflow_bin, nats_server_bin};
use serde_json::Value;

#[test]
fn bench_bridge_reports_both_paths_and_their_ratios() {
    let out = Command::new(jetflow_bin())
        .args([
            "bench",
            "bridge",
            "--messages",
            "600",
            "--in-flight",
            "16",
            "--no-sync-compare",
            "--json",
        ])
        .env_clear()
        .env("NATS_SERVER_BIN", nats_server_bin())
        .env("RUST_LOG", "error")
        .current_dir(tempfile::tempdir().expect("temp dir").path())
        .output()
        .expect("jetflow bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("a JSON report ({e}): {stdout}"));
    let broker = report.as_array().and_then(|a| a.first()).unwrap_or(&report);
    for key in [
        "publish_raw",
        "publish_bridge",
        "consume_raw",
        "consume_bridge",
    ] {
        assert!(
            broker[key]["per_second"].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {broker}"
        );
    }
    for key in ["publish_ratio", "consume_ratio"] {
        assert!(
            broker[key].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {broker}"
        );
    }
}
