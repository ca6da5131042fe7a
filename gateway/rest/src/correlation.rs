//! The correlation id of a request: carried from `X-Correlation-ID`, or made up, and echoed
//! on every response.
//!
//! The gateway puts it on the `orders.created` event and its headers; every later event of
//! the order carries it on, so logs of every role can be joined on it.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, ResponseError};

use crate::error::ApiError;

/// The header.
pub const HEADER: &str = "x-correlation-id";

/// A request's correlation id (in the request extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorrelationId(pub String);

/// Whether a client-given correlation id is acceptable: 1 to 128 visible ASCII characters.
pub fn is_valid(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Middleware: reads or makes the id, refuses a malformed one, echoes it on the response.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let given = req
        .headers()
        .get(HEADER)
        .map(|v| v.to_str().map(str::to_string).unwrap_or_default());
    let id = match given {
        Some(id) if is_valid(&id) => id,
        Some(_) => {
            let err = ApiError::bad_request(
                "invalid_header",
                "X-Correlation-ID must be 1 to 128 visible ASCII characters",
            );
            let (http_req, _) = req.into_parts();
            let res = ServiceResponse::new(http_req, err.error_response());
            return Ok(res.map_into_right_body());
        }
        None => uuid::Uuid::new_v4().to_string(),
    };
    req.extensions_mut().insert(CorrelationId(id.clone()));
    let mut res = next.call(req).await?;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(HeaderName::from_static(HEADER), v);
    }
    Ok(res.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity() {
        assert!(is_valid("abc-123"));
        assert!(is_valid(&"x".repeat(128)));
        assert!(!is_valid(""));
        assert!(!is_valid(&"x".repeat(129)));
        assert!(!is_valid("has space"));
        assert!(!is_valid("naïve"));
    }
}
