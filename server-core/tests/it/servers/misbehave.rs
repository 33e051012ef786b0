//! One server of the pair misbehaves (feature `misbehave`, test builds only) in one round; the
//! honest server abandons the round wherever the misbehaviour is detectable, with an alarm
//! and evidence, and the clients' messages of that round arrive once they are written again
//! after the misbehaviour stopped. Every client here sends exactly the requests it would send
//! to an honest pair: what the servers see from clients does not depend on the misbehaviour.

use super::*;
use server_core::misbehave::{Kind, Misbehave};
use std::sync::atomic::Ordering;

/// What round `r` should end as, seen by the honest server A.
enum Expect {
    /// Abandoned on both; A's reason matches.
    Abandoned(fn(&AbandonReason) -> bool),
    /// Published on both.
    Published,
}

struct Outcome {
    pair: Pair,
    r: u64,
    alice: TestClient,
    bob: TestClient,
    wa: WritePair,
    wb: WritePair,
}

/// Starts a pair where B misbehaves as `kind` in the rounds `r + from .. r + to` (r: the
/// first round the clients write in), lets Alice and Bob write in round r, and checks r's
/// outcome on both servers.
async fn run(kind: impl Fn(&TestClient) -> Kind, from: u64, to: u64, expect: Expect) -> Outcome {
    let alice = TestClient::new(61);
    let bob = TestClient::new(62);
    let kind = kind(&alice);
    // Round numbers are known once the pair's parameters are: B's config is adjusted then.
    let cell = std::sync::Mutex::new(None::<u64>);
    let pair = start_pair_with(Registration::Open, |c| {
        if c.role == Role::B {
            // Two rounds of slack for starting both servers and registering.
            let r = next_round(&c.params) + 2;
            *cell.lock().expect("lock") = Some(r);
            c.misbehave = Some(Misbehave {
                kind: kind.clone(),
                rounds: r + from..r + to,
            });
        }
    })
    .await;
    let r = cell.lock().expect("lock").expect("B configured");
    let p = pair.p;
    for c in [&alice, &bob] {
        register_both(&pair, c).await;
    }
    sleep_until(p.at_offset_ms(r, p.send_offset_ms)).await;
    let wa = alice.write(&p, r, [0x61; 16], 17, &payload(&p, 0xa1), 1);
    write(&pair, &wa, true, true).await;
    let wb = bob.write(&p, r, [0x62; 16], 99, &payload(&p, 0xb2), 2);
    write(&pair, &wb, true, true).await;
    sleep_until(p.at_offset_ms(r, p.publish_deadline_ms) + 100).await;
    let (sa, sb) = (pair.a.status(r).await, pair.b.status(r).await);
    match expect {
        Expect::Abandoned(reason) => {
            let RoundStatus::Abandoned(why) = &sa else {
                panic!("A did not abandon round {r}: {sa:?}")
            };
            assert!(reason(why), "A's reason: {why:?}");
            assert!(matches!(sb, RoundStatus::Abandoned(_)), "B: {sb:?}");
            assert!(
                pair.a.metrics.alarms.load(Ordering::Relaxed) >= 1,
                "A raised an alarm"
            );
        }
        Expect::Published => {
            assert!(matches!(sa, RoundStatus::Published(_)), "A: {sa:?}");
            assert_eq!(sa, sb, "both servers report the same outcome");
        }
    }
    Outcome {
        pair,
        r,
        alice,
        bob,
        wa,
        wb,
    }
}

impl Outcome {
    /// What `reader` reads of Alice's and Bob's slots in round r's array (in round
    /// r + read_lag).
    async fn read_round_r(&self, reader: &TestClient, seed: u8) -> Vec<Vec<u8>> {
        let p = self.pair.p;
        let at = self.r + u64::from(p.read_lag);
        sleep_until(p.at_offset_ms(at, p.send_offset_ms)).await;
        read(&self.pair, reader, at, &[17, 99], seed).await
    }
}

