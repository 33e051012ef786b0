//! The `/readyz` rule and the Prometheus rendering, without a network.

use protocol::{ErrorCode, Params};
use server_core::health::{ReadinessInput, readiness};
use server_core::machine::RoundPhase;
use server_core::metrics::Metrics;

const T0: u64 = 1_000_000;

fn params() -> Params {
    let mut p = Params::demo(T0);
    p.round_ms = 2000;
    p.read_lag = 2;
    p
}

/// A healthy server in round 10 that started long ago and just talked to its peer.
fn healthy() -> ReadinessInput {
    let p = params();
    let now = T0 + 10 * p.round_ms + 500;
    ReadinessInput {
        now_ms: now,
        params: p,
        listeners_up: true,
        draining: false,
        started_ms: T0,
        last_peer_ok_ms: Some(now - 100),
        last_final_round: Some(8),
    }
}

#[test]
fn readiness_requires_listeners_a_recent_peer_exchange_and_recent_final_rounds() {
    assert_eq!(readiness(&healthy()), Ok(()));

    let down = ReadinessInput {
        listeners_up: false,
        ..healthy()
    };
    assert!(readiness(&down).is_err_and(|r| r.contains("listeners")));
    let draining = ReadinessInput {
        draining: true,
        ..healthy()
    };
    assert!(readiness(&draining).is_err_and(|r| r.starts_with("shutting down")));

    // Peer link: at most 2 round lengths (4000 ms) since the last successful exchange.
    let i = healthy();
    let at_limit = ReadinessInput {
        last_peer_ok_ms: Some(i.now_ms - 4000),
        ..i
    };
    assert_eq!(readiness(&at_limit), Ok(()));
    let stale = ReadinessInput {
        last_peer_ok_ms: Some(i.now_ms - 4001),
        ..i
    };
    let reason = readiness(&stale).expect_err("stale link");
    assert!(reason.starts_with("peer link down"), "{reason}");
    assert!(!reason.contains('\n'), "one line");
    // Right after a start no exchange was due yet; later one must have happened.
    let fresh = ReadinessInput {
        started_ms: i.now_ms - 3000,
        last_peer_ok_ms: None,
        ..i
    };
    assert_eq!(readiness(&fresh), Ok(()));
    let never = ReadinessInput {
        started_ms: i.now_ms - 4001,
        last_peer_ok_ms: None,
        ..i
    };
    assert!(readiness(&never).is_err_and(|r| r.contains("since start")));
    // Before round 0 begins nothing is due at all.
    let early = ReadinessInput {
        now_ms: T0 - 10_000,
        started_ms: T0 - 60_000,
        last_peer_ok_ms: None,
        last_final_round: None,
        ..i
    };
    assert_eq!(readiness(&early), Ok(()));

    // Rounds in sync: current (10) - last final <= read_lag + 1 = 3.
    let lagging = ReadinessInput {
        last_final_round: Some(7),
        ..i
    };
    assert_eq!(readiness(&lagging), Ok(()));
    let behind = ReadinessInput {
        last_final_round: Some(6),
        ..i
    };
    let reason = readiness(&behind).expect_err("out of sync");
    assert!(reason.starts_with("rounds out of sync"), "{reason}");
    let nothing = ReadinessInput {
        last_final_round: None,
        ..i
    };
    assert!(readiness(&nothing).is_err());
    // Until round read_lag + 1 begins, no round has to be final yet.
    let young = ReadinessInput {
        now_ms: T0 + 2 * params().round_ms + 1999,
        started_ms: T0 + 2 * params().round_ms,
        last_peer_ok_ms: None,
        last_final_round: None,
        ..i
    };
    assert_eq!(readiness(&young), Ok(()));
    let round3 = ReadinessInput {
        now_ms: T0 + 3 * params().round_ms,
        last_peer_ok_ms: Some(T0 + 3 * params().round_ms),
        ..young
    };
    assert!(readiness(&round3).is_err(), "round 0 must be final by now");
}

fn value(text: &str, series: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')
            .map(str::to_string)
    })
}

#[test]
fn metrics_render_errors_per_endpoint_phase_histograms_and_gauges() {
    let m = Metrics::default();
    m.error("write", ErrorCode::TooLate);
    m.error("write", ErrorCode::TooLate);
    m.error("commit", ErrorCode::BadReceipt);
    m.phase(RoundPhase::CutoffToPublished, 40);
    m.phase(RoundPhase::CutoffToPublished, 700);
    m.phase(RoundPhase::CutoffToPublished, 99_000);
    m.array_bytes
        .store(1 << 20, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(m.errors_of(ErrorCode::TooLate), 2);
    assert_eq!(m.endpoint_errors_of("commit", ErrorCode::BadReceipt), 1);
    let t = m.render("B");
    let v = |s: &str| value(&t, s).unwrap_or_else(|| panic!("{s} missing:\n{t}"));
    assert_eq!(
        v(r#"mpm_errors_total{role="B",endpoint="write",code="too_late"}"#),
        "2"
    );
    assert_eq!(
        v(r#"mpm_errors_total{role="B",endpoint="commit",code="bad_receipt"}"#),
        "1"
    );
    assert_eq!(
        v(r#"mpm_errors_total{role="B",endpoint="read",code="too_late"}"#),
        "0"
    );
    // Cumulative buckets, +Inf = count, sum in seconds, last value as a gauge.
    let h = r#"mpm_round_phase_seconds_bucket{role="B",phase="cutoff_to_published",le="#;
    assert_eq!(v(&format!(r#"{h}"0.025"}}"#)), "0");
    assert_eq!(v(&format!(r#"{h}"0.05"}}"#)), "1");
    assert_eq!(v(&format!(r#"{h}"1"}}"#)), "2");
    assert_eq!(v(&format!(r#"{h}"30"}}"#)), "2");
    assert_eq!(v(&format!(r#"{h}"+Inf"}}"#)), "3");
    assert_eq!(
        v(r#"mpm_round_phase_seconds_count{role="B",phase="cutoff_to_published"}"#),
        "3"
    );
    assert_eq!(
        v(r#"mpm_round_phase_seconds_sum{role="B",phase="cutoff_to_published"}"#),
        "99.74"
    );
    assert_eq!(
        v(r#"mpm_round_phase_last_seconds{role="B",phase="cutoff_to_published"}"#),
        "99"
    );
    assert_eq!(
        v(r#"mpm_round_phase_seconds_count{role="B",phase="audit"}"#),
        "0"
    );
    assert_eq!(v(r#"mpm_array_bytes{role="B"}"#), "1048576");
    assert_eq!(v(r#"mpm_reads_answered_total{role="B"}"#), "0");
    assert_eq!(
        v(r#"mpm_connections_closed_total{role="B",port="client",reason="per_ip_limit"}"#),
        "0"
    );
    // Every sample line has a TYPE line for its family, and only these labels (nothing per
    // client).
    for line in t.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let family = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        assert!(
            t.contains(&format!("# TYPE {family} ")) || t.contains(&format!("# TYPE {name} ")),
            "{line}"
        );
        let labels = line
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map_or("", |(l, _)| l);
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let key = pair.split('=').next().unwrap_or_default();
            assert!(
                ["role", "endpoint", "code", "port", "reason", "phase", "le"].contains(&key),
                "{line}"
            );
        }
    }
}
