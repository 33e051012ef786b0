//! Runs one hot path in a loop for a profiler: `perf record target/release/examples/profile_eval write|read|pir|acc`.
use dpf::{Party, RandomSource, ReadKey, SeededRandom, WriteKey, pir_answer, write_accumulate};
use std::hint::black_box;

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
        "acc" => {
            let keys: Vec<WriteKey> = (0..8)
                .map(|i| {
                    WriteKey::r#gen(16, 256, i, &[1; 256], &mut rng)
                        .expect("gen")
                        .0
                })
                .collect();
            let refs: Vec<&WriteKey> = keys.iter().collect();
            let mut arr = vec![0u8; 256 << 16];
            for _ in 0..5 {
                write_accumulate(&mut arr, 256, &refs, Party::A);
            }
            black_box(arr);
        }
        _ => {
            let keys: Vec<ReadKey> = (0..8)
                .map(|i| ReadKey::r#gen(16, i, &mut rng).expect("gen").0)
                .collect();
            let refs: Vec<&ReadKey> = keys.iter().collect();
            let mut db = vec![0u8; 256 << 16];
            rng.fill(&mut db);
            for _ in 0..20 {
                black_box(pir_answer(&db, 256, &refs, Party::A));
            }
        }
    }
}
