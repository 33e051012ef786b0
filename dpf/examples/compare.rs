//! Ours, a published peer, and the machine's floor, side by side from one run.
//!
//! `cargo run --release -p dpf --example compare`
//!
//! * full-domain evaluation with 16-byte outputs: our `WriteKey` against `fss-rs` 0.6 (BGI DPF
//!   with Matyas-Meyer-Oseas AES, single-threaded build), and the AES floor: the time for the
//!   same number of AES blocks our evaluation needs (2 per internal node + 1 per leaf), through
//!   the same `aes` crate in batches of 64.
//! * the server kernels at 2^16 slots of 256 bytes: `write_accumulate` (with and without the
//!   audit) and `pir_answer` for 8 keys, against their floors: AES blocks for the write, and one
//!   streaming pass over the array for the read; and `pir_answer` for 1,000 keys, where the
//!   masked XOR (4 AVX-512 XORs per row and key at 256 B) is the limit, per row and key.
//!
//! Each figure is the best of several runs (the machine is shared); compare ratios, not ns.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use dpf::{
    AuditChallenge, Party, RandomSource, ReadKey, SeededRandom, WriteKey, pir_answer,
    write_accumulate, write_accumulate_audited, write_audit,
};
use fss_rs::dpf::{Dpf, DpfImpl, PointFn};
use fss_rs::group::Group;
use fss_rs::group::byte::ByteGroup;
use fss_rs::prg::Aes128MatyasMeyerOseasPrg;

