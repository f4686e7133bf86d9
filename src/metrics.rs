//! Prometheus metrics: one [`Metrics`] struct registered into a registry made at start (never the
//! global default). Labels stay low-cardinality: never a path, token or client address.
//!
//! This module only holds the request-level series and the registry. Figures owned by other
//! modules (volume health, caches, I/O backend) are exported by those modules' own collectors,
//! registered with [`Metrics::register`]; nothing here reaches into them.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Label values of `segd_http_requests_total`, in the order of the pre-resolved handles.
pub const METHODS: [&str; 7] = ["GET", "HEAD", "OPTIONS", "PUT", "POST", "DELETE", "other"];
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
    pub build_info: IntGaugeVec,
    pub token_rejections: IntCounterVec,
    pub zero_copy_bytes: prometheus::IntCounter,
    pub volume_read_seconds: HistogramVec,
    pub connections_rejected: prometheus::IntCounter,
    /// Failed `accept` calls by `reason` (`descriptors`, `memory`, `other`).
    pub accept_errors: IntCounterVec,
    pub tls_handshakes: IntCounterVec,
    /// Handshakes that failed, by `listener` and `reason` ([`crate::tls::handshake_failure`]).
    pub tls_handshake_failures: IntCounterVec,
    /// Connections from a `[server] proxy_protocol` network closed without a usable PROXY
    /// header, by `reason` ([`crate::server::proxy_protocol::Refused`]).
    pub proxy_protocol_refused: IntCounterVec,
    pub h3_rapid_reset_closes: prometheus::IntCounter,
    pub quic_retries: prometheus::IntCounter,
    /// Datagrams passed between the old and the new process during an upgrade, by `way`.
    pub quic_handover_datagrams: IntCounterVec,
    pub mapped_bytes: prometheus::IntCounter,
    /// Access-log lines dropped because the writer could not keep up.
    pub access_log_dropped: prometheus::IntCounter,
    /// Requests ended early, by reason and by whose fault (`http::refusal`).
    pub refusals: IntCounterVec,
    /// Ingest: body bytes committed, upload durations, uploads in progress, temporary files
    /// removed after failures (and at start-up), uploads refused for space (507).
    pub ingest_bytes: prometheus::IntCounter,
    /// The part of `ingest_bytes` moved from the socket to the file through a pipe.
    pub ingest_spliced_bytes: prometheus::IntCounter,
    pub ingest_seconds: prometheus::Histogram,
    pub ingest_in_progress: prometheus::IntGauge,
    pub ingest_temp_removed: prometheus::IntCounter,
    pub ingest_no_space: prometheus::IntCounter,
    /// Uploads' page-cache work (`fsync = false`: create, writes, rename) by the thread it ran
    /// on: `worker` (`ingest.inline_writes`) or `writer_threads`.
    pub ingest_disk_jobs: IntCounterVec,
    /// 1 from the moment a drain starts (SIGTERM/SIGINT, or handing over to a new process).
    pub draining: prometheus::IntGauge,
    /// The last SIGHUP reload: 1 applied (and at start), 0 rejected (the running config stays).
    config_reload_ok: prometheus::IntGauge,
    /// When the running config was loaded: start, or the last reload applied (Unix seconds).
    config_loaded_at: prometheus::Gauge,
    /// 1 while the last reload applied changed keys that only a restart applies.
    config_restart_pending: prometheus::IntGauge,
}

