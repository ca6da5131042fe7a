//! Connecting to NATS: seeds, credentials, and retry with exponential backoff and jitter.
//!
//! The bridge owns reconnection (it stops on a lost connection and its supervisor restarts
//! it), so the client's own reconnect loop is kept short: it must not keep an abandoned
//! connection alive behind the bridge's back. Credentials are wrapped in [`Secret`], whose
//! `Debug` and `Display` never show the value, so they cannot reach a log line.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use backon::Retryable;

use crate::backoff::Backoff;

/// A value that must never be printed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How to authenticate to NATS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// User and password.
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: Secret,
    },
    /// A `.creds` file (user JWT and NKey seed).
    CredsFile(PathBuf),
    /// A token.
    Token(Secret),
}

/// TLS settings beyond what the URL says (`tls://` requires TLS and verifies the server
/// against the system roots).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// A PEM bundle of certificate authorities to trust (a cluster with its own CA).
    pub ca: Option<PathBuf>,
    /// A client certificate (PEM), for servers that verify clients (mutual TLS).
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
}

impl NatsTls {
    /// Whether anything is set.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Seed URLs; give every node of a cluster so a client can fail over.
    pub urls: Vec<String>,
    /// Credentials.
    pub auth: NatsAuth,
    /// TLS: extra trust and a client certificate.
    pub tls: NatsTls,
    /// The connection name shown by the server (`nats server report connections`).
    pub name: String,
    /// Timeout of one connection attempt.
    pub connect_timeout: Duration,
    /// Timeout of JetStream API requests.
    pub request_timeout: Duration,
    /// First delay between connection attempts.
    pub retry_min: Duration,
    /// Longest delay between connection attempts.
    pub retry_max: Duration,
}

impl NatsConfig {
    /// A configuration for a comma-separated list of seed URLs.
    pub fn new(urls: &str) -> Self {
        Self {
            urls: urls
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            name: "jetflow".to_string(),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(3),
        }
    }

    /// Sets the credentials.
    pub fn auth(mut self, auth: NatsAuth) -> Self {
        self.auth = auth;
        self
    }

    /// Sets the connection name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the TLS settings.
    pub fn tls(mut self, tls: NatsTls) -> Self {
        self.tls = tls;
        self
    }

    /// Checks what can be checked without connecting: at least one well-formed URL, readable
    /// credential and certificate files, a client certificate with its key.
    pub fn validate(&self) -> Result<(), ConnectError> {
        if self.urls.is_empty() {
            return Err(ConnectError::NoUrls);
        }
        for url in &self.urls {
            check_url(url)?;
        }
        if let NatsAuth::CredsFile(path) = &self.auth {
            readable(path, "NATS_CREDS")?;
        }
        if let Some(ca) = &self.tls.ca {
            readable(ca, "NATS_TLS_CA")?;
        }
        match (&self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key)) => {
                readable(cert, "NATS_TLS_CERT")?;
                readable(key, "NATS_TLS_KEY")?;
            }
            (None, None) => {}
            _ => {
                return Err(ConnectError::Invalid(
                    "NATS_TLS_CERT and NATS_TLS_KEY go together".into(),
                ));
            }
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(ConnectError::Invalid(
                "NATS timeouts must be positive".into(),
            ));
        }
        Ok(())
    }

    /// The seeds, for messages: a user's password or a token given in a URL
    /// (`nats://user:pass@host`, `nats://token@host`) is shown as `***`.
    pub fn seeds(&self) -> String {
        self.urls
            .iter()
            .map(|u| redact_nats_url(u))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A NATS URL without its secret: `nats://user:***@host`, `nats://***@host` (a token).
pub fn redact_nats_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").map_or(("", url), |(s, r)| (s, r));
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    match scheme {
        "" => format!("{shown}@{host}"),
        scheme => format!("{scheme}://{shown}@{host}"),
    }
}

/// A NATS URL: `nats://`, `tls://`, `ws://`, `wss://` or a bare `host:port`, with a host.
fn check_url(url: &str) -> Result<(), ConnectError> {
    let bad = |why: &str| ConnectError::BadUrl {
        url: redact_nats_url(url),
        why: why.to_string(),
    };
    let rest = match url.split_once("://") {
        Some((scheme, rest)) => {
            if !matches!(scheme, "nats" | "tls" | "ws" | "wss") {
                return Err(bad("the scheme must be nats://, tls://, ws:// or wss://"));
            }
            rest
        }
        None => url,
    };
    let host_port = rest.rsplit('@').next().unwrap_or(rest);
    let host_port = host_port.split('/').next().unwrap_or(host_port);
    if host_port.is_empty() || host_port.starts_with(':') {
        return Err(bad("it names no host"));
    }
    if let Some((_, port)) = host_port.rsplit_once(':')
        && !host_port.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Err(bad("the port is not a number from 0 to 65535"));
    }
    Ok(())
}

