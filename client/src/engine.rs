//! The local half of a round, below the DPF and the wire: which slot to write and with what,
//! which slots to read, and what to do with what comes back. Sans-IO: every function works
//! inside a store transaction ([`Tx`]) and returns what to send; the caller commits the
//! transaction *before* sending anything ([`crate::client`]).
//!
//! Nothing here depends on whether earlier reads decrypted or receipts came back in a way a
//! server could see: the write is always exactly one L-byte slot at the schedule's target, the
//! reads are always k slots, and only the *plaintext* inside the encrypted frames (acks,
//! fragments) reflects what was received.

use dpf::RandomSource;

use crate::delivery::{self, Verdict};
use crate::error::Error;
use crate::frame::{self, Fragment, Frame};
use crate::identity::Identity;
use crate::schedule::{PlannedRead, Schedule, WriteTarget};
use crate::session::{DirectionKeys, PairKeys};
use crate::store::{Contact, Tx};

/// The one write of a round, before DPF key generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotWrite {
    /// The contact written to, or `None` for self-pair padding.
    pub target: Option<i64>,
    /// The slot (the DPF point).
    pub slot: u64,
    /// Exactly L bytes: nonce, encrypted frame, tag.
    pub payload: Vec<u8>,
}

/// One read of a round's plan as persisted: who it is for and which slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanEntry {
    /// Contact row id read at this position, or `None` for a padding read.
    pub contact: Option<i64>,
    /// The slot read.
    pub slot: u64,
}

/// What processing a round's answers found (local only; never changes what is sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadStats {
    /// Reads that decrypted under a contact's keys.
    pub decrypted: u32,
    /// Fragments accepted in order.
    pub accepted_fragments: u32,
    /// Messages completed and stored in the inbox.
    pub delivered_messages: u32,
}

/// What the round logic needs besides the store: the user's keys and the pinned constants.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The user's identity.
    pub identity: &'a Identity,
    /// The schedule.
    pub sched: &'a Schedule,
    /// L, bytes per slot.
    pub slot_len: usize,
}

/// Derives a contact's pair keys.
pub fn pair_keys(identity: &Identity, contact: &Contact) -> Result<PairKeys, Error> {
    PairKeys::derive(identity.x25519_secret(), &contact.public_key)
}

/// Builds the write of `round` and advances the target contact's delivery state in `tx`.
pub fn build_slot_write(
    tx: &Tx<'_>,
    ctx: Ctx<'_>,
    round: u64,
    rng: &mut impl RandomSource,
) -> Result<SlotWrite, Error> {
    let Ctx {
        identity,
        sched,
        slot_len,
    } = ctx;
    let frame_len = frame::frame_len(slot_len)?;
    let contacts = tx.contacts()?;
    let target = sched.write_target(round, |i| contacts.iter().any(|c| c.index == i));
    let contact = match target {
        WriteTarget::Contact(i) => contacts.into_iter().find(|c| c.index == i),
        WriteTarget::SelfPad => None,
    };
    let Some(mut contact) = contact else {
        let keys = DirectionKeys::self_pair(identity.self_key());
        let slot = keys.slot(round, sched.domain_bits);
        let plain = Frame::Padding.encode(frame_len)?;
        let payload = keys.seal(round, slot, &plain, rng)?;
        return Ok(SlotWrite {
            target: None,
            slot,
            payload,
        });
    };
    let keys = pair_keys(identity, &contact)?;
    let fragment = match contact
        .send
        .turn(round, sched.retransmit_after(), delivery::WINDOW)
    {
        Some(seq) => {
            let f = tx.fragment(contact.id, seq)?;
            tx.mark_fragment_sent(contact.id, seq, round)?;
            Some(Fragment {
                seq,
                last: f.last,
                data: f.data,
            })
        }
        None => None,
    };
    tx.set_delivery(contact.id, &contact.send, &contact.recv)?;
    let frame = Frame::Data {
        ack: contact.recv.expected,
        fragment,
    };
    let slot = keys.outgoing.slot(round, sched.domain_bits);
    let payload = keys
        .outgoing
        .seal(round, slot, &frame.encode(frame_len)?, rng)?;
    Ok(SlotWrite {
        target: Some(contact.id),
        slot,
        payload,
    })
}