/// 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, … (from
        // /proc/self): what the dashboard's CPU and memory panels and node sizing need.
        registry.register(Box::new(ProcessMetrics::new()?))?;
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
        // Each protocol's series from the start (a dashboard showed "no data" for h3 until
        // the first QUIC connection).
        for p in ["h1", "h2", "h3"] {
            connections_open.with_label_values(&[p]);
        }
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
        let connections_rejected = counter(
            "segd_connections_rejected_total",
            "Connections closed at accept because server.max_connections were open",
        )?;
        let accept_errors = IntCounterVec::new(
            Opts::new(
                "segd_accept_errors_total",
                "Failed accepts on client and admin listeners, by reason (descriptors: EMFILE/ENFILE; memory: ENOBUFS/ENOMEM)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(accept_errors.clone()))?;
        // Exported at 0 from the start, so a rate() has a series before the first failure.
        for reason in ["descriptors", "memory", "other"] {
            accept_errors.with_label_values(&[reason]);
        }
        let tls_handshakes = IntCounterVec::new(
            Opts::new(
                "segd_tls_handshakes_total",
                "Completed TLS handshakes by protocol version",
            ),
            &["version"],
        )?;
        registry.register(Box::new(tls_handshakes.clone()))?;
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "segd_tls_handshake_failures_total",
                "TLS handshakes that did not complete, by listener (tls, quic) and reason (closed: the client left first; alert: the client refused, most often segd's certificate; incompatible: no version, cipher, group or ALPN in common; malformed: not TLS; timeout; other)",
            ),
            &["listener", "reason"],
        )?;
        registry.register(Box::new(tls_handshake_failures.clone()))?;
        for listener in ["tls", "quic"] {
            for reason in crate::tls::HANDSHAKE_FAILURES {
                tls_handshake_failures.with_label_values(&[listener, reason]);
            }
        }
        let proxy_protocol_refused = IntCounterVec::new(
            Opts::new(
                "segd_proxy_protocol_refused_total",
                "Connections from a [server] proxy_protocol network closed before any request: no usable PROXY protocol header (malformed: not one, such as a client speaking HTTP or TLS at once; too_long; timeout: not complete within header_read_timeout; closed)",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(proxy_protocol_refused.clone()))?;
        for reason in crate::server::proxy_protocol::Refused::ALL {
            proxy_protocol_refused.with_label_values(&[reason.as_str()]);
        }
        let h3_rapid_reset_closes = counter(
            "segd_h3_rapid_reset_closes_total",
            "HTTP/3 connections closed with H3_EXCESSIVE_LOAD for cancelling requests in bulk",
        )?;
        let quic_retries = counter(
            "segd_quic_retries_total",
            "New QUIC connections asked to prove their address with a Retry (tls.quic_retry)",
        )?;
        let quic_handover_datagrams = IntCounterVec::new(
            Opts::new(
                "segd_quic_handover_datagrams_total",
                "QUIC datagrams read from the shared UDP socket for the other process during an upgrade: forwarded to it, received from it, dropped (its link was full)",
            ),
            &["way"],
        )?;
        registry.register(Box::new(quic_handover_datagrams.clone()))?;
        let mapped_bytes = counter(
            "segd_mapped_bytes_total",
            "Body bytes encrypted straight from a memory map of the segment (TLS, no read copy)",
        )?;
        let access_log_dropped = counter(
            "segd_access_log_dropped_total",
            "Access-log lines dropped because the log writer could not keep up",
        )?;
        let refusals = IntCounterVec::new(
            Opts::new(
                "segd_refusals_total",
                "Requests ended early, by reason and by whose fault (client, disk, upstream, server)",
            ),
            &["reason", "fault"],
        )?;
        registry.register(Box::new(refusals.clone()))?;
        let ingest_bytes = counter(
            "segd_ingest_bytes_total",
            "Body bytes of uploads committed to a volume",
        )?;
        let ingest_spliced_bytes = counter(
            "segd_ingest_spliced_bytes_total",
            "Body bytes of committed uploads moved from the socket to the file through a pipe (splice), never copied through user space",
        )?;
        let ingest_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "segd_ingest_duration_seconds",
                "Uploads from request head to commit (or failure)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(ingest_seconds.clone()))?;
        let ingest_in_progress =
            prometheus::IntGauge::new("segd_ingest_uploads_in_progress", "Uploads in progress")?;
        registry.register(Box::new(ingest_in_progress.clone()))?;
        let ingest_temp_removed = counter(
            "segd_ingest_temp_removed_total",
            "Temporary files removed after failed uploads, and at start-up after a crash",
        )?;
        let ingest_no_space = counter(
            "segd_ingest_insufficient_storage_total",
            "Uploads refused with 507: no volume had room above its reserve",
        )?;
        let ingest_disk_jobs = IntCounterVec::new(
            Opts::new(
                "segd_ingest_disk_jobs_total",
                "Uploads' page-cache work without fsync (file create, writes, rename), by the thread it ran on: worker (ingest.inline_writes) or writer_threads",
            ),
            &["on"],
        )?;
        registry.register(Box::new(ingest_disk_jobs.clone()))?;
        let draining = prometheus::IntGauge::new(
            "segd_draining",
            "1 from the moment a drain starts (SIGTERM/SIGINT, or an upgrade handing over)",
        )?;
        registry.register(Box::new(draining.clone()))?;
        // Named as Prometheus and Alertmanager name theirs, so one alert expression covers all.
        let config_reload_ok = prometheus::IntGauge::new(
            "segd_config_last_reload_successful",
            "Whether the last config reload (SIGHUP) was applied (1; also at start) or rejected (0: the running config stays)",
        )?;
        registry.register(Box::new(config_reload_ok.clone()))?;
        config_reload_ok.set(1);
        let config_loaded_at = prometheus::Gauge::new(
            "segd_config_last_reload_success_timestamp_seconds",
            "When the running config was loaded (start, or the last reload applied), in Unix seconds",
        )?;
        registry.register(Box::new(config_loaded_at.clone()))?;
        config_loaded_at.set(unix_now());
        let config_restart_pending = prometheus::IntGauge::new(
            "segd_config_restart_pending",
            "1 when the last reload applied changed keys that only a restart applies (listen addresses, workers, ...; the log names them)",
        )?;
        registry.register(Box::new(config_restart_pending.clone()))?;
        for r in crate::auth::edgeauth::Reason::ALL {
            token_rejections.with_label_values(&[r.as_str()]);
        }
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(response_bytes.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(build_info.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let mut request_handles = Vec::with_capacity(METHODS.len() * 15);
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
            build_info,
            token_rejections,
            zero_copy_bytes,
            volume_read_seconds,
            connections_rejected,
            accept_errors,
            tls_handshakes,
            tls_handshake_failures,
            proxy_protocol_refused,
            h3_rapid_reset_closes,
            quic_retries,
            quic_handover_datagrams,
            mapped_bytes,
            access_log_dropped,
            refusals,
            ingest_bytes,
            ingest_spliced_bytes,
            ingest_seconds,
            ingest_in_progress,
            ingest_temp_removed,
            ingest_no_space,
            ingest_disk_jobs,
            draining,
            config_reload_ok,
            config_loaded_at,
            config_restart_pending,
        })
    }

    /// A reload was applied; `restart_pending`: it changed keys that wait for a restart.
    pub fn reload_applied(&self, restart_pending: bool) {
        self.config_reload_ok.set(1);
        self.config_loaded_at.set(unix_now());
        self.config_restart_pending.set(i64::from(restart_pending));
    }

    /// A reload was rejected: the running config (and its figures) stay.
    pub fn reload_rejected(&self) {
        self.config_reload_ok.set(0);
    }

    /// Registers a collector owned by another module (it reads its own figures at scrape).
    pub fn register(
        &self,
        c: Box<dyn prometheus::core::Collector>,
    ) -> Result<(), prometheus::Error> {
        self.registry.register(c)
    }

    /// Renders every registered series in the text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail for well-formed families.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

