//! Subjects: `<kind>[.v<N>][.express]`.
//!
//! Version 1 has the bare kind name (`orders.created`); later versions add `.v<N>` so that
//! consumers of the old version keep their filters while the new one is published beside it;
//! the express lane adds `.express` last.

use std::fmt;

use crate::error::SchemaError;
use crate::event::Event;
use crate::kind::EventKind;
use crate::order_created::Priority;

/// Where an event of a kind, version and lane is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subject {
    /// The kind.
    pub kind: EventKind,
    /// The schema version.
    pub version: u8,
    /// The lane.
    pub lane: Priority,
}

impl Subject {
    /// The subject of event type `E` on `lane`.
    pub fn for_event<E: Event>(lane: Priority) -> Self {
        Self {
            kind: E::KIND,
            version: E::VERSION,
            lane,
        }
    }

    /// Parses a subject.
    pub fn parse(subject: &str) -> Result<Self, SchemaError> {
        let unknown = |reason: &str| SchemaError::UnknownSubject {
            subject: subject.to_string(),
            reason: reason.to_string(),
        };
        let tokens: Vec<&str> = subject.split('.').collect();
        if tokens.len() < 2 {
            return Err(unknown("expected <stream>.<event>"));
        }
        let kind = EventKind::from_name(&format!("{}.{}", tokens[0], tokens[1]))
            .ok_or_else(|| unknown("no such event kind"))?;
        let mut rest = &tokens[2..];
        let mut version = 1u8;
        if let Some(tok) = rest.first().and_then(|t| t.strip_prefix('v')) {
            version = tok
                .parse()
                .ok()
                .filter(|v| *v > 1)
                .ok_or_else(|| unknown("bad version token"))?;
            rest = &rest[1..];
        }
        if !kind.versions().contains(&version) {
            return Err(unknown(&format!("{kind} has no version {version}")));
        }
        let lane = match rest {
            [] => Priority::Standard,
            ["express"] => Priority::Express,
            _ => return Err(unknown("unexpected tokens after the event name")),
        };
        Ok(Self {
            kind,
            version,
            lane,
        })
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())?;
        if self.version > 1 {
            write!(f, ".v{}", self.version)?;
        }
        if self.lane == Priority::Express {
            f.write_str(".express")?;
        }
        Ok(())
    }
}
