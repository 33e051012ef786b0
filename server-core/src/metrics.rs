//! Prometheus text metrics. No per-client labels: only endpoints, error codes and round events.

use protocol::ErrorCode;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// All counters and gauges of one server.
#[derive(Debug)]
pub struct Metrics {
    requests: [AtomicU64; ENDPOINTS.len()],
    errors: [AtomicU64; ErrorCode::ALL.len()],
    /// Rounds published.
    pub rounds_published: AtomicU64,
    /// Rounds abandoned.
    pub rounds_abandoned: AtomicU64,
    /// Alarms raised.
    pub alarms: AtomicU64,
    /// Writes accepted (receipts issued).
    pub writes_accepted: AtomicU64,
    /// Commits accepted.
    pub commits_accepted: AtomicU64,
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
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            rounds_published: AtomicU64::new(0),
            rounds_abandoned: AtomicU64::new(0),
            alarms: AtomicU64::new(0),
            writes_accepted: AtomicU64::new(0),
            commits_accepted: AtomicU64::new(0),
            read_keys_answered: AtomicU64::new(0),
            peer_send_failures: AtomicU64::new(0),
            peer_messages_sent: AtomicU64::new(0),
            corrupt_files: AtomicU64::new(0),
            persist_failures: AtomicU64::new(0),
            accounts: AtomicU64::new(0),
            current_round: AtomicU64::new(0),
            last_published_round: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts a request to `endpoint` (one of [`ENDPOINTS`]; others count as "unknown").
    pub fn request(&self, endpoint: &str) {
        let i = ENDPOINTS
            .iter()
            .position(|e| *e == endpoint)
            .unwrap_or(ENDPOINTS.len() - 1);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an error response.
    pub fn error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The count of errors with `code`.
    pub fn errors_of(&self, code: ErrorCode) -> u64 {
        ErrorCode::ALL
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.errors[i].load(Ordering::Relaxed))
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
        for (i, c) in ErrorCode::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "mpm_errors_total{{role=\"{role}\",code=\"{}\"}} {}",
                c.as_str(),
                l(&self.errors[i])
            );
        }
        let simple: [(&str, &str, &AtomicU64); 13] = [
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
            (
                "mpm_commits_accepted_total",
                "counter",
                &self.commits_accepted,
            ),
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
        ];
        for (name, kind, v) in simple {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name}{{role=\"{role}\"}} {}", l(v));
        }
        out
    }
}
