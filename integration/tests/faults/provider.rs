//! The payment provider down, then slow beyond the timeout, then back, under a stream of
//! orders: the breaker opens (metric), fails fast, half-opens and closes; every order ends
//! confirmed or `payment_unavailable` with its stock back. A provider with a rate limit below
//! the orders' rate slows the saga and never breaks it: the payment actor's mailbox fills and
//! drains, the breaker never opens, every order is confirmed and charged once. (The tests that
//! read the process-wide breaker and actor metrics run alone: `super::alone`.)

use std::collections::BTreeMap;
use std::time::Duration;

use jetflow_integration::invariants::{self, Expectations};
use jetflow_integration::load::{self, LoadConfig};
use jetflow_integration::scenarios::metric_sum;
use jetflow_integration::{NatsServer, TestAppBuilder, eventually};

const BREAKER: (&str, &str) = ("breaker", "payment-provider");

use super::alone;

#[test]
fn a_rate_limited_provider_slows_the_saga_and_breaks_nothing() {
    let _alone = alone();
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let app = TestAppBuilder::new(&nats.url()).start().await;
        app.wait_ready().await;
        let products = ["sku-r1", "sku-r2"];
        let mut initial = BTreeMap::new();
        for p in products {
            app.put_stock(p, 1000, 100).await;
            initial.insert(p.to_string(), 1000);
        }
        // 20 charges a second; orders come at 40 a second for 5 s.
        app.provider_control_json(serde_json::json!({"rate_limit_per_s": 20}))
            .await;
        let before = app.metrics().await;
        let opened = |m: &str| {
            metric_sum(
                m,
                "jetflow_breaker_transitions_total",
                &[BREAKER, ("to", "open")],
            )
        };
        let mut cfg = LoadConfig::new(&app.address, &products, Duration::from_secs(5));
        cfg.declined_every = 0;
        let load = tokio::spawn(load::run(cfg));
        // The payment actor's mailbox fills while the provider holds it back.
        let payment_depth = |m: &str| {
            metric_sum(m, "jetflow_actor_mailbox_depth", &[("actor", "payment")])
                + metric_sum(
                    m,
                    "jetflow_actor_mailbox_depth",
                    &[("actor", "payment-express")],
                )
        };
        eventually(
            "the payment actor's mailbox to fill",
            Duration::from_secs(20),
            || async {
                let depth = payment_depth(&app.metrics().await);
                if depth > 0.0 {
                    Ok(())
                } else {
                    Err(format!("depth {depth}"))
                }
            },
        )
        .await;
        let report = load.await.expect("the load ran");
        report.assert_clean(Duration::from_secs(5));
        let result = invariants::check(&Expectations {
            api: app.address.clone(),
            provider: app.provider.clone().expect("provider"),
            initial_stock: initial,
            accepted: report.accepted,
            deadline: Duration::from_secs(90),
        })
        .await;
        assert_eq!(
            result.count("confirmed"),
            result.orders.len(),
            "every order confirmed: {:?}",
            result.outcomes
        );
        // ... and drains to 0 once they are.
        eventually(
            "the payment actor's mailbox to drain",
            Duration::from_secs(10),
            || async {
                let depth = payment_depth(&app.metrics().await);
                if depth == 0.0 {
                    Ok(())
                } else {
                    Err(format!("depth {depth}"))
                }
            },
        )
        .await;
        let after = app.metrics().await;
        assert_eq!(
            opened(&after) - opened(&before),
            0.0,
            "the limit never looked like a failure"
        );
        let pushed_back = metric_sum(&after, "jetflow_pace_pushbacks_total", &[])
            - metric_sum(&before, "jetflow_pace_pushbacks_total", &[]);
        assert!(pushed_back > 0.0, "the provider pushed back");
        let charges = app.charges().await;
        assert!(
            charges.iter().all(|c| c["charges_made"] == 1),
            "each order charged once: {charges:?}"
        );
        assert!(
            charges
                .iter()
                .any(|c| c["throttled_calls"].as_u64().unwrap_or(0) > 0),
            "the provider answered 429 and the charge was made again"
        );
        invariants::check_outbox_drained(&app.address, Duration::from_secs(10)).await;
        invariants::check_dead_letters(&nats.url(), 0).await;
        app.stop().await;
    })
}

