//! Prometheus metrics: one [`Metrics`] struct registered into a registry made at start (never the
//! global default). Labels stay low-cardinality: never a path, token or client address.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::volumes::Volumes;

/// Label values of `segd_http_requests_total`, in the order of the pre-resolved handles.
pub const METHODS: [&str; 4] = ["GET", "HEAD", "OPTIONS", "other"];
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
pub const PROTOS: [&str; 3] = ["h1", "h2", "h3"];

pub struct Metrics {
    registry: Registry,
    /// Every (method, status class, proto) counter, resolved once: no label hashing per request.
    pub request_handles: Vec<prometheus::IntCounter>,
    pub byte_handles: Vec<prometheus::IntCounter>,
    pub total_time: prometheus::Histogram,
    /// From request head parsed to response head handed to the socket.
    pub ttfb: prometheus::Histogram,
    pub requests: IntCounterVec,
    pub response_bytes: IntCounterVec,
    pub duration: HistogramVec,
    pub connections_open: IntGaugeVec,
    pub volume_healthy: IntGaugeVec,
    pub volume_io_errors: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub token_rejections: IntCounterVec,
    pub zero_copy_bytes: prometheus::IntCounter,
    pub io_backend: IntGaugeVec,
    pub volume_read_seconds: HistogramVec,
    cache_hits: prometheus::IntCounter,
    cache_misses: prometheus::IntCounter,
    cache_evictions: prometheus::IntCounter,
    cache_fills: prometheus::IntCounter,
    cache_bytes: prometheus::IntGauge,
    open_files: prometheus::IntGauge,
    pub connections_rejected: prometheus::IntCounter,
    pub tls_handshakes: IntCounterVec,
    pub h3_rapid_reset_closes: prometheus::IntCounter,
    pub quic_retries: prometheus::IntCounter,
    pub mapped_bytes: prometheus::IntCounter,
    mmap_faults: prometheus::IntCounter,
}

