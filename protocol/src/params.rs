//! Pinned parameters (docs/protocol.md §2) and the pure round/phase arithmetic built on them.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest accepted `domain_bits`.
pub const MAX_DOMAIN_BITS: u32 = 30;
/// Largest accepted slot length in bytes.
pub const MAX_SLOT_LEN: u32 = 32 << 10;
/// Largest accepted `reads_per_round`.
pub const MAX_READS_PER_ROUND: u32 = 64;
/// Largest accepted array size `N * L` in bytes (each server holds a few such arrays in memory).
pub const MAX_ARRAY_BYTES: u64 = 256 << 20;

/// The parameters every party pins (docs/protocol.md §2). All times are in milliseconds.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    bincode::Encode,
    bincode::Decode,
)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// N = 2^domain_bits mailbox slots.
    pub domain_bits: u32,
    /// L, bytes per slot, a multiple of 16.
    pub slot_len: u32,
    /// k, read keys per client per round.
    pub reads_per_round: u32,
    /// D, the round length.
    pub round_ms: u64,
    /// Unix time (ms) at which round 0 starts.
    pub t0_ms: u64,
    /// Offset inside a round at which clients send their write.
    pub send_offset_ms: u64,
    /// Writes for round r are accepted until this offset.
    pub write_close_ms: u64,
    /// Commits for round r are accepted until this offset (CUTOFF).
    pub cutoff_ms: u64,
    /// Round r must be PUBLISHED by this offset (may exceed `round_ms`).
    pub publish_deadline_ms: u64,
    /// Reads sent in round r read the array of round r - read_lag.
    pub read_lag: u32,
    /// Contacts per client.
    pub c_max: u32,
    /// Write channels w.
    pub write_channels: u32,
    /// M_max, admitted writes per round.
    pub max_writers: u32,
}

/// Why a [`Params`] value is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamsError {
    /// A field is outside its allowed range.
    #[error("parameter {field} = {value} is out of range: {rule}")]
    OutOfRange {
        /// The field name.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// The phase offsets are not ordered as §2 requires.
    #[error(
        "phase offsets must satisfy send_offset < write_close <= cutoff <= round_ms and cutoff < publish_deadline <= read_lag * round_ms"
    )]
    PhaseOrder,
}

/// Where a given instant falls relative to one round's phase offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Before the round's start.
    NotStarted,
    /// Writes are accepted: `[start, start + write_close_ms)`.
    Open,
    /// Writes closed, commits still accepted: `[write_close, cutoff)`.
    Committing,
    /// Past CUTOFF, before the publish deadline: the servers close the round.
    Closing,
    /// At or past the publish deadline: the round is published or abandoned.
    Final,
}

fn range(field: &'static str, value: u64, ok: bool, rule: &'static str) -> Result<(), ParamsError> {
    if ok {
        Ok(())
    } else {
        Err(ParamsError::OutOfRange { field, value, rule })
    }
}

impl Params {
    /// The demo parameters of docs/protocol.md §2 with round 0 starting at `t0_ms`.
    pub fn demo(t0_ms: u64) -> Params {
        let domain_bits = 12;
        Params {
            domain_bits,
            slot_len: 256,
            reads_per_round: 4,
            round_ms: 2000,
            t0_ms,
            send_offset_ms: 100,
            write_close_ms: 900,
            cutoff_ms: 1200,
            publish_deadline_ms: 3600,
            read_lag: 2,
            c_max: 4,
            write_channels: 4,
            max_writers: (1u32 << domain_bits) / 64,
        }
    }

    /// Checks every range and ordering constraint of §2.
    pub fn validate(&self) -> Result<(), ParamsError> {
        let p = self;
        range(
            "domain_bits",
            p.domain_bits.into(),
            (1..=MAX_DOMAIN_BITS).contains(&p.domain_bits),
            "1..=30",
        )?;
        range(
            "slot_len",
            p.slot_len.into(),
            p.slot_len >= 16 && p.slot_len <= MAX_SLOT_LEN && p.slot_len.is_multiple_of(16),
            "a multiple of 16 in 16..=32768",
        )?;
        range(
            "slot_len",
            p.slot_len.into(),
            p.n_slots().saturating_mul(u64::from(p.slot_len)) <= MAX_ARRAY_BYTES,
            "N * slot_len must be at most 256 MiB",
        )?;
        range(
            "reads_per_round",
            p.reads_per_round.into(),
            (1..=MAX_READS_PER_ROUND).contains(&p.reads_per_round),
            "1..=64",
        )?;
        range("round_ms", p.round_ms, p.round_ms >= 50, "at least 50")?;
        range(
            "read_lag",
            p.read_lag.into(),
            (1..=64).contains(&p.read_lag),
            "1..=64",
        )?;
        range("c_max", p.c_max.into(), p.c_max >= 1, "at least 1")?;
        range(
            "write_channels",
            p.write_channels.into(),
            p.write_channels >= 1,
            "at least 1",
        )?;
        range(
            "max_writers",
            p.max_writers.into(),
            p.max_writers >= 1 && u64::from(p.max_writers) <= p.n_slots(),
            "1..=N",
        )?;
        let lag_span = u64::from(p.read_lag).saturating_mul(p.round_ms);
        if !(p.send_offset_ms < p.write_close_ms
            && p.write_close_ms <= p.cutoff_ms
            && p.cutoff_ms <= p.round_ms
            && p.cutoff_ms < p.publish_deadline_ms
            && p.publish_deadline_ms <= lag_span)
        {
            return Err(ParamsError::PhaseOrder);
        }
        // Round arithmetic must never overflow for realistic times.
        range(
            "t0_ms",
            p.t0_ms,
            p.t0_ms <= u64::MAX / 4,
            "at most u64::MAX / 4",
        )?;
        Ok(())
    }

