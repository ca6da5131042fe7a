//! The HTTP routes, one file per resource.

pub mod health;
pub mod inventory;
pub mod openapi;
pub mod orders;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use crate::error::ApiError;

/// Largest request body accepted (64 KiB, as the OpenAPI document says).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Refuses a request whose `Content-Type` is not JSON.
pub fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("<not text>"));
    match ct {
        Some(ct) => {
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
            {
                Ok(())
            } else {
                Err(ApiError::unsupported_media_type(Some(ct)))
            }
        }
        None => Err(ApiError::unsupported_media_type(None)),
    }
}

/// Reads the body, refusing more than `limit` bytes (by `Content-Length` at once, or while
/// reading a body that lies about it or has none).
pub async fn read_body(
    req: &HttpRequest,
    mut payload: actix_web::web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    if req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| len > limit)
    {
        return Err(ApiError::payload_too_large(limit));
    }
    let read = async {
        let mut body = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad_request(
                    "unreadable_body",
                    format!("request body could not be read: {e}"),
                )
            })?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::payload_too_large(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    // A client that stops sending its body must not hold the request (and the consumers
    // that yield to requests in flight, and a stop) for ever.
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(ApiError::request_timeout(BODY_TIMEOUT)))
}

/// How long a request's body may take to arrive.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A handler for the methods a resource does not serve: 405 with the `Allow` header.
pub fn allow(
    methods: &'static [&'static str],
) -> impl Fn() -> std::future::Ready<Result<HttpResponse, ApiError>> + Clone {
    move || std::future::ready(Err(ApiError::method_not_allowed(methods)))
}
