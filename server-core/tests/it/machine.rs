//! The round state machine under simulated time: two machines wired by an in-memory network.

use crate::common::*;
use protocol::*;
use server_core::compute::{answer_reads, run_audit};
use server_core::config::Registration;
use server_core::machine::{Action, Machine, MachineConfig, NoRandomness, RandomFill, RoundPhase};
use server_core::store::RecordKey;
use std::collections::BTreeMap;
use std::sync::Arc;

const T0: u64 = 1_000_000;

/// The source address of test registrations.
const SRC: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

fn params() -> Params {
    Params {
        domain_bits: 6,
        slot_len: 32,
        reads_per_round: 2,
        round_ms: 1000,
        t0_ms: T0,
        send_offset_ms: 50,
        write_close_ms: 300,
        cutoff_ms: 500,
        publish_deadline_ms: 1800,
        read_lag: 2,
        c_max: 2,
        write_channels: 2,
        max_writers: 64,
    }
}

fn at(round: u64, offset: u64) -> u64 {
    T0 + round * 1000 + offset
}

struct Node {
    m: Machine,
    disk: BTreeMap<RecordKey, Vec<u8>>,
    outbox: Vec<PeerMessage>,
    alarms: Vec<String>,
    published: Vec<u64>,
    abandoned: Vec<(u64, AbandonReason)>,
    phases: Vec<(u64, RoundPhase, u64)>,
    /// (round, challenge) of every audit job run.
    audits: Vec<(u64, [u8; 16])>,
    /// (round, challenge) of every early challenge announced.
    early: Vec<(u64, [u8; 16])>,
    cfg: MachineConfig,
}

fn machine_cfg(role: Role, p: Params, own: &SigningKey, peer: &SigningKey) -> MachineConfig {
    MachineConfig {
        role,
        params: p,
        signing_key: own.clone(),
        peer_signing_key: public_key(peer),
        registration: Registration::Open,
        registrations_per_minute: 1000,
    }
}

fn rng(seed: u8) -> RandomFill {
    let mut c = 0u8;
    Box::new(move |b: &mut [u8]| {
        c = c.wrapping_add(1);
        for (i, x) in b.iter_mut().enumerate() {
            *x = seed ^ c ^ (i as u8);
        }
        Ok(())
    })
}

impl Node {
    fn new(cfg: MachineConfig, seed: u8) -> Node {
        Node {
            m: Machine::new(cfg.clone(), rng(seed)),
            disk: BTreeMap::new(),
            outbox: Vec::new(),
            alarms: Vec::new(),
            published: Vec::new(),
            abandoned: Vec::new(),
            phases: Vec::new(),
            audits: Vec::new(),
            early: Vec::new(),
            cfg,
        }
    }

    fn apply(&mut self, now: u64, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Persist { key, bytes } => {
                    // On disk: a write's receipt may now be sent (as the shell does).
                    if let (Some(round), Some(id)) = (key.round, key.name.strip_prefix("write-")) {
                        let id: RequestId = hex::decode(id).expect("hex").try_into().expect("id");
                        self.m.write_persisted(round, &id);
                    }
                    self.disk.insert(key, bytes.to_vec());
                }
                Action::SendPeer(m) => self.outbox.push(m),
                Action::Audit(job) => {
                    self.audits.push((job.round, job.challenge));
                    let result = run_audit(&job, 2).expect("audit");
                    let more = self.m.audit_done(now, result);
                    self.apply(now, more);
                }
                Action::Published { round } => self.published.push(round),
                Action::Abandoned { round, reason } => self.abandoned.push((round, reason)),
                Action::Alarm { message, .. } => self.alarms.push(message),
                Action::Prune { below } => {
                    self.disk.retain(|k, _| k.round.is_none_or(|r| r >= below));
                }
                Action::PhaseDone { round, phase, ms } => self.phases.push((round, phase, ms)),
                Action::EarlyChallenge { round, challenge } => self.early.push((round, challenge)),
                _ => {}
            }
        }
    }

    /// Rebuilds the machine from its persisted records only (a crash and restart).
    fn restart(&mut self, now: u64, seed: u8) {
        self.m = Machine::new(self.cfg.clone(), rng(seed));
        self.outbox.clear();
        for (k, v) in self.disk.clone() {
            self.m.restore(&k, &v).expect("restore");
        }
        let actions = self.m.resume(now);
        self.apply(now, actions);
    }
}

type Tamper = Box<dyn FnMut(Role, &mut PeerMessage) -> bool>;

struct Net {
    a: Node,
    b: Node,
    /// Returns false to drop a message; may modify it.
    tamper: Option<Tamper>,
    /// Messages that were dropped, kept for later redelivery (retry until acked).
    held: Vec<(Role, PeerMessage)>,
}

impl Net {
    fn new() -> Net {
        let p = params();
        let ka = signing_key_from_bytes(&[0xa0; 32]);
        let kb = signing_key_from_bytes(&[0xb0; 32]);
        Net {
            a: Node::new(machine_cfg(Role::A, p, &ka, &kb), 1),
            b: Node::new(machine_cfg(Role::B, p, &kb, &ka), 2),
            tamper: None,
            held: Vec::new(),
        }
    }

    fn node(&mut self, r: Role) -> &mut Node {
        match r {
            Role::A => &mut self.a,
            Role::B => &mut self.b,
        }
    }