    /// `SHA-256("mpm/params/v1" || bincode(params))`.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"mpm/params/v1");
        h.update(crate::codec::encode(self));
        h.finalize().into()
    }

    /// N, the number of slots.
    pub fn n_slots(&self) -> u64 {
        1u64.checked_shl(self.domain_bits).unwrap_or(0)
    }

    /// Size in bytes of one array (`N * L`), saturating.
    pub fn array_bytes(&self) -> u64 {
        self.n_slots().saturating_mul(u64::from(self.slot_len))
    }

    /// The round whose window contains `now_ms`, or `None` before `t0_ms`.
    pub fn round_at(&self, now_ms: u64) -> Option<u64> {
        if now_ms < self.t0_ms || self.round_ms == 0 {
            return None;
        }
        Some((now_ms - self.t0_ms) / self.round_ms)
    }

    /// Unix ms at which `round` starts (saturating).
    pub fn round_start_ms(&self, round: u64) -> u64 {
        self.t0_ms
            .saturating_add(round.saturating_mul(self.round_ms))
    }

    /// Unix ms of `offset_ms` inside `round` (saturating).
    pub fn at_offset_ms(&self, round: u64, offset_ms: u64) -> u64 {
        self.round_start_ms(round).saturating_add(offset_ms)
    }

    /// The phase of `round` at `now_ms`.
    pub fn phase_at(&self, round: u64, now_ms: u64) -> Phase {
        let start = self.round_start_ms(round);
        if now_ms < start {
            return Phase::NotStarted;
        }
        let off = now_ms - start;
        if off < self.write_close_ms {
            Phase::Open
        } else if off < self.cutoff_ms {
            Phase::Committing
        } else if off < self.publish_deadline_ms {
            Phase::Closing
        } else {
            Phase::Final
        }
    }

    /// The array round that reads sent during `round` name (`round - read_lag`), if any.
    pub fn read_array_round(&self, round: u64) -> Option<u64> {
        round.checked_sub(u64::from(self.read_lag))
    }
}

/// The current round at `now_ms` (free-function form of [`Params::round_at`]).
pub fn current_round(params: &Params, now_ms: u64) -> Option<u64> {
    params.round_at(now_ms)
}

/// The phase of `round` at `now_ms` (free-function form of [`Params::phase_at`]).
pub fn phase_at(params: &Params, round: u64, now_ms: u64) -> Phase {
    params.phase_at(round, now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_is_valid_and_has_expected_values() {
        let p = Params::demo(1_000);
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(p.n_slots(), 4096);
        assert_eq!(p.max_writers, 64);
    }

    #[test]
    fn bad_orderings_are_rejected() {
        let mut p = Params::demo(0);
        p.publish_deadline_ms = 4001;
        assert_eq!(p.validate(), Err(ParamsError::PhaseOrder));
        let mut p = Params::demo(0);
        p.slot_len = 100;
        assert!(matches!(
            p.validate(),
            Err(ParamsError::OutOfRange {
                field: "slot_len",
                ..
            })
        ));
        let mut p = Params::demo(0);
        p.domain_bits = 31;
        assert!(p.validate().is_err());
        let mut p = Params::demo(0);
        p.domain_bits = 24;
        p.slot_len = 32;
        assert!(p.validate().is_err(), "2^24 * 32 = 512 MiB exceeds the cap");
    }

    #[test]
    fn round_and_phase_arithmetic() {
        let p = Params::demo(10_000);
        assert_eq!(p.round_at(9_999), None);
        assert_eq!(p.round_at(10_000), Some(0));
        assert_eq!(p.round_at(11_999), Some(0));
        assert_eq!(p.round_at(12_000), Some(1));
        assert_eq!(p.round_start_ms(3), 16_000);
        assert_eq!(p.phase_at(1, 11_999), Phase::NotStarted);
        assert_eq!(p.phase_at(1, 12_000), Phase::Open);
        assert_eq!(p.phase_at(1, 12_899), Phase::Open);
        assert_eq!(p.phase_at(1, 12_900), Phase::Committing);
        assert_eq!(p.phase_at(1, 13_200), Phase::Closing);
        assert_eq!(p.phase_at(1, 15_599), Phase::Closing);
        assert_eq!(p.phase_at(1, 15_600), Phase::Final);
        assert_eq!(p.read_array_round(1), None);
        assert_eq!(p.read_array_round(5), Some(3));
        assert_eq!(current_round(&p, 13_000), Some(1));
        assert_eq!(phase_at(&p, 0, 13_000), Phase::Closing);
        assert_eq!(phase_at(&p, 0, 13_600), Phase::Final);
    }

    #[test]
    fn fingerprint_depends_on_every_field() {
        let p = Params::demo(0);
        let mut q = p;
        q.max_writers += 1;
        assert_ne!(p.fingerprint(), q.fingerprint());
        assert_eq!(p.fingerprint(), Params::demo(0).fingerprint());
    }
}