/// The read plan of `round` (k entries, shuffled), or `None` before round `lag`.
pub fn plan_reads(
    tx: &Tx<'_>,
    ctx: Ctx<'_>,
    round: u64,
    rng: &mut impl RandomSource,
) -> Result<Option<Vec<PlanEntry>>, Error> {
    let Ctx {
        identity, sched, ..
    } = ctx;
    let contacts = tx.contacts()?;
    let mut keys: Vec<Option<(i64, DirectionKeys)>> = vec![None; sched.c_max];
    for c in &contacts {
        if let Some(k) = keys.get_mut(c.index) {
            *k = Some((c.id, pair_keys(identity, c)?.incoming));
        }
    }
    let incoming: Vec<Option<&DirectionKeys>> =
        keys.iter().map(|k| k.as_ref().map(|(_, d)| d)).collect();
    let Some(plan) = sched.read_plan(round, &incoming, rng) else {
        return Ok(None);
    };
    Ok(Some(
        plan.into_iter()
            .map(|PlannedRead { index, slot }| PlanEntry {
                contact: index.and_then(|i| keys.get(i).cloned().flatten().map(|(id, _)| id)),
                slot,
            })
            .collect(),
    ))
}

/// Processes the slots read in `round` (one per plan entry, `None` where no answer came).
///
/// Frames are decrypted with the keys of the contact the entry was planned for (if it still
/// exists); acks advance the sender, the next expected fragment is accepted, completed
/// messages go to the inbox. All in `tx`: the acks we send later are built from this state
/// only after it is committed.
pub fn process_reads(
    tx: &Tx<'_>,
    ctx: Ctx<'_>,
    round: u64,
    plan: &[PlanEntry],
    slots: &[Option<Vec<u8>>],
    now_ms: u64,
) -> Result<ReadStats, Error> {
    let Ctx {
        identity,
        sched,
        slot_len,
    } = ctx;
    let frame_len = frame::frame_len(slot_len)?;
    let mut stats = ReadStats::default();
    let Some(array) = sched.array_round(round) else {
        return Ok(stats);
    };
    for (entry, data) in plan.iter().zip(slots) {
        let (Some(contact_id), Some(data)) = (entry.contact, data) else {
            continue;
        };
        let Some(mut contact) = tx.contact_by_id(contact_id)? else {
            continue;
        };
        let keys = pair_keys(identity, &contact)?;
        let Some(plain) = keys.incoming.open(array, entry.slot, data) else {
            continue;
        };
        let Ok(Frame::Data { ack, fragment }) = Frame::decode(&plain, frame_len) else {
            continue;
        };
        stats.decrypted += 1;
        match contact.send.on_ack(ack, round) {
            Ok(Some(_)) => tx.acked_below(contact.id, contact.send.base, round)?,
            Ok(None) => {}
            Err(e) => {
                // Authentic but inconsistent: the peer's state is ahead of ours (e.g. our store
                // was restored from a backup). Ignore the frame rather than corrupt state.
                tracing::warn!(contact = %contact.name, error = %e, "ignoring frame");
                continue;
            }
        }
        if let Some(f) = fragment
            && contact.recv.on_fragment(f.seq) == Verdict::Accept
        {
            stats.accepted_fragments += 1;
            let mut partial = tx.partial(contact.id)?;
            for msg in delivery::reassemble(&mut partial, &f.data, f.last) {
                tx.deliver(&contact, &msg, round, now_ms)?;
                stats.delivered_messages += 1;
            }
            tx.set_partial(contact.id, &partial)?;
        }
        tx.set_delivery(contact.id, &contact.send, &contact.recv)?;
    }
    Ok(stats)
}

/// Encodes a plan for the store: per entry, contact id (-1 for none) and slot, both LE.
pub fn encode_plan(plan: &[PlanEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plan.len() * 16);
    for e in plan {
        out.extend_from_slice(&e.contact.unwrap_or(-1).to_le_bytes());
        out.extend_from_slice(&e.slot.to_le_bytes());
    }
    out
}

