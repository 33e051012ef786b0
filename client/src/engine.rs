//! The local half of a round, below the DPF and the wire: which slot to write and with what,
//! which slots to read, and what to do with what comes back. Sans-IO: every function works
//! inside a store transaction ([`Tx`]) and returns what to send; the caller commits the
//! transaction *before* sending anything ([`crate::client`]).
//!
//! Nothing here depends on whether earlier reads decrypted or receipts came back in a way a
//! server could see: the write is always exactly one L-byte slot at the schedule's target, the
//! reads are always k slots, and only the *plaintext* inside the encrypted frames (acks,
//! fragments) reflects what was received.
//!
//! Pair keys come from each contact's [`Ratchet`] (forward secrecy, docs/protocol.md §5.1): a
//! write uses the outgoing keys of its round and deletes them; a read plan uses the incoming
//! keys of its array round, and processing the answers deletes them. A side's unconfirmed key
//! block rides in its frames to the contact and is handled here, in the transaction that
//! processes the frame.

use dpf::RandomSource;

use crate::delivery::{self, Verdict};
use crate::error::Error;
use crate::frame::{self, Fragment, Frame};
use crate::identity::Identity;
use crate::ratchet::{KEY_BLOCK_LEN, PairCtx, Ratchet};
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
    /// Rounds between DH steps of a pair ([`crate::ratchet::HEAL_EVERY`]).
    pub heal_every: u64,
}

/// Derives a contact's static (bootstrap) pair keys.
pub fn pair_keys(identity: &Identity, contact: &Contact) -> Result<PairKeys, Error> {
    PairKeys::derive(identity.x25519_secret(), &contact.public_key)
}

/// A contact's key context and its stored ratchet (a new one, in epoch 0, if none is stored:
/// a contact just added, or one from a store migrated from schema 1).
pub fn load_pair(
    tx: &Tx<'_>,
    identity: &Identity,
    contact: &Contact,
) -> Result<(PairCtx, Ratchet), Error> {
    let ctx = PairCtx {
        me: identity.public_key(),
        them: contact.public_key,
        statics: pair_keys(identity, contact)?,
    };
    let ratchet = tx.ratchet(contact.id)?.unwrap_or_default();
    Ok((ctx, ratchet))
}

