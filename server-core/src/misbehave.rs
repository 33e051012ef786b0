//! A test-only misbehaving server (cargo feature `misbehave`).
//!
//! The `server-a` and `server-b` binaries never enable the feature, so none of this is in a
//! build an operator runs; the config field that switches it on exists only with the feature
//! and cannot be set from a config file. `server-core`'s own tests enable it (a dev-dependency
//! on itself) to make one server of a pair misbehave and check what `docs/protocol.md` §7
//! promises: the honest server abandons every round where the misbehaviour is detectable,
//! with an alarm and evidence, and no client loses a message once it stops.

use std::ops::Range;

/// Logged when a misbehaving server starts; also how tests tell that a binary has this
/// module compiled in (the operators' binaries must not).
pub const MARKER: &str = "mpm-misbehave: this server misbehaves on purpose (test build only)";

use protocol::{AccountId, PeerMessage};

/// One way to misbehave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Leaves one committed write out of the sets sent to the peer (the peer holds this
    /// server's receipt for it).
    OmitCommitted,
    /// Freezes the round and sends its sets `by_ms` before the cutoff.
    CloseEarly {
        /// How early.
        by_ms: u64,
    },
    /// Flips one bit of the share array sent to the peer.
    TweakShare,
    /// XORs garbage into every read answer for this account.
    CorruptReads {
        /// The victim.
        account: AccountId,
    },
    /// Reports (and keeps) a wrong audit value for this account's writes.
    FailAudit {
        /// The victim.
        account: AccountId,
    },
    /// A failing disk: persisting a write record takes `delay_ms`, then fails.
    FailWritePersist {
        /// How long the failing persist takes.
        delay_ms: u64,
    },
}

/// A misbehaviour and the rounds it applies to (for reads: the round the read is sent in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Misbehave {
    /// What this server does wrong.
    pub kind: Kind,
    /// In which rounds.
    pub rounds: Range<u64>,
}

impl Misbehave {
    fn active(&self, round: u64) -> bool {
        self.rounds.contains(&round)
    }

    /// How much earlier than the cutoff this server freezes `round`.
    pub fn early_ms(&self, round: u64) -> u64 {
        match self.kind {
            Kind::CloseEarly { by_ms } if self.active(round) => by_ms,
            _ => 0,
        }
    }

    /// A peer message as this server sends it (its persisted copy stays honest).
    pub fn outgoing(&self, msg: PeerMessage) -> PeerMessage {
        match (&self.kind, msg) {
            (Kind::OmitCommitted, PeerMessage::Sets(mut m)) if self.active(m.round) => {
                if let Some(id) = m.committed.first().copied() {
                    m.committed.retain(|c| *c != id);
                    m.received.retain(|w| w.request_id != id);
                }
                PeerMessage::Sets(m)
            }
            (Kind::TweakShare, PeerMessage::Shares(mut m)) if self.active(m.round) => {
                if let Some(b) = std::sync::Arc::make_mut(&mut m.data).first_mut() {
                    *b ^= 1;
                }
                PeerMessage::Shares(m)
            }
            (_, msg) => msg,
        }
    }

    /// How long persisting the record `name` of `round` takes before it fails, if it does.
    pub fn failing_persist(&self, round: Option<u64>, name: &str) -> Option<u64> {
        match self.kind {
            Kind::FailWritePersist { delay_ms }
                if name.starts_with("write-") && round.is_some_and(|r| self.active(r)) =>
            {
                Some(delay_ms)
            }
            _ => None,
        }
    }

    /// Whether this server spoils the audit value of `account`'s write in `round`.
    pub fn fails_audit(&self, round: u64, account: &AccountId) -> bool {
        matches!(&self.kind, Kind::FailAudit { account: victim }
            if victim == account && self.active(round))
    }

    /// Corrupts the answers to a read sent in `round` by `account`.
    pub fn read_answers(&self, round: u64, account: &AccountId, answers: &mut [Vec<u8>]) {
        if let Kind::CorruptReads { account: victim } = &self.kind
            && victim == account
            && self.active(round)
        {
            for a in answers.iter_mut() {
                for (i, b) in a.iter_mut().enumerate() {
                    *b ^= 0x5a ^ i as u8;
                }
            }
        }
    }
}