    /// Delivers messages until none are left.
    fn pump(&mut self, now: u64) {
        for _ in 0..100 {
            let mut moved = false;
            for from in [Role::A, Role::B] {
                let msgs = std::mem::take(&mut self.node(from).outbox);
                for mut m in msgs {
                    moved = true;
                    let deliver = match self.tamper.as_mut() {
                        Some(t) => t(from, &mut m),
                        None => true,
                    };
                    if !deliver {
                        self.held.push((from, m));
                        continue;
                    }
                    let to = self.node(from.peer());
                    match to.m.handle_peer(now, m) {
                        Ok((_, actions)) => to.apply(now, actions),
                        Err(e) => panic!("peer message refused: {e}"),
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Delivers at most `limit` messages (in outbox order, alternating sides).
    fn pump_limited(&mut self, now: u64, limit: usize) {
        let mut left = limit;
        while left > 0 {
            let from = if !self.a.outbox.is_empty() {
                Role::A
            } else if !self.b.outbox.is_empty() {
                Role::B
            } else {
                return;
            };
            let m = self.node(from).outbox.remove(0);
            let to = self.node(from.peer());
            let (_, actions) = to.m.handle_peer(now, m).expect("peer message");
            to.apply(now, actions);
            left -= 1;
        }
    }

    fn redeliver_held(&mut self, now: u64) {
        for (from, m) in std::mem::take(&mut self.held) {
            self.node(from).outbox.push(m);
        }
        self.tamper = None;
        self.pump(now);
    }

    fn tick(&mut self, now: u64) {
        let a = self.a.m.tick(now);
        self.a.apply(now, a);
        let b = self.b.m.tick(now);
        self.b.apply(now, b);
        self.pump(now);
    }

    /// Ticks every 50 ms from `from` to `to` inclusive.
    fn run(&mut self, from: u64, to: u64) {
        let mut t = from;
        while t <= to {
            self.tick(t);
            t += 50;
        }
    }

    fn register(&mut self, c: &TestClient) {
        let p = params();
        for n in [&mut self.a, &mut self.b] {
            let (_, actions) =
                n.m.handle_register(T0, &c.register(&p), SRC)
                    .expect("register");
            n.apply(T0, actions);
        }
    }

    /// Sends both halves; returns both receipts.
    fn write(&mut self, now: u64, w: &WritePair) -> (Receipt, Receipt) {
        let (ra, aa) = self.a.m.handle_write(now, w.a.clone()).expect("write A");
        self.a.apply(now, aa);
        let (rb, ab) = self.b.m.handle_write(now, w.b.clone()).expect("write B");
        self.b.apply(now, ab);
        (ra, rb)
    }

    fn commit(&mut self, now: u64, to: Role, peer_receipt: Receipt) {
        let req = CommitRequest {
            fingerprint: params().fingerprint(),
            peer_receipt,
        };
        let n = self.node(to);
        let (_, actions) = n.m.handle_commit(now, &req).expect("commit");
        n.apply(now, actions);
    }

    fn write_and_commit(&mut self, now: u64, w: &WritePair) {
        let (ra, rb) = self.write(now, w);
        self.commit(now, Role::A, rb);
        self.commit(now, Role::B, ra);
    }

    /// Reads `slots` in `round` (array round - lag) from both servers and XORs the answers.
    fn read(
        &mut self,
        now: u64,
        c: &TestClient,
        round: u64,
        slots: &[u64],
        seed: u8,
    ) -> Vec<Vec<u8>> {
        let p = params();
        let (qa, qb) = c.read(&p, round, slots, seed);
        let (ja, acts) = self.a.m.handle_read(now, &qa).expect("read A");
        self.a.apply(now, acts);
        let (jb, acts) = self.b.m.handle_read(now, &qb).expect("read B");
        self.b.apply(now, acts);
        let aa =
            answer_reads(&ja.array, p.slot_len as usize, &ja.keys, Role::A, 2).expect("answer");
        let ab =
            answer_reads(&jb.array, p.slot_len as usize, &jb.keys, Role::B, 2).expect("answer");
        aa.iter().zip(&ab).map(|(x, y)| xor(x, y)).collect()
    }
}

fn published(n: &Node, round: u64) -> PublishedRound {
    match n.m.status(round) {
        RoundStatus::Published(p) => p,
        other => panic!("round {round} at {:?} is {other:?}", n.m.role()),
    }
}

fn id(n: u8) -> RequestId {
    [n; 16]
}

#[test]
fn honest_round_is_published_and_read_back() {
    let p = params();
    let mut net = Net::new();
    let alice = TestClient::new(1);
    let bob = TestClient::new(2);
    net.register(&alice);
    net.register(&bob);
    let wa = alice.write(&p, 0, id(1), 5, &payload(&p, 0xa1), 1);
    let wb = bob.write(&p, 0, id(2), 40, &payload(&p, 0xb2), 2);
    net.write_and_commit(at(0, 60), &wa);
    net.write_and_commit(at(0, 70), &wb);
    // Nothing happens before CUTOFF.
    net.run(at(0, 100), at(0, 450));
    assert!(net.a.disk.keys().all(|k| k.name != "frozen"));
    assert_eq!(net.a.m.status(0), RoundStatus::Pending);
    net.run(at(0, 500), at(0, 950));
    let pa = published(&net.a, 0);
    let pb = published(&net.b, 0);
    assert_eq!(pa, pb, "both servers publish the same signed statement");
    assert_eq!(pa.accepted, vec![id(1), id(2)]);
    // Both signatures verify under the pinned keys.
    let digest = accepted_digest(&pa.accepted);
    verify(
        &public_key(&net.a.cfg.signing_key),
        &array_hash_message(Role::A, 0, &pa.array_hash, &digest),
        &pa.signature_a,
    )
    .expect("A signature");
    verify(
        &public_key(&net.b.cfg.signing_key),
        &array_hash_message(Role::B, 0, &pa.array_hash, &digest),
        &pa.signature_b,
    )
    .expect("B signature");
    // The array holds exactly the two payloads.
    let m = net.a.m.published_array(0).expect("array");
    let l = p.slot_len as usize;
    assert_eq!(&m[5 * l..6 * l], wa.payload.as_slice());
    assert_eq!(&m[40 * l..41 * l], wb.payload.as_slice());
    assert_eq!(
        m.iter().filter(|b| **b != 0).count(),
        wa.payload
            .iter()
            .chain(&wb.payload)
            .filter(|b| **b != 0)
            .count()
    );
    assert!(net.a.alarms.is_empty() && net.b.alarms.is_empty());
    // Reads in round 2 of array round 0 return the payloads.
    net.run(at(1, 0), at(2, 10));
    let got = net.read(at(2, 20), &alice, 2, &[40, 5], 9);
    assert_eq!(got[0], wb.payload);
    assert_eq!(got[1], wa.payload);
}

#[test]
fn reads_are_refused_until_final_and_must_name_the_lagged_round() {
    let p = params();
    let mut net = Net::new();
    let c = TestClient::new(3);
    net.register(&c);
    net.run(at(0, 0), at(1, 0));
    // Round 2 reads array 0; in round 1 there is no array round yet (1 - 2 < 0).
    let (mut qa, _) = c.read(&p, 2, &[1], 1);
    qa.round = 1;
    let e = net
        .a
        .m
        .handle_read(at(1, 10), &qa)
        .expect_err("wrong round");
    assert_eq!(e.code, ErrorCode::WrongRound);
    net.run(at(1, 50), at(2, 0));
    let (qa, _) = c.read(&p, 2, &[1], 1);
    let (_, acts) = net
        .a
        .m
        .handle_read(at(2, 10), &qa)
        .expect("array 0 is final (empty round published)");
    assert_eq!(acts.len(), 1, "the first read is persisted");
    net.a.apply(at(2, 10), acts);
    // An identical retry is answered again; a different second read is refused, also after
    // a restart.
    let (_, acts) = net
        .a
        .m
        .handle_read(at(2, 15), &qa)
        .expect("identical retry");
    assert!(acts.is_empty(), "a retry persists nothing");
    let (qa2, _) = c.read(&p, 2, &[2], 2);
    let e = net
        .a
        .m
        .handle_read(at(2, 20), &qa2)
        .expect_err("second read in the round");
    assert_eq!(e.code, ErrorCode::Duplicate);
    net.a.restart(at(2, 25), 11);
    let e = net
        .a
        .m
        .handle_read(at(2, 30), &qa2)
        .expect_err("second read in the round, after a restart");
    assert_eq!(e.code, ErrorCode::Duplicate);
    net.a
        .m
        .handle_read(at(2, 35), &qa)
        .expect("the first read's identical retry, after a restart");
}

/// No receipt, not even for an identical retry, and no commit before a write is on disk; a
/// write whose persist failed is gone, and the same request is then a fresh write.
#[test]
fn a_write_is_acknowledged_only_once_it_is_on_disk() {
    let p = params();
    let mut net = Net::new();
    let c = TestClient::new(5);
    net.register(&c);
    let w = c.write(&p, 0, id(1), 3, &payload(&p, 1), 1);
    // The first copy: its Persist action is not carried out yet.
    let (receipt, actions) = net.a.m.handle_write(at(0, 60), w.a.clone()).expect("write");
    assert_eq!(actions.len(), 1);
    assert!(net.a.m.write_pending(&w.a));
    let e = net
        .a
        .m
        .handle_write(at(0, 61), w.a.clone())
        .expect_err("no receipt before the first copy is stored");
    assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
    let (rb, ab) = net
        .b
        .m
        .handle_write(at(0, 61), w.b.clone())
        .expect("write B");
    net.b.apply(at(0, 61), ab);
    let commit = CommitRequest {
        fingerprint: p.fingerprint(),
        peer_receipt: rb,
    };
    let e = net
        .a
        .m
        .handle_commit(at(0, 62), &commit)
        .expect_err("no commit before the write is stored");
    assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
    // The persist failed: rolled back, and the same request is a fresh write again.
    net.a.m.rollback_write(0, &id(1));
    assert!(!net.a.m.write_pending(&w.a));
    let (again, actions) = net.a.m.handle_write(at(0, 63), w.a.clone()).expect("fresh");
    assert_eq!(again, receipt);
    net.a.apply(at(0, 63), actions);
    assert!(!net.a.m.write_pending(&w.a));
    let (same, none) = net.a.m.handle_write(at(0, 64), w.a.clone()).expect("retry");
    assert_eq!((same, none.len()), (receipt, 0));
    let (_, actions) = net.a.m.handle_commit(at(0, 65), &commit).expect("commit");
    net.a.apply(at(0, 65), actions);
}

/// Whether an account is registered, or already wrote or read this round, is told only to a
/// request signed by the account's key: anyone else holding the public key learns nothing.
#[test]
fn account_state_is_told_only_to_signed_requests() {
    let p = params();
    let mut net = Net::new();
    let member = TestClient::new(7);
    let stranger = TestClient::new(8);
    net.register(&member);
    let w = member.write(&p, 0, id(1), 3, &payload(&p, 1), 1);
    net.write_and_commit(at(0, 60), &w);
    let mut forged = member.write(&p, 0, id(2), 4, &payload(&p, 2), 2).a;
    forged.signature[0] ^= 1;
    let mut unknown = stranger.write(&p, 0, id(3), 5, &payload(&p, 3), 3).a;
    unknown.signature[0] ^= 1;
    for (what, req) in [("already wrote", forged), ("not registered", unknown)] {
        let e = net.a.m.handle_write(at(0, 61), req).expect_err(what);
        assert_eq!(e.code, ErrorCode::BadSignature, "{what}: {e:?}");
    }
    net.run(at(0, 100), at(2, 10));
    for c in [&member, &stranger] {
        let (mut q, _) = c.read(&p, 2, &[1], 4);
        q.signature[0] ^= 1;
        let e = net.a.m.handle_read(at(2, 20), &q).expect_err("unsigned");
        assert_eq!(e.code, ErrorCode::BadSignature, "{e:?}");
    }
}

#[test]
fn duplicate_writes_and_bad_writes_are_rejected() {
    let p = params();
    let mut net = Net::new();
    let c = TestClient::new(4);
    net.register(&c);
    let w1 = c.write(&p, 0, id(1), 3, &payload(&p, 1), 1);
    let w2 = c.write(&p, 0, id(2), 4, &payload(&p, 2), 2);
    let (first, _) = net.write(at(0, 60), &w1);
    // An identical retry (answer lost) gets the same receipt and changes nothing.
    let (again, actions) = net
        .a
        .m
        .handle_write(at(0, 61), w1.a.clone())
        .expect("identical retry");
    assert_eq!(again, first);
    assert!(actions.is_empty());
    let e = net
        .a
        .m
        .handle_write(at(0, 61), w2.a.clone())
        .expect_err("second write");
    assert_eq!(e.code, ErrorCode::Duplicate);
    // Signed, under the used id, with other content.
    let same_id = c.write(&p, 0, id(1), 4, &payload(&p, 2), 2).a;
    let e = net
        .a
        .m
        .handle_write(at(0, 61), same_id)
        .expect_err("another write under the same id");
    assert_eq!(e.code, ErrorCode::Duplicate);
    // Too late, wrong round, unknown account, bad signature, tampered key.
    let d = TestClient::new(5);
    let wd = d.write(&p, 0, id(3), 3, &payload(&p, 3), 3);
    assert_eq!(
        net.a
            .m
            .handle_write(at(0, 61), wd.a.clone())
            .expect_err("unknown")
            .code,
        ErrorCode::UnknownAccount
    );
    net.register(&d);
    assert_eq!(
        net.a
            .m
            .handle_write(at(0, 300), wd.a.clone())
            .expect_err("late")
            .code,
        ErrorCode::TooLate
    );
    assert_eq!(
        net.a
            .m
            .handle_write(at(1, 10), wd.a.clone())
            .expect_err("round")
            .code,
        ErrorCode::WrongRound
    );
    let mut bad = wd.a.clone();
    bad.signature[0] ^= 1;
    assert_eq!(
        net.a.m.handle_write(at(0, 62), bad).expect_err("sig").code,
        ErrorCode::BadSignature
    );
    let mut bad = wd.a.clone();
    bad.key.pop();
    assert_eq!(
        net.a.m.handle_write(at(0, 62), bad).expect_err("len").code,
        ErrorCode::BadKey
    );
    let mut bad = wd.a.clone();
    bad.fingerprint[0] ^= 1;
    assert_eq!(
        net.a.m.handle_write(at(0, 62), bad).expect_err("fp").code,
        ErrorCode::ParamsMismatch
    );
    // A commit with our own receipt (not the peer's) is refused; a forged one too.
    let (ra, rb) = net.write(at(0, 63), &wd);
    let own = CommitRequest {
        fingerprint: p.fingerprint(),
        peer_receipt: ra.clone(),
    };
    assert_eq!(
        net.a
            .m
            .handle_commit(at(0, 64), &own)
            .expect_err("own")
            .code,
        ErrorCode::BadReceipt
    );
    let mut forged = rb.clone();
    forged.half_hash[0] ^= 1;
    let req = CommitRequest {
        fingerprint: p.fingerprint(),
        peer_receipt: forged,
    };
    assert_eq!(
        net.a
            .m
            .handle_commit(at(0, 64), &req)
            .expect_err("forged")
            .code,
        ErrorCode::BadReceipt
    );
    let ok = CommitRequest {
        fingerprint: p.fingerprint(),
        peer_receipt: rb,
    };
    net.a.m.handle_commit(at(0, 64), &ok).expect("commit");
    net.a
        .m
        .handle_commit(at(0, 65), &ok)
        .expect("same commit again is idempotent");
    assert_eq!(
        net.a
            .m
            .handle_commit(at(0, 500), &ok)
            .expect_err("after cutoff")
            .code,
        ErrorCode::TooLate
    );
}

#[test]
fn one_sided_writes_are_dropped_without_abandoning() {
    let p = params();
    let mut net = Net::new();
    let honest = TestClient::new(10);
    net.register(&honest);
    let wh = honest.write(&p, 0, id(100), 7, &payload(&p, 7), 7);
    net.write_and_commit(at(0, 60), &wh);
    for i in 0..20u8 {
        let c = TestClient::new(20 + i);
        net.register(&c);
        let w = c.write(&p, 0, id(i), u64::from(i), &payload(&p, i), i);
        let (ra, rb) = net.write(at(0, 60), &w);
        match i % 3 {
            0 => {}                                  // written, never committed
            1 => net.commit(at(0, 70), Role::A, rb), // committed at A only
            _ => net.commit(at(0, 70), Role::B, ra), // committed at B only
        }
        if i % 5 == 0 {
            // Written to one server only.
            let c2 = TestClient::new(100 + i);
            net.register(&c2);
            let w2 = c2.write(&p, 0, id(200 + i), 1, &payload(&p, 9), i);
            let (_, a) = net.a.m.handle_write(at(0, 80), w2.a).expect("one half");
            net.a.apply(at(0, 80), a);
        }
    }
    net.run(at(0, 100), at(0, 950));
    let pa = published(&net.a, 0);
    assert_eq!(pa.accepted, vec![id(100)]);
    assert_eq!(pa, published(&net.b, 0));
    let m = net.a.m.published_array(0).expect("array");
    let l = p.slot_len as usize;
    assert_eq!(&m[7 * l..8 * l], wh.payload.as_slice());
    assert_eq!(
        m.iter().filter(|b| **b != 0).count(),
        wh.payload.iter().filter(|b| **b != 0).count()
    );
    assert!(net.a.alarms.is_empty() && net.b.alarms.is_empty() && net.a.abandoned.is_empty());
}

#[test]
fn a_peer_that_omits_a_committed_write_is_caught() {
    let p = params();
    let mut net = Net::new();
    let c = TestClient::new(11);
    net.register(&c);
    let w = c.write(&p, 0, id(1), 2, &payload(&p, 1), 1);
    let (ra_receipt, _) = net.write(at(0, 60), &w);
    // The client commits at B with A's receipt; B holds proof that A received the write.
    net.commit(at(0, 70), Role::B, ra_receipt.clone());
    // A lies in its SETS message: it omits the write from its received set.
    net.tamper = Some(Box::new(|from, m| {
        if let (Role::A, PeerMessage::Sets(s)) = (from, m) {
            s.received.clear();
        }
        true
    }));
    net.run(at(0, 100), at(0, 950));
    assert!(
        net.b.abandoned.iter().any(|(r, reason)| *r == 0
            && *reason
                == AbandonReason::PeerOmittedWrite {
                    evidence: ra_receipt.clone()
                }),
        "B abandons with A's receipt as evidence: {:?}",
        net.b.abandoned
    );
    assert!(!net.b.alarms.is_empty(), "B raises an alarm");
    assert!(matches!(
        net.a.m.status(0),
        RoundStatus::Abandoned(AbandonReason::PeerAbandoned)
    ));
    assert!(net.a.published.is_empty() && net.b.published.is_empty());
}

#[test]
fn differing_array_hashes_abandon_the_round_and_reads_get_zeros() {
    let p = params();
    let mut net = Net::new();
    let c = TestClient::new(12);
    net.register(&c);
    let w = c.write(&p, 0, id(1), 2, &payload(&p, 1), 1);
    net.write_and_commit(at(0, 60), &w);
    net.tamper = Some(Box::new(|from, m| {
        if let (Role::B, PeerMessage::Shares(s)) = (from, m) {
            std::sync::Arc::make_mut(&mut s.data)[0] ^= 0xff;
        }
        true
    }));
    net.run(at(0, 100), at(0, 950));
    for n in [&net.a, &net.b] {
        assert!(
            matches!(
                n.m.status(0),
                RoundStatus::Abandoned(AbandonReason::HashMismatch)
            ),
            "{:?}",
            n.m.status(0)
        );
    }
    net.run(at(1, 0), at(2, 10));
    let got = net.read(at(2, 20), &c, 2, &[2], 3);
    assert!(
        got.iter().all(|a| a.iter().all(|b| *b == 0)),
        "abandoned rounds read as zeros"
    );
}

/// A write whose halves come from two different key pairs (different payload and slot), each
/// signed correctly.
fn malformed_write(cheat: &TestClient, round: u64, rid: RequestId, seed: u8) -> WritePair {
    let p = params();
    let mut rng = dpf::SeededRandom::new([seed; 32]);
    let (k1a, _) =
        dpf::WriteKey::r#gen(p.domain_bits, 32, 20, &payload(&p, 0x22), &mut rng).expect("gen");
    let (_, k2b) =
        dpf::WriteKey::r#gen(p.domain_bits, 32, 30, &payload(&p, 0x33), &mut rng).expect("gen");
    cheat.write_from_keys(&p, round, rid, &k1a, &k2b, 20, &payload(&p, 0x22))
}

#[test]
fn a_malformed_key_pair_fails_the_audit_and_changes_nothing() {
    let p = params();
    let mut net = Net::new();
    let honest = TestClient::new(13);
    let cheat = TestClient::new(14);
    net.register(&honest);
    net.register(&cheat);
    let wh = honest.write(&p, 0, id(1), 9, &payload(&p, 0x11), 1);
    let wc = malformed_write(&cheat, 0, id(2), 77);
    net.write_and_commit(at(0, 60), &wh);
    net.write_and_commit(at(0, 61), &wc);
    net.run(at(0, 100), at(0, 950));
    let pa = published(&net.a, 0);
    assert_eq!(pa, published(&net.b, 0));
    assert_eq!(
        pa.accepted,
        vec![id(1)],
        "the malformed write is not accepted"
    );
    let m = net.a.m.published_array(0).expect("array");
    let l = p.slot_len as usize;
    assert_eq!(&m[9 * l..10 * l], wh.payload.as_slice());
    let nonzero_slots = (0..64)
        .filter(|s| m[s * l..(s + 1) * l].iter().any(|b| *b != 0))
        .count();
    assert_eq!(nonzero_slots, 1, "only the honest slot is written");
    assert!(net.a.alarms.iter().any(|a| a.contains("failed the audit")));
}

/// The version 1 audit's two-slot forgery: identical halves refused at commit by both
/// servers, and the same forgery with distinct roots refused by the audit, while an honest
/// write of the same round is published.
#[test]
fn the_sibling_forgery_is_refused_at_commit_and_by_the_audit() {
    let p = params();
    let l = p.slot_len as usize;
    let mut net = Net::new();
    let honest = TestClient::new(18);
    let (cheat, cheat2) = (TestClient::new(19), TestClient::new(20));
    for c in [&honest, &cheat, &cheat2] {
        net.register(c);
    }
    let wh = honest.write(&p, 0, id(1), 9, &payload(&p, 0x11), 1);
    net.write_and_commit(at(0, 60), &wh);

    let mut rng = dpf::SeededRandom::new([41; 32]);
    let fake = payload(&p, 0x44);
    let (ka, kb) = dpf::attacks::sibling_forgery(p.domain_bits, l, 20, &fake, 0, false, &mut rng)
        .expect("forgery");
    let same = cheat.write_from_keys(&p, 0, id(2), &ka, &kb, 40, &fake);
    let (ra, rb) = net.write(at(0, 61), &same);
    for (to, receipt) in [(Role::A, rb), (Role::B, ra)] {
        let req = CommitRequest {
            fingerprint: p.fingerprint(),
            peer_receipt: receipt,
        };
        let e = net
            .node(to)
            .m
            .handle_commit(at(0, 62), &req)
            .expect_err("refused");
        assert_eq!(e.code, ErrorCode::BadKey, "{e:?}");
        assert!(e.message.contains("identical"), "{e:?}");
    }

    let (ka, kb) = dpf::attacks::sibling_forgery(p.domain_bits, l, 21, &fake, 2, true, &mut rng)
        .expect("forgery");
    let distinct = cheat2.write_from_keys(&p, 0, id(3), &ka, &kb, 42, &fake);
    net.write_and_commit(at(0, 63), &distinct);
    net.run(at(0, 100), at(0, 950));
    let pa = published(&net.a, 0);
    assert_eq!(pa, published(&net.b, 0));
    assert_eq!(
        pa.accepted,
        vec![id(1)],
        "only the honest write is accepted"
    );
    let m = net.a.m.published_array(0).expect("array");
    assert_eq!(&m[9 * l..10 * l], wh.payload.as_slice());
    let nonzero_slots = (0..64)
        .filter(|s| m[s * l..(s + 1) * l].iter().any(|b| *b != 0))
        .count();
    assert_eq!(nonzero_slots, 1, "only the honest slot is written");
    assert!(net.a.alarms.iter().any(|a| a.contains("failed the audit")));
}

#[test]
fn a_round_is_audited_under_the_early_challenge_only_when_both_servers_held_it() {
    let p = params();
    let mut net = Net::new();
    let honest = TestClient::new(16);
    let cheat = TestClient::new(17);
    net.register(&honest);
    net.register(&cheat);
    let malformed = |round: u64, n: u8| malformed_write(&cheat, round, id(n), n);
    // Round 0: no round before it, so the challenge is drawn at its own cutoff.
    net.write_and_commit(
        at(0, 60),
        &honest.write(&p, 0, id(1), 9, &payload(&p, 1), 1),
    );
    net.run(at(0, 100), at(0, 950));
    assert_eq!(published(&net.a, 0).accepted, vec![id(1)]);
    // Both servers announced round 1's early challenge at round 0's SETS, the same one.
    let early_1: Vec<[u8; 16]> = [&net.a, &net.b]
        .iter()
        .flat_map(|n| n.early.iter().filter(|(r, _)| *r == 1).map(|(_, c)| *c))
        .collect();
    assert_eq!(early_1.len(), 2);
    assert_eq!(early_1[0], early_1[1]);
    // Round 1 is audited under it, on both sides, and a malformed write still fails.
    net.write_and_commit(
        at(1, 60),
        &honest.write(&p, 1, id(2), 9, &payload(&p, 2), 2),
    );
    net.write_and_commit(at(1, 61), &malformed(1, 3));
    net.run(at(1, 100), at(1, 950));
    assert_eq!(published(&net.a, 1).accepted, vec![id(2)]);
    assert_eq!(published(&net.a, 1), published(&net.b, 1));
    for n in [&net.a, &net.b] {
        let audited: BTreeMap<u64, [u8; 16]> = n.audits.iter().copied().collect();
        assert_eq!(audited[&1], early_1[0], "{:?}", n.m.role());
        assert_ne!(audited[&0], early_1[0]);
    }
    // B's SETS of round 2 does not reach A: A does not hold round 3's early challenge at
    // round 3's cutoff, says so, and both fall back to the challenge drawn at that cutoff.
    net.tamper = Some(Box::new(|from, m| {
        !(from == Role::B && matches!(m, PeerMessage::Sets(s) if s.round == 2))
    }));
    net.run(at(2, 100), at(2, 950));
    net.write_and_commit(
        at(3, 60),
        &honest.write(&p, 3, id(4), 9, &payload(&p, 4), 3),
    );
    net.write_and_commit(at(3, 61), &malformed(3, 5));
    net.run(at(3, 100), at(3, 950));
    assert_eq!(published(&net.a, 3).accepted, vec![id(4)]);
    assert_eq!(published(&net.a, 3), published(&net.b, 3));
    let audited = |n: &Node| -> Vec<[u8; 16]> {
        n.audits
            .iter()
            .filter(|(r, _)| *r == 3)
            .map(|(_, c)| *c)
            .collect()
    };
    assert_eq!(audited(&net.a), audited(&net.b));
    assert!(!net.a.early.iter().any(|(r, _)| *r == 3));
    assert!(
        net.b
            .early
            .iter()
            .any(|(r, c)| *r == 3 && *c != audited(&net.b)[0]),
        "B held round 3's early challenge but did not use it"
    );
}

#[test]
fn peer_loss_abandons_at_the_deadline_and_recovers_next_round() {
    let p = params();
    let mut net = Net::new();
    let c = TestClient::new(15);
    net.register(&c);
    let w = c.write(&p, 0, id(1), 2, &payload(&p, 1), 1);
    net.write_and_commit(at(0, 60), &w);
    // B is unreachable for all of round 0's closing.
    net.tamper = Some(Box::new(|_, _| false));
    net.run(at(0, 100), at(1, 750));
    assert_eq!(
        net.a.m.status(0),
        RoundStatus::Pending,
        "still pending before the deadline"
    );
    net.tick(at(1, 800));
    assert!(matches!(
        net.a.m.status(0),
        RoundStatus::Abandoned(AbandonReason::DeadlineMissed)
    ));
    assert!(matches!(net.b.m.status(0), RoundStatus::Abandoned(_)));
    // The link comes back: late messages for the abandoned round are acknowledged and ignored,
    // and round 2 closes normally.
    net.redeliver_held(at(1, 850));
    assert!(matches!(net.a.m.status(0), RoundStatus::Abandoned(_)));
    let w2 = c.write(&p, 2, id(2), 3, &payload(&p, 2), 2);
    net.write_and_commit(at(2, 60), &w2);
    net.run(at(2, 100), at(2, 950));
    assert_eq!(published(&net.a, 2).accepted, vec![id(2)]);
}

#[test]
fn a_restart_at_every_step_still_publishes_the_same_round() {
    let p = params();
    // Reference run without restarts.
    let reference = {
        let mut net = Net::new();
        let c = TestClient::new(16);
        net.register(&c);
        net.write_and_commit(at(0, 60), &c.write(&p, 0, id(1), 2, &payload(&p, 1), 1));
        net.run(at(0, 100), at(0, 950));
        published(&net.a, 0).array_hash
    };
    // Restart each server at each 50 ms step of the round's life, with messages in flight lost.
    for who in [Role::A, Role::B] {
        // Everything of the close happens in the tick at CUTOFF (step 8): there, crash after
        // every possible number of delivered messages.
        let cases =
            (0..19u64).flat_map(|s| (0..if s == 8 { 12usize } else { 2 }).map(move |d| (s, d)));
        for (step, delivered) in cases {
            let mut net = Net::new();
            let c = TestClient::new(16);
            net.register(&c);
            net.write_and_commit(at(0, 60), &c.write(&p, 0, id(1), 2, &payload(&p, 1), 1));
            let crash_at = at(0, 100 + step * 50);
            net.run(at(0, 100), crash_at - 50);
            // At crash_at both servers act, then only `delivered` messages get through before
            // `who` crashes: everything it had not yet delivered is lost with it.
            for r in [Role::A, Role::B] {
                let n = net.node(r);
                let actions = n.m.tick(crash_at);
                n.apply(crash_at, actions);
            }
            net.pump_limited(crash_at, delivered);
            let n = net.node(who);
            n.outbox.clear();
            n.restart(crash_at + 1, 40 + step as u8);
            net.pump(crash_at + 1);
            net.run(crash_at + 50, at(1, 700));
            let pa = published(&net.a, 0);
            assert_eq!(
                pa,
                published(&net.b, 0),
                "restart of {who} at step {step} after {delivered} messages"
            );
            assert_eq!(
                pa.array_hash, reference,
                "restart of {who} at step {step} after {delivered} messages"
            );
            assert!(
                net.a.alarms.is_empty() && net.b.alarms.is_empty(),
                "{who} {step}: {:?} {:?}",
                net.a.alarms,
                net.b.alarms
            );
        }
    }
}

#[test]
fn a_crash_after_the_signed_hash_but_before_the_array_is_on_disk_recomputes_and_persists_it() {
    // The signed hash is sent before M_r reaches the disk (one array write off the critical
    // path); the outcome is queued after the array, so a crash in between leaves the hash
    // durable and neither the array nor the outcome.
    let p = params();
    for who in [Role::A, Role::B] {
        let mut net = Net::new();
        let c = TestClient::new(16);
        net.register(&c);
        net.write_and_commit(at(0, 60), &c.write(&p, 0, id(1), 2, &payload(&p, 1), 1));
        net.run(at(0, 100), at(0, 950));
        let reference = published(&net.a, 0);
        let n = net.node(who);
        let key = |name: &str| RecordKey::round(0, name);
        assert!(n.disk.contains_key(&key("own-hash")));
        assert!(n.disk.remove(&key("array")).is_some());
        assert!(n.disk.remove(&key("outcome")).is_some());
        n.restart(at(1, 10), 77);
        net.pump(at(1, 10));
        net.run(at(1, 50), at(1, 700));
        assert_eq!(published(net.node(who), 0), reference, "{who}");
        let n = net.node(who);
        assert!(
            n.disk.contains_key(&key("array")),
            "{who}: M_r persisted again"
        );
        assert!(n.alarms.is_empty(), "{who}: {:?}", n.alarms);
        // And a second restart finds the round whole.
        n.restart(at(1, 800), 78);
        assert_eq!(published(n, 0), reference, "{who}");
        assert!(n.m.published_array(0).is_some(), "{who}");
    }
}

#[test]
fn restart_keeps_accounts_writes_and_duplicate_detection() {
    let p = params();
    let mut net = Net::new();
    let c = TestClient::new(17);
    net.register(&c);
    let w = c.write(&p, 0, id(1), 2, &payload(&p, 1), 1);
    net.write(at(0, 60), &w);
    net.a.restart(at(0, 70), 9);
    assert_eq!(net.a.m.account_count(), 1);
    let w2 = c.write(&p, 0, id(2), 3, &payload(&p, 2), 2);
    assert_eq!(
        net.a.m.handle_write(at(0, 80), w2.a).expect_err("dup").code,
        ErrorCode::Duplicate
    );
}

#[test]
fn a_corrupted_record_abandons_its_round_instead_of_using_it() {
    let p = params();
    let mut net = Net::new();
    let c = TestClient::new(18);
    net.register(&c);
    net.write_and_commit(at(0, 60), &c.write(&p, 0, id(1), 2, &payload(&p, 1), 1));
    net.run(at(0, 100), at(0, 200));
    // Simulate a record that failed its checksum: the shell reports it via restore_corrupt.
    net.a.m = Machine::new(net.a.cfg.clone(), rng(3));
    for (k, v) in net.a.disk.clone() {
        if k.name.starts_with("write-") {
            net.a.m.restore_corrupt(k.round);
        } else {
            net.a.m.restore(&k, &v).expect("restore");
        }
    }
    let actions = net.a.m.resume(at(0, 210));
    net.a.apply(at(0, 210), actions);
    net.pump(at(0, 210));
    assert!(matches!(
        net.a.m.status(0),
        RoundStatus::Abandoned(AbandonReason::LocalStateLost)
    ));
    net.run(at(0, 250), at(0, 950));
    assert!(
        matches!(net.b.m.status(0), RoundStatus::Abandoned(_)),
        "B follows"
    );
}

#[test]
fn admission_keeps_max_writers_chosen_identically() {
    let mut p = params();
    p.max_writers = 3;
    let ka = signing_key_from_bytes(&[0xa0; 32]);
    let kb = signing_key_from_bytes(&[0xb0; 32]);
    let mut net = Net {
        a: Node::new(machine_cfg(Role::A, p, &ka, &kb), 1),
        b: Node::new(machine_cfg(Role::B, p, &kb, &ka), 2),
        tamper: None,
        held: Vec::new(),
    };
    let fp = p.fingerprint();
    for i in 0..8u8 {
        let c = TestClient::new(50 + i);
        for n in [&mut net.a, &mut net.b] {
            let (_, a) =
                n.m.handle_register(T0, &c.register(&p), SRC)
                    .expect("register");
            n.apply(T0, a);
        }
        let w = c.write(&p, 0, id(i), u64::from(i), &payload(&p, i), i);
        let (ra, rb) = net.write(at(0, 60), &w);
        net.a
            .m
            .handle_commit(
                at(0, 61),
                &CommitRequest {
                    fingerprint: fp,
                    peer_receipt: rb,
                },
            )
            .expect("ca");
        net.b
            .m
            .handle_commit(
                at(0, 61),
                &CommitRequest {
                    fingerprint: fp,
                    peer_receipt: ra,
                },
            )
            .expect("cb");
    }
    net.run(at(0, 100), at(0, 950));
    let pa = published(&net.a, 0);
    assert_eq!(pa.accepted.len(), 3);
    assert_eq!(pa, published(&net.b, 0));
    let m = net.a.m.published_array(0).expect("array");
    let nonzero = (0..64)
        .filter(|s| m[s * 32..(s + 1) * 32].iter().any(|b| *b != 0))
        .count();
    assert_eq!(nonzero, 3, "exactly the admitted writes are applied");
    let _ = Arc::strong_count(&m);
}

#[test]
fn equivocating_peer_messages_abandon() {
    let p = params();
    let mut net = Net::new();
    let _ = p;
    net.run(at(0, 100), at(0, 450));
    // A forged SETS message "from A" arrives first; A's real one follows at CUTOFF.
    let fake = SetsMessage {
        round: 0,
        from: Role::A,
        nonce: [9; 32],
        received: vec![],
        committed: vec![],
        early_challenge: None,
    };
    let (_, actions) = net
        .b
        .m
        .handle_peer(at(0, 460), PeerMessage::Sets(fake))
        .expect("ack");
    net.b.apply(at(0, 460), actions);
    net.run(at(0, 500), at(0, 600));
    assert!(matches!(
        net.b.m.status(0),
        RoundStatus::Abandoned(AbandonReason::PeerEquivocated)
    ));
    // A message claiming the wrong sender role is refused.
    let wrong = SetsMessage {
        round: 0,
        from: Role::B,
        nonce: [0; 32],
        received: vec![],
        committed: vec![],
        early_challenge: None,
    };
    assert_eq!(
        net.b
            .m
            .handle_peer(at(0, 520), PeerMessage::Sets(wrong))
            .expect_err("role")
            .code,
        ErrorCode::Malformed
    );
}

#[test]
fn rounds_are_pruned_to_lag_plus_two() {
    let mut net = Net::new();
    net.run(at(0, 0), at(6, 0));
    assert_eq!(net.a.m.status(2), RoundStatus::Forgotten);
    assert!(matches!(net.a.m.status(3), RoundStatus::Published(_)));
    assert!(net.a.disk.keys().all(|k| k.round.is_none_or(|r| r >= 3)));
}

#[test]
fn registration_policy_invites_and_rate_limit() {
    let p = params();
    let ka = signing_key_from_bytes(&[0xa0; 32]);
    let kb = signing_key_from_bytes(&[0xb0; 32]);
    let mut cfg = machine_cfg(Role::A, p, &ka, &kb);
    cfg.registration = Registration::Invite {
        tokens: vec!["tok-1".into()],
    };
    cfg.registrations_per_minute = 10;
    let mut m = Machine::new(cfg, rng(1));
    let c1 = TestClient::new(60);
    let c2 = TestClient::new(61);
    assert_eq!(
        m.handle_register(T0, &c1.register(&p), SRC)
            .expect_err("no token")
            .code,
        ErrorCode::RegistrationRefused
    );
    assert_eq!(
        m.handle_register(T0, &c1.register_with(&p, b"nope"), SRC)
            .expect_err("bad")
            .code,
        ErrorCode::RegistrationRefused
    );
    let (r, _) = m
        .handle_register(T0, &c1.register_with(&p, b"tok-1"), SRC)
        .expect("ok");
    assert!(!r.already_registered);
    let (r, _) = m
        .handle_register(T0, &c1.register_with(&p, b"tok-1"), SRC)
        .expect("again");
    assert!(r.already_registered);
    assert_eq!(
        m.handle_register(T0, &c2.register_with(&p, b"tok-1"), SRC)
            .expect_err("used")
            .code,
        ErrorCode::RegistrationRefused
    );
    let mut bad = c2.register(&p);
    bad.signature[1] ^= 1;
    assert_eq!(
        m.handle_register(T0, &bad, SRC).expect_err("sig").code,
        ErrorCode::BadSignature
    );
    // Rate limit on an open server.
    let mut cfg = machine_cfg(Role::A, p, &ka, &kb);
    cfg.registrations_per_minute = 2;
    let mut m = Machine::new(cfg, rng(1));
    for i in 0..2 {
        m.handle_register(T0, &TestClient::new(70 + i).register(&p), SRC)
            .expect("ok");
    }
    assert_eq!(
        m.handle_register(T0, &TestClient::new(80).register(&p), SRC)
            .expect_err("rl")
            .code,
        ErrorCode::RateLimited
    );
    // The limit is per source: another address still registers.
    let other = std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));
    m.handle_register(T0, &TestClient::new(81).register(&p), other)
        .expect("another source");
    m.handle_register(T0 + 60_000, &TestClient::new(80).register(&p), SRC)
        .expect("next minute");
    // A rate-limited registration burns no invite token.
    let mut cfg = machine_cfg(Role::A, p, &ka, &kb);
    cfg.registrations_per_minute = 1;
    cfg.registration = Registration::Invite {
        tokens: vec!["tok-a".into(), "tok-b".into()],
    };
    let mut m = Machine::new(cfg, rng(1));
    m.handle_register(T0, &TestClient::new(90).register_with(&p, b"tok-a"), SRC)
        .expect("first");
    let late = TestClient::new(91).register_with(&p, b"tok-b");
    assert_eq!(
        m.handle_register(T0, &late, SRC).expect_err("limited").code,
        ErrorCode::RateLimited
    );
    m.handle_register(T0 + 60_000, &late, SRC)
        .expect("the token is still valid");
}

/// Round nonces feed the audit challenge: when the OS random source fails the server stops
/// (abandoning the round, with an alarm) rather than drawing a predictable nonce.
#[test]
fn a_failing_random_source_stops_the_server_instead_of_drawing_a_predictable_nonce() {
    let p = params();
    let ka = signing_key_from_bytes(&[0xa0; 32]);
    let kb = signing_key_from_bytes(&[0xb0; 32]);
    let mut m = Machine::new(
        machine_cfg(Role::A, p, &ka, &kb),
        Box::new(|_: &mut [u8]| Err(NoRandomness)),
    );
    let actions = m.tick(at(0, p.cutoff_ms));
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Fatal { message } if message.contains("random source"))),
        "{actions:?}"
    );
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Abandoned {
            round: 0,
            reason: AbandonReason::LocalStateLost
        }
    )));
    assert!(actions.iter().any(|a| matches!(a, Action::Alarm { .. })));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::SendPeer(PeerMessage::Sets(_)))),
        "no nonce is ever sent: {actions:?}"
    );
}

