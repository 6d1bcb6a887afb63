//! IPAM: allocate and release per operation, for a /16, a /8 and an IPv6 /64,
//! filling an empty pool and in steady churn over 25 % random holes, lowest-free
//! and serial. `cargo bench -p keelnet-core --bench ipam`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use keelnet_core::ipam::{AddressPool, PoolConfig, Subnet};

/// Pools under test; the /64 is populated over its first 2^20 addresses.
const POOLS: [(&str, &str, u64); 3] = [
    ("v4/16", "10.1.0.0/16", 65_534),
    ("v4/8", "10.0.0.0/8", 16_777_214),
    ("v6/64", "fd00:1::/64", 1 << 20),
];

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn fresh(subnet: &str, serial: bool) -> AddressPool {
    let subnet: Subnet = subnet.parse().unwrap();
    AddressPool::new(
        subnet,
        PoolConfig {
            serial,
            ..Default::default()
        },
    )
    .unwrap()
}

fn mode_name(serial: bool) -> &'static str {
    if serial { "serial" } else { "lowest" }
}

/// Allocate into empty pools, `population` addresses per pool, then release them all.
fn fill(c: &mut Criterion) {
    let mut group = c.benchmark_group("ipam_fill");
    group.throughput(Throughput::Elements(1));
    for (name, subnet, population) in POOLS {
        for serial in [false, true] {
            let id = format!("{name}/{}", mode_name(serial));
            group.bench_function(BenchmarkId::new("allocate", &id), |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let mut pool = fresh(subnet, serial);
                        let n = left.min(population);
                        let start = Instant::now();
                        for _ in 0..n {
                            black_box(pool.allocate_offset().unwrap());
                        }
                        spent += start.elapsed();
                        left -= n;
                    }
                    spent
                })
            });
            group.bench_function(BenchmarkId::new("release", &id), |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    let mut left = iters;
                    while left > 0 {
                        let mut pool = fresh(subnet, serial);
                        let n = left.min(population);
                        let offsets: Vec<u64> =
                            (0..n).map(|_| pool.allocate_offset().unwrap()).collect();
                        let start = Instant::now();
                        for offset in &offsets {
                            pool.release_offset(black_box(*offset)).unwrap();
                        }
                        spent += start.elapsed();
                        left -= n;
                    }
                    spent
                })
            });
        }
    }
    group.finish();
}

/// A pool filled to `population` with 25 % of it released at random.
fn fragmented(subnet: &str, population: u64, serial: bool, rng: &mut XorShift) -> AddressPool {
    let mut pool = fresh(subnet, serial);
    let mut allocated: Vec<u64> = (0..population)
        .map(|_| pool.allocate_offset().unwrap())
        .collect();
    for _ in 0..population / 4 {
        let i = (rng.next() % allocated.len() as u64) as usize;
        pool.release_offset(allocated.swap_remove(i)).unwrap();
    }
    pool
}

/// Steady churn: each step allocates one address and releases a random allocated
/// one, so the pool stays 75 % full with holes everywhere. The address to release
/// is found by probing random offsets (1.33 probes on average), which touches the
/// same bitmap word the release does. Reported per operation (a step is two).
fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("ipam_churn_25pct_holes");
    group.throughput(Throughput::Elements(2));
    for (name, subnet, population) in POOLS {
        for serial in [false, true] {
            let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
            let mut pool = fragmented(subnet, population, serial, &mut rng);
            let span = population + 2;
            let id = format!("{name}/{}", mode_name(serial));
            group.bench_function(BenchmarkId::new("allocate+release", id), |b| {
                b.iter(|| {
                    black_box(pool.allocate_offset().unwrap());
                    loop {
                        let offset = rng.next() % span;
                        if pool.contains_offset(offset) && pool.release_offset(offset).is_ok() {
                            break;
                        }
                    }
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = fill, churn
}
criterion_main!(benches);
