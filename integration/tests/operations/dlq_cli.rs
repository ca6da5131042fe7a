//! `jetflow dlq list` and `jetflow dlq replay`, as an operator runs them.

use std::process::Command;
use std::time::Duration;

use jetflow_integration::binary::jetflow_bin;
use jetflow_integration::{NatsServer, TestApp, eventually};
use serde_json::Value;

fn dlq(nats_url: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(jetflow_bin())
        .arg("dlq")
        .args(args)
        .env_clear()
        .env("NATS_URL", nats_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("jetflow dlq runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn list_shows_each_dead_letter_and_replay_sends_it_back_to_its_subject() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let app = TestApp::spawn(&nats.url()).await;
        app.wait_ready().await;
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("NATS"));
        js.publish("orders.created.v2", "{\"broken\": true}".into())
            .await
            .expect("publish")
            .await
            .expect("PubAck");
        let url = nats.url();
        let lines: Vec<Value> =
            eventually("a dead letter listed", Duration::from_secs(20), || async {
                let (ok, out) = dlq(&url, &["list", "--json"]);
                if !ok {
                    return Err(out);
                }
                let lines: Vec<Value> = out
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect();
                if lines.is_empty() {
                    Err(out)
                } else {
                    Ok(lines)
                }
            })
            .await;
        assert_eq!(lines.len(), 1, "{lines:?}");
        let letter = &lines[0];
        assert_eq!(letter["subject"], "orders.created.v2");
        assert_eq!(letter["reason"], "poison");
        assert!(letter["deliveries"].as_u64().is_some(), "{letter}");
        assert!(letter["time"].as_str().is_some(), "{letter}");
        assert!(
            letter["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{letter}"
        );
        let first_seq = letter["dlq_sequence"].as_u64().expect("sequence");

        // The table form names the same columns.
        let (ok, table) = dlq(&url, &["list"]);
        assert!(
            ok && table.contains("orders.created.v2") && table.contains("poison"),
            "{table}"
        );

        let stored_before = js
            .get_stream("ORDERS")
            .await
            .expect("ORDERS")
            .info()
            .await
            .expect("info")
            .state
            .messages;
        // A poison letter is not replayed without --force: it would only come back.
        let (ok, out) = dlq(&url, &["replay", "--all"]);
        assert!(!ok, "{out}");
        assert!(
            out.contains("is poison") && out.contains("--force"),
            "{out}"
        );
        let unchanged = js
            .get_stream("ORDERS")
            .await
            .expect("ORDERS")
            .info()
            .await
            .expect("info")
            .state
            .messages;
        assert_eq!(unchanged, stored_before, "nothing was replayed");
        let (ok, out) = dlq(&url, &["replay", "--all", "--force"]);
        assert!(ok, "{out}");
        // Replayed onto its original subject: the stream grew by one; it is poison still, so it
        // comes back to the DLQ as a new letter.
        let stored_after = js
            .get_stream("ORDERS")
            .await
            .expect("ORDERS")
            .info()
            .await
            .expect("info")
            .state
            .messages;
        assert_eq!(stored_after, stored_before + 1);
        let again = eventually(
            "the replayed poison back in the DLQ",
            Duration::from_secs(20),
            || async {
                let (_, out) = dlq(&url, &["list", "--json"]);
                let lines: Vec<Value> = out
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect();
                match lines.as_slice() {
                    [one] if one["dlq_sequence"].as_u64() != Some(first_seq) => Ok(one.clone()),
                    _ => Err(out),
                }
            },
        )
        .await;
        assert_eq!(again["subject"], "orders.created.v2");
        let (ok, out) = dlq(&url, &["replay", "999999"]);
        assert!(!ok, "replaying an unknown sequence fails clearly: {out}");
        assert!(out.contains("999999"), "{out}");

        // Purge asks first: without a terminal to ask on and without --yes, nothing goes.
        let (ok, out) = dlq(&url, &["purge"]);
        assert!(!ok && out.contains("--yes"), "{out}");
        let again_seq = again["dlq_sequence"].as_u64().expect("sequence");
        let (ok, out) = dlq(&url, &["delete", &again_seq.to_string()]);
        assert!(ok, "{out}");
        let (ok, out) = dlq(&url, &["list"]);
        assert!(ok && out.contains("no dead letters"), "{out}");
        let (ok, out) = dlq(&url, &["purge", "--yes"]);
        assert!(ok, "{out}");
        app.stop().await;
    })
}