#[test]
fn provider_down_slow_and_back_trips_and_heals_the_breaker() {
    let _alone = alone();
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        // Few, quick payment retries, so orders caught by the outage give up within it.
        let app = TestAppBuilder::new(&nats.url())
            .with(|s| {
                s.saga.payment_max_deliver = 3;
                s.saga.payment_retry_base = Duration::from_millis(100);
                s.saga.payment_retry_max = Duration::from_millis(300);
            })
            .start()
            .await;
        app.wait_ready().await;
        let products = ["sku-b1", "sku-b2"];
        let mut initial = BTreeMap::new();
        for p in products {
            app.put_stock(p, 200, 999).await;
            initial.insert(p.to_string(), 200);
        }
        let mut accepted = Vec::new();

        // Down: 503 from the provider.
        app.provider_control(true, 0).await;
        let mut cfg = LoadConfig::new(&app.address, &products, Duration::from_millis(1500));
        cfg.declined_every = 0;
        let report = load::run(cfg.clone()).await;
        report.assert_clean(Duration::from_secs(5));
        accepted.extend(report.accepted);
        eventually("the breaker to open", Duration::from_secs(10), || async {
            let m = app.metrics().await;
            let state = metric_sum(&m, "jetflow_breaker_state", &[BREAKER]);
            if state == 2.0 {
                Ok(())
            } else {
                Err(format!("state {state}"))
            }
        })
        .await;
        let m = app.metrics().await;
        assert!(
            metric_sum(
                &m,
                "jetflow_breaker_calls_total",
                &[BREAKER, ("result", "rejected")]
            ) > 0.0,
            "while open, calls fail fast without reaching the provider"
        );

        // Slow: answers after 1.5 s, beyond the 500 ms timeout.
        app.provider_control(false, 1500).await;
        let report = load::run(LoadConfig {
            duration: Duration::from_millis(1000),
            ..cfg.clone()
        })
        .await;
        report.assert_clean(Duration::from_secs(5));
        accepted.extend(report.accepted);
        eventually(
            "slow calls to time out",
            Duration::from_secs(10),
            || async {
                let m = app.metrics().await;
                let timeouts = metric_sum(
                    &m,
                    "jetflow_breaker_calls_total",
                    &[BREAKER, ("result", "timeout")],
                );
                if timeouts > 0.0 {
                    Ok(())
                } else {
                    Err(m
                        .lines()
                        .filter(|l| l.contains("breaker"))
                        .collect::<Vec<_>>()
                        .join("\n"))
                }
            },
        )
        .await;

        // Back: the breaker half-opens, a probe succeeds, it closes; new orders are confirmed.
        app.provider_control(false, 0).await;
        let report = load::run(LoadConfig {
            duration: Duration::from_millis(1500),
            ..cfg
        })
        .await;
        report.assert_clean(Duration::from_secs(5));
        accepted.extend(report.accepted);
        eventually("the breaker to close", Duration::from_secs(15), || async {
            let m = app.metrics().await;
            let state = metric_sum(&m, "jetflow_breaker_state", &[BREAKER]);
            if state == 0.0 {
                Ok(())
            } else {
                Err(format!("state {state}"))
            }
        })
        .await;
        let m = app.metrics().await;
        for to in ["open", "half_open", "closed"] {
            assert!(
                metric_sum(
                    &m,
                    "jetflow_breaker_transitions_total",
                    &[BREAKER, ("to", to)]
                ) > 0.0,
                "the breaker went {to}"
            );
        }

        let result = invariants::check(&Expectations {
            api: app.address.clone(),
            provider: app.provider.clone().expect("provider"),
            initial_stock: initial,
            accepted,
            deadline: Duration::from_secs(60),
        })
        .await;
        assert!(result.count("confirmed") > 0, "{:?}", result.outcomes);
        assert!(
            result.count("cancelled:payment_unavailable") > 0,
            "orders of the outage gave up: {:?}",
            result.outcomes
        );
        assert_eq!(
            result.count("confirmed") + result.count("cancelled:payment_unavailable"),
            result.orders.len(),
            "{:?}",
            result.outcomes
        );
        invariants::check_outbox_drained(&app.address, Duration::from_secs(10)).await;
        invariants::check_dead_letters(&nats.url(), 0).await;
        app.stop().await;
    })
}

#[test]
fn an_order_that_times_out_while_its_charge_is_in_flight_is_cancelled_and_the_charge_voided() {
    let _shared = super::beside_others();
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let app = TestAppBuilder::new(&nats.url())
            .with(|s| {
                // The call waits for the slow provider; the order does not.
                s.provider.timeout = Duration::from_secs(10);
                s.saga.order_timeout = Duration::from_millis(800);
                s.saga.order_sweep_interval = Duration::from_millis(100);
            })
            .start()
            .await;
        app.wait_ready().await;
        app.put_stock("sku-t1", 10, 700).await;
        // Every answer takes 3 s: the order times out while its charge is in flight, and the
        // charge lands after the cancellation.
        app.provider_control(false, 3000).await;
        let id = app.order("c-slow", "sku-t1", 2).await;

        let result = invariants::check(&Expectations {
            api: app.address.clone(),
            provider: app.provider.clone().expect("provider"),
            initial_stock: BTreeMap::from([("sku-t1".to_string(), 10)]),
            accepted: vec![id.clone()],
            deadline: Duration::from_secs(30),
        })
        .await;
        assert_eq!(
            result.count("cancelled:timed_out"),
            1,
            "{:?}",
            result.outcomes
        );
        // The scenario happened as intended: the provider did charge, once, and the charge
        // was given back (the invariants waited for the answer in flight, then the void).
        let account = app.charge(&id).await.expect("the provider saw the order");
        assert_eq!(account["in_flight"], 0, "{account}");
        assert_eq!(account["charges_made"], 1, "{account}");
        assert_eq!(account["status"], "voided", "{account}");
        assert!(account["void_calls"].as_u64() >= Some(1), "{account}");
        let m = app.metrics().await;
        assert!(
            metric_sum(&m, "jetflow_orders_total", &[("status", "cancelled")]) >= 1.0,
            "the timeout is counted"
        );
        invariants::check_outbox_drained(&app.address, Duration::from_secs(10)).await;
        invariants::check_dead_letters(&nats.url(), 0).await;
        app.stop().await;
    })
}
