//! What a handler says about a delivery, and what the bridge does about it.
//!
//! A handler never acks or naks by itself: it returns an [`Outcome`]. The bridge turns that
//! into a [`Decision`] with [`decide`], one pure function, so the rule "a message on its last
//! allowed delivery is dead-lettered, never dropped" lives in exactly one place and the test
//! kit can show users the same decision the bridge would make.

use std::fmt;
use std::time::Duration;

/// Why a message goes to the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The message could not be decoded or failed its schema: it can never be handled.
    Poison(String),
    /// The handler refused it for good.
    Rejected(String),
    /// It was retried on every allowed delivery and never succeeded.
    Exhausted {
        /// How many times it was delivered.
        deliveries: u32,
        /// The error of the last attempt.
        last_error: String,
    },
    /// An outbox message JetStream kept refusing (no stream for its subject, too large, …).
    Unpublishable {
        /// How many publishes were refused.
        attempts: u32,
        /// The last refusal.
        last_error: String,
    },
}

impl DeadLetterReason {
    /// A stable machine-readable kind: `poison`, `rejected`, `exhausted` or `unpublishable`.
    pub fn kind(&self) -> &'static str {
        match self {
            DeadLetterReason::Poison(_) => "poison",
            DeadLetterReason::Rejected(_) => "rejected",
            DeadLetterReason::Exhausted { .. } => "exhausted",
            DeadLetterReason::Unpublishable { .. } => "unpublishable",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetterReason::Poison(e) => write!(f, "poison message: {e}"),
            DeadLetterReason::Rejected(e) => write!(f, "rejected by handler: {e}"),
            DeadLetterReason::Exhausted {
                deliveries,
                last_error,
            } => write!(
                f,
                "retries exhausted after {deliveries} deliveries: {last_error}"
            ),
            DeadLetterReason::Unpublishable {
                attempts,
                last_error,
            } => write!(
                f,
                "JetStream refused the outbox message {attempts} times: {last_error}"
            ),
        }
    }
}

/// A handler's verdict on one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its effects are committed: acknowledge it.
    Ack,
    /// It failed for now: deliver it again later. With no delay, the retry middleware picks
    /// one from its backoff schedule.
    Retry {
        /// How long JetStream should wait before redelivering.
        delay: Option<Duration>,
        /// Why, for logs and for the dead letter if retries run out.
        reason: String,
    },
    /// It can never succeed: send it to the dead-letter stream.
    DeadLetter(DeadLetterReason),
}

impl Outcome {
    /// Retry later with the default backoff.
    pub fn retry(reason: impl Into<String>) -> Self {
        Outcome::Retry {
            delay: None,
            reason: reason.into(),
        }
    }

    /// Retry after `delay`.
    pub fn retry_after(delay: Duration, reason: impl Into<String>) -> Self {
        Outcome::Retry {
            delay: Some(delay),
            reason: reason.into(),
        }
    }

    /// Dead-letter: the handler refuses this message for good.
    pub fn reject(reason: impl Into<String>) -> Self {
        Outcome::DeadLetter(DeadLetterReason::Rejected(reason.into()))
    }

    /// Dead-letter: the message cannot be decoded.
    pub fn poison(reason: impl Into<String>) -> Self {
        Outcome::DeadLetter(DeadLetterReason::Poison(reason.into()))
    }

    /// `ack`, `retry` or `dead_letter`, for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ack => "ack",
            Outcome::Retry { .. } => "retry",
            Outcome::DeadLetter(_) => "dead_letter",
        }
    }
}

/// Lets a handler answer a plain `Outcome` (`type Result = Outcome;`).
impl<A, M> actix::dev::MessageResponse<A, M> for Outcome
where
    A: actix::Actor,
    M: actix::Message<Result = Outcome>,
{
    fn handle(self, _: &mut A::Context, tx: Option<actix::dev::OneshotSender<Outcome>>) {
        if let Some(tx) = tx {
            let _ = tx.send(self);
        }
    }
}

/// What the bridge does with the JetStream message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `+ACK`.
    Ack,
    /// `-NAK` with a redelivery delay.
    Nak(Duration),
    /// Publish to `dlq.<subject>`, then `+TERM`.
    DeadLetter(DeadLetterReason),
}

/// The delay used when a retry reaches the bridge without one (no retry middleware).
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Turns a handler's outcome into the bridge's action.
///
/// `delivered` is JetStream's delivery count of this message (1 on first delivery) and
/// `max_deliver` the consumer's limit (0 or negative in JetStream means unlimited, passed
/// here as 0). A retry asked on the last allowed delivery becomes a dead letter, because
/// JetStream would otherwise stop delivering it silently.
pub fn decide(outcome: Outcome, delivered: u32, max_deliver: u32) -> Decision {
    match outcome {
        Outcome::Ack => Decision::Ack,
        Outcome::DeadLetter(reason) => Decision::DeadLetter(reason),
        Outcome::Retry { delay, reason } => {
            if max_deliver > 0 && delivered >= max_deliver {
                Decision::DeadLetter(DeadLetterReason::Exhausted {
                    deliveries: delivered,
                    last_error: reason,
                })
            } else {
                Decision::Nak(delay.unwrap_or(DEFAULT_RETRY_DELAY))
            }
        }
    }
}

