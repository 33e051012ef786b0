//! What `/readyz` means: "serving and in sync" (docs/operations.md §4). A pure function of a
//! few observations, so the rule is tested without a network.

use protocol::Params;

/// A peer link is up if the last successful exchange with the peer (a message of ours it
/// acknowledged, or a message of its own we accepted) is at most this many round lengths old.
/// Both servers send at least four messages per round (sets, audit, shares, hash), so a healthy
/// link exchanges at least once per round length.
pub const PEER_LINK_ROUNDS: u64 = 2;

/// What the readiness rule looks at.
#[derive(Debug, Clone, Copy)]
pub struct ReadinessInput {
    /// Unix ms now.
    pub now_ms: u64,
    /// The pinned parameters.
    pub params: Params,
    /// All listeners are serving.
    pub listeners_up: bool,
    /// A shutdown was requested (the server is finishing its rounds and will exit).
    pub draining: bool,
    /// Unix ms at which this process started serving.
    pub started_ms: u64,
    /// Unix ms of the last successful exchange with the peer, if any since start.
    pub last_peer_ok_ms: Option<u64>,
    /// The latest round this server holds as final (published or abandoned).
    pub last_final_round: Option<u64>,
}

/// `Ok` when ready; otherwise the one-line reason `/readyz` reports with its 503.
///
/// * **Listeners**: the client, peer and admin listeners are serving and no shutdown was
///   requested.
/// * **Rounds in sync**: once round `read_lag + 1` has begun (round 0 is final by the start of
///   round `read_lag`, since `publish_deadline_ms <= read_lag * round_ms`), the latest final
///   round must satisfy `current - last_final <= read_lag + 1`: a healthy server finalises
///   round `current - read_lag` at the latest when round `current` begins; one round of slack
///   absorbs clock ticks.
/// * **Peer link**: the last successful exchange with the peer is at most
///   [`PEER_LINK_ROUNDS`] round lengths old. Before the first exchange, the time since this
///   process started serving (or since round 0 began, if later) counts instead: right after
///   a start no exchange was due yet.
pub fn readiness(i: &ReadinessInput) -> Result<(), String> {
    let p = &i.params;
    if i.draining {
        return Err("shutting down: finishing the current round with the peer".into());
    }
    if !i.listeners_up {
        return Err("listeners are not serving".into());
    }
    if let Some(cur) = p.round_at(i.now_ms)
        && let Some(need) = cur.checked_sub(u64::from(p.read_lag) + 1)
    {
        match i.last_final_round {
            Some(f) if f >= need => {}
            Some(f) => {
                return Err(format!(
                    "rounds out of sync: current round {cur}, latest final round {f}, \
                     required at least {need} (current - read_lag - 1)"
                ));
            }
            None => {
                return Err(format!(
                    "rounds out of sync: current round {cur}, no final round, \
                     required at least {need} (current - read_lag - 1)"
                ));
            }
        }
    }
    let limit = PEER_LINK_ROUNDS.saturating_mul(p.round_ms);
    let since = i
        .last_peer_ok_ms
        .unwrap_or(0)
        .max(i.started_ms)
        .max(p.t0_ms);
    let quiet = i.now_ms.saturating_sub(since);
    if quiet > limit {
        return Err(match i.last_peer_ok_ms {
            Some(_) => format!(
                "peer link down: last successful exchange with the peer {quiet} ms ago \
                 (limit {limit} ms)"
            ),
            None => format!(
                "peer link down: no successful exchange with the peer in the {quiet} ms \
                 since start (limit {limit} ms)"
            ),
        });
    }
    Ok(())
}
