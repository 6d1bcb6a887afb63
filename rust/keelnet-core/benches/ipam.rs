//! IPAM: allocate and release per operation, for a /16, a /8 and an IPv6 /64,
//! filling an empty pool and in steady churn over 25 % random holes, lowest-free
//! and serial. `[KEELNET_BENCH_CLOCK=thread-cpu] cargo bench -p keelnet-core --bench ipam`

use std::hint::black_box;
use std::time::Duration;

#[path = "support/thread_cpu_time.rs"]
#[macro_use]
mod thread_cpu_time;

use criterion::measurement::Measurement;
use criterion::{BenchmarkId, Criterion, Throughput};
use keelnet_core::ipam::{AddressPool, PoolConfig, Subnet};
use thread_cpu_time::selected_clock_now;

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

/// Run `measure` on fresh pools, `population` operations at most per pool, until
/// `iters` operations are timed; `measure` returns the time its operations took.
fn over_fresh_pools(
    iters: u64,
    population: u64,
    subnet: &str,
    serial: bool,
    mut measure: impl FnMut(&mut AddressPool, u64) -> Duration,
) -> Duration {
    let mut spent = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(population);
        spent += measure(&mut fresh(subnet, serial), n);
        left -= n;
    }
    spent
}

/// Allocate into empty pools, `population` addresses per pool, then release them all.
fn fill<M: Measurement<Value = Duration>>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("ipam_fill");
    group.throughput(Throughput::Elements(1));
    for (name, subnet, population) in POOLS {
        for serial in [false, true] {
            let id = format!("{name}/{}", mode_name(serial));
            group.bench_function(BenchmarkId::new("allocate", &id), |b| {
                b.iter_custom(|iters| {
                    over_fresh_pools(iters, population, subnet, serial, |pool, n| {
                        let start = selected_clock_now();
                        for _ in 0..n {
                            black_box(pool.allocate_offset().unwrap());
                        }
                        selected_clock_now() - start
                    })
                })
            });
            group.bench_function(BenchmarkId::new("release", &id), |b| {
                b.iter_custom(|iters| {
                    over_fresh_pools(iters, population, subnet, serial, |pool, n| {
                        let offsets: Vec<u64> =
                            (0..n).map(|_| pool.allocate_offset().unwrap()).collect();
                        let start = selected_clock_now();
                        for offset in &offsets {
                            pool.release_offset(black_box(*offset)).unwrap();
                        }
                        selected_clock_now() - start
                    })
                })
            });
        }
    }
    group.finish();
}

/// A pool filled to `population` with 25 % of it released at random, and the
/// offsets still allocated.
fn fragmented(
    subnet: &str,
    population: u64,
    serial: bool,
    rng: &mut XorShift,
) -> (AddressPool, Vec<u64>) {
    let mut pool = fresh(subnet, serial);
    let mut allocated: Vec<u64> = (0..population)
        .map(|_| pool.allocate_offset().unwrap())
        .collect();
    for _ in 0..population / 4 {
        let i = (rng.next() % allocated.len() as u64) as usize;
        pool.release_offset(allocated.swap_remove(i)).unwrap();
    }
    (pool, allocated)
}

/// How a churn step finds a random allocated address to release.
#[derive(Clone, Copy, PartialEq)]
enum Victims {
    /// Probe random offsets of the populated span until one is allocated (1.33
    /// probes on average; the probe reads the bitmap word the release writes).
    Probe,
    /// Keep a list of allocated offsets and swap-remove at a random index. Indexes
    /// are drawn `LIST_LOOKAHEAD` steps ahead and their list slots prefetched, so the
    /// list's own cache miss (a multi-megabyte list) overlaps earlier steps instead
    /// of adding to this one; nothing of the pool is prefetched.
    List,
}

/// How many steps ahead the list harness draws its victims. The list's length is
/// the same at every step (one push, one remove), so an index drawn early stays valid.
const LIST_LOOKAHEAD: usize = 4;

/// Ask the CPU to start loading `value`'s cache line; harness bookkeeping only.
#[inline]
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint and never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (value as *const T).cast(),
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Steady churn: each step allocates one address and releases a random allocated
/// one, so the pool stays 75 % full with holes everywhere. Reported per operation
/// (a step is two).
///
/// Serial allocation in the /64 walks into fresh space and never wraps, so probing
/// a fixed span would run dry: it needs the list. The /64 lowest-free case runs
/// with both, so the list's own cost can be read off in the same run.
fn churn<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("ipam_churn_25pct_holes");
    group.throughput(Throughput::Elements(2));
    for (name, subnet, population) in POOLS {
        let fills_pool =
            u128::from(population) + 2 >= subnet.parse::<Subnet>().unwrap().last_offset();
        let cases: &[(bool, Victims)] = if fills_pool {
            &[(false, Victims::Probe), (true, Victims::Probe)]
        } else {
            &[
                (false, Victims::Probe),
                (false, Victims::List),
                (true, Victims::List),
            ]
        };
        for &(serial, victims) in cases {
            let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
            let (mut pool, mut allocated) = fragmented(subnet, population, serial, &mut rng);
            let span = population + 2;
            let mut id = format!("{name}/{}", mode_name(serial));
            if victims == Victims::List {
                id.push_str("/list");
            }
            group.bench_function(
                BenchmarkId::new("allocate+release", id),
                |b| match victims {
                    Victims::Probe => b.iter(|| {
                        black_box(pool.allocate_offset().unwrap());
                        loop {
                            let offset = rng.next() % span;
                            if pool.contains_offset(offset) && pool.release_offset(offset).is_ok() {
                                break;
                            }
                        }
                    }),
                    Victims::List => {
                        let live = allocated.len() as u64;
                        let mut ahead = [0; LIST_LOOKAHEAD].map(|_| (rng.next() % live) as usize);
                        let mut turn = 0;
                        b.iter(|| {
                            allocated.push(pool.allocate_offset().unwrap());
                            let victim = allocated.swap_remove(ahead[turn]);
                            ahead[turn] = (rng.next() % live) as usize;
                            prefetch(&allocated[ahead[turn]]);
                            turn = (turn + 1) % LIST_LOOKAHEAD;
                            pool.release_offset(victim).unwrap();
                        })
                    }
                },
            );
        }
    }
    group.finish();
}

wall_or_cpu_time_main!(fill, churn);
