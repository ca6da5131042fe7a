//! A local nats-server as a child process: what `jetflow all` starts when no `NATS_URL` is
//! given, and what `jetflow bench` starts to measure on.
//!
//! It runs as a child process with JetStream on (its data in the directory it is given:
//! `jetflow all` puts it beside its SQLite file, `./data/nats` by default), listening on
//! 127.0.0.1 only (4222 for `jetflow all`, or a free port when that is taken), and is stopped when jetflow exits (and, on Linux, when jetflow dies: the
//! child gets SIGTERM from the kernel). The binary is looked up in `NATS_SERVER_BIN`, then
//! `.tools/bin/nats-server` (what `.ci/install-nats-server.sh` installs), then `PATH`, and
//! must be 2.10 or newer.

use std::io::{BufRead, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the local server could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalNatsError {
    /// No binary found.
    #[error(
        "nats-server not found (looked at $NATS_SERVER_BIN, .tools/bin/nats-server and PATH); run .ci/install-nats-server.sh or set NATS_URL"
    )]
    NotFound,
    /// No free loopback port.
    #[error("no free loopback port for the local nats-server: {0}")]
    Port(#[source] std::io::Error),
    /// The binary is too old.
    #[error(
        "{path} is nats-server {version}; jetflow needs 2.10 or newer (run .ci/install-nats-server.sh)"
    )]
    TooOld {
        /// The binary.
        path: String,
        /// Its version.
        version: String,
    },
    /// Starting it failed.
    #[error("cannot start {path}: {source}")]
    Spawn {
        /// The binary.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It did not come up.
    #[error("nats-server did not accept connections on {addr} within 15s (log: {log})")]
    NotReady {
        /// Where it should listen.
        addr: SocketAddr,
        /// Its log file.
        log: String,
    },
    /// It stopped before it served (its log says why).
    #[error("nats-server stopped at start on {addr} (log: {log})")]
    Exited {
        /// Where it should listen.
        addr: SocketAddr,
        /// Its log file.
        log: String,
    },
    /// The data directory is not usable.
    #[error("cannot prepare {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running local nats-server; stopped on drop.
#[derive(Debug)]
pub struct LocalNats {
    child: Child,
    url: String,
}

fn version_of(path: &Path) -> Option<(u32, u32, String)> {
    let out = Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let v = text
        .split_whitespace()
        .last()?
        .trim_start_matches('v')
        .to_string();
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor, v))
}

/// Finds a nats-server binary of version 2.10 or newer.
pub fn find_binary() -> Result<PathBuf, LocalNatsError> {
    find_binary_with(&[])
}

/// As [`find_binary`], looking at `extra` (after `NATS_SERVER_BIN`) too.
pub fn find_binary_with(extra: &[PathBuf]) -> Result<PathBuf, LocalNatsError> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        candidates.push(PathBuf::from(p));
    }
    candidates.extend(extra.iter().cloned());
    candidates.push(PathBuf::from(".tools/bin/nats-server"));
    if let Ok(exe) = std::env::current_exe() {
        // target/{debug,release}/jetflow → <repo>/.tools/bin/nats-server
        if let Some(repo) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
            candidates.push(repo.join(".tools/bin/nats-server"));
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&paths).map(|d| d.join("nats-server")));
    }
    let mut too_old = None;
    for c in candidates.into_iter().filter(|c| c.is_file()) {
        match version_of(&c) {
            Some((major, minor, _)) if (major, minor) >= (2, 10) => return Ok(c),
            Some((_, _, version)) => {
                too_old.get_or_insert(LocalNatsError::TooOld {
                    path: c.display().to_string(),
                    version,
                });
            }
            None => {}
        }
    }
    Err(too_old.unwrap_or(LocalNatsError::NotFound))
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Ports [`free_port`] handed out, never handed out twice by one process.
static GIVEN: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<u16>>> =
    std::sync::LazyLock::new(Default::default);

/// A loopback port nothing listens on right now, and that this process did not hand out
/// before (so two servers started one after the other never get the same one).
pub fn free_port() -> std::io::Result<u16> {
    loop {
        let port = TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if given.insert(port) {
            return Ok(port);
        }
    }
}

/// Makes the child get `signal` when the thread that started it dies (on Linux), so a child
/// never outlives whoever started it, even one killed with SIGKILL.
pub fn die_with_parent(cmd: &mut Command, signal: i32) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag of the new process; it is
        // async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, signal);
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (cmd, signal);
}

