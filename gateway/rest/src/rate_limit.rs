//! Per-client request rate limit of the gateway (a token bucket per client IP, by
//! `governor`). Over the limit a client gets 429 with `Retry-After`; probes and metrics are
//! never limited, so an overloaded gateway stays observable.
//!
//! The client is the peer address, unless the peer is a trusted proxy
//! (`JETFLOW_TRUSTED_PROXIES`): then it is the nearest address in `X-Forwarded-For` that is
//! not itself a trusted proxy (read from the right, since a client can put anything on the
//! left). Behind an ingress every user keeps a bucket of their own, and nobody can pick
//! someone else's bucket by sending the header. Buckets of clients that went quiet are
//! dropped every minute, so the limiter's memory is bounded by its recent clients.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{ResponseError, web};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter as Governor};
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// Paths that are never limited.
const EXEMPT: &[&str] = &["/health", "/ready", "/metrics"];
/// How often idle clients' buckets are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The limiter, shared by every worker (cheap to clone).
#[derive(Clone)]
pub struct RateLimiter {
    inner: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    trusted: Arc<Vec<IpNet>>,
}

/// Parses `JETFLOW_TRUSTED_PROXIES`: comma-separated CIDRs or single addresses.
pub fn parse_proxies(text: &str) -> Result<Vec<IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{s:?} is not a CIDR (10.0.0.0/8) or an IP address"))
        })
        .collect()
}

impl RateLimiter {
    /// `per_second` requests per second per client with a burst of `burst` (0: no limit);
    /// `X-Forwarded-For` is believed from `trusted` peers only.
    pub fn new(per_second: u32, burst: u32, trusted: Vec<IpNet>) -> Self {
        let inner = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            Arc::new(Governor::keyed(Quota::per_second(rate).allow_burst(burst)))
        });
        Self {
            inner,
            trusted: Arc::new(trusted),
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client a request counts against: the peer, or (from a trusted proxy) the
    /// rightmost untrusted address of `X-Forwarded-For`.
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let Some(chain) = forwarded_for else {
            return peer;
        };
        let mut client = peer;
        for hop in chain.rsplit(',').map(str::trim) {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.is_trusted(ip) {
                        break;
                    }
                }
                // Garbage in the chain: stop believing it at the last good hop.
                Err(_) => break,
            }
        }
        client
    }

    /// Takes one token for `ip`; `Err(seconds)` to wait when none is left.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let Some(limiter) = &self.inner else {
            return Ok(());
        };
        limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }

    /// Clients with a bucket now.
    pub fn clients(&self) -> usize {
        self.inner.as_ref().map_or(0, |l| l.len())
    }

    /// Forgets clients whose bucket is full again (they have been quiet).
    pub fn retain_recent(&self) {
        if let Some(limiter) = &self.inner {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Prunes every minute until `stop`.
    pub fn spawn_pruning(&self, stop: CancellationToken) {
        if self.inner.is_none() {
            return;
        }
        let limiter = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(PRUNE_EVERY) => limiter.retain_recent(),
                }
            }
        });
    }
}

/// Middleware applying the limiter found in the app data (if any).
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let limiter = req.app_data::<web::Data<RateLimiter>>().cloned();
    if let (Some(limiter), Some(peer)) = (limiter, req.peer_addr())
        && !EXEMPT.contains(&req.path())
    {
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let client = limiter.client(peer.ip(), forwarded);
        if let Err(wait) = limiter.check(client) {
            let (http_req, _) = req.into_parts();
            let res = ApiError::too_many_requests(wait).error_response();
            return Ok(ServiceResponse::new(http_req, res).map_into_right_body());
        }
    }
    Ok(next.call(req).await?.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_per_client() {
        let l = RateLimiter::new(1, 2, Vec::new());
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        assert!(l.check(a).is_ok());
        assert!(l.check(a).is_ok());
        let wait = l.check(a).expect_err("burst used up");
        assert!(wait >= 1);
        assert!(l.check(b).is_ok(), "another client has its own bucket");
        assert!(
            RateLimiter::new(0, 0, Vec::new()).check(a).is_ok(),
            "0 disables the limit"
        );
    }

    #[test]
    fn forwarded_for_is_believed_from_trusted_proxies_only() {
        let l = RateLimiter::new(1, 1, parse_proxies("10.0.0.0/8, 192.168.1.1").unwrap());
        let proxy = ip("10.1.2.3");
        assert_eq!(l.client(proxy, Some("203.0.113.7")), ip("203.0.113.7"));
        // A client cannot pick a bucket by prepending addresses: the rightmost untrusted
        // one counts.
        assert_eq!(
            l.client(proxy, Some("198.51.100.1, 203.0.113.7, 10.9.9.9")),
            ip("203.0.113.7")
        );
        assert_eq!(l.client(proxy, None), proxy);
        assert_eq!(l.client(proxy, Some("garbage")), proxy);
        // An untrusted peer's header is ignored.
        let stranger = ip("203.0.113.50");
        assert_eq!(l.client(stranger, Some("198.51.100.1")), stranger);
        assert!(parse_proxies("10.0.0.0/33").is_err());
        assert!(parse_proxies("").unwrap().is_empty());
    }

    #[test]
    fn quiet_clients_are_forgotten() {
        let l = RateLimiter::new(1000, 1000, Vec::new());
        for i in 0..50u8 {
            l.check(IpAddr::from([10, 0, 0, i])).unwrap();
        }
        assert_eq!(l.clients(), 50);
        // A bucket refills one token per millisecond here: wait for that, with a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while l.clients() > 0 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
            l.retain_recent();
        }
        assert_eq!(l.clients(), 0, "every bucket refilled and was dropped");
    }
}
