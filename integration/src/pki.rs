//! Real certificates for TLS tests, made by the test: a certificate authority, a server
//! certificate for `localhost` and `127.0.0.1` signed by it, and a client certificate for
//! mutual TLS, written as PEM files in a temporary directory that goes with the value.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA and the certificates it signed, as files.
pub struct TestPki {
    dir: tempfile::TempDir,
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("PEM written");
}

impl TestPki {
    /// Makes the CA, the server certificate and the client certificate.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("jetflow-pki-")
            .tempdir()
            .expect("a temp dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.distinguished_name
            .push(DnType::CommonName, "jetflow test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        write(dir.path(), "ca.pem", &ca_cert.pem());
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let mut server =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server
            .signed_by(&server_key, &issuer)
            .expect("server certificate");
        write(dir.path(), "server.pem", &server_cert.pem());
        write(dir.path(), "server.key", &server_key.serialize_pem());

        let client_key = KeyPair::generate().expect("client key");
        let mut client = CertificateParams::new(Vec::<String>::new()).expect("client params");
        client
            .distinguished_name
            .push(DnType::CommonName, "jetflow");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client
            .signed_by(&client_key, &issuer)
            .expect("client certificate");
        write(dir.path(), "client.pem", &client_cert.pem());
        write(dir.path(), "client.key", &client_key.serialize_pem());
        Self { dir }
    }

    /// A file of this PKI.
    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA certificate (what clients trust).
    pub fn ca(&self) -> PathBuf {
        self.file("ca.pem")
    }

    /// The server certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.file("server.pem")
    }

    /// The server's key.
    pub fn server_key(&self) -> PathBuf {
        self.file("server.key")
    }

    /// The client certificate.
    pub fn client_cert(&self) -> PathBuf {
        self.file("client.pem")
    }

    /// The client's key.
    pub fn client_key(&self) -> PathBuf {
        self.file("client.key")
    }

    /// A nats-server `tls` block: this server certificate, and (with `verify`) clients must
    /// present a certificate signed by this CA.
    pub fn nats_tls_block(&self, verify: bool) -> String {
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: {verify}\n  timeout: 2\n}}\n",
            self.server_cert().display().to_string(),
            self.server_key().display().to_string(),
            self.ca().display().to_string(),
        )
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