fn best(reps: usize, mut f: impl FnMut()) -> Duration {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// Time for `blocks` blocks of the fixed-key hash alone (VAES where present), in L1-sized
/// batches: the AES floor of any evaluation that needs that many blocks.
fn aes_floor(blocks: usize, reps: usize) -> Duration {
    let mut buf = vec![0u128; 2048];
    best(reps, || {
        let mut left = blocks;
        while left > 0 {
            let n = left.min(buf.len());
            dpf::floor_hash(&mut buf[..n]);
            left -= n;
        }
        black_box(&buf);
    })
}

/// The same through the `aes` crate (its own VAES path, 64 blocks per call), for reference.
fn aes_crate(blocks: usize, reps: usize) -> Duration {
    let cipher = Aes128::new(&Array::from([7u8; 16]));
    let mut buf = vec![[0u8; 16]; 64];
    best(reps, || {
        let mut left = blocks;
        while left > 0 {
            let n = left.min(64);
            cipher.encrypt_blocks(Array::cast_slice_from_core_mut(&mut buf[..n]));
            left -= n;
        }
        black_box(&buf);
    })
}

fn ns_per(d: Duration, items: usize) -> f64 {
    d.as_secs_f64() * 1e9 / items as f64
}

fn row(name: &str, items: usize, ours: Duration, peer: Option<Duration>, floor: Duration) {
    let (o, f) = (ns_per(ours, items), ns_per(floor, items));
    match peer {
        Some(p) => {
            let p = ns_per(p, items);
            println!(
                "{name:<44} {o:>9.2} {p:>9.2} {f:>9.2} {:>10.2} {:>10.2}",
                o / f,
                p / o
            )
        }
        None => println!(
            "{name:<44} {o:>9.2} {:>9} {f:>9.2} {:>10.2} {:>10}",
            "-",
            o / f,
            "-"
        ),
    }
}

macro_rules! peer_full_eval {
    ($n:expr, $in_blen:expr) => {{
        let prg = Aes128MatyasMeyerOseasPrg::<16, 1, 2>::new(&[&[1u8; 16], &[2u8; 16]]);
        let peer = DpfImpl::<$in_blen, 16, _>::new_with_filter(prg, $n);
        let mut alpha = [0u8; $in_blen];
        alpha[0] = 0x5a;
        let f = PointFn {
            alpha,
            beta: ByteGroup([9u8; 16]),
        };
        let k = peer.r#gen(&f, [&[3u8; 16], &[4u8; 16]]);
        let mut ys = vec![ByteGroup::zero(); 1 << $n];
        let mut ys_ref: Vec<&mut ByteGroup<16>> = ys.iter_mut().collect();
        best(5, || peer.full_eval(false, &k, &mut ys_ref))
    }};
}

fn main() {
    println!(
        "ns per point/slot (lower is better); ratios: ours/floor (1.0 = at the AES or memory limit), peer/ours (>1 = we are faster)"
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "case", "ours", "peer", "floor", "ours/floor", "peer/ours"
    );
    let mut rng = SeededRandom::new([1; 32]);
    let blocks = 1 << 20;
    println!(
        "AES-128 block: {:.2} ns with our fixed-key hash kernel, {:.2} ns through the aes crate",
        ns_per(aes_floor(blocks, 5), blocks),
        ns_per(aes_crate(blocks, 5), blocks)
    );

    for n in [16u32, 20] {
        let points = 1usize << n;
        let (w, _) = WriteKey::r#gen(n, 16, 5, &[9; 16], &mut rng).expect("gen");
        let mut out = vec![0u8; points * 16];
        let ours = best(5, || w.eval_range(Party::A, 0, points as u64, &mut out));
        let peer = if n == 16 {
            peer_full_eval!(16, 2)
        } else {
            peer_full_eval!(20, 3)
        };
        let floor = aes_floor(3 * points, 5);
        row(
            &format!("full eval 2^{n}, 16 B outputs"),
            points,
            ours,
            Some(peer),
            floor,
        );
    }

    let n = 22u32;
    let (r, _) = ReadKey::r#gen(n, 5, &mut rng).expect("gen");
    let ours = best(5, || {
        black_box(r.eval_full(Party::A));
    });
    let leaves = 1usize << (n - 7);
    row(
        "read key full eval 2^22 points (bits)",
        1 << n,
        ours,
        None,
        aes_floor(3 * leaves, 5),
    );

    for l in [256usize, 1024] {
        let n = 14u32;
        let slots = 1usize << n;
        let mut arr = vec![0u8; slots * l];
        let payload = vec![1u8; l];
        let writes: Vec<WriteKey> = (0..8)
            .map(|i| {
                WriteKey::r#gen(n, l, i * 999, &payload, &mut rng)
                    .expect("gen")
                    .0
            })
            .collect();
        let refs: Vec<&WriteKey> = writes.iter().collect();
        let audited: Vec<(&WriteKey, &[u8])> =
            writes.iter().map(|w| (w, b"c".as_slice())).collect();
        let plain = best(5, || write_accumulate(&mut arr, l, &refs, Party::A));
        let with = best(5, || {
            black_box(write_accumulate_audited(
                &mut arr,
                l,
                &audited,
                Party::A,
                &AuditChallenge([3; 16]),
            ));
        });
        println!(
            "audit overhead at 2^14 x {l} B, 8 keys: {:+.1}% (AES blocks alone: {:+.1}%)",
            (with.as_secs_f64() / plain.as_secs_f64() - 1.0) * 100.0,
            // 4 proof blocks per slot and key, plus 8 derivation and coefficient blocks per
            // slot shared by the 8 keys, over the plain write's 2 + l/16 blocks.
            500.0 / (2.0 + l as f64 / 16.0)
        );
    }

    let (n, l, k) = (16u32, 256usize, 8usize);
    let slots = 1usize << n;
    let mut arr = vec![0u8; slots * l];
    rng.fill(&mut arr);
    let writes: Vec<WriteKey> = (0..k)
        .map(|i| {
            WriteKey::r#gen(n, l, i as u64 * 999, &[1; 256], &mut rng)
                .expect("gen")
                .0
        })
        .collect();
    let refs: Vec<&WriteKey> = writes.iter().collect();
    let ours = best(3, || write_accumulate(&mut arr, l, &refs, Party::A));
    // 2 tree blocks per slot (all internal nodes) + l/16 payload blocks per slot.
    let write_blocks = k * slots * (2 + l / 16);
    row(
        "write_accumulate 2^16 x 256 B (per slot-key)",
        k * slots,
        ours,
        None,
        aes_floor(write_blocks, 3),
    );
    let ctx = b"ctx".as_slice();
    let audited: Vec<(&WriteKey, &[u8])> = writes.iter().map(|w| (w, ctx)).collect();
    let ours_a = best(3, || {
        black_box(write_accumulate_audited(
            &mut arr,
            l,
            &audited,
            Party::A,
            &AuditChallenge([3; 16]),
        ));
    });
    row(
        "  audited (same, + proofs and reduction)",
        k * slots,
        ours_a,
        None,
        aes_floor(write_blocks, 3),
    );
    println!(
        "  audit overhead: {:+.1}% over the plain write",
        (ours_a.as_secs_f64() / ours.as_secs_f64() - 1.0) * 100.0
    );
    // The servers apply writes early and audit at the close: the audit alone.
    let ours_audit = best(3, || {
        black_box(write_audit(
            slots,
            l,
            &audited,
            Party::A,
            &AuditChallenge([3; 16]),
        ));
    });
    row(
        "  audit alone (write_audit, no payload)",
        k * slots,
        ours_audit,
        None,
        // 2 tree blocks and 4 proof blocks per slot and key, plus 8 derivation and
        // coefficient blocks per slot shared by the keys (key schedules and products not
        // counted).
        aes_floor(k * slots * 6 + slots * 8, 3),
    );

    let reads: Vec<ReadKey> = (0..k)
        .map(|i| ReadKey::r#gen(n, i as u64, &mut rng).expect("gen").0)
        .collect();
    let rrefs: Vec<&ReadKey> = reads.iter().collect();
    let ours = best(5, || {
        black_box(pir_answer(&arr, l, &rrefs, Party::A));
    });
    // Floor: one streaming read of the array (XOR-reduce it).
    let floor = best(5, || {
        let mut acc = [0u64; 4];
        for c in arr.chunks_exact(32) {
            for (a, w) in acc.iter_mut().zip(c.chunks_exact(8)) {
                *a ^= u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            }
        }
        black_box(acc);
    });
    row(
        "pir_answer 2^16 x 256 B, 8 keys (per row)",
        slots,
        ours,
        None,
        floor,
    );
    let gbs = (slots * l) as f64 / ours.as_secs_f64() / 1e9;
    println!("  pir_answer streams the array at {gbs:.1} GB/s for 8 keys at once");

    // Writes per second one core sustains at 2^17 (>= 100K) slots of 1 KiB: applying each
    // write early plus auditing it at the close, the work each server does for every write.
    {
        let (n, l, k) = (17u32, 1024usize, 8usize);
        let mut big = vec![0u8; l << n];
        let keys: Vec<WriteKey> = (0..k)
            .map(|i| {
                WriteKey::r#gen(n, l, i as u64 * 1000, &vec![i as u8; l], &mut rng)
                    .expect("gen")
                    .0
            })
            .collect();
        let refs: Vec<&WriteKey> = keys.iter().collect();
        let ctx = b"ctx".as_slice();
        let audited: Vec<(&WriteKey, &[u8])> = keys.iter().map(|w| (w, ctx)).collect();
        let t = best(2, || {
            write_accumulate(&mut big, l, &refs, Party::A);
            black_box(write_audit(
                1 << n,
                l,
                &audited,
                Party::A,
                &AuditChallenge([5; 16]),
            ));
        });
        let floor = aes_floor(k * (1 << n) * (2 + l / 16 + 6) + (1 << n) * 8, 2);
        println!(
            "writes per second per core at 2^17 x 1 KiB (apply + audit): {:.1} (AES floor {:.1})",
            k as f64 / t.as_secs_f64(),
            k as f64 / floor.as_secs_f64()
        );
    }

    // A server's batch: many keys over one array (one thread's share of 1,000 clients x 8).
    let many = 1000;
    let reads: Vec<ReadKey> = (0..many)
        .map(|i| ReadKey::r#gen(n, i as u64, &mut rng).expect("gen").0)
        .collect();
    let rrefs: Vec<&ReadKey> = reads.iter().collect();
    let t = best(2, || {
        black_box(pir_answer(&arr, l, &rrefs, Party::A));
    });
    println!(
        "pir_answer 2^16 x 256 B, {many} keys: {:.2} ns per row and key ({:.2} per row-key at 8 keys)",
        ns_per(t, slots * many),
        ns_per(ours, slots * k),
    );
}
