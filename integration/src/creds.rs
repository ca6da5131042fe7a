//! NATS decentralized auth (operator mode) for tests: an operator, an account with JetStream
//! enabled and a user, as signed JWTs, the server configuration that trusts them, and the
//! user's `.creds` file (JWT + seed) that `NATS_CREDS` points jetflow at. What `nsc` would
//! generate, built with the `nkeys` crate so tests need no extra tool.

use data_encoding::BASE64URL_NOPAD;
use nkeys::KeyPair;
use serde_json::{Value, json};

/// An operator, an account and a user, signed.
pub struct OperatorSetup {
    /// Server configuration lines (`operator`, `resolver`, `resolver_preload`).
    pub server_config: String,
    /// The user's creds file contents.
    pub creds: String,
    /// The user's seed (a secret: tests check it never reaches logs).
    pub user_seed: String,
}

fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let header = BASE64URL_NOPAD.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = json!({
        "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let payload = BASE64URL_NOPAD.encode(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{payload}");
    let signature = issuer.sign(signing_input.as_bytes()).expect("signing");
    format!("{signing_input}.{}", BASE64URL_NOPAD.encode(&signature))
}

impl OperatorSetup {
    /// Fresh keys and JWTs.
    pub fn new() -> Self {
        let operator = KeyPair::new_operator();
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        // JetStream needs a system account.
        let system = KeyPair::new_account();
        let operator_jwt = jwt(
            &operator,
            &operator.public_key(),
            "jetflow-test-operator",
            json!({"type": "operator", "version": 2, "system_account": system.public_key()}),
        );
        let system_jwt = jwt(
            &operator,
            &system.public_key(),
            "SYS",
            json!({"limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1},
                "default_permissions": {"pub": {}, "sub": {}}, "type": "account", "version": 2}),
        );
        let account_jwt = jwt(
            &operator,
            &account.public_key(),
            "JETFLOW",
            json!({
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
                    "max_ack_pending": -1, "mem_max_stream_bytes": -1, "disk_max_stream_bytes": -1,
                    "max_bytes_required": false
                },
                "default_permissions": {"pub": {}, "sub": {}},
                "type": "account", "version": 2
            }),
        );
        let user_jwt = jwt(
            &account,
            &user.public_key(),
            "jetflow",
            json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
        );
        let user_seed = user.seed().expect("seed");
        let server_config = format!(
            "operator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n  {}: {account_jwt}\n  {sys}: {system_jwt}\n}}\n",
            account.public_key(),
            sys = system.public_key(),
        );
        let creds = format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{user_seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n"
        );
        Self {
            server_config,
            creds,
            user_seed,
        }
    }
}

impl Default for OperatorSetup {
    fn default() -> Self {
        Self::new()
    }
}