#[test]
fn round_close_phases_are_timed_from_the_machine_inputs() {
    let p = params();
    let mut net = Net::new();
    let alice = TestClient::new(1);
    net.register(&alice);
    let wa = alice.write(&p, 0, id(1), 5, &payload(&p, 0xa1), 1);
    net.write_and_commit(at(0, 60), &wa);
    // Both freeze at CUTOFF (500); the network holds their messages until 620.
    net.tamper = Some(Box::new(|_, _| false));
    net.run(at(0, 500), at(0, 500));
    assert!(net.a.phases.is_empty() && net.b.phases.is_empty());
    for (from, m) in std::mem::take(&mut net.held) {
        net.node(from).outbox.push(m);
    }
    net.tamper = None;
    // Sets at 620, audit values at 700, shares at 800, signed hashes at 850.
    net.pump_limited(at(0, 620), 2);
    net.pump_limited(at(0, 700), 2);
    net.pump_limited(at(0, 800), 2);
    net.pump_limited(at(0, 850), 2);
    for n in [&net.a, &net.b] {
        assert_eq!(published(n, 0).accepted, vec![id(1)]);
        assert_eq!(
            n.phases,
            vec![
                (0, RoundPhase::CutoffToSets, 120),
                (0, RoundPhase::Audit, 80),
                (0, RoundPhase::Exchange, 150),
                (0, RoundPhase::CutoffToPublished, 350),
            ],
            "{:?}",
            n.m.role()
        );
    }
    // The kept-rounds queries used by /readyz and the graceful shutdown.
    assert_eq!(net.a.m.last_final_round(), Some(0));
    assert!(net.a.m.all_final_through(0));
    net.run(at(1, 0), at(1, 100));
    assert!(!net.a.m.all_final_through(1), "round 1 is still open");
    assert_eq!(
        net.a.m.held_array_bytes(),
        p.array_bytes(),
        "round 0's array"
    );
}

