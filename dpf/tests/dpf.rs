//! Correctness, privacy and encoding tests of the public API.

use dpf::{
    AuditChallenge, DecodeError, Error, Party, RandomSource, ReadKey, SeededRandom, WriteKey,
    pir_answer, write_accumulate, write_accumulate_audited, write_audit,
};

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

fn read_bits(a: &ReadKey, b: &ReadKey) -> Vec<u128> {
    let (fa, fb) = (a.eval_full(Party::A), b.eval_full(Party::B));
    fa.iter().zip(&fb).map(|(x, y)| x ^ y).collect()
}

fn expect_point(bits: &[u128], alpha: u64) {
    for (i, blk) in bits.iter().enumerate() {
        let want = if alpha >> 7 == i as u64 {
            1u128 << (alpha & 127)
        } else {
            0
        };
        assert_eq!(*blk, want, "block {i} for alpha {alpha}");
    }
}

#[test]
fn read_keys_exhaustive_for_small_domains() {
    let mut rng = SeededRandom::new([1; 32]);
    for n in 1..=10u32 {
        for alpha in 0..(1u64 << n) {
            let (a, b) = ReadKey::r#gen(n, alpha, &mut rng).expect("gen");
            let bits = read_bits(&a, &b);
            expect_point(&bits, alpha);
            for x in 0..(1u64 << n) {
                assert_eq!(
                    a.eval_point(Party::A, x) ^ b.eval_point(Party::B, x),
                    x == alpha
                );
            }
        }
    }
}

#[test]
fn write_keys_exhaustive_for_small_domains() {
    let mut rng = SeededRandom::new([2; 32]);
    let l = 32;
    for n in 1..=10u32 {
        for alpha in 0..(1u64 << n) {
            let payload: Vec<u8> = (0..l).map(|i| (i as u64 ^ alpha) as u8).collect();
            let (a, b) = WriteKey::r#gen(n, l, alpha, &payload, &mut rng).expect("gen");
            let out = xor(&a.eval_full(Party::A), &b.eval_full(Party::B));
            for (x, slot) in out.chunks(l).enumerate() {
                if x as u64 == alpha {
                    assert_eq!(slot, payload);
                } else {
                    assert!(slot.iter().all(|v| *v == 0), "n {n} alpha {alpha} slot {x}");
                }
            }
            if n <= 6 {
                for x in 0..(1u64 << n) {
                    let s = xor(&a.eval_point(Party::A, x), &b.eval_point(Party::B, x));
                    assert_eq!(s, &out[x as usize * l..(x as usize + 1) * l]);
                }
            }
        }
    }
}

#[test]
fn large_domains_at_random_points() {
    let mut rng = SeededRandom::new([3; 32]);
    for n in [20u32, 24] {
        for _ in 0..3 {
            let alpha = rng.u128() as u64 & ((1 << n) - 1);
            let (a, b) = ReadKey::r#gen(n, alpha, &mut rng).expect("gen");
            expect_point(&read_bits(&a, &b), alpha);
        }
    }
    let l = 16;
    for _ in 0..2 {
        let alpha = rng.u128() as u64 & ((1 << 20) - 1);
        let payload = [0xa5u8; 16];
        let (a, b) = WriteKey::r#gen(20, l, alpha, &payload, &mut rng).expect("gen");
        let out = xor(&a.eval_full(Party::A), &b.eval_full(Party::B));
        let nonzero: Vec<usize> = out
            .chunks(l)
            .enumerate()
            .filter(|(_, s)| s.iter().any(|v| *v != 0))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(nonzero, vec![alpha as usize]);
        assert_eq!(&out[alpha as usize * l..][..l], payload);
    }
    // n = 24 write: a window of slots around the point and some random ones.
    let alpha = rng.u128() as u64 & ((1 << 24) - 1);
    let payload: Vec<u8> = (0..64).collect();
    let (a, b) = WriteKey::r#gen(24, 64, alpha, &payload, &mut rng).expect("gen");
    let lo = alpha.saturating_sub(500);
    let hi = (alpha + 500).min(1 << 24);
    let mut sa = vec![0u8; (hi - lo) as usize * 64];
    let mut sb = sa.clone();
    a.eval_range(Party::A, lo, hi, &mut sa);
    b.eval_range(Party::B, lo, hi, &mut sb);
    for (i, s) in xor(&sa, &sb).chunks(64).enumerate() {
        if lo + i as u64 == alpha {
            assert_eq!(s, payload);
        } else {
            assert!(s.iter().all(|v| *v == 0));
        }
    }
}

