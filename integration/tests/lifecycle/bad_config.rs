//! A setting that cannot work stops the command at once: exit code 2 within two seconds, and
//! at most a few lines that name the setting. Never a restart loop, never a log flood.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jetflow_integration::binary::jetflow_bin;

struct Outcome {
    code: Option<i32>,
    stderr: String,
    took: Duration,
}

/// Runs `jetflow <args>` with only `env` (and PATH), for at most 5 s.
fn run(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let dir = tempfile::Builder::new()
        .prefix("jetflow-cfg-")
        .tempdir()
        .expect("dir");
    let mut cmd = Command::new(jetflow_bin());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    jetflow_runtime::local_nats::die_with_parent(&mut cmd, libc::SIGKILL);
    let started = Instant::now();
    let mut child = cmd.spawn().expect("jetflow starts");
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if started.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = started.elapsed();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    Outcome { code, stderr, took }
}

const NATS: (&str, &str) = ("NATS_URL", "nats://127.0.0.1:4222");
const SQLITE: (&str, &str) = ("DATABASE_URL", "sqlite::memory:");

/// The setting the error line must name, the subcommand, and the environment.
type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>);

#[test]
fn every_bad_setting_stops_the_command_with_exit_2_and_one_line_naming_it() {
    let existing = std::env::current_exe().expect("a file that exists");
    let existing = existing.to_str().expect("utf-8");
    let cases: Vec<Case> = vec![
        ("NATS_URL", vec!["gateway"], vec![("NATS_URL", ""), SQLITE]),
        ("NATS_URL", vec!["gateway"], vec![SQLITE]),
        (
            "NATS_URL",
            vec!["orders"],
            vec![("NATS_URL", "http://127.0.0.1:4222"), SQLITE],
        ),
        (
            "NATS_URL",
            vec!["orders"],
            vec![("NATS_URL", "nats://127.0.0.1:port"), SQLITE],
        ),
        (
            "NATS_CREDS",
            vec!["orders"],
            vec![NATS, SQLITE, ("NATS_CREDS", "/nonexistent/x.creds")],
        ),
        (
            "NATS_TLS_CA",
            vec!["orders"],
            vec![NATS, SQLITE, ("NATS_TLS_CA", "/nonexistent/ca.pem")],
        ),
        (
            "NATS_TLS_CERT",
            vec!["orders"],
            vec![NATS, SQLITE, ("NATS_TLS_CERT", existing)],
        ),
        (
            "NATS_PASSWORD",
            vec!["orders"],
            vec![NATS, SQLITE, ("NATS_USER", "u")],
        ),
        (
            "JETFLOW_ORDER_TIMEOUT",
            vec!["orders"],
            vec![NATS, SQLITE, ("JETFLOW_ORDER_TIMEOUT", "0")],
        ),
        (
            "JETFLOW_ACK_WAIT",
            vec!["inventory"],
            vec![NATS, SQLITE, ("JETFLOW_ACK_WAIT", "0ms")],
        ),
        (
            "JETFLOW_MAX_DELIVER",
            vec!["inventory"],
            vec![NATS, SQLITE, ("JETFLOW_MAX_DELIVER", "1")],
        ),
        // Settings this version no longer takes are refused, not ignored without a word.
        (
            "JETFLOW_PAYMENT_RETRY",
            vec!["payments"],
            vec![NATS, SQLITE, ("JETFLOW_PAYMENT_RETRY", "100ms")],
        ),
        (
            "JETFLOW_PAYMENT_MAX_DELIVER",
            vec!["payments"],
            vec![NATS, SQLITE, ("JETFLOW_PAYMENT_MAX_DELIVER", "5")],
        ),
        (
            "JETFLOW_NATS_PORT",
            vec!["all"],
            vec![SQLITE, ("JETFLOW_NATS_PORT", "4222")],
        ),
        (
            "JETFLOW_ORDERS_CREATED_VERSIONS",
            vec!["all"],
            vec![NATS, SQLITE, ("JETFLOW_ORDERS_CREATED_VERSIONS", "both")],
        ),
        (
            "JETFLOW_STREAM_MAX_AGE",
            vec!["inventory"],
            vec![NATS, SQLITE, ("JETFLOW_STREAM_MAX_AGE", "soon")],
        ),
        (
            "DATABASE_URL",
            vec!["inventory"],
            vec![
                NATS,
                ("DATABASE_URL", "sqlite::memory:"),
                ("JETFLOW_DB_POOL", "8"),
            ],
        ),
        (
            "DATABASE_URL",
            vec!["inventory"],
            vec![NATS, ("DATABASE_URL", "mysql://db/x")],
        ),
        (
            "DATABASE_URL",
            vec!["inventory"],
            vec![NATS, ("DATABASE_URL", "")],
        ),
        (
            "DATABASE_URL",
            vec!["inventory"],
            vec![NATS, ("DATABASE_URL", "postgres://u@127.0.0.1:notaport/db")],
        ),
        (
            "PAYMENT_PROVIDER_URL",
            vec!["payments"],
            vec![NATS, SQLITE, ("PAYMENT_PROVIDER_URL", "ftp://x")],
        ),
        (
            "PAYMENT_PROVIDER_CA",
            vec!["payments"],
            vec![NATS, SQLITE, ("PAYMENT_PROVIDER_CA", "/nonexistent/ca.pem")],
        ),
        (
            "JETFLOW_PAYMENT_TIMEOUT",
            vec!["payments"],
            vec![NATS, SQLITE, ("JETFLOW_PAYMENT_TIMEOUT", "0")],
        ),
        (
            "JETFLOW_TRUSTED_PROXIES",
            vec!["gateway"],
            vec![NATS, SQLITE, ("JETFLOW_TRUSTED_PROXIES", "10.0.0.0/99")],
        ),
        (
            "JETFLOW_HTTP_ADDR",
            vec!["gateway"],
            vec![NATS, SQLITE, ("JETFLOW_HTTP_ADDR", "nowhere")],
        ),
        (
            "JETFLOW_SHUTDOWN_TIMEOUT",
            vec!["all"],
            vec![NATS, SQLITE, ("JETFLOW_SHUTDOWN_TIMEOUT", "0")],
        ),
        (
            "JETFLOW_DB_POOL",
            vec!["all"],
            vec![NATS, SQLITE, ("JETFLOW_DB_POOL", "0")],
        ),
        (
            "JETFLOW_REQUESTS_FIRST",
            vec!["all"],
            vec![NATS, SQLITE, ("JETFLOW_REQUESTS_FIRST", "sometimes")],
        ),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            vec!["orders"],
            vec![NATS, SQLITE, ("OTEL_EXPORTER_OTLP_ENDPOINT", "::not a url")],
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            vec!["inventory"],
            vec![
                NATS,
                SQLITE,
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/thrift"),
            ],
        ),
        (
            "JETFLOW_BATCH_MAX",
            vec!["all"],
            vec![NATS, SQLITE, ("JETFLOW_BATCH_MAX", "0")],
        ),
        ("NATS_URL", vec!["dlq", "list"], vec![("NATS_URL", "")]),
    ];
    let mut failures = Vec::new();
    for (setting, args, env) in &cases {
        let o = run(args, env);
        let lines = o.stderr.lines().filter(|l| !l.trim().is_empty()).count();
        let ok = o.code == Some(2)
            && o.took < Duration::from_secs(2)
            && (1..=3).contains(&lines)
            && o.stderr.contains(setting);
        if !ok {
            failures.push(format!(
                "{args:?} {env:?}: exit {:?} after {:?}, {lines} lines, expected {setting}:\n{}",
                o.code, o.took, o.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[test]
fn help_shows_each_command_only_the_flags_it_uses() {
    let help = |args: &[&str]| {
        let out = Command::new(jetflow_bin())
            .args(args)
            .arg("--help")
            .output()
            .expect("help");
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let provider = help(&["payment-provider"]);
    for absent in [
        "DATABASE_URL",
        "NATS_URL",
        "JETFLOW_BREAKER_THRESHOLD",
        "JETFLOW_RATE_LIMIT",
    ] {
        assert!(
            !provider.contains(absent),
            "payment-provider --help shows {absent}"
        );
    }
    assert!(
        provider.contains("JETFLOW_HTTP_ADDR") && provider.contains("JETFLOW_SHUTDOWN_TIMEOUT")
    );
    let inventory = help(&["inventory"]);
    assert!(inventory.contains("NATS_URL") && inventory.contains("JETFLOW_BATCH_MAX"));
    for absent in [
        "PAYMENT_PROVIDER_URL",
        "JETFLOW_RATE_LIMIT",
        "JETFLOW_ORDER_TIMEOUT",
    ] {
        assert!(
            !inventory.contains(absent),
            "inventory --help shows {absent}"
        );
    }
    let gateway = help(&["gateway"]);
    assert!(gateway.contains("JETFLOW_TRUSTED_PROXIES") && !gateway.contains("JETFLOW_ACK_WAIT"));
    // Only a process that both serves requests and consumes puts the requests first.
    assert!(
        !gateway.contains("JETFLOW_REQUESTS_FIRST")
            && !inventory.contains("JETFLOW_REQUESTS_FIRST")
    );
    let all = help(&["all"]);
    assert!(
        all.contains("JETFLOW_REQUESTS_FIRST"),
        "all --help lacks JETFLOW_REQUESTS_FIRST"
    );
    // What no user needs to decide is derived, not asked.
    for derived in [
        "JETFLOW_CONSUMER_SHARE",
        "JETFLOW_INBOX_RETENTION",
        "JETFLOW_RATE_BURST",
        "JETFLOW_ORDER_SWEEP_INTERVAL",
        // The local nats-server's data beside the SQLite file, its port 4222 or a free one.
        "JETFLOW_NATS_DATA",
        "JETFLOW_NATS_PORT",
        "JETFLOW_NATS_SYNC_ALWAYS",
        // A payment's retries follow its timeout and JETFLOW_MAX_DELIVER.
        "JETFLOW_PAYMENT_RETRY",
        "JETFLOW_PAYMENT_MAX_DELIVER",
        // Dual publishing is for roles upgraded one by one; `all` upgrades as one.
        "JETFLOW_ORDERS_CREATED_VERSIONS",
    ] {
        assert!(!all.contains(derived), "all --help shows {derived}");
    }
    assert!(
        gateway.contains("JETFLOW_ORDERS_CREATED_VERSIONS"),
        "gateway --help lacks JETFLOW_ORDERS_CREATED_VERSIONS"
    );
    let settings = all.matches("[env: ").count();
    assert!(
        settings <= 31,
        "jetflow all takes {settings} settings; every new one must be one a user has to decide"
    );
    assert!(
        !all.contains("JETFLOW_CONSUMER_NICE"),
        "the consumers no longer run on threads of their own"
    );
    let dlq = help(&["dlq", "purge"]);
    assert!(dlq.contains("--yes") && !dlq.contains("DATABASE_URL"));
}
