//! The batch commit path of a transactional route: decode, inbox claims, the handler's
//! writes, the outbox rows, one commit, the hand-over to the relay.
//!
//! The same 256 deliveries are applied in batches of 1 (one transaction per delivery: the
//! baseline), 16, 64 and 256, in the same run, so the ratio between them holds on a noisy
//! machine. Each delivery upserts a row and emits one message; the relay publishes to an
//! in-memory recorder, so NATS is not measured here (`jetflow bench bridge` does that).
//!
//! ```sh
//! cargo bench -p jetflow-runtime --bench batch_commit
//! # against PostgreSQL as well:
//! JETFLOW_BENCH_POSTGRES=postgres://postgres@127.0.0.1/postgres cargo bench -p jetflow-runtime --bench batch_commit
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use jetflow_runtime::prelude::*;
use jetflow_runtime::testkit::{RecordingPublisher, TestKit, TxProbe};
use jetflow_runtime::{DeliveryMeta, headers};

/// Deliveries per measured iteration.
const DELIVERIES: usize = 256;
/// Batch sizes compared; 1 is the baseline.
const BATCHES: [usize; 4] = [1, 16, 64, 256];

/// Counts readings per sensor and emits one message per reading.
struct Counter;

impl TxHandler for Counter {
    type Message = Json<u64>;

    async fn handle(&self, uow: &mut UnitOfWork, d: &Delivery<Json<u64>>) -> Result<(), TxError> {
        let sensor = format!("s{}", d.message.0 % 32);
        jetflow_runtime::db::query(
            "INSERT INTO bench_counts (sensor, n) VALUES ($1, 1) \
             ON CONFLICT (sensor) DO UPDATE SET n = bench_counts.n + 1",
        )
        .bind(&sensor)
        .execute(uow.conn())
        .await?;
        let id = format!("out-{}", jetflow_runtime::tx_route::default_key(&d.meta));
        uow.emit(OutgoingMessage::new(format!("counted.{sensor}"), id, "{}"));
        Ok(())
    }
}

/// A route on `db` whose outbox publishes to `recorder`, and the outbox.
async fn probe(db: &Database, recorder: &Arc<RecordingPublisher>) -> (TxProbe, OutboxHandle) {
    jetflow_runtime::db::query("DROP TABLE IF EXISTS bench_counts")
        .execute(db.pool())
        .await
        .expect("drop the bench table");
    jetflow_runtime::db::query(
        "CREATE TABLE bench_counts (sensor TEXT PRIMARY KEY, n BIGINT NOT NULL)",
    )
    .execute(db.pool())
    .await
    .expect("create the bench table");
    let outbox = OutboxRelay::start(db.clone(), recorder.clone(), RelayConfig::default());
    let probe = TestKit::tx(TxRoute::new(
        ConsumerSpec::new("BENCH", "bench", &["readings.>"]),
        Counter,
        &outbox,
    ));
    (probe, outbox)
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Applies `DELIVERIES` fresh deliveries in batches of `size`; returns the time it took.
async fn apply(probe: &TxProbe, recorder: &RecordingPublisher, size: usize) -> Duration {
    let batches: Vec<Vec<(bytes::Bytes, DeliveryMeta)>> = (0..DELIVERIES / size)
        .map(|_| {
            (0..size)
                .map(|_| {
                    let n = NEXT.fetch_add(1, Ordering::Relaxed);
                    let meta = DeliveryMeta::new("readings.bench")
                        .with_header(headers::MSG_ID, &format!("in-{n}"));
                    (bytes::Bytes::from(n.to_string()), meta)
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    for batch in batches {
        for d in probe.deliver_batch(batch).await {
            d.assert_ack();
        }
    }
    let took = started.elapsed();
    recorder.clear();
    took
}

fn bench_on(c: &mut Criterion, name: &str, url: &str) {
    let system = actix::System::new();
    let recorder = Arc::new(RecordingPublisher::new());
    let (db, probe, outbox) = system.block_on(async {
        let db = Database::connect(&DbConfig::new(url))
            .await
            .unwrap_or_else(|e| panic!("{name} at {url}: {e}"));
        let (probe, outbox) = probe(&db, &recorder).await;
        (db, probe, outbox)
    });
    let mut group = c.benchmark_group(format!("batch_commit/{name}"));
    group.throughput(Throughput::Elements(DELIVERIES as u64));
    group.sample_size(20);
    for size in BATCHES {
        group.bench_with_input(BenchmarkId::new("batch", size), &size, |b, &size| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += apply(&probe, &recorder, size).await;
                    }
                    total
                })
            })
        });
    }
    group.finish();
    // Stop as the process does: publish what is committed, close the pool (which waits for
    // the relay's last delete), then stop the system. A connection still checked out when
    // the system is dropped would be returned outside any runtime, which panics.
    system.block_on(async {
        outbox.flush(Duration::from_secs(10)).await;
        db.close().await;
        actix::System::current().stop();
    });
    let _ = system.run();
}

fn batch_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("bench.db");
    bench_on(c, "sqlite", &format!("sqlite://{}", file.display()));
    if let Ok(url) = std::env::var("JETFLOW_BENCH_POSTGRES") {
        bench_on(c, "postgres", &url);
    }
}

criterion_group!(benches, batch_commit);
criterion_main!(benches);
