//! Criterion benchmarks of the hot paths: key generation, full-domain evaluation, and the two
//! server kernels. `cargo bench -p dpf`. For ours vs a published DPF vs the machine's AES and
//! memory floors side by side, run `cargo run --release -p dpf --example compare`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dpf::{
    AuditChallenge, Party, RandomSource, ReadKey, SeededRandom, WriteKey, pir_answer,
    write_accumulate, write_accumulate_audited,
};

fn keygen(c: &mut Criterion) {
    let mut g = c.benchmark_group("gen");
    let mut rng = SeededRandom::new([1; 32]);
    for n in [16u32, 24] {
        g.bench_with_input(BenchmarkId::new("read", n), &n, |b, &n| {
            b.iter(|| ReadKey::r#gen(n, 12345, &mut rng).expect("gen"))
        });
        let payload = vec![7u8; 256];
        g.bench_with_input(BenchmarkId::new("write-256B", n), &n, |b, &n| {
            b.iter(|| WriteKey::r#gen(n, 256, 12345, &payload, &mut rng).expect("gen"))
        });
    }
    g.finish();
}

fn full_eval(c: &mut Criterion) {
    let mut g = c.benchmark_group("eval_full");
    g.sample_size(10);
    let mut rng = SeededRandom::new([2; 32]);
    let n = 20;
    let (r, _) = ReadKey::r#gen(n, 5, &mut rng).expect("gen");
    g.throughput(Throughput::Elements(1 << n));
    g.bench_function("read n=20 (points)", |b| {
        b.iter(|| black_box(r.eval_full(Party::A)))
    });
    let n = 16;
    for l in [16usize, 256] {
        let (w, _) = WriteKey::r#gen(n, l, 5, &vec![1; l], &mut rng).expect("gen");
        g.throughput(Throughput::Elements(1 << n));
        g.bench_function(BenchmarkId::new("write n=16 (slots)", l), |b| {
            b.iter(|| black_box(w.eval_full(Party::A)))
        });
    }
    g.finish();
}

fn kernels(c: &mut Criterion) {
    let mut g = c.benchmark_group("kernels");
    g.sample_size(10);
    let mut rng = SeededRandom::new([3; 32]);
    let (n, l, k) = (16u32, 256usize, 8usize);
    let mut db = vec![0u8; l << n];
    rng.fill(&mut db);
    let reads: Vec<ReadKey> = (0..k)
        .map(|i| ReadKey::r#gen(n, i as u64, &mut rng).expect("gen").0)
        .collect();
    let refs: Vec<&ReadKey> = reads.iter().collect();
    g.throughput(Throughput::Bytes((l << n) as u64));
    g.bench_function("pir_answer 2^16 x 256B, 8 keys", |b| {
        b.iter(|| black_box(pir_answer(&db, l, &refs, Party::A)))
    });
    let writes: Vec<WriteKey> = (0..k)
        .map(|i| {
            WriteKey::r#gen(n, l, i as u64, &vec![1; l], &mut rng)
                .expect("gen")
                .0
        })
        .collect();
    let wrefs: Vec<&WriteKey> = writes.iter().collect();
    g.bench_function("write_accumulate 2^16 x 256B, 8 keys", |b| {
        b.iter(|| write_accumulate(&mut db, l, &wrefs, Party::A))
    });
    let audited: Vec<(&WriteKey, &[u8])> = writes.iter().map(|w| (w, b"ctx".as_slice())).collect();
    g.bench_function("write_accumulate_audited 2^16 x 256B, 8 keys", |b| {
        b.iter(|| {
            black_box(write_accumulate_audited(
                &mut db,
                l,
                &audited,
                Party::A,
                &AuditChallenge([5; 16]),
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, keygen, full_eval, kernels);
criterion_main!(benches);
