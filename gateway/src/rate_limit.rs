//! Per-client request rate limit of the gateway (a token bucket per client IP, by
//! `governor`). Over the limit a client gets 429 with `Retry-After`; probes and metrics are
//! never limited, so an overloaded gateway stays observable.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{ResponseError, web};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter as Governor};

use crate::error::ApiError;

/// Paths that are never limited.
const EXEMPT: &[&str] = &["/health", "/ready", "/metrics"];

/// The limiter, shared by every worker (cheap to clone).
#[derive(Clone)]
pub struct RateLimiter {
    inner: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
}

impl RateLimiter {
    /// `per_second` requests per second per client with a burst of `burst` (0: no limit).
    pub fn new(per_second: u32, burst: u32) -> Self {
        let inner = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            Arc::new(Governor::keyed(Quota::per_second(rate).allow_burst(burst)))
        });
        Self { inner }
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

    /// Forgets idle clients (call now and then to bound memory).
    pub fn retain_recent(&self) {
        if let Some(limiter) = &self.inner {
            limiter.retain_recent();
        }
    }
}

/// Middleware applying the limiter found in the app data (if any).
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let limiter = req.app_data::<web::Data<RateLimiter>>().cloned();
    if let (Some(limiter), Some(peer)) = (limiter, req.peer_addr()) {
        if !EXEMPT.contains(&req.path()) {
            if let Err(wait) = limiter.check(peer.ip()) {
                let (http_req, _) = req.into_parts();
                let res = ApiError::too_many_requests(wait).error_response();
                return Ok(ServiceResponse::new(http_req, res).map_into_right_body());
            }
        }
    }
    Ok(next.call(req).await?.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_client() {
        let l = RateLimiter::new(1, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.check(a).is_ok());
        assert!(l.check(a).is_ok());
        let wait = l.check(a).expect_err("burst used up");
        assert!(wait >= 1);
        assert!(l.check(b).is_ok(), "another client has its own bucket");
        assert!(
            RateLimiter::new(0, 0).check(a).is_ok(),
            "0 disables the limit"
        );
    }
}
