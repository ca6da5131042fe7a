//! Why a payload is not a valid event. The messages end up in dead-letter headers and logs,
//! so each is one line that names the subject, the schema and the field.

use std::fmt;

/// One failed check, at one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field, e.g. `items[0].quantity` (`(root)` for the whole payload).
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A payload or subject that is not a valid event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The subject names no known kind and version.
    #[error("unknown subject {subject:?}: {reason}")]
    UnknownSubject {
        /// The subject.
        subject: String,
        /// Why it is not known.
        reason: String,
    },
    /// The payload is not JSON.
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// The payload breaks its schema.
    #[error("{schema}: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// The schema, e.g. `orders.created.v1`.
        schema: String,
        /// Every failed check.
        errors: Vec<FieldError>,
    },
    /// The payload's `version` is not the subject's.
    #[error("version mismatch on {subject}: the subject is v{expected}, the payload says {}", found.map_or("nothing".to_string(), |v| format!("version {v}")))]
    VersionMismatch {
        /// The subject.
        subject: String,
        /// The subject's version.
        expected: u8,
        /// The payload's `version`, if it is an integer.
        found: Option<i64>,
    },
    /// An event could not be serialized (a bug).
    #[error("cannot serialize event: {0}")]
    Serialize(String),
}

impl SchemaError {
    /// A stable code for the kind of error.
    pub fn kind_code(&self) -> &'static str {
        match self {
            SchemaError::UnknownSubject { .. } => "unknown_subject",
            SchemaError::NotJson(_) => "not_json",
            SchemaError::Invalid { .. } => "schema_violation",
            SchemaError::VersionMismatch { .. } => "version_mismatch",
            SchemaError::Serialize(_) => "serialize",
        }
    }
}