/// SIGTERM, then SIGKILL if the child has not exited within `grace`.
pub fn terminate(child: &mut Child, grace: Duration) {
    // A child already reaped (it stopped by itself) has no pid any more to signal: the
    // number may be another process's by now.
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    #[cfg(unix)]
    {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether the server at `addr` answers with an INFO naming it `name`.
fn serves(addr: &SocketAddr, name: &str) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(addr, Duration::from_millis(200)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .is_err()
    {
        return false;
    }
    let mut info = String::new();
    match std::io::BufReader::new(stream).read_line(&mut info) {
        Ok(_) => info.contains(&format!("\"server_name\":\"{name}\"")),
        Err(_) => false,
    }
}

impl LocalNats {
    /// Starts nats-server with JetStream in `data_dir`, on `port` (or a free port if taken).
    /// Two processes that want the same free port at once both end up with a server of their
    /// own: each names its server uniquely, and one that finds another's name on its port
    /// starts again on a free one.
    pub fn start(data_dir: &Path, port: u16, sync_always: bool) -> Result<Self, LocalNatsError> {
        let binary = find_binary()?;
        std::fs::create_dir_all(data_dir).map_err(|source| LocalNatsError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(|source| LocalNatsError::DataDir {
                path: data_dir.display().to_string(),
                source,
            })?;
        let mut wanted = port;
        let mut attempts = 0;
        loop {
            let port = if wanted != 0 && port_free(wanted) {
                wanted
            } else {
                let p = free_port().map_err(LocalNatsError::Port)?;
                if wanted != 0 {
                    tracing::warn!(
                        wanted,
                        using = p,
                        "NATS port taken; the local nats-server uses another"
                    );
                }
                p
            };
            attempts += 1;
            match Self::start_on(&binary, &data_dir, port, sync_always) {
                Err(LocalNatsError::Exited { log, .. }) if attempts < 3 => {
                    tracing::warn!(
                        port,
                        log,
                        "the local nats-server stopped at start (another may have taken the port first); trying another port"
                    );
                    wanted = 0;
                }
                started => return started,
            }
        }
    }

    fn start_on(
        binary: &Path,
        data_dir: &Path,
        port: u16,
        sync_always: bool,
    ) -> Result<Self, LocalNatsError> {
        let name = format!(
            "jetflow-local-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        let config = format!(
            "listen: 127.0.0.1:{port}\nserver_name: {name}\njetstream {{\n  store_dir: {:?}\n{}}}\n",
            data_dir.join("jetstream").display().to_string(),
            if sync_always {
                "  sync_interval: always\n"
            } else {
                ""
            },
        );
        let config_path = data_dir.join("nats.conf");
        let log_path = data_dir.join("nats.log");
        std::fs::File::create(&config_path)
            .and_then(|mut f| f.write_all(config.as_bytes()))
            .map_err(|source| LocalNatsError::DataDir {
                path: config_path.display().to_string(),
                source,
            })?;
        let mut cmd = Command::new(binary);
        cmd.arg("-c")
            .arg(&config_path)
            .arg("-l")
            .arg(&log_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // If jetflow dies without running its destructors (kill -9), the kernel stops the
        // child too (SIGTERM: nats-server flushes JetStream on the way out).
        die_with_parent(&mut cmd, libc::SIGTERM);
        let child = cmd.spawn().map_err(|source| LocalNatsError::Spawn {
            path: binary.display().to_string(),
            source,
        })?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut server = Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        // Ready when the server on the port is this one (its INFO names it): another
        // process's server may have taken the port between the check and the spawn.
        while !serves(&addr, &name) {
            if server.child.try_wait().ok().flatten().is_some() {
                return Err(LocalNatsError::Exited {
                    addr,
                    log: log_path.display().to_string(),
                });
            }
            if Instant::now() > deadline {
                return Err(LocalNatsError::NotReady {
                    addr,
                    log: log_path.display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::info!(url = %server.url, binary = %binary.display(), data = %data_dir.display(), "local nats-server started");
        server.url = format!("nats://127.0.0.1:{port}");
        Ok(server)
    }

    /// The client URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        // SIGTERM first: nats-server flushes JetStream on a clean shutdown.
        terminate(&mut self.child, Duration::from_secs(5));
        tracing::info!("local nats-server stopped");
    }
}
