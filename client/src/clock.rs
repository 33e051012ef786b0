//! Round arithmetic on the wall clock (docs/protocol.md §3): round r is
//! `[t0 + r*D, t0 + (r+1)*D)`, with the client's phases at pinned offsets inside it.

use std::time::{SystemTime, UNIX_EPOCH};

/// The pinned timing constants, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundClock {
    /// Start of round 0 (unix ms).
    pub t0_ms: u64,
    /// Round length D.
    pub round_ms: u64,
    /// Offset at which the write (and the reads) are sent.
    pub send_offset_ms: u64,
    /// Writes are accepted until this offset; commits are sent from here.
    pub write_close_ms: u64,
    /// Commits are accepted until this offset.
    pub cutoff_ms: u64,
    /// The round is published by this offset (may exceed D).
    pub publish_deadline_ms: u64,
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl RoundClock {
    /// The round containing `t_ms` (`None` before t0).
    pub fn round_at(&self, t_ms: u64) -> Option<u64> {
        t_ms.checked_sub(self.t0_ms)
            .map(|d| d / self.round_ms.max(1))
    }

    /// Start of `round` (unix ms), saturating.
    pub fn start(&self, round: u64) -> u64 {
        self.t0_ms
            .saturating_add(round.saturating_mul(self.round_ms))
    }

    /// When the write of `round` is sent.
    pub fn send_at(&self, round: u64) -> u64 {
        self.start(round).saturating_add(self.send_offset_ms)
    }

    /// When commits of `round` are sent (writes close).
    pub fn commit_at(&self, round: u64) -> u64 {
        self.start(round).saturating_add(self.write_close_ms)
    }

    /// Commits of `round` are accepted until then.
    pub fn cutoff_at(&self, round: u64) -> u64 {
        self.start(round).saturating_add(self.cutoff_ms)
    }

    /// `round` is published (or abandoned) by then.
    pub fn final_at(&self, round: u64) -> u64 {
        self.start(round).saturating_add(self.publish_deadline_ms)
    }

    /// The first round whose send time is at or after `t_ms`.
    pub fn next_sendable(&self, t_ms: u64) -> u64 {
        match self.round_at(t_ms) {
            None => 0,
            Some(r) if self.send_at(r) >= t_ms => r,
            Some(r) => r + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: RoundClock = RoundClock {
        t0_ms: 1_000_000,
        round_ms: 2000,
        send_offset_ms: 100,
        write_close_ms: 900,
        cutoff_ms: 1200,
        publish_deadline_ms: 3600,
    };

    #[test]
    fn rounds_and_phases() {
        assert_eq!(C.round_at(999_999), None);
        assert_eq!(C.round_at(1_000_000), Some(0));
        assert_eq!(C.round_at(1_003_999), Some(1));
        assert_eq!(C.send_at(3), 1_006_100);
        assert_eq!(C.commit_at(3), 1_006_900);
        assert_eq!(C.cutoff_at(3), 1_007_200);
        assert_eq!(C.final_at(3), 1_009_600);
        assert_eq!(C.next_sendable(0), 0);
        assert_eq!(C.next_sendable(1_006_100), 3);
        assert_eq!(C.next_sendable(1_006_101), 4);
        assert_eq!(C.next_sendable(1_005_000), 3);
    }
}
