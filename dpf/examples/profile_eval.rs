//! Runs one hot path in a loop for a profiler: `perf record target/release/examples/profile_eval write|read|pir|acc|audit`.
use dpf::{
    AuditChallenge, Party, RandomSource, ReadKey, SeededRandom, WriteKey, pir_answer,
    write_accumulate, write_audit,
};
use std::hint::black_box;

/// Eight party-A write halves over 2^16 slots of 256 bytes (a server's batch).
fn server_write_keys(rng: &mut SeededRandom) -> Vec<WriteKey> {
    (0..8)
        .map(|i| WriteKey::r#gen(16, 256, i, &[1; 256], rng).expect("gen").0)
        .collect()
}

fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "write".into());
    let mut rng = SeededRandom::new([1; 32]);
    match what.as_str() {
        "write" => {
            let (w, _) = WriteKey::r#gen(16, 16, 5, &[9; 16], &mut rng).expect("gen");
            let mut out = vec![0u8; 16 << 16];
            for _ in 0..100 {
                w.eval_range(Party::A, 0, 1 << 16, &mut out);
            }
            black_box(out);
        }
        "audit" => {
            let keys = server_write_keys(&mut rng);
            let writes: Vec<(&WriteKey, &[u8])> =
                keys.iter().map(|k| (k, b"ctx".as_slice())).collect();
            for _ in 0..20 {
                black_box(write_audit(
                    1 << 16,
                    256,
                    &writes,
                    Party::A,
                    &AuditChallenge([3; 16]),
                ));
            }
        }
        "acc" => {
            let keys = server_write_keys(&mut rng);
            let refs: Vec<&WriteKey> = keys.iter().collect();
            let mut arr = vec![0u8; 256 << 16];
            for _ in 0..5 {
                write_accumulate(&mut arr, 256, &refs, Party::A);
            }
            black_box(arr);
        }
        _ => {
            let k: u64 = std::env::args()
                .nth(2)
                .and_then(|a| a.parse().ok())
                .unwrap_or(8);
            let keys: Vec<ReadKey> = (0..k)
                .map(|i| ReadKey::r#gen(16, i % (1 << 16), &mut rng).expect("gen").0)
                .collect();
            let refs: Vec<&ReadKey> = keys.iter().collect();
            let mut db = vec![0u8; 256 << 16];
            rng.fill(&mut db);
            let reps = (4000 / k).max(1);
            let t = std::time::Instant::now();
            for _ in 0..reps {
                black_box(pir_answer(&db, 256, &refs, Party::A));
            }
            let per = t.elapsed().as_secs_f64() * 1e9 / (reps * k * (1 << 16)) as f64;
            println!("pir_answer 2^16 x 256 B, {k} keys: {per:.2} ns per row-key");
        }
    }
}