// === impl ProcessMetrics ===

const CPU_NAME: &str = "process_cpu_seconds_total";
const CPU_HELP: &str = "Total user and system CPU time spent in seconds.";
const START_NAME: &str = "process_start_time_seconds";
const START_HELP: &str = "Start time of the process since unix epoch in seconds.";

/// The prometheus crate's process collector (memory, descriptors, threads), with
/// `process_cpu_seconds_total` and `process_start_time_seconds` replaced:
/// - prometheus 0.13.4 keeps the CPU counter in whole seconds (an integer division of the clock
///   ticks), so a `rate()` over a few minutes of a lightly loaded process shows steps of 0 and
///   1 s. Here it is `utime + stime` from `/proc/self/stat` divided by the tick rate: fractional,
///   and as monotonic as the kernel's figures.
/// - the crate adds the start time (ticks after boot) to `btime` from `/proc/stat`, which the
///   shipped systemd unit hides (`ProcSubset=pid`): it said 0 (1970) there. Here the boot time is
///   the realtime clock minus `CLOCK_BOOTTIME`, what the kernel's `btime` is made of.
///
/// Names, types and help stay the conventional ones (client_golang's).
struct ProcessMetrics {
    inner: prometheus::process_collector::ProcessCollector,
    cpu_desc: prometheus::core::Desc,
    start_desc: prometheus::core::Desc,
    descs: Vec<prometheus::core::Desc>,
    /// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
    ticks_per_second: f64,
    /// Seconds since the epoch when this process started (fixed; `None` if unreadable).
    start_time: Option<f64>,
}

