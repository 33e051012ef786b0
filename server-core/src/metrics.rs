//! Prometheus text metrics. No per-client labels: only endpoints, error codes, ports, round
//! phases and round events. Dependency-free: counters and gauges are atomics, histograms have
//! fixed buckets.

use crate::machine::RoundPhase;
use protocol::ErrorCode;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use transport::ServerStats;

/// Client endpoints with their own request counter.
pub const ENDPOINTS: [&str; 8] = [
    "info",
    "register",
    "write",
    "commit",
    "read",
    "round_status",
    "peer",
    "unknown",
];

/// Upper bounds (seconds) of the round-phase histogram buckets; `+Inf` is implied.
pub const PHASE_BUCKETS_SECONDS: [f64; 11] =
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A histogram of millisecond durations with the fixed buckets [`PHASE_BUCKETS_SECONDS`], plus
/// the last observed value.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; PHASE_BUCKETS_SECONDS.len()],
    count: AtomicU64,
    sum_ms: AtomicU64,
    last_ms: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_ms: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Records one duration.
    pub fn observe_ms(&self, ms: u64) {
        // Buckets are stored non-cumulative; `render` sums them.
        if let Some(i) = PHASE_BUCKETS_SECONDS
            .iter()
            .position(|b| ms as f64 <= b * 1000.0)
        {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The last observed duration in milliseconds (0 before the first).
    pub fn last_ms(&self) -> u64 {
        self.last_ms.load(Ordering::Relaxed)
    }
}

/// The listening ports whose connection counters are exported.
pub const PORTS: [&str; 3] = ["client", "peer", "admin"];

/// All counters and gauges of one server.
#[derive(Debug)]
pub struct Metrics {
    requests: [AtomicU64; ENDPOINTS.len()],
    errors: [[AtomicU64; ErrorCode::ALL.len()]; ENDPOINTS.len()],
    phases: [Histogram; RoundPhase::ALL.len()],
    /// Wall time of the local audit evaluation (the DPF work of one round).
    pub audit_eval: Histogram,
    /// Connection counters of the client, peer and admin ports (in [`PORTS`] order).
    pub ports: [Arc<ServerStats>; PORTS.len()],
    /// Rounds published.
    pub rounds_published: AtomicU64,
    /// Rounds abandoned.
    pub rounds_abandoned: AtomicU64,
    /// Alarms raised.
    pub alarms: AtomicU64,
    /// Writes accepted (receipts issued).
    pub writes_accepted: AtomicU64,
    /// Fresh writes refused because the server could not evaluate them before the cutoff.
    pub writes_shed: AtomicU64,
    /// Commits accepted.
    pub commits_accepted: AtomicU64,
    /// Read requests answered.
    pub reads_answered: AtomicU64,
    /// Read keys answered.
    pub read_keys_answered: AtomicU64,
    /// Peer sends that failed (each retry counts).
    pub peer_send_failures: AtomicU64,
    /// Peer messages delivered (acknowledged).
    pub peer_messages_sent: AtomicU64,
    /// Corrupted files found.
    pub corrupt_files: AtomicU64,
    /// Persist failures.
    pub persist_failures: AtomicU64,
    /// Registered accounts (gauge).
    pub accounts: AtomicU64,
    /// Current round (gauge).
    pub current_round: AtomicU64,
    /// Last published round (gauge).
    pub last_published_round: AtomicU64,
    /// Latest round that is final, published or abandoned (gauge).
    pub last_final_round: AtomicU64,
    /// Size of one array `M_r`, `N * L` bytes (gauge).
    pub array_bytes: AtomicU64,
    /// Bytes held in arrays and share arrays of the kept rounds (gauge).
    pub arrays_held_bytes: AtomicU64,
    /// 1 while `/readyz` would answer 200, else 0 (gauge, updated by the clock).
    pub ready: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            phases: std::array::from_fn(|_| Histogram::default()),
            audit_eval: Histogram::default(),
            ports: std::array::from_fn(|_| Arc::default()),
            rounds_published: AtomicU64::new(0),
            rounds_abandoned: AtomicU64::new(0),
            alarms: AtomicU64::new(0),
            writes_accepted: AtomicU64::new(0),
            writes_shed: AtomicU64::new(0),
            commits_accepted: AtomicU64::new(0),
            reads_answered: AtomicU64::new(0),
            read_keys_answered: AtomicU64::new(0),
            peer_send_failures: AtomicU64::new(0),
            peer_messages_sent: AtomicU64::new(0),
            corrupt_files: AtomicU64::new(0),
            persist_failures: AtomicU64::new(0),
            accounts: AtomicU64::new(0),
            current_round: AtomicU64::new(0),
            last_published_round: AtomicU64::new(0),
            last_final_round: AtomicU64::new(0),
            array_bytes: AtomicU64::new(0),
            arrays_held_bytes: AtomicU64::new(0),
            ready: AtomicU64::new(0),
        }
    }
}

