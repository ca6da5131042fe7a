//! Writes other than order submission need an operator.
//!
//! `PUT /inventory/…` sets any product's stock and price: with no guard, anyone who can reach
//! the gateway could give everything away at price 0. With `JETFLOW_ADMIN_TOKEN` set, such a
//! write needs `Authorization: Bearer <token>` (compared in constant time, never logged):
//! without it the answer is `401` (with `WWW-Authenticate: Bearer`), with another token `403`.
//! With no token set, such writes are accepted only from a loopback client (the connection's
//! own address, whatever `X-Forwarded-For` says), as Redis' protected mode does, and `403`
//! otherwise. Order submission and reads stay open (behind the rate limit).

use std::net::IpAddr;

use actix_web::{HttpRequest, web};
use jetflow_runtime::Secret;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Who may make administrative writes (the app's data; without it, loopback clients only).
#[derive(Debug, Clone, Default)]
pub struct AdminAccess {
    token: Option<Secret>,
}

impl AdminAccess {
    /// Writes need `token` when one is given; otherwise they come from loopback clients only.
    pub fn new(token: Option<Secret>) -> Self {
        Self {
            token: token.filter(|t| !t.expose().is_empty()),
        }
    }

    /// The one start-up line that says how writes are guarded (never the token).
    pub fn describe(&self) -> &'static str {
        match self.token {
            Some(_) => {
                "administrative writes (PUT /inventory) need the bearer token of JETFLOW_ADMIN_TOKEN"
            }
            None => {
                "administrative writes (PUT /inventory) are accepted only from loopback clients: set JETFLOW_ADMIN_TOKEN to accept them, with its bearer token, from elsewhere"
            }
        }
    }

    /// Whether `req` may make an administrative write.
    pub fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
        match &self.token {
            Some(token) => {
                let Some(presented) = bearer(req) else {
                    return Err(ApiError::unauthorized(
                        "this write needs Authorization: Bearer <JETFLOW_ADMIN_TOKEN>",
                    ));
                };
                if bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes())) {
                    Ok(())
                } else {
                    Err(ApiError::forbidden(
                        "the bearer token is not the admin token",
                    ))
                }
            }
            None if req.peer_addr().is_some_and(|a| is_loopback(a.ip())) => Ok(()),
            None => Err(ApiError::forbidden(
                "administrative writes are accepted only from loopback clients unless JETFLOW_ADMIN_TOKEN is set",
            )),
        }
    }

    /// The app's guard (loopback only when the app has none).
    pub fn of(req: &HttpRequest) -> Self {
        req.app_data::<web::Data<AdminAccess>>()
            .map(|a| a.get_ref().clone())
            .unwrap_or_default()
    }
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get("Authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn from(addr: &str) -> TestRequest {
        TestRequest::put()
            .uri("/inventory/sku-1")
            .peer_addr(addr.parse().expect("an address"))
    }

    #[test]
    fn with_no_token_only_loopback_clients_may_write() {
        let open = AdminAccess::new(None);
        assert!(
            open.check(&from("127.0.0.1:5000").to_http_request())
                .is_ok()
        );
        assert!(open.check(&from("[::1]:5000").to_http_request()).is_ok());
        let far = open
            .check(
                &from("10.1.2.3:5000")
                    .insert_header(("X-Forwarded-For", "127.0.0.1"))
                    .to_http_request(),
            )
            .expect_err("not loopback, whatever it says");
        assert_eq!((far.status.as_u16(), far.code), (403, "forbidden"));
        assert!(far.message.contains("JETFLOW_ADMIN_TOKEN"));
    }

    #[test]
    fn with_a_token_every_client_needs_it_and_a_wrong_one_is_refused() {
        let guarded = AdminAccess::new(Some(Secret::new("s3cret-admin")));
        let missing = guarded
            .check(&from("127.0.0.1:5000").to_http_request())
            .expect_err("even from loopback");
        assert_eq!(
            (missing.status.as_u16(), missing.code),
            (401, "unauthorized")
        );
        let wrong = guarded
            .check(
                &from("10.1.2.3:5000")
                    .insert_header(("Authorization", "Bearer s3cret-admiN"))
                    .to_http_request(),
            )
            .expect_err("wrong token");
        assert_eq!(wrong.status.as_u16(), 403);
        assert!(!wrong.message.contains("s3cret"), "{}", wrong.message);
        assert!(
            guarded
                .check(
                    &from("10.1.2.3:5000")
                        .insert_header(("Authorization", "bearer s3cret-admin"))
                        .to_http_request()
                )
                .is_ok()
        );
        assert!(!guarded.describe().contains("s3cret"));
    }
}
