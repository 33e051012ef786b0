//! The audit against many random malformed write-key pairs: none may pass.

use dpf::{AuditChallenge, Party, RandomSource, SeededRandom, WriteKey, write_accumulate_audited};

const N: u32 = 6;
const L: usize = 32;

/// Both servers' audit values for a pair (each half with its own context), equal or not.
fn passes(a: &WriteKey, b: &WriteKey, ctx_a: &[u8], ctx_b: &[u8], ch: &AuditChallenge) -> bool {
    let mut arr_a = vec![0u8; L << N];
    let mut arr_b = vec![0u8; L << N];
    let va = write_accumulate_audited(&mut arr_a, L, &[(a, ctx_a)], Party::A, ch);
    let vb = write_accumulate_audited(&mut arr_b, L, &[(b, ctx_b)], Party::B, ch);
    va == vb
}

#[test]
fn ten_thousand_malformed_pairs_are_all_rejected_and_honest_ones_pass() {
    let mut rng = SeededRandom::new([0x6d; 32]);
    let header = 3 + 4; // version, kind, domain, slot length
    let key_len = WriteKey::encoded_len(N, L);
    let (mut rejected_by_decode, mut rejected_by_audit, mut honest) = (0, 0, 0);
    let mut prev: Option<WriteKey> = None;
    for i in 0..10_000u32 {
        let mut ch = [0u8; 16];
        rng.fill(&mut ch);
        let ch = AuditChallenge(ch);
        let alpha = u64::from(rng.u128() as u8) % (1 << N);
        let mut payload = vec![0u8; L];
        rng.fill(&mut payload);
        let (a, b) = WriteKey::r#gen(N, L, alpha, &payload, &mut rng).expect("gen");
        // Every 50th pair stays honest and must pass.
        if i % 50 == 0 {
            assert!(
                passes(&a, &b, b"ctx", b"ctx", &ch),
                "honest pair {i} rejected"
            );
            honest += 1;
            continue;
        }
        let kind = i % 5;
        let bad_b = match kind {
            // One byte of one half's public part or seed changed (every field in turn: salt,
            // root seed, each level's correction word and control bit, output correction words,
            // proof correction word).
            0..=2 => {
                let mut e = b.encode();
                let pos = header + (rng.u128() as usize) % (key_len - header);
                let mut bit = [0u8; 1];
                rng.fill(&mut bit);
                e[pos] ^= 1 << (bit[0] % 8);
                match WriteKey::decode(&e, N, L) {
                    Ok(k) => k,
                    Err(_) => {
                        rejected_by_decode += 1;
                        continue;
                    }
                }
            }
            // A half from another honest pair.
            3 => match prev.replace(b) {
                Some(p) => p,
                None => continue,
            },
            // The right pair under different contexts (round, request id or account).
            _ => {
                assert!(
                    !passes(&a, &b, b"round 1", b"round 2", &ch),
                    "pair {i} passed across contexts"
                );
                rejected_by_audit += 1;
                continue;
            }
        };
        assert!(
            !passes(&a, &bad_b, b"ctx", b"ctx", &ch),
            "malformed pair {i} (kind {kind}) passed"
        );
        rejected_by_audit += 1;
    }
    assert!(
        rejected_by_audit + rejected_by_decode >= 9_700,
        "{rejected_by_audit} + {rejected_by_decode}"
    );
    assert_eq!(honest, 200);
}