/// After the misbehaviour stopped, Alice and Bob write their messages again in the next
/// round (as their clients retransmit), and both arrive.
async fn delivered_after_it_stops(o: &mut Outcome) {
    let p = o.pair.p;
    let again = next_round(&p);
    sleep_until(p.at_offset_ms(again, p.send_offset_ms)).await;
    let wa = o.alice.write(&p, again, [0x71; 16], 17, &o.wa.payload, 3);
    write(&o.pair, &wa, true, true).await;
    let wb = o.bob.write(&p, again, [0x72; 16], 99, &o.wb.payload, 4);
    write(&o.pair, &wb, true, true).await;
    let at = again + u64::from(p.read_lag);
    sleep_until(p.at_offset_ms(at, p.send_offset_ms)).await;
    let got = read(&o.pair, &o.bob, at, &[17, 99], 5).await;
    assert_eq!(got[0], o.wa.payload, "Alice's message arrives");
    assert_eq!(got[1], o.wb.payload, "Bob's message arrives");
    let pubd = published(&o.pair, again).await;
    assert_eq!(pubd.accepted.len(), 2);
    o.pair.a.shutdown().await;
    o.pair.b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_omits_a_committed_write_is_caught_with_its_own_receipt() {
    let mut o = run(
        |_| Kind::OmitCommitted,
        0,
        1,
        Expect::Abandoned(|w| matches!(w, AbandonReason::PeerOmittedWrite { .. })),
    )
    .await;
    // The evidence is B's own signed receipt for the write it left out.
    let RoundStatus::Abandoned(AbandonReason::PeerOmittedWrite { evidence }) =
        o.pair.a.status(o.r).await
    else {
        unreachable!()
    };
    let info_b = call!(o.pair.b.client(), paths::INFO, InfoRequest {}, InfoResponse).expect("info");
    assert_eq!(
        (evidence.role, evidence.account, evidence.round),
        (Role::B, o.alice.account, o.r)
    );
    verify(
        &info_b.signing_key,
        &receipt_message(
            Role::B,
            &evidence.account,
            evidence.round,
            &evidence.request_id,
            &evidence.half_hash,
        ),
        &evidence.signature,
    )
    .expect("B signed the receipt it then omitted");
    delivered_after_it_stops(&mut o).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_closes_the_round_early_is_caught() {
    let mut o = run(
        |_| Kind::CloseEarly { by_ms: 600 },
        0,
        1,
        Expect::Abandoned(
            |w| matches!(w, AbandonReason::PeerClosedEarly { early_ms } if *early_ms > 250),
        ),
    )
    .await;
    delivered_after_it_stops(&mut o).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tweaked_share_makes_the_array_hashes_differ() {
    let mut o = run(
        |_| Kind::TweakShare,
        0,
        1,
        Expect::Abandoned(|w| *w == AbandonReason::HashMismatch),
    )
    .await;
    // Nobody reads the tweaked array: reads of round r are answered from zeros.
    let got = o.read_round_r(&o.alice, 6).await;
    assert!(got.iter().all(|a| a.iter().all(|b| *b == 0)));
    delivered_after_it_stops(&mut o).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_audit_drops_the_write_on_both_servers_only() {
    let mut o = run(
        |alice| Kind::FailAudit {
            account: alice.account,
        },
        0,
        1,
        Expect::Published,
    )
    .await;
    // Both servers dropped Alice's write, the same way; Bob's went through.
    let pubd = published(&o.pair, o.r).await;
    assert_eq!(pubd.accepted, vec![[0x62; 16]]);
    assert!(o.pair.a.metrics.alarms.load(Ordering::Relaxed) >= 1);
    let got = o.read_round_r(&o.bob, 7).await;
    assert!(
        got[0].iter().all(|b| *b == 0),
        "Alice's write was applied by neither"
    );
    assert_eq!(got[1], o.wb.payload);
    delivered_after_it_stops(&mut o).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_read_answers_hit_only_their_victim_and_only_while_they_last() {
    // B corrupts Alice's reads sent in round r + 2 (reads of round r).
    let mut o = run(
        |alice| Kind::CorruptReads {
            account: alice.account,
        },
        2,
        3,
        Expect::Published,
    )
    .await;
    let alice_sees = o.read_round_r(&o.alice, 8).await;
    let bob_sees = o.read_round_r(&o.bob, 9).await;
    assert_ne!(alice_sees[0], o.wa.payload, "Alice's answers are corrupted");
    assert_eq!(bob_sees, vec![o.wa.payload.clone(), o.wb.payload.clone()]);
    delivered_after_it_stops(&mut o).await;
}

/// A failing disk at B (persisting a write takes 300 ms, then fails) and a client that sends
/// the same write twice, 50 ms apart: the retry waits for the first copy instead of getting a
/// receipt at once, so B never acknowledges a write it does not hold. B abandons the round
/// for its own lost state; A is not accused of anything and accuses nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_gets_no_receipt_before_its_first_copy_is_on_disk() {
    let alice = TestClient::new(65);
    let cell = std::sync::Mutex::new(None::<u64>);
    let mut pair = start_pair_with(Registration::Open, |c| {
        if c.role == Role::B {
            let r = next_round(&c.params) + 2;
            *cell.lock().expect("lock") = Some(r);
            c.misbehave = Some(Misbehave {
                kind: Kind::FailWritePersist { delay_ms: 300 },
                rounds: r..r + 1,
            });
        }
    })
    .await;
    let r = cell.lock().expect("lock").expect("B configured");
    let p = pair.p;
    register_both(&pair, &alice).await;
    sleep_until(p.at_offset_ms(r, p.send_offset_ms)).await;
    let wa = alice.write(&p, r, [0x65; 16], 17, &payload(&p, 0xa5), 1);
    let ra = call!(pair.a.client(), paths::WRITE, wa.a.clone(), Receipt).expect("write A");
    let first = async { call!(pair.b.client(), paths::WRITE, wa.b.clone(), Receipt) };
    let retry = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        call!(pair.b.client(), paths::WRITE, wa.b.clone(), Receipt)
    };
    let (first, retry) = tokio::join!(first, retry);
    let (status, e) = first.expect_err("the first copy is not stored");
    assert_eq!((status, e.code), (500, ErrorCode::Internal), "{e:?}");
    // The retry is then a fresh write, which fails on the same disk (or, on a slow machine,
    // finds the write window closed): either way, no receipt.
    let (status, e) = retry.expect_err("no receipt for the retry");
    assert!(
        matches!(e.code, ErrorCode::Internal | ErrorCode::TooLate),
        "{status}: {e:?}"
    );
    // The client holds A's receipt only, so it commits nothing; A's receipt alone is no
    // commit at B.
    let (status, e) = call!(
        pair.b.client(),
        paths::COMMIT,
        CommitRequest {
            fingerprint: p.fingerprint(),
            peer_receipt: ra
        },
        CommitAck
    )
    .expect_err("B holds no such write");
    assert_eq!(e.code, ErrorCode::UnknownWrite, "{status}: {e:?}");
    sleep_until(p.at_offset_ms(r, p.publish_deadline_ms) + 100).await;
    let (sa, sb) = (pair.a.status(r).await, pair.b.status(r).await);
    assert!(
        matches!(sb, RoundStatus::Abandoned(AbandonReason::LocalStateLost)),
        "B: {sb:?}"
    );
    assert!(
        !matches!(
            sa,
            RoundStatus::Abandoned(AbandonReason::PeerOmittedWrite { .. })
        ),
        "A accuses B of nothing: {sa:?}"
    );
    pair.a.shutdown().await;
    pair.b.shutdown().await;
}
