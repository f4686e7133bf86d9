//! TLS with rustls: certificates from PEM files, validated with messages that name the file, and
//! the two server configs built from them — TCP (TLS 1.3 and 1.2, ALPN `h2` and `http/1.1`) and
//! QUIC (TLS 1.3 only, ALPN `h3`).
//!
//! TLS 1.2 offers only forward-secret AEAD suites (rustls' ring provider: ECDHE with AES-GCM or
//! ChaCha20-Poly1305); stateless session tickets give resumption. `[[tls.certs]]` adds
//! certificates chosen by SNI; the main pair serves every other name. Both configs are part of
//! `State`, so a SIGHUP with new files swaps them for new handshakes while established
//! connections keep theirs; a bad new file is rejected like any bad config and the old one stays.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use quinn::{IdleTimeout, TransportConfig, VarInt};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ResolvesServerCertUsingSni};
use rustls::sign::CertifiedKey;

use crate::config::{Config, ConfigErrors, TlsConfig};

/// What went wrong, for which config key: `(key, problem)`.
pub type TlsError = (String, String);

/// Both server configs from one set of certificates.
pub struct TlsConfigs {
    /// TCP listeners: TLS 1.3 + 1.2, ALPN h2, http/1.1.
    pub tcp: Arc<rustls::ServerConfig>,
    /// QUIC: TLS 1.3 only (QUIC requires it), ALPN h3, no 0-RTT.
    pub quic: Arc<rustls::ServerConfig>,
}

/// Loads every certificate and key of `[tls]` and builds both configs.
pub fn server_configs(t: &TlsConfig) -> Result<TlsConfigs, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let default = Arc::new(certified_key(
        &t.cert, &t.key, "tls.cert", "tls.key", &provider,
    )?);
    let mut sni = ResolvesServerCertUsingSni::new();
    for (i, c) in t.certs.iter().enumerate() {
        let ck = certified_key(
            &c.cert,
            &c.key,
            &format!("tls.certs[{i}].cert"),
            &format!("tls.certs[{i}].key"),
            &provider,
        )?;
        for name in &c.server_names {
            sni.add(name, ck.clone()).map_err(|e| {
                (
                    format!("tls.certs[{i}].server_names"),
                    format!(
                        "{}: the certificate does not cover {name:?}: {e}",
                        c.cert.display()
                    ),
                )
            })?;
        }
    }
    let resolver: Arc<dyn ResolvesServerCert> = Arc::new(Resolver {
        sni,
        default,
        any_sni: !t.certs.is_empty(),
    });
    let ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| ("tls".to_string(), e.to_string()))?;

    let mut tcp = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ("tls".to_string(), e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&resolver));
    // `http/1.0` too: a client offering only it (`curl --http1.0`) was refused the handshake
    // (no_application_protocol); it is served as HTTP/1.1's listener serves HTTP/1.0.
    tcp.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    tcp.ticketer = Arc::clone(&ticketer);

    let mut quic = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ("tls".to_string(), e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    quic.alpn_protocols = vec![b"h3".to_vec()];
    quic.ticketer = ticketer;
    // No 0-RTT: early data can be replayed, and a segment GET gains little from it.
    quic.max_early_data_size = 0;
    Ok(TlsConfigs {
        tcp: Arc::new(tcp),
        quic: Arc::new(quic),
    })
}

/// A certificate chain and its private key, checked to belong together.
fn certified_key(
    cert: &Path,
    key: &Path,
    cert_key: &str,
    key_key: &str,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| {
            (
                cert_key.to_string(),
                format!("cannot read {}: {e}", cert.display()),
            )
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| {
            (
                cert_key.to_string(),
                format!("{}: not a PEM certificate chain: {e}", cert.display()),
            )
        })?;
    if certs.is_empty() {
        return Err((
            cert_key.to_string(),
            format!("{}: no certificate found", cert.display()),
        ));
    }
    // The leaf must parse as X.509 (rustls would otherwise fail only at handshake time).
    let leaf = rustls::server::ParsedCertificate::try_from(&certs[0]);
    if let Err(e) = leaf {
        return Err((
            cert_key.to_string(),
            format!("{}: not a valid X.509 certificate: {e}", cert.display()),
        ));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        (
            key_key.to_string(),
            format!("{}: no usable private key: {e}", key.display()),
        )
    })?;
    CertifiedKey::from_der(certs, der, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => (
            key_key.to_string(),
            format!(
                "{} does not fit the certificate in {}: {e}",
                key.display(),
                cert.display()
            ),
        ),
        other => (
            key_key.to_string(),
            format!(
                "{} cannot be used with {}: {other}",
                key.display(),
                cert.display()
            ),
        ),
    })
}

/// SNI first (`[[tls.certs]]`), the main pair for every other name and for no name at all.
struct Resolver {
    sni: ResolvesServerCertUsingSni,
    default: Arc<CertifiedKey>,
    any_sni: bool,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("sni", &self.any_sni)
            .finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.any_sni && hello.server_name().is_some() {
            if let Some(ck) = self.sni.resolve(hello) {
                return Some(ck);
            }
        }
        Some(Arc::clone(&self.default))
    }
}

