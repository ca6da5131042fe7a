//! Streams and durable consumers, declared as data and applied idempotently.
//!
//! A service says which streams and consumers it needs; [`Topology::ensure`] creates what is
//! missing and updates what changed, so every replica can run it at start (and after every
//! reconnect) without coordination. Invalid combinations (a backoff schedule as long as the
//! delivery limit, a filter outside its stream) are refused before anything reaches the
//! server, with a message that names the field.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// On disk (survives a broker restart).
    #[default]
    File,
    /// In memory.
    Memory,
}

/// What a full stream does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Discard {
    /// Drop the oldest messages to make room (the stream is a window of recent history).
    #[default]
    Old,
    /// Refuse the new message (publishers get an error; nothing stored is lost).
    New,
}

/// A JetStream stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    /// Stream name, e.g. `READINGS`.
    pub name: String,
    /// Subjects it captures, e.g. `readings.>`.
    pub subjects: Vec<String>,
    /// Replicas (1 on a single server, 3 on a 3-node cluster).
    pub replicas: usize,
    /// How long messages are kept (zero: forever).
    pub max_age: Duration,
    /// How long `Nats-Msg-Id`s are remembered for de-duplication.
    pub duplicate_window: Duration,
    /// Most bytes kept (`None`: no limit).
    pub max_bytes: Option<i64>,
    /// What happens when `max_bytes` is reached.
    pub discard: Discard,
    /// File or memory.
    pub storage: Storage,
    /// A description shown by `nats stream info`.
    pub description: String,
}

impl StreamSpec {
    /// A file-backed stream with one replica, kept a week, de-duplicating over two minutes.
    pub fn new(name: impl Into<String>, subjects: &[&str]) -> Self {
        Self {
            name: name.into(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            replicas: 1,
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            max_bytes: None,
            discard: Discard::Old,
            storage: Storage::File,
            description: String::new(),
        }
    }

    /// Sets the replica count.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Limits the stream's size, and says what happens when it is full.
    pub fn max_bytes(mut self, max_bytes: Option<i64>, discard: Discard) -> Self {
        self.max_bytes = max_bytes;
        self.discard = discard;
        self
    }

    /// Sets how long messages are kept.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    fn validate(&self) -> Result<(), TopologyError> {
        if self.name.is_empty() || self.name.contains(['.', ' ', '*', '>']) {
            return Err(TopologyError::Invalid(format!(
                "stream name {:?}: must be non-empty without '.', ' ', '*' or '>'",
                self.name
            )));
        }
        if self.subjects.is_empty() {
            return Err(TopologyError::Invalid(format!(
                "stream {}: subjects must not be empty",
                self.name
            )));
        }
        if self.max_bytes.is_some_and(|b| b <= 0) {
            return Err(TopologyError::Invalid(format!(
                "stream {}: max_bytes must be positive",
                self.name
            )));
        }
        if self.duplicate_window.is_zero() {
            return Err(TopologyError::Invalid(format!(
                "stream {}: duplicate_window must be positive (it is what drops re-published events)",
                self.name
            )));
        }
        Ok(())
    }

    fn to_config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            num_replicas: self.replicas,
            max_age: self.max_age,
            duplicate_window: self.duplicate_window,
            max_bytes: self.max_bytes.unwrap_or(-1),
            discard: match self.discard {
                Discard::Old => stream::DiscardPolicy::Old,
                Discard::New => stream::DiscardPolicy::New,
            },
            storage: match self.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            description: (!self.description.is_empty()).then(|| self.description.clone()),
            ..Default::default()
        }
    }
}

