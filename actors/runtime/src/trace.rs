//! W3C trace context (`traceparent`) across hops.
//!
//! Whoever starts a flow (an HTTP request) continues the caller's trace or starts one; every
//! message the flow produces carries a `traceparent` whose parent is the message that caused
//! it, so the spans of every service join into one trace. The runtime adds it to messages a
//! handler emits ([`UnitOfWork::emit`](crate::UnitOfWork::emit)), and logs its trace id on
//! every line about the delivery.

use rand::Rng;

/// Whether a `traceparent` header is well formed (version 00).
pub fn is_valid(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    parts.len() == 4
        && parts[0] == "00"
        && parts[1].len() == 32
        && parts[2].len() == 16
        && parts[3].len() == 2
        && parts.iter().skip(1).all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
        && parts[1] != "0".repeat(32)
        && parts[2] != "0".repeat(16)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new span in the parent's trace, or a new trace when there is no valid parent.
pub fn child_of(parent: Option<&str>) -> String {
    let mut rng = rand::rng();
    let mut span = [0u8; 8];
    rng.fill(&mut span);
    span[0] |= 1;
    match parent.filter(|p| is_valid(p)) {
        Some(p) => {
            let parts: Vec<&str> = p.split('-').collect();
            format!("00-{}-{}-{}", parts[1], hex(&span), parts[3])
        }
        None => {
            let mut trace = [0u8; 16];
            rng.fill(&mut trace);
            trace[0] |= 1;
            format!("00-{}-{}-01", hex(&trace), hex(&span))
        }
    }
}

/// The `traceparent` of a message sent now, caused by a message or request whose
/// `traceparent` is `parent`: when spans are exported ([`crate::otel`]), the span that is
/// current is its parent, so a trace links span to span across processes; otherwise a new
/// span id in the parent's trace ([`child_of`]).
pub fn for_message(parent: Option<&str>) -> String {
    if let Some(here) = crate::otel::current_traceparent() {
        let same_trace = match parent.and_then(trace_id) {
            Some(cause) => here.split('-').nth(1) == Some(cause),
            None => true,
        };
        if same_trace {
            return here;
        }
    }
    child_of(parent)
}

/// The trace id of a valid `traceparent`.
pub fn trace_id(tp: &str) -> Option<&str> {
    is_valid(tp).then(|| tp.split('-').nth(1)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_or_starts_a_trace() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = child_of(Some(parent));
        assert!(is_valid(&child), "{child}");
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(!child.contains("00f067aa0ba902b7"));
        assert_eq!(trace_id(&child), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        let fresh = child_of(Some("garbage"));
        assert!(is_valid(&fresh));
        assert!(!is_valid(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert_eq!(trace_id("garbage"), None);
    }
}