#[test]
fn sub_ranges_equal_the_full_evaluation() {
    let mut rng = SeededRandom::new([4; 32]);
    let (a, _) = WriteKey::r#gen(12, 16, 1234, &[7; 16], &mut rng).expect("gen");
    let full = a.eval_full(Party::A);
    let (r, _) = ReadKey::r#gen(16, 4321, &mut rng).expect("gen");
    let rfull = r.eval_full(Party::B);
    for _ in 0..50 {
        let x = rng.u128();
        let lo = (x as u64) % 4096;
        let hi = lo + 1 + ((x >> 64) as u64) % (4096 - lo);
        let mut part = vec![0u8; (hi - lo) as usize * 16];
        a.eval_range(Party::A, lo, hi, &mut part);
        assert_eq!(part, &full[lo as usize * 16..hi as usize * 16]);
        let (blo, bhi) = (lo % 512, (lo % 512) + 1 + (hi % (512 - lo % 512)));
        assert_eq!(
            r.eval_blocks(Party::B, blo, bhi),
            &rfull[blo as usize..bhi as usize]
        );
    }
}

#[test]
fn pir_answer_recovers_the_selected_row_for_many_keys_at_once() {
    let mut rng = SeededRandom::new([5; 32]);
    let (n, row) = (12u32, 48usize);
    let rows = 3000usize; // fewer rows than points: the tail is never selected
    let mut db = vec![0u8; rows * row];
    rng.fill(&mut db);
    let alphas = [0u64, 1, 127, 128, 2999, 1500];
    let pairs: Vec<(ReadKey, ReadKey)> = alphas
        .iter()
        .map(|a| ReadKey::r#gen(n, *a, &mut rng).expect("gen"))
        .collect();
    let ka: Vec<&ReadKey> = pairs.iter().map(|p| &p.0).collect();
    let kb: Vec<&ReadKey> = pairs.iter().map(|p| &p.1).collect();
    let ans_a = pir_answer(&db, row, &ka, Party::A);
    let ans_b = pir_answer(&db, row, &kb, Party::B);
    for (i, alpha) in alphas.iter().enumerate() {
        let got = xor(&ans_a[i], &ans_b[i]);
        assert_eq!(got, &db[*alpha as usize * row..(*alpha as usize + 1) * row]);
    }
    // A point beyond the database reads zeros.
    let (a, b) = ReadKey::r#gen(n, 4000, &mut rng).expect("gen");
    let got = xor(
        &pir_answer(&db, row, &[&a], Party::A)[0],
        &pir_answer(&db, row, &[&b], Party::B)[0],
    );
    assert!(got.iter().all(|v| *v == 0));
    // Small domains (no tree levels) work too.
    let (a, b) = ReadKey::r#gen(3, 5, &mut rng).expect("gen");
    let small = &db[..8 * row];
    let got = xor(
        &pir_answer(small, row, &[&a], Party::A)[0],
        &pir_answer(small, row, &[&b], Party::B)[0],
    );
    assert_eq!(got, &db[5 * row..6 * row]);
}

/// Hundreds of keys (several key batches and a ragged last register group), rows wide enough
/// that a chunk is one leaf, a row length that ends in a partial 64-byte stripe, a row count
/// that ends in a partial chunk, and keys of mixed domain sizes in one call.
#[test]
fn pir_answer_is_exact_across_batches_groups_chunks_and_stripes() {
    let mut rng = SeededRandom::new([15; 32]);
    let (row, rows) = (2064usize, 700usize);
    let mut db = vec![0u8; rows * row];
    rng.fill(&mut db);
    let picks: Vec<(u32, u64)> = (0..301u64)
        .map(|i| match i % 3 {
            0 => (10, (i * 131) % 700),
            1 => (12, (i * 37) % 4096), // past the last row for some: reads zeros
            _ => (5, i % 32),
        })
        .collect();
    let pairs: Vec<(ReadKey, ReadKey)> = picks
        .iter()
        .map(|(n, a)| ReadKey::r#gen(*n, *a, &mut rng).expect("gen"))
        .collect();
    let ka: Vec<&ReadKey> = pairs.iter().map(|p| &p.0).collect();
    let kb: Vec<&ReadKey> = pairs.iter().map(|p| &p.1).collect();
    let (ans_a, ans_b) = (
        pir_answer(&db, row, &ka, Party::A),
        pir_answer(&db, row, &kb, Party::B),
    );
    for (i, (_, alpha)) in picks.iter().enumerate() {
        let a = *alpha as usize;
        let want = if a < rows {
            db[a * row..(a + 1) * row].to_vec()
        } else {
            vec![0; row]
        };
        assert_eq!(xor(&ans_a[i], &ans_b[i]), want, "key {i}, row {a}");
    }
}

#[test]
fn write_accumulate_batches_many_keys_in_one_pass() {
    let mut rng = SeededRandom::new([6; 32]);
    let (n, l) = (11u32, 64usize);
    let mut arr_a = vec![0u8; l << n];
    let mut arr_b = vec![0u8; l << n];
    rng.fill(&mut arr_a);
    arr_b.copy_from_slice(&arr_a); // the same mask on both sides cancels
    let writes: Vec<(u64, Vec<u8>)> = (0..20u64)
        .map(|i| ((i * 97) % 2048, vec![i as u8 + 1; l]))
        .collect();
    let pairs: Vec<(WriteKey, WriteKey)> = writes
        .iter()
        .map(|(a, p)| WriteKey::r#gen(n, l, *a, p, &mut rng).expect("gen"))
        .collect();
    write_accumulate(
        &mut arr_a,
        l,
        &pairs.iter().map(|p| &p.0).collect::<Vec<_>>(),
        Party::A,
    );
    let ctx = b"ctx".as_slice();
    let ch = AuditChallenge([3; 16]);
    let wa: Vec<(&WriteKey, &[u8])> = pairs.iter().map(|p| (&p.0, ctx)).collect();
    let wb: Vec<(&WriteKey, &[u8])> = pairs.iter().map(|p| (&p.1, ctx)).collect();
    let mut audit_a = vec![0u8; l << n];
    let va = write_accumulate_audited(&mut audit_a, l, &wa, Party::A, &ch);
    let vb = write_accumulate_audited(&mut arr_b, l, &wb, Party::B, &ch);
    assert_eq!(va, vb);
    let mut plain_a = vec![0u8; l << n];
    write_accumulate(
        &mut plain_a,
        l,
        &wa.iter().map(|w| w.0).collect::<Vec<_>>(),
        Party::A,
    );
    assert_eq!(plain_a, audit_a, "the audited kernel writes the same share");
    let sum = xor(&arr_a, &arr_b);
    for (x, slot) in sum.chunks(l).enumerate() {
        let want = writes
            .iter()
            .filter(|w| w.0 == x as u64)
            .fold(vec![0u8; l], |acc, w| xor(&acc, &w.1));
        assert_eq!(slot, want, "slot {x}");
    }
}

/// Frequency of ones at each bit of party A's encoded key (after the header and the secret
/// root), over `count` keys for points drawn by `point`.
fn bit_frequencies(
    count: usize,
    mut point: impl FnMut(usize) -> u64,
    rng: &mut SeededRandom,
) -> Vec<f64> {
    let n = 12;
    let mut ones: Vec<usize> = Vec::new();
    for i in 0..count {
        let (a, _) = WriteKey::r#gen(n, 16, point(i), &[0x5a; 16], rng).expect("gen");
        let bytes = a.encode();
        let bits = bytes.len() * 8;
        ones.resize(bits, 0);
        for (j, o) in ones.iter_mut().enumerate() {
            *o += usize::from((bytes[j / 8] >> (j % 8)) & 1);
        }
    }
    ones.iter().map(|o| *o as f64 / count as f64).collect()
}

#[test]
fn one_key_does_not_depend_on_the_point() {
    let mut rng = SeededRandom::new([7; 32]);
    let count = 2000;
    let low = bit_frequencies(count, |_| 0, &mut rng);
    let high = bit_frequencies(count, |_| (1 << 12) - 1, &mut rng);
    let mixed = bit_frequencies(count, |i| (i as u64 * 2654435761) % 4096, &mut rng);
    // Skip the fixed header (version, kind, domain, slot length) and the root's low bit
    // (always clear); every other bit, including every control correction, is uniform.
    let header_bits = 7 * 8;
    let sigma = (0.25f64 / count as f64).sqrt();
    let mut checked = 0;
    for j in header_bits..low.len() {
        if j == header_bits + 16 * 8 {
            continue; // root low bit
        }
        let is_t_right_pad = {
            let off = (j / 8) as isize - (7 + 32) as isize;
            off >= 0 && (off as usize) < 12 * 17 && off as usize % 17 == 16 && j % 8 != 0
        };
        if is_t_right_pad {
            continue; // upper bits of the 0/1 control-correction byte
        }
        for f in [low[j], high[j], mixed[j]] {
            assert!((f - 0.5).abs() < 6.0 * sigma, "bit {j}: frequency {f}");
        }
        assert!(
            (low[j] - high[j]).abs() < 6.0 * 1.5 * sigma,
            "bit {j} depends on the point"
        );
        checked += 1;
    }
    assert!(checked > 1000);
}

#[test]
fn keys_from_independent_runs_differ() {
    let mut os = dpf::OsRandom;
    let (a1, b1) = ReadKey::r#gen(16, 9, &mut os).expect("gen");
    let (a2, b2) = ReadKey::r#gen(16, 9, &mut os).expect("gen");
    assert_ne!(a1.encode(), a2.encode());
    assert_ne!(b1.encode(), b2.encode());
    let (w1, _) = WriteKey::r#gen(8, 16, 9, &[1; 16], &mut os).expect("gen");
    let (w2, _) = WriteKey::r#gen(8, 16, 9, &[1; 16], &mut os).expect("gen");
    assert_ne!(w1.encode(), w2.encode());
}

#[test]
fn generation_rejects_bad_arguments() {
    let mut rng = SeededRandom::new([8; 32]);
    assert_eq!(
        ReadKey::r#gen(0, 0, &mut rng).err(),
        Some(Error::DomainBits(0))
    );
    assert_eq!(
        ReadKey::r#gen(49, 0, &mut rng).err(),
        Some(Error::DomainBits(49))
    );
    assert_eq!(
        ReadKey::r#gen(4, 16, &mut rng).err(),
        Some(Error::PointOutOfRange {
            alpha: 16,
            domain_bits: 4
        })
    );
    assert_eq!(
        WriteKey::r#gen(4, 15, 0, &[0; 15], &mut rng).err(),
        Some(Error::SlotLen(15))
    );
    assert_eq!(
        WriteKey::r#gen(4, 0, 0, &[], &mut rng).err(),
        Some(Error::SlotLen(0))
    );
    assert_eq!(
        WriteKey::r#gen(4, 16, 0, &[0; 32], &mut rng).err(),
        Some(Error::PayloadLen { got: 32, want: 16 })
    );
}

#[test]
fn encodings_round_trip_and_have_the_announced_length() {
    let mut rng = SeededRandom::new([9; 32]);
    for n in [1u32, 6, 7, 8, 20, 30] {
        let (a, b) = ReadKey::r#gen(n, 0, &mut rng).expect("gen");
        for k in [&a, &b] {
            let e = k.encode();
            assert_eq!(e.len(), ReadKey::encoded_len(n));
            assert_eq!(&ReadKey::decode(&e, n).expect("decode"), k);
        }
        let (a, _) = WriteKey::r#gen(n, 48, 0, &[1; 48], &mut rng).expect("gen");
        let e = a.encode();
        assert_eq!(e.len(), WriteKey::encoded_len(n, 48));
        assert_eq!(WriteKey::decode(&e, n, 48).expect("decode"), a);
    }
}

#[test]
fn bad_encodings_are_rejected_with_typed_errors() {
    let mut rng = SeededRandom::new([10; 32]);
    let (r, _) = ReadKey::r#gen(10, 3, &mut rng).expect("gen");
    let (w, _) = WriteKey::r#gen(10, 32, 3, &[2; 32], &mut rng).expect("gen");
    let re = r.encode();
    let we = w.encode();
    let with = |mut v: Vec<u8>, i: usize, b: u8| {
        v[i] = b;
        v
    };
    assert_eq!(ReadKey::decode(&[], 10), Err(DecodeError::Truncated));
    assert_eq!(
        ReadKey::decode(&with(re.clone(), 0, 2), 10),
        Err(DecodeError::Version(2))
    );
    assert_eq!(ReadKey::decode(&we, 10), Err(DecodeError::Kind(2)));
    assert_eq!(WriteKey::decode(&re, 10, 32), Err(DecodeError::Kind(1)));
    // A version 1 write key (its audit could be forged) is refused as such.
    assert_eq!(
        WriteKey::decode(&with(we.clone(), 0, 1), 10, 32),
        Err(DecodeError::Version(1))
    );
    assert_eq!(
        ReadKey::decode(&re, 11),
        Err(DecodeError::Domain { got: 10, want: 11 })
    );
    assert_eq!(
        ReadKey::decode(&re, 0),
        Err(DecodeError::Domain { got: 0, want: 0 })
    );
    assert_eq!(
        ReadKey::decode(&re[..re.len() - 1], 10),
        Err(DecodeError::Length {
            got: re.len() - 1,
            want: re.len()
        })
    );
    let mut long = re.clone();
    long.push(0);
    assert_eq!(
        ReadKey::decode(&long, 10),
        Err(DecodeError::Length {
            got: re.len() + 1,
            want: re.len()
        })
    );
    assert!(matches!(
        ReadKey::decode(&with(re.clone(), 3 + 16, 1), 10),
        Err(DecodeError::NonCanonical(_))
    ));
    assert!(matches!(
        ReadKey::decode(&with(re.clone(), 3 + 32 + 16, 2), 10),
        Err(DecodeError::NonCanonical(_))
    ));
    assert_eq!(
        WriteKey::decode(&we, 10, 64),
        Err(DecodeError::SlotLen { got: 32, want: 64 })
    );
    assert_eq!(
        WriteKey::decode(&we, 10, 33),
        Err(DecodeError::SlotLen { got: 33, want: 33 })
    );
    assert_eq!(
        WriteKey::decode(&we[..50], 10, 32),
        Err(DecodeError::Length {
            got: 50,
            want: we.len()
        })
    );
}

/// Known-answer vectors: keys generated from a fixed seed, and encodings that must fail.
/// Regenerate with `DPF_BLESS=1 cargo test -p dpf --test dpf known_answers` after an
/// intentional format change (and bump the version).
#[test]
fn known_answers() {
    let mut out = String::new();
    let mut rng = SeededRandom::new([42; 32]);
    for (n, alpha) in [(1u32, 1u64), (7, 100), (10, 513)] {
        let (a, b) = ReadKey::r#gen(n, alpha, &mut rng).expect("gen");
        out += &format!(
            "read n={n} alpha={alpha}\nA {}\nB {}\n",
            hex(&a.encode()),
            hex(&b.encode())
        );
    }
    for (n, alpha) in [(2u32, 3u64), (5, 17)] {
        let payload: Vec<u8> = (0..32).collect();
        let (a, b) = WriteKey::r#gen(n, 32, alpha, &payload, &mut rng).expect("gen");
        out += &format!(
            "write n={n} slot=32 alpha={alpha}\nA {}\nB {}\n",
            hex(&a.encode()),
            hex(&b.encode())
        );
        let sa = a.eval_point(Party::A, alpha);
        out += &format!("eval A at alpha {}\n", hex(&sa));
        out += &format!("public_hash(\"kat\") {}\n", hex(&a.public_hash(b"kat")));
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/keys.txt");
    if std::env::var_os("DPF_BLESS").is_some() {
        std::fs::write(path, &out).expect("write vectors");
    }
    let want = std::fs::read_to_string(path).expect("vectors file");
    assert_eq!(
        out, want,
        "key generation no longer matches the committed vectors"
    );

    let bad = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/bad.txt"
    ))
    .expect("bad vectors");
    let mut count = 0;
    for line in bad.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let mut f = line.split_whitespace();
        let (kind, n, hexed) = (
            f.next().expect("kind"),
            f.next().expect("n"),
            f.next().unwrap_or(""),
        );
        let n: u32 = n.parse().expect("n");
        let bytes = unhex(hexed);
        match kind {
            "read" => assert!(ReadKey::decode(&bytes, n).is_err(), "{line}"),
            "write32" => assert!(WriteKey::decode(&bytes, n, 32).is_err(), "{line}"),
            other => panic!("unknown kind {other}"),
        }
        count += 1;
    }
    assert!(count >= 5);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn every_truncated_prefix_and_extension_is_rejected() {
    let mut rng = SeededRandom::new([11; 32]);
    let (r, _) = ReadKey::r#gen(12, 3, &mut rng).expect("gen");
    let (w, _) = WriteKey::r#gen(9, 48, 3, &[2; 48], &mut rng).expect("gen");
    let (re, we) = (r.encode(), w.encode());
    for n in 0..re.len() {
        assert!(ReadKey::decode(&re[..n], 12).is_err(), "prefix {n}");
    }
    for n in 0..we.len() {
        assert!(WriteKey::decode(&we[..n], 9, 48).is_err(), "prefix {n}");
    }
    let mut longer = we.clone();
    longer.extend_from_slice(&[0; 100]);
    assert!(WriteKey::decode(&longer, 9, 48).is_err());
    // A header claiming a huge slot length is rejected before anything is allocated.
    let mut huge = we.clone();
    huge[3..7].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        WriteKey::decode(&huge, 9, 48),
        Err(DecodeError::SlotLen { .. })
    ));
    assert!(WriteKey::decode(&huge, 9, u32::MAX as usize).is_err());
}