#[test]
fn sets_that_arrive_before_the_cutoff_beyond_the_clock_skew_abandon_the_round() {
    let mut net = Net::new();
    net.run(at(0, 100), at(0, 200));
    // "A's" sets for round 0 arrive at B 300 ms before the cutoff: more than the skew allows.
    let early = SetsMessage {
        round: 0,
        from: Role::A,
        nonce: [7; 32],
        received: vec![],
        committed: vec![],
        early_challenge: None,
    };
    let (_, actions) = net
        .b
        .m
        .handle_peer(at(0, 200), PeerMessage::Sets(early))
        .expect("ack");
    net.b.apply(at(0, 200), actions);
    assert_eq!(
        net.b.m.status(0),
        RoundStatus::Abandoned(AbandonReason::PeerClosedEarly { early_ms: 300 })
    );
    assert!(net.b.alarms.iter().any(|a| a.contains("before the cutoff")));
    // A follows B's abandon.
    net.pump(at(0, 200));
    assert!(matches!(net.a.m.status(0), RoundStatus::Abandoned(_)));

    // Round 1: A's clock runs 200 ms ahead of B's, within the skew: the round is published.
    let ahead = net.a.m.tick(at(1, 500));
    net.a.apply(at(1, 500), ahead);
    net.pump(at(1, 300));
    assert_eq!(net.b.m.status(1), RoundStatus::Pending);
    net.run(at(1, 300), at(1, 1000));
    published(&net.b, 1);
    published(&net.a, 1);
}
