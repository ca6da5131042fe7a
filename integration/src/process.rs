//! `jetflow` as a separate process: for tests that kill it (SIGKILL) and start it again, and
//! for one process per role.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::binary::jetflow_bin;
use crate::nats::http_get;
use crate::ports::free_port;

/// A `jetflow <command>` process.
#[derive(Debug)]
pub struct JetflowProcess {
    args: Vec<String>,
    env: BTreeMap<String, String>,
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl JetflowProcess {
    /// A process running `args` (e.g. `["inventory"]`) with `env`, serving HTTP on a free
    /// port; started and waited for (`/health` 200).
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        crate::init_tracing();
        let port = env
            .iter()
            .find(|(k, _)| *k == "JETFLOW_HTTP_ADDR")
            .and_then(|(_, v)| v.rsplit(':').next()?.parse().ok())
            .unwrap_or_else(free_port);
        let log_dir = tempfile::Builder::new()
            .prefix("jetflow-proc-")
            .tempdir()
            .expect("a temp dir");
        let mut env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.insert("JETFLOW_HTTP_ADDR".into(), format!("127.0.0.1:{port}"));
        env.entry("RUST_LOG".into())
            .or_insert_with(|| "info".into());
        env.entry("JETFLOW_LOG_FORMAT".into())
            .or_insert_with(|| "pretty".into());
        let mut p = Self {
            args: args.iter().map(|s| s.to_string()).collect(),
            env,
            child: None,
            port,
            log: log_dir.path().join("jetflow.log"),
            _log_dir: log_dir,
        };
        p.spawn();
        p.wait_healthy();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut cmd = Command::new(jetflow_bin());
        cmd.args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        // Dies with the test, even one that panicked or aborted.
        jetflow_runtime::local_nats::die_with_parent(&mut cmd, libc::SIGKILL);
        self.child = Some(cmd.spawn().expect("jetflow starts"));
    }

    /// Sends `signal` (SIGTERM, SIGINT) and waits up to `deadline` for the process to exit;
    /// returns its exit code, or `None` if it is still running (it is then killed).
    pub fn signal_and_wait(&mut self, signal: i32, deadline: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
        self.wait_exit(deadline)
    }

    /// Sends `signal` without waiting.
    pub fn signal(&mut self, signal: i32) {
        if let Some(child) = self.child.as_mut() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// Waits up to `deadline` for the process to exit; its exit code, or `None` (then it is
    /// killed). A process killed by a signal reports 128 + the signal.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let until = Instant::now() + deadline;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code().or_else(|| status.signal().map(|s| 128 + s));
            }
            if Instant::now() > until {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The HTTP base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The HTTP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `PUT /inventory/{product}` on its gateway, asserting 200.
    pub async fn put_stock(&self, product: &str, available: i64, price_cents: i64) {
        let client = reqwest::Client::new();
        crate::gateway::put_stock(&client, &self.url(), product, available, price_cents).await;
    }

    /// Waits until the order is confirmed or cancelled (`GET /orders/{id}`); returns it.
    pub async fn wait_finished(&self, id: &str, deadline: Duration) -> serde_json::Value {
        crate::order_finished(&self.url(), id, deadline).await
    }

    /// Waits up to `deadline` until its series `name` with `labels` reaches `at_least`.
    pub async fn until_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        at_least: f64,
        deadline: Duration,
    ) {
        crate::gateway::until_metric(&self.url(), name, labels, at_least, deadline).await;
    }

    /// The process log so far (last 60 lines).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The port of `/health`, `/ready` and `/metrics`: the admin address's
    /// (`JETFLOW_ADMIN_ADDR`) when it has one, the HTTP port otherwise.
    pub fn admin_port(&self) -> u16 {
        self.env
            .get("JETFLOW_ADMIN_ADDR")
            .and_then(|a| a.rsplit(':').next()?.parse().ok())
            .unwrap_or(self.port)
    }

    /// The base URL of `/health`, `/ready` and `/metrics` ([`JetflowProcess::admin_port`]).
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port())
    }

    /// Waits (30 s) until `/health` answers 200.
    pub fn wait_healthy(&mut self) {
        self.wait_status("/health", 200, Duration::from_secs(30));
    }

    /// Waits (30 s) until `/ready` answers 200.
    pub fn wait_ready(&mut self) {
        self.wait_status("/ready", 200, Duration::from_secs(30));
    }

    fn wait_status(&mut self, path: &str, want: u16, deadline: Duration) {
        let until = Instant::now() + deadline;
        loop {
            if let Ok((status, _)) = http_get(self.admin_port(), path)
                && status == want
            {
                return;
            }
            if Instant::now() > until || !self.is_running() {
                panic!(
                    "jetflow {:?} did not answer {want} on {path}; log:\n{}",
                    self.args,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `jetflow all` against `nats_url` with a fresh SQLite database and its simulated provider
    /// on a free port, plus `extra` environment; the directory holding the database is
    /// returned with it (keep it alive as long as the process).
    pub fn all(nats_url: &str, extra: &[(&str, &str)]) -> (Self, tempfile::TempDir) {
        let dir = tempfile::Builder::new()
            .prefix("jetflow-all-")
            .tempdir()
            .expect("a temp dir");
        let db = format!("sqlite://{}/jetflow.db", dir.path().display());
        let provider = format!("127.0.0.1:{}", free_port());
        let mut env = vec![
            ("NATS_URL", nats_url),
            ("DATABASE_URL", db.as_str()),
            ("JETFLOW_PROVIDER_ADDR", provider.as_str()),
        ];
        env.extend_from_slice(extra);
        (Self::start(&["all"], &env), dir)
    }

    /// The simulated payment provider as its own process (its ledger outlives the others).
    pub fn provider() -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        Self::start(
            &["payment-provider"],
            &[
                ("JETFLOW_PROVIDER_ADDR", addr.as_str()),
                ("JETFLOW_HTTP_ADDR", addr.as_str()),
            ],
        )
    }

    /// Starts it again after a kill, without waiting (see [`Self::until`]).
    pub fn respawn(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Waits without blocking the async runtime until `path` answers 200 (30 s at most).
    pub async fn until(&self, path: &str) {
        let url = format!("{}{path}", self.url());
        crate::eventually(
            &format!("{:?} {path}", self.args),
            Duration::from_secs(30),
            || async {
                match reqwest::get(&url).await {
                    Ok(r) if r.status().as_u16() == 200 => Ok(()),
                    Ok(r) => Err(r.status().to_string()),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await;
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL, then start again with the same settings, and wait for `/health`.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_healthy();
    }
}

impl Drop for JetflowProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
