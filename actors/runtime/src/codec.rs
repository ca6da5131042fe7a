//! Turning a JetStream payload into a typed message.
//!
//! The bridge knows nothing of the messages it carries: each route names a type that
//! implements [`Decode`], and a payload that does not decode is poison (it goes to the
//! dead-letter stream with the decoder's message, it is never retried forever).

use async_nats::HeaderMap;
use serde::de::DeserializeOwned;

/// Why a payload could not become a typed message; the text ends up in the dead letter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

impl DecodeError {
    /// A decode error with this message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// A message type the bridge can decode from a JetStream message.
pub trait Decode: Sized + Send + 'static {
    /// Decodes `payload`, published on `subject` with `headers`.
    fn decode(subject: &str, headers: &HeaderMap, payload: &[u8]) -> Result<Self, DecodeError>;
}

/// Any serde type, as plain JSON with no schema check.
#[derive(Debug, Clone, PartialEq)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned + Send + 'static> Decode for Json<T> {
    fn decode(_subject: &str, _headers: &HeaderMap, payload: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(payload)
            .map(Json)
            .map_err(|e| DecodeError(format!("payload is not the expected JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Ping {
        n: u32,
    }

    #[test]
    fn json_decodes_and_explains_failures() {
        let h = HeaderMap::new();
        let ok = Json::<Ping>::decode("s", &h, br#"{"n": 3}"#).expect("decodes");
        assert_eq!(ok.0, Ping { n: 3 });
        let err = Json::<Ping>::decode("s", &h, b"not json").expect_err("fails");
        assert!(err.0.contains("not the expected JSON"), "{err}");
        let err = Json::<Ping>::decode("s", &h, br#"{"n": "x"}"#).expect_err("fails");
        assert!(err.0.contains("invalid type"), "{err}");
    }
}
