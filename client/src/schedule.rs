//! Read and write schedules (docs/protocol.md §5.2), the baseline with `c_max <= k` and
//! `c_max <= w`.
//!
//! * Reads: in round r the client reads the array of round `r - lag`. Contact index `i` in
//!   `[0, c_max)` is read at the slot where that contact writes to us in round `r - lag`; an
//!   unused index, and each of the `k - c_max` spare reads, reads a uniformly random slot. The k
//!   reads go out in a freshly shuffled order.
//! * Writes: round r belongs to channel `r mod w`. If a contact holds that index it gets the
//!   write (data, acks or an empty frame); otherwise the self-pair gets padding.
//!
//! Both are functions of the round, the pair's keys and fresh randomness only: what contact X
//! observes (the rounds in which it receives a write from us, and what those frames contain) does
//! not depend on which other indexes are occupied.

use dpf::RandomSource;

use crate::error::Error;

/// The pinned constants the schedule needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// N = 2^domain_bits slots.
    pub domain_bits: u32,
    /// Reads per round (k).
    pub reads: usize,
    /// Contacts per client (c_max).
    pub c_max: usize,
    /// Write channels (w).
    pub channels: u64,
    /// Read lag in rounds.
    pub lag: u64,
}

/// What this round's write carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteTarget {
    /// The contact at this index of the contact table.
    Contact(usize),
    /// Padding to the self-pair.
    SelfPad,
}

/// One read of a round's plan, in the order it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedRead {
    /// The contact index read, or `None` for a random padding read.
    pub index: Option<usize>,
    /// The slot read.
    pub slot: u64,
}

impl Schedule {
    /// Checks the constants this schedule supports.
    pub fn new(
        domain_bits: u32,
        reads: usize,
        c_max: usize,
        channels: u64,
        lag: u64,
    ) -> Result<Self, Error> {
        let bad = |why: String| Err(Error::UnsupportedParams(why));
        if domain_bits == 0 || domain_bits > 40 {
            return bad(format!("domain_bits = {domain_bits} outside 1..=40"));
        }
        if c_max == 0 {
            return bad("c_max must be at least 1".into());
        }
        if reads < c_max {
            return bad(format!(
                "k = {reads} reads cannot cover c_max = {c_max} contacts every round"
            ));
        }
        if channels < c_max as u64 {
            return bad(format!(
                "w = {channels} write channels cannot serve c_max = {c_max} contacts"
            ));
        }
        if lag == 0 {
            return bad("read_lag must be at least 1".into());
        }
        Ok(Self {
            domain_bits,
            reads,
            c_max,
            channels,
            lag,
        })
    }

    /// The write target of `round` given which contact indexes are occupied.
    pub fn write_target(&self, round: u64, occupied: impl Fn(usize) -> bool) -> WriteTarget {
        let ch = (round % self.channels) as usize;
        if ch < self.c_max && occupied(ch) {
            WriteTarget::Contact(ch)
        } else {
            WriteTarget::SelfPad
        }
    }

    /// The first round at or after `from` in which index `index` writes.
    pub fn next_turn(&self, from: u64, index: usize) -> u64 {
        let ch = index as u64 % self.channels;
        let rem = from % self.channels;
        from + (ch + self.channels - rem) % self.channels
    }

    /// The array read in `round`, or `None` for the first `lag` rounds of time.
    pub fn array_round(&self, round: u64) -> Option<u64> {
        round.checked_sub(self.lag)
    }

    /// Rounds after which an unacked fragment is sent again: the longest round trip of the
    /// schedule. A fragment written in round r is read by the peer in round r + lag; the peer's
    /// next write (within w rounds) carries the ack, which we read lag rounds later, before our
    /// write of the round after.
    pub fn retransmit_after(&self) -> u64 {
        2 * self.lag + self.channels + 1
    }

    /// The k reads of `round`, shuffled. `incoming[i]` is the slot where the contact at index
    /// i writes to us in the array round `round - lag` (`None` if the index is free). Returns
    /// `None` before round `lag`.
    pub fn read_plan(
        &self,
        round: u64,
        incoming: &[Option<u64>],
        rng: &mut impl RandomSource,
    ) -> Option<Vec<PlannedRead>> {
        self.array_round(round)?;
        let mut plan = Vec::with_capacity(self.reads);
        for i in 0..self.reads {
            let slot = if i < self.c_max {
                incoming.get(i).copied().flatten()
            } else {
                None
            };
            plan.push(match slot {
                Some(slot) => PlannedRead {
                    index: Some(i),
                    slot,
                },
                None => PlannedRead {
                    index: None,
                    slot: random_below(rng, 1u64 << self.domain_bits),
                },
            });
        }
        shuffle(&mut plan, rng);
        Some(plan)
    }
}

