//! TLS with rustls: a server config from PEM files, validated with messages that name the file.
//!
//! TLS 1.3 and 1.2 (rustls' ring provider offers only forward-secret AEAD suites for 1.2:
//! ECDHE with AES-GCM or ChaCha20-Poly1305), ALPN `h2` and `http/1.1`, stateless session
//! tickets for resumption. The config is part of `State`, so a SIGHUP with a new certificate
//! swaps it for new handshakes while established connections keep theirs; a bad new certificate
//! is rejected like any bad config and the old one keeps serving.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Config, ConfigErrors, TlsConfig};

/// Builds the rustls server config, or says what is wrong with which file.
pub fn server_config(t: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, (String, String)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&t.cert)
        .map_err(|e| {
            (
                "tls.cert".to_string(),
                format!("cannot read {}: {e}", t.cert.display()),
            )
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            (
                "tls.cert".to_string(),
                format!("{}: not a PEM certificate chain: {e}", t.cert.display()),
            )
        })?;
    if certs.is_empty() {
        return Err((
            "tls.cert".into(),
            format!("{}: no certificate found", t.cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&t.key).map_err(|e| {
        (
            "tls.key".to_string(),
            format!("{}: no usable private key: {e}", t.key.display()),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ("tls".to_string(), e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InvalidCertificate(_) => (
                "tls.cert".to_string(),
                format!("{}: not a valid X.509 certificate: {e}", t.cert.display()),
            ),
            rustls::Error::InconsistentKeys(_) => (
                "tls.key".to_string(),
                format!(
                    "{} does not fit the certificate in {}: {e}",
                    t.key.display(),
                    t.cert.display()
                ),
            ),
            other => (
                "tls.key".to_string(),
                format!(
                    "{} cannot be used with {}: {other}",
                    t.key.display(),
                    t.cert.display()
                ),
            ),
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| ("tls".to_string(), e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// `check-config`'s TLS checks: the certificate chain and key load and belong together.
pub fn validate(cfg: &Config) -> ConfigErrors {
    let mut errs = ConfigErrors::default();
    if let Some(t) = &cfg.tls {
        if let Err((key, problem)) = server_config(t) {
            errs.push(
                &cfg.file,
                key,
                problem,
                "a readable PEM chain (leaf first) and its matching RSA or ECDSA private key",
            );
        }
    }
    errs
}