/// Decodes a stored plan.
pub fn decode_plan(bytes: &[u8]) -> Result<Vec<PlanEntry>, Error> {
    if !bytes.len().is_multiple_of(16) {
        return Err(Error::Corrupt(format!(
            "read plan of {} bytes",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(16)
        .map(|c| {
            let mut id = [0u8; 8];
            let mut slot = [0u8; 8];
            id.copy_from_slice(&c[..8]);
            slot.copy_from_slice(&c[8..]);
            let id = i64::from_le_bytes(id);
            PlanEntry {
                contact: (id >= 0).then_some(id),
                slot: u64::from_le_bytes(slot),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    //! These tests run several users' real engines and stores against a simulated published
    //! array (slot -> XOR of the payloads written there): exactly what two honest servers
    //! publish, without the DPF in between (the DPF is tested in `dpf` and end to end).

    use super::*;
    use crate::delivery::fragment;
    use crate::store::Store;
    use dpf::SeededRandom;
    use std::collections::{BTreeMap, HashMap};
    use std::path::Path;

    const L: usize = 128;
    const LAG: u64 = 2;

    fn ctx<'a>(identity: &'a Identity, sched: &'a Schedule) -> Ctx<'a> {
        Ctx {
            identity,
            sched,
            slot_len: L,
        }
    }

    fn sched() -> Schedule {
        match Schedule::new(20, 4, 4, 4, LAG) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    struct User {
        id: Identity,
        store: Store,
        rng: SeededRandom,
        _dir: tempfile::TempDir,
    }

    impl User {
        fn new(seed: u8) -> Result<Self, Error> {
            let dir = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
            let store = Store::create(&dir.path().join("store.db"))?;
            Ok(Self {
                id: Identity::generate(&mut SeededRandom::new([seed; 32])),
                store,
                rng: SeededRandom::new([seed.wrapping_add(100); 32]),
                _dir: dir,
            })
        }
        fn add(&mut self, name: &str, other: &User, index: usize) -> Result<(), Error> {
            let pk = other.id.public_key();
            self.store
                .with_tx(|t| t.add_contact(name, &pk, index, 0).map(|_| ()))
        }
        fn send(&mut self, name: &str, body: &[u8]) -> Result<(), Error> {
            let cap = frame::data_capacity(L)?;
            self.store.with_tx(|t| {
                let c = t.contact_by_name(name)?;
                t.queue_message(&c, body, &fragment(body, cap)?, 0)
                    .map(|_| ())
            })
        }
        fn inbox(&mut self) -> Result<Vec<(String, Vec<u8>)>, Error> {
            Ok(self
                .store
                .with_tx(|t| t.inbox())?
                .into_iter()
                .map(|m| (m.sender, m.body))
                .collect())
        }
    }

    /// Published arrays: round -> slot -> XOR of payloads.
    #[derive(Default)]
    struct Arrays(BTreeMap<u64, HashMap<u64, Vec<u8>>>);

    impl Arrays {
        fn write(&mut self, round: u64, w: &SlotWrite) {
            let slot = self
                .0
                .entry(round)
                .or_default()
                .entry(w.slot)
                .or_insert(vec![0; L]);
            for (a, b) in slot.iter_mut().zip(&w.payload) {
                *a ^= b;
            }
        }
        fn read(&self, round: u64, slot: u64) -> Vec<u8> {
            self.0
                .get(&round)
                .and_then(|a| a.get(&slot))
                .cloned()
                .unwrap_or_else(|| vec![0; L])
        }
    }

    /// Options of one simulated round for one user.
    #[derive(Clone, Copy, Default)]
    struct Faults {
        offline: bool,
        corrupt_answers: bool,
        crash_before_write_commit: bool,
        crash_before_read_commit: bool,
    }

    /// One user's round: build and commit the write, then read and process the answers.
    /// Returns the write (for the arrays) and what X observed, if any.
    fn user_round(
        u: &mut User,
        arrays: &Arrays,
        round: u64,
        faults: Faults,
    ) -> Result<Option<SlotWrite>, Error> {
        if faults.offline {
            return Ok(None);
        }
        let s = sched();
        if faults.crash_before_write_commit {
            let tx = u.store.tx()?;
            build_slot_write(&tx, ctx(&u.id, &s), round, &mut u.rng)?;
            drop(tx); // crash: nothing was sent, nothing is kept
        }
        let tx = u.store.tx()?;
        let w = build_slot_write(&tx, ctx(&u.id, &s), round, &mut u.rng)?;
        let plan = plan_reads(&tx, ctx(&u.id, &s), round, &mut u.rng)?;
        tx.commit()?;
        assert_eq!(w.payload.len(), L);
        if let Some(plan) = plan {
            assert_eq!(plan.len(), 4);
            let array = round - LAG;
            let slots: Vec<Option<Vec<u8>>> = plan
                .iter()
                .map(|e| {
                    let mut d = arrays.read(array, e.slot);
                    if faults.corrupt_answers {
                        d[5] ^= 0x40;
                    }
                    Some(d)
                })
                .collect();
            if faults.crash_before_read_commit {
                let tx = u.store.tx()?;
                process_reads(&tx, ctx(&u.id, &s), round, &plan, &slots, 0)?;
                drop(tx);
            }
            let tx = u.store.tx()?;
            process_reads(&tx, ctx(&u.id, &s), round, &plan, &slots, 0)?;
            tx.commit()?;
        }
        Ok(Some(w))
    }

    fn msg(i: usize, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i * 7 + j) as u8).collect()
    }

    #[test]
    fn two_users_exchange_long_messages() -> Result<(), Error> {
        let (mut a, mut b) = (User::new(1)?, User::new(2)?);
        a.add("bob", &b, 1)?;
        b.add("alice", &a, 3)?;
        let long = msg(1, 2000);
        a.send("bob", &long)?;
        a.send("bob", b"short")?;
        b.send("alice", b"hi alice")?;
        let mut arrays = Arrays::default();
        for r in 0..200 {
            let wa = user_round(&mut a, &arrays, r, Faults::default())?;
            let wb = user_round(&mut b, &arrays, r, Faults::default())?;
            for w in [wa, wb].into_iter().flatten() {
                arrays.write(r, &w);
            }
        }
        assert_eq!(
            b.inbox()?,
            vec![
                ("alice".to_string(), long),
                ("alice".to_string(), b"short".to_vec())
            ]
        );
        assert_eq!(a.inbox()?, vec![("bob".to_string(), b"hi alice".to_vec())]);
        let out = a.store.with_tx(|t| t.outgoing())?;
        assert!(out.iter().all(|m| m.delivered_round.is_some()));
        Ok(())
    }

    /// Runs U (with contact X at index 2, plus `others` more contacts who all chat with U)
    /// and returns every frame X decrypted from U, by round.
    fn what_x_sees(others: usize) -> Result<Vec<(u64, Frame)>, Error> {
        let s = sched();
        let mut u = User::new(10)?;
        let mut x = User::new(11)?;
        let mut extra: Vec<User> = Vec::new();
        u.add("x", &x, 2)?;
        x.add("u", &u, 0)?;
        for (i, idx) in [0usize, 1, 3].into_iter().take(others).enumerate() {
            let mut o = User::new(20 + i as u8)?;
            u.add(&format!("o{i}"), &o, idx)?;
            o.add("u", &u, 1)?;
            o.send("u", &msg(i, 500))?;
            u.send(&format!("o{i}"), &msg(i + 10, 700))?;
            extra.push(o);
        }
        u.send("x", &msg(99, 600))?;
        x.send("u", &msg(98, 300))?;
        let mut arrays = Arrays::default();
        let mut seen = Vec::new();
        let x_keys = {
            let c = x.store.with_tx(|t| t.contact_by_name("u"))?;
            pair_keys(&x.id, &c)?
        };
        for r in 0..150 {
            let mut writes = Vec::new();
            writes.push(user_round(&mut u, &arrays, r, Faults::default())?);
            writes.push(user_round(&mut x, &arrays, r, Faults::default())?);
            for o in &mut extra {
                writes.push(user_round(o, &arrays, r, Faults::default())?);
            }
            for w in writes.into_iter().flatten() {
                arrays.write(r, &w);
            }
            // What X can observe of U in round r: the slot U writes to X, decrypted.
            let slot = x_keys.incoming.slot(r, s.domain_bits);
            let data = arrays.read(r, slot);
            if let Some(p) = x_keys.incoming.open(r, slot, &data) {
                seen.push((r, Frame::decode(&p, frame::frame_len(L)?)?));
            }
        }
        assert_eq!(x.inbox()?, vec![("u".to_string(), msg(99, 600))]);
        Ok(seen)
    }

    #[test]
    fn what_a_contact_observes_does_not_depend_on_other_contacts() -> Result<(), Error> {
        let alone = what_x_sees(0)?;
        let crowded = what_x_sees(3)?;
        assert!(alone.len() > 20, "X received writes");
        assert!(alone.iter().all(|(r, _)| r % 4 == 2), "only on X's channel");
        assert_eq!(alone, crowded);
        Ok(())
    }

    #[test]
    fn crashes_between_steps_lose_and_duplicate_nothing() -> Result<(), Error> {
        let (mut a, mut b) = (User::new(30)?, User::new(31)?);
        a.add("bob", &b, 0)?;
        b.add("alice", &a, 1)?;
        let sent_a: Vec<Vec<u8>> = (0..5).map(|i| msg(i, 90 + 70 * i)).collect();
        let sent_b: Vec<Vec<u8>> = (5..8).map(|i| msg(i, 130 * i)).collect();
        for m in &sent_a {
            a.send("bob", m)?;
        }
        for m in &sent_b {
            b.send("alice", m)?;
        }
        let mut arrays = Arrays::default();
        let mut crash = SeededRandom::new([32; 32]);
        for r in 0..400 {
            let mut f = [0u8; 4];
            crash.fill(&mut f);
            let fa = Faults {
                crash_before_write_commit: f[0] % 3 == 0,
                crash_before_read_commit: f[1] % 3 == 0,
                ..Faults::default()
            };
            let fb = Faults {
                crash_before_write_commit: f[2] % 3 == 0,
                crash_before_read_commit: f[3] % 3 == 0,
                ..Faults::default()
            };
            let wa = user_round(&mut a, &arrays, r, fa)?;
            let wb = user_round(&mut b, &arrays, r, fb)?;
            for w in [wa, wb].into_iter().flatten() {
                arrays.write(r, &w);
            }
        }
        let got_b: Vec<Vec<u8>> = b.inbox()?.into_iter().map(|m| m.1).collect();
        let got_a: Vec<Vec<u8>> = a.inbox()?.into_iter().map(|m| m.1).collect();
        assert_eq!(got_b, sent_a);
        assert_eq!(got_a, sent_b);
        Ok(())
    }

    #[test]
    fn offline_peer_and_corrupted_answers_only_delay_delivery() -> Result<(), Error> {
        let (mut a, mut b) = (User::new(40)?, User::new(41)?);
        a.add("bob", &b, 3)?;
        b.add("alice", &a, 2)?;
        let sent: Vec<Vec<u8>> = (0..4).map(|i| msg(i, 400)).collect();
        for m in &sent {
            a.send("bob", m)?;
        }
        let mut arrays = Arrays::default();
        for r in 0..500 {
            let fb = Faults {
                offline: (20..150).contains(&r),
                corrupt_answers: (200..260).contains(&r),
                ..Faults::default()
            };
            let fa = Faults {
                corrupt_answers: (300..330).contains(&r),
                ..Faults::default()
            };
            let wa = user_round(&mut a, &arrays, r, fa)?;
            let wb = user_round(&mut b, &arrays, r, fb)?;
            for w in [wa, wb].into_iter().flatten() {
                arrays.write(r, &w);
            }
        }
        let got: Vec<Vec<u8>> = b.inbox()?.into_iter().map(|m| m.1).collect();
        assert_eq!(got, sent);
        Ok(())
    }

    #[test]
    fn plans_round_trip_through_the_store_encoding() -> Result<(), Error> {
        let plan = vec![
            PlanEntry {
                contact: Some(3),
                slot: 77,
            },
            PlanEntry {
                contact: None,
                slot: u64::MAX,
            },
        ];
        assert_eq!(decode_plan(&encode_plan(&plan))?, plan);
        assert!(decode_plan(&[0; 15]).is_err());
        Ok(())
    }
}