/// A durable pull consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSpec {
    /// The stream it reads.
    pub stream: String,
    /// Its durable name (shared by every replica of the service).
    pub durable: String,
    /// The subjects it receives (empty: all of the stream).
    pub filter_subjects: Vec<String>,
    /// Deliveries before JetStream gives up (the bridge dead-letters on the last one).
    pub max_deliver: u32,
    /// How long a delivery may stay unacknowledged before it is redelivered.
    pub ack_wait: Duration,
    /// Redelivery delays after an ack wait expires; must be shorter than `max_deliver`.
    pub backoff: Vec<Duration>,
    /// Deliveries that may be unacknowledged at once, across all replicas.
    pub max_ack_pending: i64,
    /// A description shown by `nats consumer info`.
    pub description: String,
}

impl ConsumerSpec {
    /// A consumer with the design's defaults: 5 deliveries, 30 s ack wait, 1000 in flight.
    pub fn new(stream: impl Into<String>, durable: impl Into<String>, filters: &[&str]) -> Self {
        Self {
            stream: stream.into(),
            durable: durable.into(),
            filter_subjects: filters.iter().map(|s| s.to_string()).collect(),
            max_deliver: 5,
            ack_wait: Duration::from_secs(30),
            backoff: Vec::new(),
            max_ack_pending: 1000,
            description: String::new(),
        }
    }

    /// Sets the delivery limit.
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.max_deliver = n;
        self
    }

    /// Sets the ack wait.
    pub fn ack_wait(mut self, d: Duration) -> Self {
        self.ack_wait = d;
        self
    }

    /// Sets the redelivery schedule used after an ack wait expires.
    pub fn backoff(mut self, schedule: Vec<Duration>) -> Self {
        self.backoff = schedule;
        self
    }

    /// A doubling schedule starting at the ack wait, one step short of `max_deliver`.
    pub fn doubling_backoff(mut self) -> Self {
        let steps = self.max_deliver.saturating_sub(1).min(10) as usize;
        self.backoff = (0..steps)
            .map(|i| self.ack_wait.saturating_mul(1u32 << i))
            .collect();
        self
    }

    /// Sets how many deliveries may be unacknowledged at once.
    pub fn max_ack_pending(mut self, n: i64) -> Self {
        self.max_ack_pending = n;
        self
    }

    /// Sets the description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Checks the spec on its own.
    pub fn validate(&self) -> Result<(), TopologyError> {
        if self.durable.is_empty() || self.durable.contains(['.', ' ', '*', '>']) {
            return Err(TopologyError::Invalid(format!(
                "consumer durable name {:?}: must be non-empty without '.', ' ', '*' or '>'",
                self.durable
            )));
        }
        if self.ack_wait.is_zero() {
            return Err(TopologyError::Invalid(format!(
                "consumer {}: ack_wait must be positive",
                self.durable
            )));
        }
        if !self.backoff.is_empty() && self.max_deliver as usize <= self.backoff.len() {
            return Err(TopologyError::Invalid(format!(
                "consumer {}: max_deliver ({}) must be greater than the backoff schedule's length ({})",
                self.durable,
                self.max_deliver,
                self.backoff.len()
            )));
        }
        Ok(())
    }

    pub(crate) fn to_config(&self) -> consumer::pull::Config {
        let (filter_subject, filter_subjects) = match self.filter_subjects.as_slice() {
            [] => (String::new(), Vec::new()),
            [one] => (one.clone(), Vec::new()),
            many => (String::new(), many.to_vec()),
        };
        consumer::pull::Config {
            durable_name: Some(self.durable.clone()),
            description: (!self.description.is_empty()).then(|| self.description.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: i64::from(self.max_deliver),
            backoff: self.backoff.clone(),
            max_ack_pending: self.max_ack_pending,
            filter_subject,
            filter_subjects,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        }
    }
}

/// What a service needs from JetStream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    /// Streams to create or update.
    pub streams: Vec<StreamSpec>,
    /// Consumers to create or update (routes bring their own as well).
    pub consumers: Vec<ConsumerSpec>,
}

