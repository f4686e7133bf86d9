//! A small HTTP/3 load generator (quinn + h3) for `benches/h3_vs_tls.py`: h2load on this machine
//! is built without QUIC and nginx 1.22 has none, so segd's HTTP/3 path is measured against its
//! own HTTP/2-over-TLS path with the same connection and stream counts.
//!
//! `cargo bench --bench h3load -- ADDR PATHS_FILE CONNS STREAMS SECONDS`
//! PATHS_FILE holds one path per line, optionally followed by a tab and the body length the
//! answer must have (a 2xx with another length counts in `badlen`: a server answering for the
//! wrong site sends empty 200s). Requests go to authority `localhost` (also the SNI).
//! Prints one line: `requests=N bytes=N errors=N non2xx=N badlen=N p50_ms=X p99_ms=X seconds=X`
//! and the client side's QUIC counters summed over its connections (what the server sent is
//! what arrived here, loopback loses nothing): `rx_datagrams` (UDP datagrams received, each a
//! server packet or a coalesced group), `rx_ios` (receive calls; fewer than datagrams with GRO),
//! `tx_datagrams`, `tx_ios` (the client's packets: mostly ACKs), `mtu` (largest path MTU).
//! Certificates are not verified (a benchmark against a self-signed test certificate).
//! The client's UDP receive buffer is 4 MiB (see `run`; `H3LOAD_DEFAULT_RCVBUF=1` keeps the
//! kernel default, as before 2026-11-28 22:40). The client advertises quinn's default `max_udp_payload_size` (1472, so 1452-byte QUIC
//! packets at most) unless `H3LOAD_MAX_UDP_PAYLOAD` says otherwise (up to 65527: what a server
//! could use on loopback if it probes for it; no internet path carries that).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};

#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    non2xx: AtomicU64,
    badlen: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

fn client_config() -> Result<quinn::ClientConfig, Box<dyn std::error::Error>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    Ok(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    )))
}