fn endpoint_index(endpoint: &str) -> usize {
    ENDPOINTS
        .iter()
        .position(|e| *e == endpoint)
        .unwrap_or(ENDPOINTS.len() - 1)
}

fn seconds(ms: u64) -> String {
    format!("{}", ms as f64 / 1000.0)
}

impl Metrics {
    /// Counts a request to `endpoint` (one of [`ENDPOINTS`]; others count as "unknown").
    pub fn request(&self, endpoint: &str) {
        self.requests[endpoint_index(endpoint)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an error response of `endpoint` (one of [`ENDPOINTS`]).
    pub fn error(&self, endpoint: &str, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[endpoint_index(endpoint)][i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The count of errors with `code`, all endpoints together.
    pub fn errors_of(&self, code: ErrorCode) -> u64 {
        ErrorCode::ALL
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| {
                self.errors
                    .iter()
                    .map(|e| e[i].load(Ordering::Relaxed))
                    .sum()
            })
    }

    /// The count of errors with `code` answered by `endpoint`.
    pub fn endpoint_errors_of(&self, endpoint: &str, code: ErrorCode) -> u64 {
        ErrorCode::ALL
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| {
                self.errors[endpoint_index(endpoint)][i].load(Ordering::Relaxed)
            })
    }

    /// Records the length of a round-close phase.
    pub fn phase(&self, phase: RoundPhase, ms: u64) {
        if let Some(i) = RoundPhase::ALL.iter().position(|p| *p == phase) {
            self.phases[i].observe_ms(ms);
        }
    }

    /// The histogram of one round-close phase.
    pub fn phase_histogram(&self, phase: RoundPhase) -> &Histogram {
        let i = RoundPhase::ALL
            .iter()
            .position(|p| *p == phase)
            .unwrap_or(0);
        &self.phases[i]
    }

    /// The connection counters of `port` (one of [`PORTS`]; others give the admin port's).
    pub fn port(&self, port: &str) -> Arc<ServerStats> {
        let i = PORTS.iter().position(|p| *p == port).unwrap_or(2);
        self.ports[i].clone()
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self, role: &str) -> String {
        let mut out = String::new();
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(out, "# TYPE mpm_requests_total counter");
        for (i, e) in ENDPOINTS.iter().enumerate() {
            let _ = writeln!(
                out,
                "mpm_requests_total{{role=\"{role}\",endpoint=\"{e}\"}} {}",
                l(&self.requests[i])
            );
        }
        let _ = writeln!(out, "# TYPE mpm_errors_total counter");
        for (i, e) in ENDPOINTS.iter().enumerate() {
            for (j, c) in ErrorCode::ALL.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "mpm_errors_total{{role=\"{role}\",endpoint=\"{e}\",code=\"{}\"}} {}",
                    c.as_str(),
                    l(&self.errors[i][j])
                );
            }
        }
        let simple: [(&str, &str, &AtomicU64); 19] = [
            (
                "mpm_rounds_published_total",
                "counter",
                &self.rounds_published,
            ),
            (
                "mpm_rounds_abandoned_total",
                "counter",
                &self.rounds_abandoned,
            ),
            ("mpm_alarms_total", "counter", &self.alarms),
            (
                "mpm_writes_accepted_total",
                "counter",
                &self.writes_accepted,
            ),
            ("mpm_writes_shed_total", "counter", &self.writes_shed),
            (
                "mpm_commits_accepted_total",
                "counter",
                &self.commits_accepted,
            ),
            ("mpm_reads_answered_total", "counter", &self.reads_answered),
            (
                "mpm_read_keys_answered_total",
                "counter",
                &self.read_keys_answered,
            ),
            (
                "mpm_peer_send_failures_total",
                "counter",
                &self.peer_send_failures,
            ),
            (
                "mpm_peer_messages_sent_total",
                "counter",
                &self.peer_messages_sent,
            ),
            ("mpm_corrupt_files_total", "counter", &self.corrupt_files),
            (
                "mpm_persist_failures_total",
                "counter",
                &self.persist_failures,
            ),
            ("mpm_accounts", "gauge", &self.accounts),
            ("mpm_current_round", "gauge", &self.current_round),
            (
                "mpm_last_published_round",
                "gauge",
                &self.last_published_round,
            ),
            ("mpm_last_final_round", "gauge", &self.last_final_round),
            ("mpm_array_bytes", "gauge", &self.array_bytes),
            ("mpm_arrays_held_bytes", "gauge", &self.arrays_held_bytes),
            ("mpm_ready", "gauge", &self.ready),
        ];
        for (name, kind, v) in simple {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{role=\"{role}\"}} {}", l(v));
        }
        // Connections, and connection events that never reach a handler (slow or abusive
        // clients).
        let _ = writeln!(out, "# TYPE mpm_connections_open gauge");
        for (p, stats) in PORTS.iter().zip(&self.ports) {
            let _ = writeln!(
                out,
                "mpm_connections_open{{role=\"{role}\",port=\"{p}\"}} {}",
                l(&stats.open)
            );
        }
        let _ = writeln!(out, "# TYPE mpm_connections_accepted_total counter");
        for (p, stats) in PORTS.iter().zip(&self.ports) {
            let _ = writeln!(
                out,
                "mpm_connections_accepted_total{{role=\"{role}\",port=\"{p}\"}} {}",
                l(&stats.accepted)
            );
        }
        let _ = writeln!(out, "# TYPE mpm_connections_closed_total counter");
        for (p, stats) in PORTS.iter().zip(&self.ports) {
            for (reason, v) in [
                ("per_ip_limit", &stats.refused_per_ip),
                ("handshake_timeout", &stats.handshake_timeouts),
                ("handshake_failed", &stats.handshake_failures),
                ("header_timeout", &stats.header_timeouts),
            ] {
                let _ = writeln!(
                    out,
                    "mpm_connections_closed_total{{role=\"{role}\",port=\"{p}\",reason=\"{reason}\"}} {}",
                    l(v)
                );
            }
        }
        let _ = writeln!(out, "# TYPE mpm_http_rejected_total counter");
        for (p, stats) in PORTS.iter().zip(&self.ports) {
            for (reason, v) in [
                ("body_timeout", &stats.body_timeouts),
                ("body_too_large", &stats.bodies_too_large),
            ] {
                let _ = writeln!(
                    out,
                    "mpm_http_rejected_total{{role=\"{role}\",port=\"{p}\",reason=\"{reason}\"}} {}",
                    l(v)
                );
            }
        }
        // Round-close phases: a histogram each, and the last value as a gauge.
        let _ = writeln!(out, "# TYPE mpm_round_phase_seconds histogram");
        // `labels` is "" or `,key="value"`.
        let hist = |out: &mut String, name: &str, labels: &str, h: &Histogram| {
            let mut cumulative = 0;
            for (b, n) in PHASE_BUCKETS_SECONDS.iter().zip(&h.buckets) {
                cumulative += l(n);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{role=\"{role}\"{labels},le=\"{b}\"}} {cumulative}"
                );
            }
            let count = l(&h.count);
            let _ = writeln!(
                out,
                "{name}_bucket{{role=\"{role}\"{labels},le=\"+Inf\"}} {count}"
            );
            let sum = seconds(l(&h.sum_ms));
            let _ = writeln!(out, "{name}_sum{{role=\"{role}\"{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{role=\"{role}\"{labels}}} {count}");
        };
        for (phase, h) in RoundPhase::ALL.iter().zip(&self.phases) {
            let labels = format!(",phase=\"{}\"", phase.as_str());
            hist(&mut out, "mpm_round_phase_seconds", &labels, h);
        }
        let _ = writeln!(out, "# TYPE mpm_round_phase_last_seconds gauge");
        for (phase, h) in RoundPhase::ALL.iter().zip(&self.phases) {
            let _ = writeln!(
                out,
                "mpm_round_phase_last_seconds{{role=\"{role}\",phase=\"{}\"}} {}",
                phase.as_str(),
                seconds(h.last_ms())
            );
        }
        let _ = writeln!(out, "# TYPE mpm_audit_eval_seconds histogram");
        hist(&mut out, "mpm_audit_eval_seconds", "", &self.audit_eval);
        out
    }
}