/// How a reply counts in `jetflow_actor_messages_total{outcome}`.
///
/// Implemented for the runtime's reply types, for `Result` (`ok` or `error`), `Option`,
/// collections and every std scalar (`ok`), so an actor that replies `u64` or `Option<T>`
/// can be sent to through an [`ActorRef`](crate::ActorRef). Implement it for your own
/// reply types.
pub trait ReplyOutcome {
    /// A short label such as `ok` or `error`.
    fn outcome_label(&self) -> &'static str;
}

macro_rules! ok_reply {
    ($($t:ty),* $(,)?) => {
        $(impl ReplyOutcome for $t {
            fn outcome_label(&self) -> &'static str {
                "ok"
            }
        })*
    };
}

ok_reply!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    String,
    &'static str,
    std::time::Duration,
    std::time::Instant,
    std::time::SystemTime,
    bytes::Bytes,
);

impl<T> ReplyOutcome for Option<T> {
    fn outcome_label(&self) -> &'static str {
        "ok"
    }
}

impl<T> ReplyOutcome for Vec<T> {
    fn outcome_label(&self) -> &'static str {
        "ok"
    }
}

impl<T> ReplyOutcome for std::collections::VecDeque<T> {
    fn outcome_label(&self) -> &'static str {
        "ok"
    }
}

impl<K, V, S> ReplyOutcome for std::collections::HashMap<K, V, S> {
    fn outcome_label(&self) -> &'static str {
        "ok"
    }
}

impl<T, S> ReplyOutcome for std::collections::HashSet<T, S> {
    fn outcome_label(&self) -> &'static str {
        "ok"
    }
}

impl<K, V> ReplyOutcome for std::collections::BTreeMap<K, V> {
    fn outcome_label(&self) -> &'static str {
        "ok"
    }
}

impl<T> ReplyOutcome for std::collections::BTreeSet<T> {
    fn outcome_label(&self) -> &'static str {
        "ok"
    }
}

impl<T: ReplyOutcome + ?Sized> ReplyOutcome for Box<T> {
    fn outcome_label(&self) -> &'static str {
        (**self).outcome_label()
    }
}

impl<T: ?Sized> ReplyOutcome for std::sync::Arc<T> {
    fn outcome_label(&self) -> &'static str {
        "ok"
    }
}

impl<A, B> ReplyOutcome for (A, B) {
    fn outcome_label(&self) -> &'static str {
        "ok"
    }
}

impl<A, B, C> ReplyOutcome for (A, B, C) {
    fn outcome_label(&self) -> &'static str {
        "ok"
    }
}

impl<T, E> ReplyOutcome for Result<T, E> {
    fn outcome_label(&self) -> &'static str {
        if self.is_ok() { "ok" } else { "error" }
    }
}

impl ReplyOutcome for Outcome {
    fn outcome_label(&self) -> &'static str {
        self.label()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_is_ack_on_any_delivery() {
        assert_eq!(decide(Outcome::Ack, 1, 5), Decision::Ack);
        assert_eq!(decide(Outcome::Ack, 5, 5), Decision::Ack);
    }

    #[test]
    fn retry_naks_with_its_delay_before_the_last_delivery() {
        let d = Duration::from_millis(250);
        assert_eq!(
            decide(Outcome::retry_after(d, "db down"), 4, 5),
            Decision::Nak(d)
        );
        assert_eq!(
            decide(Outcome::retry("db down"), 1, 5),
            Decision::Nak(DEFAULT_RETRY_DELAY)
        );
    }

    #[test]
    fn retry_on_last_delivery_is_dead_lettered_not_dropped() {
        let decision = decide(Outcome::retry("db down"), 5, 5);
        assert_eq!(
            decision,
            Decision::DeadLetter(DeadLetterReason::Exhausted {
                deliveries: 5,
                last_error: "db down".into()
            })
        );
        // Beyond the limit (a server that delivered once more) is still a dead letter.
        assert!(matches!(
            decide(Outcome::retry("x"), 6, 5),
            Decision::DeadLetter(_)
        ));
    }

    #[test]
    fn unlimited_deliveries_always_nak() {
        assert!(matches!(
            decide(Outcome::retry("x"), 1000, 0),
            Decision::Nak(_)
        ));
    }

    #[test]
    fn dead_letter_is_dead_letter_at_once() {
        let decision = decide(Outcome::poison("not json"), 1, 5);
        assert_eq!(
            decision,
            Decision::DeadLetter(DeadLetterReason::Poison("not json".into()))
        );
    }

    #[test]
    fn reasons_read_well() {
        let r = DeadLetterReason::Exhausted {
            deliveries: 5,
            last_error: "timeout".into(),
        };
        assert_eq!(r.kind(), "exhausted");
        assert_eq!(
            r.to_string(),
            "retries exhausted after 5 deliveries: timeout"
        );
    }
}