/// A uniform value in `[0, bound)`, by rejection sampling.
pub fn random_below(rng: &mut impl RandomSource, bound: u64) -> u64 {
    if bound <= 1 {
        return 0;
    }
    let zone = u64::MAX - (u64::MAX % bound);
    loop {
        let mut b = [0u8; 8];
        rng.fill(&mut b);
        let v = u64::from_le_bytes(b);
        if v < zone {
            return v % bound;
        }
    }
}

/// Fisher-Yates shuffle with unbiased draws.
pub fn shuffle<T>(items: &mut [T], rng: &mut impl RandomSource) {
    for i in (1..items.len()).rev() {
        let j = random_below(rng, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::DirectionKeys;
    use dpf::SeededRandom;

    fn sched() -> Schedule {
        match Schedule::new(12, 4, 4, 4, 2) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn writes_rotate_over_channels() {
        let s = sched();
        let occupied = |i: usize| i == 1 || i == 3;
        let targets: Vec<WriteTarget> = (8..16).map(|r| s.write_target(r, occupied)).collect();
        use WriteTarget::*;
        assert_eq!(
            targets,
            vec![
                SelfPad,
                Contact(1),
                SelfPad,
                Contact(3),
                SelfPad,
                Contact(1),
                SelfPad,
                Contact(3)
            ]
        );
        assert_eq!(s.next_turn(8, 1), 9);
        assert_eq!(s.next_turn(9, 1), 9);
        assert_eq!(s.next_turn(10, 1), 13);
    }

    #[test]
    fn a_contacts_write_rounds_do_not_depend_on_other_contacts() {
        let s = sched();
        for r in 0..64 {
            let alone = s.write_target(r, |i| i == 2) == WriteTarget::Contact(2);
            let crowded = s.write_target(r, |_| true) == WriteTarget::Contact(2);
            assert_eq!(alone, crowded);
        }
    }

    #[test]
    fn reads_cover_every_contact_and_are_shuffled() {
        let s = sched();
        let k0 = DirectionKeys::self_pair(&[1; 32]);
        let k2 = DirectionKeys::self_pair(&[2; 32]);
        let mut rng = SeededRandom::new([7; 32]);
        let mut first_positions = std::collections::HashSet::new();
        for r in 2..200u64 {
            let incoming = [
                Some(k0.slot(r - 2, 12)),
                None,
                Some(k2.slot(r - 2, 12)),
                None,
            ];
            let plan = s.read_plan(r, &incoming, &mut rng).unwrap_or_default();
            assert_eq!(plan.len(), 4);
            let p0 = plan.iter().position(|p| p.index == Some(0));
            let p2 = plan.iter().position(|p| p.index == Some(2));
            assert_eq!(p0.map(|i| plan[i].slot), Some(k0.slot(r - 2, 12)));
            assert_eq!(p2.map(|i| plan[i].slot), Some(k2.slot(r - 2, 12)));
            assert_eq!(plan.iter().filter(|p| p.index.is_none()).count(), 2);
            assert!(plan.iter().all(|p| p.slot < 4096));
            if let Some(p) = p0 {
                first_positions.insert(p);
            }
        }
        assert_eq!(
            first_positions.len(),
            4,
            "contact 0 appears at every position"
        );
        assert!(s.read_plan(1, &[Some(1), None], &mut rng).is_none());
    }

    #[test]
    fn unsupported_parameters_are_refused() {
        assert!(Schedule::new(12, 3, 4, 4, 2).is_err());
        assert!(Schedule::new(12, 4, 4, 3, 2).is_err());
        assert!(Schedule::new(12, 4, 0, 4, 2).is_err());
        assert!(Schedule::new(12, 4, 4, 4, 0).is_err());
        assert!(Schedule::new(0, 4, 4, 4, 2).is_err());
        assert!(Schedule::new(12, 6, 4, 5, 2).is_ok());
    }

    #[test]
    fn random_below_is_in_range_and_covers_it() {
        let mut rng = SeededRandom::new([8; 32]);
        let mut seen = [false; 7];
        for _ in 0..500 {
            let v = random_below(&mut rng, 7);
            assert!(v < 7);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
