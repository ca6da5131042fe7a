//! TLS on every connection, with certificates the test makes: NATS with a private CA (and
//! mutual TLS), PostgreSQL with `sslmode`, and the payment provider over HTTPS.

use std::time::Duration;

use actix_web::{App, HttpServer};
use jetflow_integration::{
    JetflowProcess, NatsServer, TestAppBuilder, TestDatabase, TestPki, eventually,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Where Debian's PostgreSQL keeps its certificate (`ssl = on` uses it).
const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

fn tls_nats(pki: &TestPki, verify_clients: bool) -> NatsServer {
    NatsServer::builder()
        .config_extra(&pki.nats_tls_block(verify_clients))
        .start()
}

fn tls_url(nats: &NatsServer) -> String {
    format!("tls://127.0.0.1:{}", nats.port())
}

fn inventory(nats_url: &str, extra: &[(&str, &str)]) -> (JetflowProcess, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("jetflow-db-")
        .tempdir()
        .expect("dir");
    let db = format!("sqlite://{}/j.db", dir.path().display());
    let mut env = vec![("NATS_URL", nats_url), ("DATABASE_URL", db.as_str())];
    env.extend_from_slice(extra);
    (JetflowProcess::start(&["inventory"], &env), dir)
}

#[test]
fn nats_over_tls_works_with_the_private_ca_and_fails_clearly_without_it() {
    jetflow_integration::run(async {
        let pki = TestPki::new();
        let nats = tls_nats(&pki, false);
        let url = tls_url(&nats);
        let ca = pki.ca().display().to_string();
        let (mut trusted, _d1) = inventory(&url, &[("NATS_TLS_CA", ca.as_str())]);
        trusted.until("/ready").await;

        // Without the CA the server's certificate is not trusted: never ready, and the log
        // says why.
        let (untrusted, _d2) = inventory(&url, &[]);
        eventually(
            "the certificate error in the log",
            Duration::from_secs(20),
            || async {
                let log = untrusted.log();
                if log.contains("UnknownIssuer") || log.contains("invalid peer certificate") {
                    Ok(())
                } else {
                    Err(untrusted.log_tail())
                }
            },
        )
        .await;
        let r = reqwest::get(format!("{}/ready", untrusted.url()))
            .await
            .expect("/ready");
        assert_eq!(r.status().as_u16(), 503);
        assert!(r.text().await.unwrap_or_default().contains("nats"));
        trusted.kill();
    })
}

#[test]
fn mutual_tls_needs_the_client_certificate() {
    jetflow_integration::run(async {
        let pki = TestPki::new();
        let nats = tls_nats(&pki, true);
        let url = tls_url(&nats);
        let (ca, cert, key) = (
            pki.ca().display().to_string(),
            pki.client_cert().display().to_string(),
            pki.client_key().display().to_string(),
        );
        let (with_cert, _d1) = inventory(
            &url,
            &[
                ("NATS_TLS_CA", ca.as_str()),
                ("NATS_TLS_CERT", cert.as_str()),
                ("NATS_TLS_KEY", key.as_str()),
            ],
        );
        with_cert.until("/ready").await;
        let (without, _d2) = inventory(&url, &[("NATS_TLS_CA", ca.as_str())]);
        // The server refuses the handshake; the process stays unready.
        eventually(
            "the refusal in the log",
            Duration::from_secs(20),
            || async {
                let log = without.log();
                if log.contains("NATS connection failed") {
                    Ok(())
                } else {
                    Err(without.log_tail())
                }
            },
        )
        .await;
        let r = reqwest::get(format!("{}/ready", without.url()))
            .await
            .expect("/ready");
        assert_eq!(r.status().as_u16(), 503);
    })
}

#[test]
fn postgres_with_sslmode_require_and_verify_ca() {
    jetflow_integration::run(async {
        let nats = NatsServer::start();
        let pg = TestDatabase::create().await;
        for mode in [
            "sslmode=require".to_string(),
            format!("sslmode=verify-ca&sslrootcert={SNAKEOIL}"),
        ] {
            let url = format!("{}?{mode}", pg.url());
            let app = TestAppBuilder::new(&nats.url())
                .database(&url)
                .start()
                .await;
            app.wait_ready().await;
            // A write and a read through the encrypted connection.
            app.put_stock("tls-sku", 3, 100).await;
            assert_eq!(app.stock("tls-sku").await["available"], 3, "{mode}");
            let in_use: bool = jetflow_runtime::db::query(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            )
            .fetch_scalar(app.db().pool())
            .await
            .expect("pg_stat_ssl");
            assert!(in_use, "the connection is encrypted with {mode}");
            app.stop().await;
        }
    })
}

fn rustls_config(pki: &TestPki) -> rustls::ServerConfig {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.server_cert())
        .expect("server certificate")
        .collect::<Result<_, _>>()
        .expect("PEM");
    let key = PrivateKeyDer::from_pem_file(pki.server_key()).expect("server key");
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("TLS config")
}

#[test]
fn the_payment_provider_over_https_with_a_private_ca() {
    jetflow_integration::run(async {
        jetflow_domain::payment_client::install_crypto_provider();
        let pki = TestPki::new();
        let state = jetflow_provider::ProviderState::default();
        let s = state.clone();
        let server =
            HttpServer::new(move || App::new().configure(jetflow_provider::configure(s.clone())))
                .workers(1)
                .disable_signals()
                .bind_rustls_0_23(("127.0.0.1", 0), rustls_config(&pki))
                .expect("bind");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        let url = format!("https://localhost:{port}");

        // Without the CA the provider's certificate is refused, before anything is charged.
        let client =
            jetflow_domain::payment_client::PaymentClient::new(&url, Duration::from_secs(2), None)
                .expect("client");
        let e = client
            .charge("o-x", "c", 1)
            .await
            .expect_err("untrusted certificate");
        assert!(e.to_string().contains("certificate"), "{e}");
        assert!(state.accounts().is_empty(), "nothing reached the provider");

        let nats = NatsServer::start();
        let app = TestAppBuilder::new(&nats.url())
            .with(|s| {
                s.provider.url = Some(url.clone());
                s.provider.ca = Some(pki.ca());
            })
            .roles(jetflow_app::startup::Roles {
                provider: false,
                ..jetflow_app::startup::Roles::all()
            })
            .start()
            .await;
        app.wait_ready().await;
        app.put_stock("https-sku", 5, 250).await;
        let id = app.order("c-https", "https-sku", 2).await;
        let done = app.wait_finished(&id, Duration::from_secs(30)).await;
        assert_eq!(done["status"], "confirmed", "{done}");
        let account = state
            .accounts()
            .into_iter()
            .find(|a| a.order_id == id)
            .expect("charged over HTTPS");
        assert_eq!(
            (
                account.charge_calls,
                account.charges_made,
                account.amount_cents
            ),
            (1, 1, 500)
        );
        app.stop().await;
        handle.stop(false).await;
    })
}