async fn one_stream(
    mut send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    paths: Arc<Vec<(String, Option<u64>)>>,
    seed: usize,
    until: Instant,
    totals: Arc<Totals>,
) {
    let mut i = seed;
    let mut lat = Vec::new();
    while Instant::now() < until {
        i = (i.wrapping_mul(2_654_435_761).wrapping_add(12_345)) % paths.len().max(1);
        let t0 = Instant::now();
        let (path, want) = &paths[i];
        let req = match http::Request::get(format!("https://localhost{path}")).body(()) {
            Ok(r) => r,
            Err(_) => return,
        };
        let result = async {
            let mut s = send.send_request(req).await?;
            s.finish().await?;
            let resp = s.recv_response().await?;
            let mut n = 0u64;
            while let Some(chunk) = s.recv_data().await? {
                n += chunk.remaining() as u64;
            }
            Ok::<_, h3::error::StreamError>((resp.status(), n))
        }
        .await;
        match result {
            Ok((status, n)) => {
                if !status.is_success() {
                    totals.non2xx.fetch_add(1, Ordering::Relaxed);
                } else if want.is_some_and(|w| w != n) {
                    totals.badlen.fetch_add(1, Ordering::Relaxed);
                }
                totals.requests.fetch_add(1, Ordering::Relaxed);
                totals.bytes.fetch_add(n, Ordering::Relaxed);
                lat.push(t0.elapsed().as_micros() as u64);
            }
            Err(_) => {
                totals.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    if let Ok(mut all) = totals.latencies_us.lock() {
        all.extend(lat);
    }
}

/// The client's QUIC counters summed over its connections.
#[derive(Default)]
struct Quic {
    rx_datagrams: u64,
    rx_ios: u64,
    tx_datagrams: u64,
    tx_ios: u64,
    mtu: u16,
}

async fn run(
    addr: SocketAddr,
    paths: Arc<Vec<(String, Option<u64>)>>,
    conns: usize,
    streams: usize,
    secs: u64,
) -> Result<(Arc<Totals>, f64, Quic), Box<dyn std::error::Error>> {
    let mut ep_config = quinn::EndpointConfig::default();
    if let Ok(v) = std::env::var("H3LOAD_MAX_UDP_PAYLOAD") {
        ep_config.max_udp_payload_size(v.parse()?)?;
    }
    // A 4 MiB receive buffer (capped by net.core.rmem_max), as segd's server socket and QUIC
    // clients such as quic-go's ask for: with the kernel default (~208 KiB) this one-threaded
    // client overflows it under 32 connections' bursts, and the server then measures its own
    // loss recovery (about 5 % of packets lost on loopback) instead of serving.
    let socket = {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        if std::env::var_os("H3LOAD_DEFAULT_RCVBUF").is_none() {
            let _ = s.set_recv_buffer_size(4 << 20);
        }
        s.bind(&"0.0.0.0:0".parse::<SocketAddr>()?.into())?;
        std::net::UdpSocket::from(s)
    };
    let mut endpoint =
        quinn::Endpoint::new(ep_config, None, socket, Arc::new(quinn::TokioRuntime))?;
    endpoint.set_default_client_config(client_config()?);
    let totals = Arc::new(Totals::default());
    let mut clients = Vec::new();
    for _ in 0..conns {
        let conn = endpoint.connect(addr, "localhost")?.await?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn.clone())).await?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        clients.push((conn, send));
    }
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (c, (_, send)) in clients.iter().enumerate() {
        for s in 0..streams {
            tasks.push(tokio::spawn(one_stream(
                send.clone(),
                Arc::clone(&paths),
                c * 7919 + s * 104_729 + 1,
                until,
                Arc::clone(&totals),
            )));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut quic = Quic::default();
    for (conn, _) in &clients {
        let st = conn.stats();
        quic.rx_datagrams += st.udp_rx.datagrams;
        quic.rx_ios += st.udp_rx.ios;
        quic.tx_datagrams += st.udp_tx.datagrams;
        quic.tx_ios += st.udp_tx.ios;
        quic.mtu = quic.mtu.max(st.path.current_mtu);
        conn.close(0u32.into(), b"done");
    }
    endpoint.wait_idle().await;
    Ok((totals, elapsed, quic))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.len() != 5 {
        eprintln!("usage: h3load ADDR PATHS_FILE CONNS STREAMS SECONDS");
        std::process::exit(64);
    }
    let addr: SocketAddr = args[0].parse()?;
    let mut paths = Vec::new();
    for line in std::fs::read_to_string(&args[1])?.lines() {
        let mut f = line.split('\t');
        match (f.next(), f.next()) {
            (Some(p), None) if !p.is_empty() => paths.push((p.to_string(), None)),
            (Some(p), Some(len)) => paths.push((p.to_string(), Some(len.trim().parse()?))),
            _ => {}
        }
    }
    let (conns, streams, secs): (usize, usize, u64) =
        (args[2].parse()?, args[3].parse()?, args[4].parse()?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (totals, elapsed, quic) = rt.block_on(run(addr, Arc::new(paths), conns, streams, secs))?;
    let mut lat = totals
        .latencies_us
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return f64::NAN;
        }
        lat[((lat.len() - 1) as f64 * p) as usize] as f64 / 1000.0
    };
    println!(
        "requests={} bytes={} errors={} non2xx={} badlen={} p50_ms={:.2} p99_ms={:.2} seconds={elapsed:.2} \
         rx_datagrams={} rx_ios={} tx_datagrams={} tx_ios={} mtu={}",
        totals.requests.load(Ordering::Relaxed),
        totals.bytes.load(Ordering::Relaxed),
        totals.errors.load(Ordering::Relaxed),
        totals.non2xx.load(Ordering::Relaxed),
        totals.badlen.load(Ordering::Relaxed),
        pct(0.5),
        pct(0.99),
        quic.rx_datagrams,
        quic.rx_ios,
        quic.tx_datagrams,
        quic.tx_ios,
        quic.mtu,
    );
    Ok(())
}