/// A server that applies writes as they arrive (`write_accumulate`) and audits them once the
/// challenge is drawn (`write_audit`) ends with the same array and the same audit values as
/// one that does both at once, for honest and malformed pairs, and for keys whose domain is
/// smaller or larger than the array.
#[test]
fn applying_early_and_auditing_later_equals_the_audited_write() {
    let mut rng = SeededRandom::new([16; 32]);
    let (slots, l) = (700usize, 48usize);
    let ch = AuditChallenge([0x3c; 16]);
    let mut keys: Vec<(WriteKey, Vec<u8>)> = Vec::new();
    for (i, n) in [10u32, 9, 11, 10, 10].into_iter().enumerate() {
        let (mut a, _) = WriteKey::r#gen(
            n,
            l,
            (i as u64 * 97) % (1 << n),
            &[i as u8 + 1; 48],
            &mut rng,
        )
        .expect("gen");
        if i == 3 {
            // A malformed half: its output correction changed.
            let (b, _) = WriteKey::r#gen(n, l, 5, &[9; 48], &mut rng).expect("gen");
            a = b;
        }
        keys.push((a, format!("ctx {i}").into_bytes()));
    }
    let writes: Vec<(&WriteKey, &[u8])> = keys.iter().map(|(k, c)| (k, c.as_slice())).collect();
    let refs: Vec<&WriteKey> = keys.iter().map(|(k, _)| k).collect();
    for party in [Party::A, Party::B] {
        let mut at_once = vec![0u8; slots * l];
        rng.fill(&mut at_once);
        let mut early = at_once.clone();
        let want = write_accumulate_audited(&mut at_once, l, &writes, party, &ch);
        write_accumulate(&mut early, l, &refs, party);
        let got = write_audit(slots, l, &writes, party, &ch);
        assert_eq!(got, want, "{party:?}: audit values");
        assert_eq!(early, at_once, "{party:?}: arrays");
    }
}
