//! `jetflow probe <url>`: a tiny HTTP GET for container health checks. Distroless images have
//! no curl or wget; the binary itself checks `/ready` or `/health` and exits 0 on a 200.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Not an `http://host:port/path` URL.
    #[error("not an http:// URL: {0}")]
    Url(String),
    /// No connection or no answer.
    #[error("{url}: {source}")]
    Io {
        /// The URL.
        url: String,
        /// The error.
        source: std::io::Error,
    },
    /// An answer other than 200.
    #[error("{url} answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status line.
        status: String,
    },
}

/// GETs `url` with a 3 s timeout; `Ok` only for a 200.
pub fn probe(url: &str) -> Result<(), ProbeError> {
    let (status, _) = get(url, Duration::from_secs(3))?;
    if status == 200 {
        Ok(())
    } else {
        Err(ProbeError::Status {
            url: url.to_string(),
            status: status.to_string(),
        })
    }
}

/// A blocking HTTP/1.0 `GET` of an `http://host:port/path` URL: its status and body.
pub fn get(url: &str, timeout: Duration) -> Result<(u16, String), ProbeError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ProbeError::Url(url.to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let io = |source| ProbeError::Io {
        url: url.to_string(),
        source,
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| ProbeError::Url(url.to_string()))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(io)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProbeError::Status {
            url: url.to_string(),
            status: format!("not an HTTP answer: {status_line:?}"),
        })?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_it_cannot_probe() {
        assert!(matches!(probe("https://x"), Err(ProbeError::Url(_))));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a port");
        assert!(matches!(
            probe(&format!("http://127.0.0.1:{port}/ready")),
            Err(ProbeError::Io { .. })
        ));
    }
}
