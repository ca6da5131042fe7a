//! A nats-server process with JetStream, on free loopback ports, with its own store.
//!
//! Tests own the process: they kill it (SIGKILL, like a crash), stop it, and restart it on
//! the same port with the same store, to prove what survives. Readiness is the monitoring
//! endpoint's `/healthz`, polled with a deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::binary::nats_server_bin;
use crate::ports::free_port;

/// A blocking `GET` against a local HTTP server: (status, body) (the binary's own
/// [`jetflow_app::probe::get`]).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    jetflow_app::probe::get(
        &format!("http://127.0.0.1:{port}{path}"),
        Duration::from_secs(2),
    )
    .map_err(|e| e.to_string())
}

/// How a server is configured.
#[derive(Debug, Clone, Default)]
pub struct NatsServerBuilder {
    name: Option<String>,
    user_password: Option<(String, String)>,
    sync_always: bool,
    extra: String,
    pub(crate) cluster: Option<(String, u16, Vec<u16>)>,
    pub(crate) ports: Option<(u16, u16)>,
}

impl NatsServerBuilder {
    /// Sets the server name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Requires this user and password.
    pub fn user_password(mut self, user: &str, password: &str) -> Self {
        self.user_password = Some((user.to_string(), password.to_string()));
        self
    }

    /// fsync every JetStream write (`sync_interval: always`).
    pub fn sync_always(mut self, yes: bool) -> Self {
        self.sync_always = yes;
        self
    }

    /// Appends raw configuration.
    pub fn config_extra(mut self, text: &str) -> Self {
        self.extra.push_str(text);
        self.extra.push('\n');
        self
    }

    /// Starts the server and waits until it is ready.
    pub fn start(self) -> NatsServer {
        crate::init_tracing();
        let mut server = self.launch();
        server.wait_ready();
        server
    }

    /// Writes the configuration and spawns the process, without waiting for readiness
    /// (cluster members become ready together).
    pub(crate) fn launch(self) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("jetflow-nats-")
            .tempdir()
            .expect("a temp dir");
        let (port, monitor_port) = self.ports.unwrap_or_else(|| (free_port(), free_port()));
        let name = self.name.clone().unwrap_or_else(|| format!("n{port}"));
        let mut config = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\n\
             jetstream {{\n  store_dir: {:?}\n{}}}\n",
            dir.path().join("js").display().to_string(),
            if self.sync_always {
                "  sync_interval: always\n"
            } else {
                ""
            }
        );
        if let Some((user, password)) = &self.user_password {
            config.push_str(&format!(
                "authorization {{\n  user: {user:?}\n  password: {password:?}\n}}\n"
            ));
        }
        if let Some((cluster, cport, routes)) = &self.cluster {
            let routes: Vec<String> = routes
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            config.push_str(&format!(
                "cluster {{\n  name: {cluster}\n  listen: 127.0.0.1:{cport}\n  routes: [{}]\n}}\n",
                routes.join(", ")
            ));
        }
        config.push_str(&self.extra);
        let config_path = dir.path().join("nats.conf");
        std::fs::write(&config_path, config).expect("config written");
        let mut server = NatsServer {
            child: None,
            log_path: dir.path().join("nats.log"),
            config_path,
            dir,
            port,
            monitor_port,
            name,
        };
        server.spawn();
        server
    }
}

/// A running (or killed) nats-server.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    log_path: PathBuf,
    port: u16,
    monitor_port: u16,
    name: String,
}

impl NatsServer {
    /// A single server with JetStream, ready.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// A server to configure.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(nats_server_bin());
        cmd.arg("-c")
            .arg(&self.config_path)
            .arg("-l")
            .arg(&self.log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Dies with the test, even one that panicked or aborted.
        jetflow_runtime::local_nats::die_with_parent(&mut cmd, libc::SIGKILL);
        self.child = Some(cmd.spawn().expect("nats-server starts"));
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The monitoring port.
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// The server name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("js")
    }

    /// The data directory (config, log, store).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits (15 s at most) until `/healthz` answers 200.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok((200, _)) = http_get(self.monitor_port, "/healthz?js-enabled-only=true") {
                return;
            }
            if Instant::now() > deadline || !self.is_running() {
                panic!(
                    "nats-server {} did not become ready; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the server (SIGSTOP): its connections stay open and nothing is answered, as
    /// a server stalled by its disk or a long pause would.
    pub fn pause(&mut self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&mut self, which: &str) {
        if let Some(c) = &self.child {
            let status = std::process::Command::new("kill")
                .arg(which)
                .arg(c.id().to_string())
                .status()
                .expect("kill runs");
            assert!(status.success(), "kill {which} failed");
        }
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port with the same store, without waiting.
    pub fn restart_unready(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts again on the same port with the same store and waits until ready.
    pub fn restart(&mut self) {
        self.restart_unready();
        self.wait_ready();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How many messages `stream` holds now (panics if it cannot be read: a test helper).
pub async fn stored(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .expect("stream")
        .info()
        .await
        .expect("stream info")
        .state
        .messages
}