fn readable(path: &std::path::Path, setting: &'static str) -> Result<(), ConnectError> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|source| ConnectError::Unreadable {
            setting,
            path: path.to_path_buf(),
            source,
        })
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No seed URL was given.
    #[error("no NATS URL given (set NATS_URL)")]
    NoUrls,
    /// A URL is malformed.
    #[error("NATS URL {url:?}: {why}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// A file the settings name cannot be read.
    #[error("{setting}: cannot read {path}: {source}")]
    Unreadable {
        /// The setting that names it.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The settings contradict each other.
    #[error("{0}")]
    Invalid(String),
    /// The creds file could not be read.
    #[error("cannot read NATS creds file {path}: {source}")]
    Creds {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server could not be reached or refused us.
    #[error("cannot connect to NATS at {seeds}: {source}")]
    Connect {
        /// The seeds tried.
        seeds: String,
        /// The client's error.
        #[source]
        source: async_nats::ConnectError,
    },
}

/// Opens one connection (one attempt over all seeds). `on_event` receives the client's
/// connection events (disconnects, errors).
pub async fn connect<F>(config: &NatsConfig, on_event: F) -> Result<Client, ConnectError>
where
    F: Fn(Event) + Send + Sync + 'static,
{
    config.validate()?;
    let on_event = std::sync::Arc::new(on_event);
    let mut options = ConnectOptions::new()
        .name(&config.name)
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        // One quick attempt per seed after a drop; then the client gives up and the bridge's
        // supervisor takes over with a fresh client.
        .max_reconnects(config.urls.len().max(1))
        .event_callback(move |event| {
            let on_event = on_event.clone();
            async move { on_event(event) }
        });
    options = match &config.auth {
        NatsAuth::None => options,
        NatsAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.expose().to_string())
        }
        NatsAuth::Token(token) => options.token(token.expose().to_string()),
        NatsAuth::CredsFile(path) => {
            options
                .credentials_file(path)
                .await
                .map_err(|source| ConnectError::Creds {
                    path: path.clone(),
                    source,
                })?
        }
    };
    if let Some(ca) = &config.tls.ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.tls.is_set() || config.urls.iter().any(|u| u.starts_with("tls://")) {
        options = options.require_tls(true);
    }
    options
        .connect(config.urls.clone())
        .await
        .map_err(|source| ConnectError::Connect {
            seeds: config.seeds(),
            source,
        })
}

/// Connects, retrying with exponential backoff and jitter until it succeeds (or the
/// returned future is dropped). Settings that cannot work (no URL, a malformed one, an
/// unreadable file) are not retried.
pub async fn connect_with_retry<F>(config: &NatsConfig, on_event: F) -> Result<Client, ConnectError>
where
    F: Fn(Event) + Clone + Send + Sync + 'static,
{
    let backoff = Backoff::exponential(config.retry_min, config.retry_max);
    (|| connect(config, on_event.clone()))
        .retry(backoff.builder())
        .when(|e| matches!(e, ConnectError::Connect { .. }))
        .notify(|err, delay| {
            tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "NATS connection failed");
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let auth = NatsAuth::UserPassword {
            user: "svc".into(),
            password: Secret::new("hunter2"),
        };
        let shown = format!("{auth:?} {}", Secret::new("hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("svc"));
    }

    #[test]
    fn settings_that_cannot_work_are_named() {
        let e = NatsConfig::new("").validate().unwrap_err().to_string();
        assert!(e.contains("NATS_URL"), "{e}");
        let e = NatsConfig::new("http://x:4222")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("scheme"), "{e}");
        let e = NatsConfig::new("nats://:4222")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("no host"), "{e}");
        let e = NatsConfig::new("nats://h:port")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("port"), "{e}");
        assert!(
            NatsConfig::new("nats://u:p@h:4222,tls://h2,localhost:4222")
                .validate()
                .is_ok()
        );
        let e = NatsConfig::new("nats://h")
            .auth(NatsAuth::CredsFile("/nonexistent/x.creds".into()))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("NATS_CREDS: cannot read /nonexistent/x.creds"),
            "{e}"
        );
        let e = NatsConfig::new("nats://h")
            .tls(NatsTls {
                cert: Some("/etc/hostname".into()),
                ..NatsTls::default()
            })
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("NATS_TLS_KEY"), "{e}");
    }

    #[test]
    fn seeds_never_show_a_password_or_a_token() {
        let c = NatsConfig::new("nats://alice:pa55@a:4222,tls://s3cr3t-token@b:4222,c:4222");
        assert_eq!(c.seeds(), "nats://alice:***@a:4222,tls://***@b:4222,c:4222");
        assert!(!c.seeds().contains("pa55") && !c.seeds().contains("s3cr3t"));
        let bad = check_url("ftp://bob:hunter2@h:1").expect_err("not a NATS scheme");
        assert!(!bad.to_string().contains("hunter2"), "{bad}");
    }

    #[test]
    fn seeds_are_split_and_trimmed() {
        let c = NatsConfig::new("nats://a:4222, nats://b:4222,,");
        assert_eq!(c.urls, vec!["nats://a:4222", "nats://b:4222"]);
    }

    #[tokio::test]
    async fn unreachable_server_is_a_clear_error() {
        let mut c = NatsConfig::new("nats://127.0.0.1:1");
        c.connect_timeout = Duration::from_millis(200);
        let err = connect(&c, |_| {})
            .await
            .expect_err("nothing listens on port 1");
        let text = err.to_string();
        assert!(text.contains("127.0.0.1:1"), "{text}");
    }
}
