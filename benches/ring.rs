//! Ring lookup cost at 3, 12 and 100 members (150 vnodes, crc32 and xxh3).
//! `cargo bench --bench ring`

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use geecache::ring::{Member, Ring, RingHash};

fn lookup(c: &mut Criterion) {
    let keys: Vec<String> = (0..1024).map(|i| format!("{}", i * 7919)).collect();
    let mut group = c.benchmark_group("ring_owner");
    for hash in [RingHash::Crc32, RingHash::Xxh3] {
        for n in [3, 12, 100] {
            let ring = Ring::new(
                hash,
                150,
                (0..n).map(|i| Member::new(&format!("http://10.0.{}.{}:8001", i / 200, i % 200))),
            );
            let mut i = 0;
            group.bench_with_input(
                BenchmarkId::new(format!("{hash:?}"), n),
                &ring,
                |b, ring| {
                    b.iter(|| {
                        i = (i + 1) & 1023;
                        ring.owner(&keys[i]).map(|m| m.weight)
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