impl ProcessMetrics {
    fn new() -> Result<ProcessMetrics, prometheus::Error> {
        use prometheus::core::Collector;
        let inner = prometheus::process_collector::ProcessCollector::for_self();
        let cpu_desc = prometheus::core::Desc::new(
            CPU_NAME.into(),
            CPU_HELP.into(),
            Vec::new(),
            std::collections::HashMap::new(),
        )?;
        let start_desc = prometheus::core::Desc::new(
            START_NAME.into(),
            START_HELP.into(),
            Vec::new(),
            std::collections::HashMap::new(),
        )?;
        let descs = inner
            .desc()
            .into_iter()
            .filter(|d| d.fq_name != CPU_NAME && d.fq_name != START_NAME)
            .cloned()
            .chain([cpu_desc.clone(), start_desc.clone()])
            .collect();
        let ticks = rustix::param::clock_ticks_per_second();
        let ticks_per_second = if ticks > 0 { ticks as f64 } else { 100.0 };
        let start_time = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| start_ticks(&s))
            .map(|t| boot_time() + t as f64 / ticks_per_second);
        Ok(ProcessMetrics {
            inner,
            cpu_desc,
            start_desc,
            descs,
            ticks_per_second,
            start_time,
        })
    }
}

/// When the machine booted, in seconds since the epoch: now on the realtime clock minus the time
/// since boot (`CLOCK_BOOTTIME`, which counts suspend as the process start times do), without
/// `/proc/stat`.
fn boot_time() -> f64 {
    use rustix::time::{clock_gettime, ClockId};
    let secs = |t: rustix::time::Timespec| t.tv_sec as f64 + t.tv_nsec as f64 / 1e9;
    secs(clock_gettime(ClockId::Realtime)) - secs(clock_gettime(ClockId::Boottime))
}

/// The process's start time in clock ticks after boot from the text of `/proc/<pid>/stat`
/// (field 22; counted after the last `)` as in [`cpu_ticks`]).
fn start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the `)`: field 3 (state) is the first; starttime is field 22.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// `utime + stime` in clock ticks from the text of `/proc/<pid>/stat` (fields 14 and 15; the
/// command name in field 2 may hold spaces and parentheses, so fields are counted after the
/// last `)`).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the `)`: field 3 (state) is the first; utime is field 14, stime field 15.
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

impl prometheus::core::Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.inner.collect();
        families.retain(|f| f.get_name() != CPU_NAME && f.get_name() != START_NAME);
        if let Some(start) = self.start_time {
            let mut gauge = prometheus::proto::Gauge::default();
            gauge.set_value(start);
            let mut metric = prometheus::proto::Metric::default();
            metric.set_gauge(gauge);
            let mut family = prometheus::proto::MetricFamily::default();
            family.set_name(self.start_desc.fq_name.clone());
            family.set_help(self.start_desc.help.clone());
            family.set_field_type(prometheus::proto::MetricType::GAUGE);
            family.set_metric(vec![metric]);
            families.push(family);
        }
        let ticks = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| cpu_ticks(&s));
        if let Some(ticks) = ticks {
            let mut counter = prometheus::proto::Counter::default();
            counter.set_value(ticks as f64 / self.ticks_per_second);
            let mut metric = prometheus::proto::Metric::default();
            metric.set_counter(counter);
            let mut family = prometheus::proto::MetricFamily::default();
            family.set_name(self.cpu_desc.fq_name.clone());
            family.set_help(self.cpu_desc.help.clone());
            family.set_field_type(prometheus::proto::MetricType::COUNTER);
            family.set_metric(vec![metric]);
            families.insert(0, family);
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_from_stat() {
        // A command name with a space and a parenthesis; utime 1234, stime 56.
        let stat =
            "4242 (segd (w) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 1234 56 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(1290));
        assert_eq!(cpu_ticks("garbage"), None);
        assert_eq!(cpu_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn start_ticks_from_stat() {
        // starttime (field 22) is 100 here.
        let stat =
            "4242 (segd (w) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 1234 56 0 0 20 0 9 0 100 0 0";
        assert_eq!(start_ticks(stat), Some(100));
        assert_eq!(start_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn boot_time_is_in_the_past_and_agrees_with_proc_stat() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let boot = boot_time();
        assert!(boot > 1.0e9 && boot < now, "{boot} vs now {now}");
        // The kernel's btime (whole seconds) where /proc/stat is readable.
        let btime = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
        });
        if let Some(btime) = btime {
            assert!((boot - btime).abs() < 2.0, "{boot} vs btime {btime}");
        }
    }
}