/// Starts a new pair's first DH step, so the very first frame to the contact carries our
/// ephemeral key.
pub fn start_pair(
    tx: &Tx<'_>,
    contact: &Contact,
    rng: &mut impl RandomSource,
) -> Result<(), Error> {
    let mut ratchet = tx.ratchet(contact.id)?.unwrap_or_default();
    if ratchet.wants_step(0, u64::MAX) {
        ratchet.start_step(rng);
        tx.set_ratchet(contact.id, &ratchet)?;
    }
    Ok(())
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
        heal_every,
    } = ctx;
    let frame_len = frame::frame_len(slot_len)?;
    let contacts = tx.contacts()?;
    let target = sched.write_target(round, |i| contacts.iter().any(|c| c.index == i));
    let contact = match target {
        WriteTarget::Contact(i) => contacts.into_iter().find(|c| c.index == i),
        WriteTarget::SelfPad => None,
    };
    let pad = |rng: &mut _| -> Result<SlotWrite, Error> {
        let keys = DirectionKeys::self_pair(identity.self_key());
        let slot = keys.slot(round, sched.domain_bits);
        let plain = Frame::Padding.encode(frame_len)?;
        let payload = keys.seal(round, slot, &plain, rng)?;
        Ok(SlotWrite {
            target: None,
            slot,
            payload,
        })
    };
    let Some(mut contact) = contact else {
        return pad(rng);
    };
    let (pair, mut ratchet) = load_pair(tx, identity, &contact)?;
    ratchet.outgoing.promote(round);
    if ratchet.wants_step(round, heal_every) {
        ratchet.start_step(rng);
    }
    let Some(keys) = ratchet.outgoing_keys(round, &pair) else {
        // The round's keys are gone: a round after it was written already (the clock went
        // back). Never encrypt twice under one key; pad the self-pair instead.
        tracing::warn!(round, contact = %contact.name, "round already written; padding");
        tx.set_ratchet(contact.id, &ratchet)?;
        return pad(rng);
    };
    ratchet.outgoing.consumed(round);
    tx.set_ratchet(contact.id, &ratchet)?;
    // The key block rides along while unconfirmed. A fragment too long to share the frame
    // with it goes alone on every other turn of the contact's channel, so data keeps flowing.
    let mut key = ratchet.block;
    let room = frame::data_capacity(slot_len)?;
    let mut send = contact.send;
    let fragment = match send.turn(round, sched.retransmit_after(), delivery::WINDOW) {
        Some(seq) => {
            let f = tx.fragment(contact.id, seq)?;
            let shares = key.is_none() || f.data.len() + KEY_BLOCK_LEN <= room;
            let fragment_turn = (round / sched.channels) % 2 == 1;
            if shares || fragment_turn {
                if !shares {
                    key = None;
                }
                contact.send = send;
                tx.mark_fragment_sent(contact.id, seq, round)?;
                Some(Fragment {
                    seq,
                    last: f.last,
                    data: f.data,
                })
            } else {
                None // the block's turn: the fragment waits (sender state unchanged)
            }
        }
        None => {
            contact.send = send;
            None
        }
    };
    tx.set_delivery(contact.id, &contact.send, &contact.recv)?;
    let frame = Frame::Data {
        ack: contact.recv.expected,
        fragment,
        key,
    };
    let slot = keys.slot(round, sched.domain_bits);
    let payload = keys.seal(round, slot, &frame.encode(frame_len)?, rng)?;
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
    let Some(array) = sched.array_round(round) else {
        return Ok(None);
    };
    let contacts = tx.contacts()?;
    // Per index: the contact's id and the slot it writes to us in the array round.
    let mut slots: Vec<Option<(i64, u64)>> = vec![None; sched.c_max];
    for c in &contacts {
        let Some(entry) = slots.get_mut(c.index) else {
            continue;
        };
        let (pair, mut ratchet) = load_pair(tx, identity, c)?;
        if let Some(keys) = ratchet.incoming_keys(array, &pair) {
            *entry = Some((c.id, keys.slot(array, sched.domain_bits)));
        }
        tx.set_ratchet(c.id, &ratchet)?;
    }
    let incoming: Vec<Option<u64>> = slots.iter().map(|e| e.map(|(_, s)| s)).collect();
    let Some(plan) = sched.read_plan(round, &incoming, rng) else {
        return Ok(None);
    };
    Ok(Some(
        plan.into_iter()
            .map(|PlannedRead { index, slot }| PlanEntry {
                contact: index.and_then(|i| slots.get(i).copied().flatten().map(|(id, _)| id)),
                slot,
            })
            .collect(),
    ))
}

/// Processes the slots read in `round` (one per plan entry, `None` where no answer came).
///
/// Frames are decrypted with the keys of the contact the entry was planned for (if it still
/// exists); acks advance the sender, the next expected fragment is accepted, completed
/// messages go to the inbox, key messages to the contact's ratchet (whose reply, if any, is
/// queued). All in `tx`: the acks we send later are built from this state only after it is
/// committed. Each contact's incoming keys of the array round are deleted, decrypted or not.
pub fn process_reads(
    tx: &Tx<'_>,
    ctx: Ctx<'_>,
    round: u64,
    plan: &[PlanEntry],
    slots: &[Option<Vec<u8>>],
    now_ms: u64,
    rng: &mut impl RandomSource,
) -> Result<ReadStats, Error> {
    let Ctx {
        identity,
        sched,
        slot_len,
        ..
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
        let (pair, mut ratchet) = load_pair(tx, identity, &contact)?;
        let plain = ratchet
            .incoming_keys(array, &pair)
            .and_then(|keys| keys.open(array, entry.slot, data));
        let frame = plain.and_then(|p| Frame::decode(&p, frame_len).ok());
        if let Some(Frame::Data { ack, fragment, key }) = frame {
            stats.decrypted += 1;
            ratchet.on_decrypted(array);
            if let Some(k) = key {
                let margin = sched.retransmit_after();
                ratchet.on_block(&k, round, array, margin, &pair, rng);
            }
            process_frame(tx, &mut contact, round, (ack, fragment), now_ms, &mut stats)?;
        }
        ratchet.incoming.consumed(array);
        tx.set_ratchet(contact.id, &ratchet)?;
    }
    Ok(stats)
}

