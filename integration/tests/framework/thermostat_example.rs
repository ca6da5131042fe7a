//! The runtime's example service (`actors/runtime/examples/thermostat.rs`), built and run as a
//! user would run it, against a real nats-server: it consumes readings and publishes alerts
//! effectively once, through a crash and a redelivery, and stops cleanly on Ctrl-C.

use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use jetflow_integration::binary::runtime_example;
use jetflow_integration::{NatsServer, eventually};

struct Example {
    child: std::process::Child,
}

impl Example {
    fn start(nats: &str, db: &str) -> Self {
        let mut cmd = Command::new(runtime_example("thermostat"));
        cmd.env("NATS_URL", nats)
            .env("DATABASE_URL", db)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        jetflow_runtime::local_nats::die_with_parent(&mut cmd, libc::SIGKILL);
        Self {
            child: cmd.spawn().expect("the example starts"),
        }
    }

    fn signal(&mut self, signal: i32) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
        let until = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn alerts(js: &async_nats::jetstream::Context) -> Vec<String> {
    let Ok(stream) = js.get_stream("ALERTS").await else {
        return Vec::new();
    };
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut out = Vec::new();
    while let Ok(Some(Ok(m))) =
        tokio::time::timeout(Duration::from_millis(500), messages.next()).await
    {
        out.push(m.subject.to_string());
    }
    out
}

#[test]
fn the_example_alerts_once_per_crossing_through_a_crash() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let dir = tempfile::Builder::new()
            .prefix("jetflow-db-")
            .tempdir()
            .expect("dir");
        let db = format!("sqlite://{}/thermostat.db", dir.path().display());
        let client = async_nats::connect(nats.url()).await.expect("NATS");
        let js = async_nats::jetstream::new(client);
        let mut example = Example::start(&nats.url(), &db);
        eventually("the example's streams", Duration::from_secs(30), || async {
            js.get_stream("READINGS")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await;
        let publish = |sensor: &'static str, id: &'static str, celsius: f64| {
            let js = js.clone();
            async move {
                let mut h = async_nats::HeaderMap::new();
                h.insert("Nats-Msg-Id", id);
                js.publish_with_headers(
                    format!("readings.{sensor}"),
                    h,
                    format!(r#"{{"celsius":{celsius}}}"#).into(),
                )
                .await
                .expect("publish")
                .await
                .expect("stored");
            }
        };
        publish("a", "r1", 20.0).await;
        publish("a", "r2", 35.0).await; // crosses: alert
        publish("a", "r3", 36.0).await; // still above: none
        publish("b", "r4", 31.0).await; // crosses: alert
        eventually("two alerts", Duration::from_secs(15), || async {
            match alerts(&js).await.len() {
                2 => Ok(()),
                n => Err(format!("{n}")),
            }
        })
        .await;
        // A crash, then more readings and a restart: what was applied stays applied once.
        assert_eq!(example.signal(libc::SIGKILL), None, "killed, not exited");
        publish("a", "r5", 10.0).await;
        publish("a", "r6", 40.0).await; // crosses again: alert
        let mut example = Example::start(&nats.url(), &db);
        eventually("three alerts", Duration::from_secs(20), || async {
            match alerts(&js).await.len() {
                3 => Ok(()),
                n => Err(format!("{n}")),
            }
        })
        .await;
        assert_eq!(
            example.signal(libc::SIGINT),
            Some(0),
            "a clean stop on Ctrl-C"
        );
        // Everything is handled and flushed now: exactly one alert per crossing.
        let mut seen = alerts(&js).await;
        seen.sort();
        assert_eq!(seen, ["alerts.a", "alerts.a", "alerts.b"]);
    })
}