/// Why the topology could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The declaration itself is wrong.
    #[error("invalid topology: {0}")]
    Invalid(String),
    /// The server refused a stream.
    #[error("stream {name}: {source}")]
    Stream {
        /// The stream.
        name: String,
        /// The server's answer.
        #[source]
        source: async_nats::Error,
    },
    /// The server refused a consumer.
    #[error("consumer {durable} on stream {stream}: {source}")]
    Consumer {
        /// The stream.
        stream: String,
        /// The consumer.
        durable: String,
        /// The server's answer.
        #[source]
        source: async_nats::Error,
    },
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stream.
    pub fn stream(mut self, spec: StreamSpec) -> Self {
        self.streams.push(spec);
        self
    }

    /// Adds a consumer.
    pub fn consumer(mut self, spec: ConsumerSpec) -> Self {
        self.consumers.push(spec);
        self
    }

    /// Checks every spec.
    pub fn validate(&self) -> Result<(), TopologyError> {
        for s in &self.streams {
            s.validate()?;
        }
        for c in &self.consumers {
            c.validate()?;
        }
        Ok(())
    }

    /// Creates or updates every stream, then every consumer.
    pub async fn ensure(&self, js: &jetstream::Context) -> Result<(), TopologyError> {
        self.validate()?;
        for spec in &self.streams {
            ensure_stream(js, spec).await?;
        }
        for spec in &self.consumers {
            ensure_consumer(js, spec).await?;
        }
        Ok(())
    }
}

/// Creates the stream, or updates it to match the spec.
pub async fn ensure_stream(
    js: &jetstream::Context,
    spec: &StreamSpec,
) -> Result<(), TopologyError> {
    spec.validate()?;
    js.create_or_update_stream(spec.to_config())
        .await
        .map_err(|e| TopologyError::Stream {
            name: spec.name.clone(),
            source: Box::new(e),
        })?;
    Ok(())
}

/// Creates the durable consumer, or updates it to match the spec; returns it.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> Result<consumer::Consumer<consumer::pull::Config>, TopologyError> {
    spec.validate()?;
    let err = |e: async_nats::Error| TopologyError::Consumer {
        stream: spec.stream.clone(),
        durable: spec.durable.clone(),
        source: e,
    };
    let stream = js
        .get_stream(&spec.stream)
        .await
        .map_err(|e| err(Box::new(e)))?;
    stream
        .create_consumer(spec.to_config())
        .await
        .map_err(|e| err(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_defaults_follow_the_design() {
        let c = ConsumerSpec::new("READINGS", "thermostat", &["readings.taken"]);
        assert_eq!(c.max_deliver, 5);
        assert!(c.validate().is_ok());
        let cfg = c.to_config();
        assert_eq!(cfg.filter_subject, "readings.taken");
        assert!(cfg.filter_subjects.is_empty());
        let many = ConsumerSpec::new("READINGS", "x", &["a.b", "a.c"]).to_config();
        assert_eq!(many.filter_subjects, vec!["a.b", "a.c"]);
    }

    #[test]
    fn doubling_backoff_stays_shorter_than_max_deliver() {
        let c = ConsumerSpec::new("S", "d", &[])
            .ack_wait(Duration::from_secs(2))
            .max_deliver(5)
            .doubling_backoff();
        assert_eq!(
            c.backoff,
            vec![2, 4, 8, 16]
                .into_iter()
                .map(Duration::from_secs)
                .collect::<Vec<_>>()
        );
        assert!(c.validate().is_ok());
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let c = ConsumerSpec::new("S", "d", &[])
            .max_deliver(2)
            .backoff(vec![Duration::from_secs(1); 2]);
        let e = c.validate().expect_err("too long a schedule").to_string();
        assert!(e.contains("max_deliver"), "{e}");
        let e = ConsumerSpec::new("S", "a.b", &[])
            .validate()
            .expect_err("dots")
            .to_string();
        assert!(e.contains("durable name"), "{e}");
        let e = StreamSpec::new("S", &[])
            .validate()
            .expect_err("no subjects")
            .to_string();
        assert!(e.contains("subjects"), "{e}");
    }
}