/// One authentic frame from `contact`: its ack, then its fragment.
fn process_frame(
    tx: &Tx<'_>,
    contact: &mut Contact,
    round: u64,
    (ack, fragment): (u32, Option<Fragment>),
    now_ms: u64,
    stats: &mut ReadStats,
) -> Result<(), Error> {
    match contact.send.on_ack(ack, round) {
        Ok(Some(_)) => tx.acked_below(contact.id, contact.send.base, round)?,
        Ok(None) => {}
        Err(e) => {
            // Authentic but inconsistent: the peer's state is ahead of ours (e.g. our store
            // was restored from a backup). Ignore the frame rather than corrupt state.
            tracing::warn!(contact = %contact.name, error = %e, "ignoring frame");
            return Ok(());
        }
    }
    if let Some(f) = fragment
        && contact.recv.on_fragment(f.seq) == Verdict::Accept
    {
        stats.accepted_fragments += 1;
        let mut partial = tx.partial(contact.id)?;
        for msg in delivery::reassemble(&mut partial, &f.data, f.last) {
            tx.deliver(contact, &msg, round, now_ms)?;
            stats.delivered_messages += 1;
        }
        tx.set_partial(contact.id, &partial)?;
    }
    tx.set_delivery(contact.id, &contact.send, &contact.recv)?;
    Ok(())
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

    fn ctx<'a>(identity: &'a Identity, sched: &'a Schedule, heal_every: u64) -> Ctx<'a> {
        Ctx {
            identity,
            sched,
            slot_len: L,
            heal_every,
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
        /// Rounds between DH steps.
        heal: u64,
        dir: tempfile::TempDir,
    }

    impl User {
        fn new(seed: u8) -> Result<Self, Error> {
            let dir = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
            let store = Store::create(&dir.path().join("store.db"))?;
            Ok(Self {
                id: Identity::generate(&mut SeededRandom::new([seed; 32])),
                store,
                rng: SeededRandom::new([seed.wrapping_add(100); 32]),
                heal: crate::ratchet::HEAL_EVERY,
                dir,
            })
        }
        /// Adds a contact as `Client::add_contact` does (its first DH step queued first).
        fn add(&mut self, name: &str, other: &User, index: usize) -> Result<(), Error> {
            let pk = other.id.public_key();
            let rng = &mut self.rng;
            self.store.with_tx(|t| {
                let c = t.add_contact(name, &pk, index, 0)?;
                start_pair(t, &c, rng)
            })
        }
        /// Adds a contact as a store migrated from schema 1 has it: no ratchet row, no step
        /// started (it starts at the contact's first write turn).
        fn add_migrated(&mut self, name: &str, other: &User, index: usize) -> Result<(), Error> {
            let pk = other.id.public_key();
            self.store
                .with_tx(|t| t.add_contact(name, &pk, index, 0).map(|_| ()))
        }
        /// The store's files as they are on disk after a round (log checkpointed).
        fn file_bytes(&mut self) -> Result<Vec<u8>, Error> {
            assert!(self.store.scrub()?, "checkpoint completed");
            let mut all = Vec::new();
            for f in ["store.db", "store.db-wal"] {
                let p = self.dir.path().join(f);
                if p.exists() {
                    all.extend(std::fs::read(&p).map_err(|e| Error::io(&p, e))?);
                }
            }
            Ok(all)
        }
        fn ratchet(&mut self, name: &str) -> Result<(PairCtx, Ratchet), Error> {
            let id = &self.id;
            self.store.with_tx(|t| {
                let c = t.contact_by_name(name)?;
                load_pair(t, id, &c)
            })
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
        let heal = u.heal;
        if faults.crash_before_write_commit {
            let tx = u.store.tx()?;
            build_slot_write(&tx, ctx(&u.id, &s, heal), round, &mut u.rng)?;
            drop(tx); // crash: nothing was sent, nothing is kept
        }
        let tx = u.store.tx()?;
        let w = build_slot_write(&tx, ctx(&u.id, &s, heal), round, &mut u.rng)?;
        let plan = plan_reads(&tx, ctx(&u.id, &s, heal), round, &mut u.rng)?;
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
                process_reads(
                    &tx,
                    ctx(&u.id, &s, heal),
                    round,
                    &plan,
                    &slots,
                    0,
                    &mut u.rng,
                )?;
                drop(tx);
            }
            let tx = u.store.tx()?;
            process_reads(
                &tx,
                ctx(&u.id, &s, heal),
                round,
                &plan,
                &slots,
                0,
                &mut u.rng,
            )?;
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

    /// A frame as X can compare it across runs: a key block's ephemeral public key is fresh
    /// randomness (different in every run), so it is blanked; everything else is kept.
    fn comparable(f: Frame) -> Frame {
        match f {
            Frame::Data {
                ack,
                fragment,
                key: Some(mut k),
            } => {
                k.public = [0; 32];
                Frame::Data {
                    ack,
                    fragment,
                    key: Some(k),
                }
            }
            other => other,
        }
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
        // Short epochs: the DH steps run during the conversation.
        u.heal = 40;
        x.heal = 40;
        let mut arrays = Arrays::default();
        let mut seen = Vec::new();
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
            // What X can observe of U in round r: the slot U writes to X under X's current
            // keys for round r, decrypted.
            let (pair, ratchet) = x.ratchet("u")?;
            if let Some(keys) = ratchet.peek_incoming(r, &pair) {
                let slot = keys.slot(r, s.domain_bits);
                let data = arrays.read(r, slot);
                if let Some(p) = keys.open(r, slot, &data) {
                    seen.push((r, comparable(Frame::decode(&p, frame::frame_len(L)?)?)));
                }
            }
        }
        assert_eq!(x.inbox()?, vec![("u".to_string(), msg(99, 600))]);
        let (_, ratchet) = x.ratchet("u")?;
        assert!(ratchet.epoch >= 2, "X and U went through DH steps");
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

    fn settled(r: &Ratchet) -> bool {
        r.block.is_none()
            && r.secrets().len() == usize::from(r.epoch > 0)
            && r.incoming.next.is_none()
            && r.outgoing.next.is_none()
    }

    /// A and B use the same keys for the next rounds, in both directions, and the two
    /// directions differ.
    fn assert_same_keys(a: &mut User, b: &mut User, from: u64) -> Result<(), Error> {
        let (pa, ra) = a.ratchet("bob")?;
        let (pb, rb) = b.ratchet("alice")?;
        assert_eq!(ra.epoch, rb.epoch);
        for r in from..from + 32 {
            let ab = ra.peek_outgoing(r, &pa).map(|k| k.slot(r, 20));
            let ba = rb.peek_outgoing(r, &pb).map(|k| k.slot(r, 20));
            assert!(ab.is_some() && ba.is_some());
            assert_eq!(ab, rb.peek_incoming(r, &pb).map(|k| k.slot(r, 20)));
            assert_eq!(ba, ra.peek_incoming(r, &pa).map(|k| k.slot(r, 20)));
            assert_ne!(ab, ba, "the two directions differ");
        }
        Ok(())
    }

    #[test]
    fn forward_secret_sessions_survive_loss_absence_and_crashes() -> Result<(), Error> {
        let (mut a, mut b) = (User::new(50)?, User::new(51)?);
        // A DH step every 50 rounds, so many of them meet the faults below.
        (a.heal, b.heal) = (50, 50);
        a.add("bob", &b, 2)?;
        // B's contact comes from a store migrated from schema 1: no step started yet.
        b.add_migrated("alice", &a, 0)?;
        let sent_a: Vec<Vec<u8>> = (0..8).map(|i| msg(i, 250)).collect();
        let sent_b: Vec<Vec<u8>> = (8..12).map(|i| msg(i, 400)).collect();
        for m in &sent_a[..4] {
            a.send("bob", m)?;
        }
        for m in &sent_b {
            b.send("alice", m)?;
        }
        let mut arrays = Arrays::default();
        let mut noise = SeededRandom::new([52; 32]);
        let mut epochs = std::collections::BTreeSet::new();
        for r in 0..1_000 {
            if r == 450 {
                for m in &sent_a[4..] {
                    a.send("bob", m)?;
                }
            }
            let mut f = [0u8; 6];
            noise.fill(&mut f);
            let fa = Faults {
                offline: (300..420).contains(&r),
                corrupt_answers: f[0] % 5 == 0,
                crash_before_write_commit: f[1] % 7 == 0,
                crash_before_read_commit: f[2] % 7 == 0,
            };
            let fb = Faults {
                offline: (90..170).contains(&r) || (600..700).contains(&r),
                corrupt_answers: f[3] % 5 == 0,
                crash_before_write_commit: f[4] % 7 == 0,
                crash_before_read_commit: f[5] % 7 == 0,
            };
            let wa = user_round(&mut a, &arrays, r, fa)?;
            let wb = user_round(&mut b, &arrays, r, fb)?;
            for w in [wa, wb].into_iter().flatten() {
                arrays.write(r, &w);
            }
            epochs.insert(a.ratchet("bob")?.1.epoch);
        }
        // No more steps; a quiet while to finish the one in progress.
        (a.heal, b.heal) = (u64::MAX, u64::MAX);
        for r in 1_000..1_200 {
            let wa = user_round(&mut a, &arrays, r, Faults::default())?;
            let wb = user_round(&mut b, &arrays, r, Faults::default())?;
            for w in [wa, wb].into_iter().flatten() {
                arrays.write(r, &w);
            }
        }
        let got_b: Vec<Vec<u8>> = b.inbox()?.into_iter().map(|m| m.1).collect();
        let got_a: Vec<Vec<u8>> = a.inbox()?.into_iter().map(|m| m.1).collect();
        assert_eq!(got_b, sent_a);
        assert_eq!(got_a, sent_b);
        assert!(epochs.len() >= 5, "DH steps during the run: {epochs:?}");
        let (ra, rb) = (a.ratchet("bob")?.1, b.ratchet("alice")?.1);
        assert!(settled(&ra) && settled(&rb), "no step left half done");
        assert_same_keys(&mut a, &mut b, 1_200)
    }

    fn contains(hay: &[u8], needle: &[u8; 32]) -> bool {
        hay.windows(32).any(|w| w == needle)
    }

    #[test]
    fn old_session_secrets_are_gone_from_the_store_files() -> Result<(), Error> {
        let (mut a, mut b) = (User::new(60)?, User::new(61)?);
        (a.heal, b.heal) = (40, 40);
        a.add("bob", &b, 1)?;
        b.add("alice", &a, 3)?;
        a.send("bob", &msg(1, 500))?;
        let mut arrays = Arrays::default();
        // Every ephemeral secret B ever held, and B's state once each epoch had settled.
        let mut ephemerals = std::collections::BTreeSet::new();
        let mut snapshots: BTreeMap<u32, Ratchet> = BTreeMap::new();
        let mut r = 0;
        while snapshots.len() < 3 && r < 600 {
            let wa = user_round(&mut a, &arrays, r, Faults::default())?;
            let wb = user_round(&mut b, &arrays, r, Faults::default())?;
            for w in [wa, wb].into_iter().flatten() {
                arrays.write(r, &w);
            }
            let (_, rb) = b.ratchet("alice")?;
            if let Some(e) = &rb.eph {
                ephemerals.insert(e.0);
            }
            if rb.epoch >= 1 && settled(&rb) && settled(&a.ratchet("bob")?.1) {
                snapshots.entry(rb.epoch).or_insert(rb);
            }
            r += 1;
        }
        assert_eq!(snapshots.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(ephemerals.len() >= 2, "B started steps itself");
        let (_, now) = b.ratchet("alice")?;
        // The database says so: no ephemeral secret, the current chain key only.
        let (pending, chains): (i64, i64) = b.store.with_tx(|t| {
            Ok(t.conn().query_row(
                "SELECT COUNT(eph_secret), COUNT(chain) FROM ratchets",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?)
        })?;
        assert_eq!((pending, chains), (0, 1));
        // And the bytes are not in the files.
        let files = b.file_bytes()?;
        for e in &ephemerals {
            assert!(!contains(&files, e), "an ephemeral secret is still on disk");
        }
        for (epoch, old) in snapshots.range(..now.epoch) {
            for secret in old.secrets() {
                assert!(
                    !contains(&files, &secret),
                    "chain key of epoch {epoch} on disk"
                );
            }
            for seed in old.incoming.seeds().iter().chain(&old.outgoing.seeds()) {
                assert!(
                    !contains(&files, seed),
                    "a tree seed of epoch {epoch} on disk"
                );
            }
        }
        // Within the current epoch too: the seeds of rounds used since are gone.
        let before = now.incoming.seeds();
        for r in r..r + 40 {
            let wa = user_round(&mut a, &arrays, r, Faults::default())?;
            let wb = user_round(&mut b, &arrays, r, Faults::default())?;
            for w in [wa, wb].into_iter().flatten() {
                arrays.write(r, &w);
            }
        }
        let (_, later) = b.ratchet("alice")?;
        let kept = later.incoming.seeds();
        let files = b.file_bytes()?;
        let dropped: Vec<&[u8; 32]> = before.iter().filter(|s| !kept.contains(s)).collect();
        assert!(!dropped.is_empty());
        for seed in dropped {
            assert!(!contains(&files, seed), "a used tree seed is still on disk");
        }
        // The scan does find what is still stored (the current chain key and frontier).
        for secret in later.secrets().iter().chain(&kept) {
            assert!(contains(&files, secret), "the scan misses stored keys");
        }
        Ok(())
    }

    /// Everything an attacker holding `identity` and `store` can try on a slot of `round`:
    /// the static keys, the ratchet's keys of that round, every tree it holds (in both
    /// directions, under both labels), the chain key as a tree seed, and every stored seed
    /// taken as a leaf.
    fn attacker_opens(
        identity: &Identity,
        store: &mut Store,
        round: u64,
        slot: u64,
        payload: &[u8],
    ) -> Result<bool, Error> {
        let (pair, ratchet) = store.with_tx(|t| {
            let c = t.contact_by_name("alice")?;
            load_pair(t, identity, &c)
        })?;
        let mut candidates = vec![pair.statics.incoming.clone(), pair.statics.outgoing.clone()];
        candidates.extend(ratchet.peek_incoming(round, &pair));
        candidates.extend(ratchet.peek_outgoing(round, &pair));
        let mut leaves: Vec<[u8; 32]> = Vec::new();
        for dir in [&ratchet.incoming, &ratchet.outgoing] {
            for t in dir.trees() {
                leaves.extend(t.leaf(round).map(|l| *l));
            }
            leaves.extend(dir.seeds());
        }
        for c in ratchet.secrets() {
            leaves.extend(crate::ratchet::GgmTree::new(&c).leaf(round).map(|l| *l));
            leaves.push(c);
        }
        for leaf in &leaves {
            candidates.push(DirectionKeys::from_leaf(leaf, &pair.them, &pair.me));
            candidates.push(DirectionKeys::from_leaf(leaf, &pair.me, &pair.them));
        }
        Ok(candidates
            .iter()
            .any(|k| k.open(round, slot, payload).is_some()))
    }

    #[test]
    fn a_copied_key_file_and_store_cannot_open_earlier_slots() -> Result<(), Error> {
        let s = sched();
        let (mut a, mut b) = (User::new(70)?, User::new(71)?);
        (a.heal, b.heal) = (40, 40);
        a.add("bob", &b, 1)?;
        b.add("alice", &a, 3)?;
        for i in 0..8 {
            a.send("bob", &msg(i, 300))?;
        }
        let mut arrays = Arrays::default();
        // What a server keeps: A's writes to B (round, slot, bytes), with whether B's static
        // (bootstrap) keys opened it.
        let mut kept: Vec<(u64, u64, Vec<u8>, bool)> = Vec::new();
        let end = 302;
        for r in 0..end {
            let wa = user_round(&mut a, &arrays, r, Faults::default())?;
            let wb = user_round(&mut b, &arrays, r, Faults::default())?;
            if let Some(w) = wa.as_ref().filter(|w| w.target.is_some()) {
                // B reads round r at r + LAG, so it can still open it now: a sanity check that
                // this slot is a real message slot of the pair.
                let (pair, rb) = b.ratchet("alice")?;
                let keys = rb.peek_incoming(r, &pair);
                let opens = keys.as_ref().is_some_and(|k| {
                    k.slot(r, s.domain_bits) == w.slot && k.open(r, w.slot, &w.payload).is_some()
                });
                assert!(opens, "B can open A's write of round {r}");
                let bootstrap = pair.statics.incoming.open(r, w.slot, &w.payload).is_some();
                kept.push((r, w.slot, w.payload.clone(), bootstrap));
            }
            for w in [wa, wb].into_iter().flatten() {
                arrays.write(r, &w);
            }
        }
        let (_, rb) = b.ratchet("alice")?;
        assert!(rb.epoch >= 3, "several DH steps before the compromise");
        // The attacker copies B's key file and store after the last switch.
        let stolen = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        assert!(b.store.scrub()?);
        b.id.save(&stolen.path().join("identity.key"))?;
        for f in ["store.db", "store.db-wal"] {
            let from = b.dir.path().join(f);
            if from.exists() {
                let to = stolen.path().join(f);
                std::fs::copy(&from, &to).map_err(|e| Error::io(&to, e))?;
            }
        }
        let identity = Identity::load(&stolen.path().join("identity.key"))?;
        let mut store = Store::open(&stolen.path().join("store.db"))?;
        let (mut bootstrap, mut protected, mut unread) = (0, 0, 0);
        for (r, slot, payload, static_keys) in &kept {
            let opened = attacker_opens(&identity, &mut store, *r, *slot, payload)?;
            if *static_keys {
                // Documented limit: frames before the pair's first switch are protected by
                // the static keys only.
                assert!(opened, "round {r}: bootstrap keys come from the key file");
                bootstrap += 1;
            } else if *r + LAG >= end {
                // Documented limit: rounds B has not read yet (the last `lag` rounds).
                assert!(opened, "round {r} is not read yet");
                unread += 1;
            } else {
                assert!(!opened, "round {r}: a copied device opens an earlier slot");
                protected += 1;
            }
        }
        assert!(
            bootstrap >= 1 && protected >= 40 && unread == 1,
            "{bootstrap} {protected} {unread}"
        );
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