/// 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("segd_http_requests_total", "HTTP requests answered"),
            &["method", "status_class", "proto"],
        )?;
        let response_bytes = IntCounterVec::new(
            Opts::new("segd_http_response_bytes_total", "Response body bytes sent"),
            &["proto"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "segd_http_request_duration_seconds",
                "Time from request head to response head (phase=ttfb) and to the last body byte (phase=total)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["phase"],
        )?;
        let connections_open = IntGaugeVec::new(
            Opts::new("segd_connections_open", "Open client connections"),
            &["proto"],
        )?;
        let volume_healthy = IntGaugeVec::new(
            Opts::new(
                "segd_volume_healthy",
                "1 if the volume serves, 0 if it is marked unhealthy",
            ),
            &["volume"],
        )?;
        let volume_io_errors = IntCounterVec::new(
            Opts::new(
                "segd_volume_io_errors_total",
                "Device errors seen on the volume",
            ),
            &["volume"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("segd_build_info", "Build information (always 1)"),
            &["version"],
        )?;
        let token_rejections = IntCounterVec::new(
            Opts::new(
                "segd_token_rejections_total",
                "Requests refused for their token, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(token_rejections.clone()))?;
        let zero_copy_bytes = prometheus::IntCounter::new(
            "segd_zero_copy_bytes_total",
            "Body bytes sent with sendfile(2), never copied through user space",
        )?;
        registry.register(Box::new(zero_copy_bytes.clone()))?;
        let io_backend = IntGaugeVec::new(
            Opts::new(
                "segd_io_backend",
                "1 for the disk I/O backend in use (io_uring or threads)",
            ),
            &["backend"],
        )?;
        registry.register(Box::new(io_backend.clone()))?;
        let volume_read_seconds = HistogramVec::new(
            HistogramOpts::new(
                "segd_volume_read_seconds",
                "Disk reads through the volume's I/O backend (cache fills, prefetches, copied bodies)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["volume"],
        )?;
        registry.register(Box::new(volume_read_seconds.clone()))?;
        let counter =
            |name: &str, help: &str| -> Result<prometheus::IntCounter, prometheus::Error> {
                let c = prometheus::IntCounter::new(name, help)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let cache_hits = counter("segd_cache_hits_total", "Hot-body cache hits")?;
        let cache_misses = counter("segd_cache_misses_total", "Hot-body cache misses")?;
        let cache_evictions = counter(
            "segd_cache_evictions_total",
            "Hot-body cache entries evicted for space",
        )?;
        let cache_fills = counter(
            "segd_cache_fills_total",
            "Disk reads that filled the hot-body cache (coalesced misses count once)",
        )?;
        let gauge = |name: &str, help: &str| -> Result<prometheus::IntGauge, prometheus::Error> {
            let g = prometheus::IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let cache_bytes = gauge("segd_cache_bytes", "Bytes held by the hot-body cache")?;
        let open_files = gauge(
            "segd_open_files_cached",
            "Descriptors held by the open-file cache",
        )?;
        let connections_rejected = counter(
            "segd_connections_rejected_total",
            "Connections closed at accept because server.max_connections were open",
        )?;
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "segd_tls_handshakes_total",
                "Completed TLS handshakes by protocol version",
            ),
            &["version"],
        )?;
        registry.register(Box::new(tls_handshakes.clone()))?;
        let h3_rapid_reset_closes = counter(
            "segd_h3_rapid_reset_closes_total",
            "HTTP/3 connections closed with H3_EXCESSIVE_LOAD for cancelling requests in bulk",
        )?;
        let quic_retries = counter(
            "segd_quic_retries_total",
            "New QUIC connections asked to prove their address with a Retry (tls.quic_retry)",
        )?;
        let mapped_bytes = counter(
            "segd_mapped_bytes_total",
            "Body bytes encrypted straight from a memory map of the segment (TLS, no read copy)",
        )?;
        let mmap_faults = counter(
            "segd_mmap_faults_total",
            "SIGBUS faults on mapped segments (file truncated while served) caught and handled",
        )?;
        for r in crate::auth::edgeauth::Reason::ALL {
            token_rejections.with_label_values(&[r.as_str()]);
        }
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(response_bytes.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(volume_healthy.clone()))?;
        registry.register(Box::new(volume_io_errors.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let mut request_handles = Vec::with_capacity(60);
        for m in METHODS {
            for c in CLASSES {
                for p in PROTOS {
                    request_handles.push(requests.with_label_values(&[m, c, p]));
                }
            }
        }
        let byte_handles = PROTOS
            .iter()
            .map(|p| response_bytes.with_label_values(&[p]))
            .collect();
        let total_time = duration.with_label_values(&["total"]);
        let ttfb = duration.with_label_values(&["ttfb"]);
        Ok(Metrics {
            registry,
            request_handles,
            byte_handles,
            total_time,
            ttfb,
            requests,
            response_bytes,
            duration,
            connections_open,
            volume_healthy,
            volume_io_errors,
            build_info,
            token_rejections,
            zero_copy_bytes,
            io_backend,
            volume_read_seconds,
            cache_hits,
            cache_misses,
            cache_evictions,
            cache_fills,
            cache_bytes,
            open_files,
            connections_rejected,
            tls_handshakes,
            h3_rapid_reset_closes,
            quic_retries,
            mapped_bytes,
            mmap_faults,
        })
    }

    /// Copies volume and cache state into the gauges/counters, then renders the text format.
    pub fn render(&self, state: &crate::state::State) -> Vec<u8> {
        use std::sync::atomic::Ordering::Relaxed;
        let st = &state.bodies.stats;
        catch_up(&self.cache_hits, st.hits.load(Relaxed));
        catch_up(&self.cache_misses, st.misses.load(Relaxed));
        catch_up(&self.cache_evictions, st.evictions.load(Relaxed));
        catch_up(&self.cache_fills, st.fills.load(Relaxed));
        catch_up(&self.mmap_faults, crate::io::mapped::faults());
        self.cache_bytes.set(state.bodies.weighted_size() as i64);
        self.open_files.set(state.files.len() as i64);
        let volumes: &Volumes = &state.volumes;
        for v in volumes.iter() {
            self.volume_healthy
                .with_label_values(&[&v.name])
                .set(i64::from(v.is_healthy()));
            let c = self.volume_io_errors.with_label_values(&[&v.name]);
            let seen = v.io_errors();
            if seen > c.get() {
                c.inc_by(seen - c.get());
            }
        }
        let mut out = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail for well-formed families.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// Advances a counter to a value kept elsewhere (counters only go up).
fn catch_up(c: &prometheus::IntCounter, seen: u64) {
    if seen > c.get() {
        c.inc_by(seen - c.get());
    }
}
