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
use backon::{ExponentialBuilder, Retryable};

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

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Seed URLs; give every node of a cluster so a client can fail over.
    pub urls: Vec<String>,
    /// Credentials.
    pub auth: NatsAuth,
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

    /// The seeds, for messages (never contains credentials: they are not in URLs here).
    pub fn seeds(&self) -> String {
        self.urls.join(",")
    }
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No seed URL was given.
    #[error("no NATS URL given (set NATS_URL)")]
    NoUrls,
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
    if config.urls.is_empty() {
        return Err(ConnectError::NoUrls);
    }
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
    options
        .connect(config.urls.clone())
        .await
        .map_err(|source| ConnectError::Connect {
            seeds: config.seeds(),
            source,
        })
}

/// Connects, retrying with exponential backoff and jitter until it succeeds (or the
/// returned future is dropped). Bad credentials files are not retried.
pub async fn connect_with_retry<F>(config: &NatsConfig, on_event: F) -> Result<Client, ConnectError>
where
    F: Fn(Event) + Clone + Send + Sync + 'static,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(config.retry_min)
        .with_max_delay(config.retry_max)
        .with_jitter()
        .without_max_times();
    (|| connect(config, on_event.clone()))
        .retry(backoff)
        .when(|e| !matches!(e, ConnectError::Creds { .. } | ConnectError::NoUrls))
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