/// `check-config`'s TLS checks: every certificate chain and key loads, they belong together,
/// and SNI names are covered by their certificates.
pub fn validate(cfg: &Config) -> ConfigErrors {
    let mut errs = ConfigErrors::default();
    if let Some(t) = &cfg.tls {
        if let Err((key, problem)) = server_configs(t) {
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

// === QUIC (HTTP/3) ===

/// Unidirectional streams a client may open: control + QPACK encoder + decoder, and room for
/// reserved (grease) stream types.
const MAX_UNI_STREAMS: u32 = 8;
/// Per-stream and per-connection receive windows: request heads only.
const STREAM_RECEIVE_WINDOW: u32 = 64 << 10;
const RECEIVE_WINDOW: u32 = 256 << 10;
/// Unacknowledged response bytes buffered per connection (the back-pressure bound).
const SEND_WINDOW: u64 = 4 << 20;
/// Ack-eliciting packets a client may receive before it must acknowledge them, asked of clients
/// that implement the ACK frequency extension (draft-ietf-quic-ack-frequency; quinn does,
/// quic-go 0.3x does not): about what Chrome's QUIC does by itself ("ack decimation", every 10
/// packets). Every ACK costs the server a receive, a decryption and loss-detection work; by
/// default a client acknowledges every second packet. Measured: 0.92x the CPU per request
/// (benches/results/2026-11-28-2212-fd70e92-h3-exp-ackf).
const ACK_ELICITING_THRESHOLD: u32 = 10;

/// The secret behind QUIC's address-validation tokens (Retry and NEW_TOKEN). One per service,
/// not per config: a reload keeps it and an upgrade hands it to the new process, so a client
/// that was sent a Retry just before either comes back with a token that is still accepted
/// (an unaccepted Retry token ends the connection with INVALID_TOKEN, RFC 9000 §8.1.2).
#[derive(Clone)]
pub struct QuicTokenKey {
    bytes: [u8; QuicTokenKey::LEN],
    prk: Arc<ring::hkdf::Prk>,
}

impl QuicTokenKey {
    pub const LEN: usize = 64;

    /// A new key from the system's random source.
    pub fn random() -> std::io::Result<QuicTokenKey> {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; Self::LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| std::io::Error::other("no random bytes for the QUIC token key"))?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key another process passed on.
    pub fn from_bytes(bytes: [u8; Self::LEN]) -> QuicTokenKey {
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&bytes);
        QuicTokenKey {
            bytes,
            prk: Arc::new(prk),
        }
    }

    pub fn bytes(&self) -> &[u8; Self::LEN] {
        &self.bytes
    }
}

impl fmt::Debug for QuicTokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QuicTokenKey(..)")
    }
}

/// The quinn server config for `config`'s limits around a TLS 1.3 / ALPN h3 rustls config.
pub fn quic_server_config(
    config: &Config,
    tls: Arc<rustls::ServerConfig>,
    token_key: &QuicTokenKey,
) -> std::io::Result<quinn::ServerConfig> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| std::io::Error::other(format!("tls: not usable for QUIC: {e}")))?;
    let mut sc = quinn::ServerConfig::new(Arc::new(crypto), token_key.prk.clone());
    let s = &config.server;
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(s.h3_max_concurrent_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS))
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .max_idle_timeout(Some(
            IdleTimeout::try_from(s.keepalive_timeout).map_err(std::io::Error::other)?,
        ));
    // The peer's own max_ack_delay still bounds how long it waits; loss detection and the MTU
    // search keep quinn's defaults (an MTU upper bound above 1452 measured worse on loopback: a
    // burst of losses at a large MTU reads as a black hole and drops the MTU to 1200).
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    t.ack_frequency_config(Some(ack));
    sc.transport_config(Arc::new(t));
    Ok(sc)
}

/// Why a TLS handshake failed, as `segd_tls_handshake_failures_total` counts it:
///
/// - `closed`: the client closed or reset the connection first (a TCP health check, a scanner);
/// - `alert`: the client ended it with an alert, most often because it does not accept segd's
///   certificate (expired, another name, an unknown issuer);
/// - `incompatible`: no protocol version, cipher suite, group, signature scheme or ALPN protocol
///   in common (an old client, or a config that allows too little);
/// - `malformed`: what came was not TLS, or broke its rules;
/// - `timeout` (counted by the caller): no handshake within `header_read_timeout`;
/// - `other`.
pub fn handshake_failure(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return match tls {
            rustls::Error::AlertReceived(_) => "alert",
            rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => {
                "incompatible"
            }
            rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }
            | rustls::Error::InvalidMessage(_)
            | rustls::Error::PeerMisbehaved(_)
            | rustls::Error::PeerSentOversizedRecord
            | rustls::Error::DecryptError => "malformed",
            _ => "other",
        };
    }
    match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe => "closed",
        _ => "other",
    }
}

/// The same for a QUIC connection that failed before its handshake completed (`timeout` for
/// quinn's idle timeout as for the caller's).
pub fn quic_handshake_failure(e: &quinn::ConnectionError) -> &'static str {
    use quinn::ConnectionError::*;
    // RFC 9001 §4.8: a TLS alert travels as the CRYPTO_ERROR 0x100 + its code.
    let alert = |code: u64| code.checked_sub(0x100).filter(|a| *a < 0x100);
    match e {
        TimedOut => "timeout",
        ConnectionClosed(c) if alert(c.error_code.into()).is_some() => "alert",
        TransportError(t) => match alert(t.code.into()) {
            // protocol_version, handshake_failure, insufficient_security, no_application_protocol
            Some(70 | 40 | 71 | 120) => "incompatible",
            _ => "malformed",
        },
        ConnectionClosed(_) | ApplicationClosed(_) | Reset => "closed",
        _ => "other",
    }
}

/// Every reason [`handshake_failure`] and [`quic_handshake_failure`] give.
pub const HANDSHAKE_FAILURES: &[&str] = &[
    "closed",
    "alert",
    "incompatible",
    "malformed",
    "timeout",
    "other",
];
