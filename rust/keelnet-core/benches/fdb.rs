//! FDB figures of issue 3: lookups at 4 K and 1 M entries, learning, aging sweep.

use std::hint::black_box;

#[path = "support/thread_cpu_time.rs"]
#[macro_use]
mod thread_cpu_time;

use criterion::measurement::Measurement;
use criterion::{BatchSize, Criterion, Throughput};
use keelnet_core::fdb::{Destination, Fdb, FdbConfig, MacAddr};

fn mac(n: u32) -> MacAddr {
    let b = n.to_be_bytes();
    [0x02, 0x42, b[0], b[1], b[2], b[3]]
}

/// Deterministic pseudo-random order (xorshift), so lookups do not walk the table
/// sequentially and hit the cache unfairly.
fn shuffled_keys(entries: u32, count: usize) -> Vec<(u32, MacAddr)> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let n = (state % u64::from(entries)) as u32;
            (n % 16, mac(n))
        })
        .collect()
}

fn filled(entries: u32) -> Fdb {
    let config = FdbConfig {
        max_age: 1_000,
        default_learn_limit: u32::MAX,
    };
    let mut fdb = Fdb::with_capacity(config, entries as usize);
    for n in 0..entries {
        fdb.learn(n % 16, &mac(n), Destination::Port(n), u64::from(n % 100));
    }
    fdb
}

const BATCH: usize = 4_096;

fn lookups<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("fdb_lookup");
    group.throughput(Throughput::Elements(BATCH as u64));
    for entries in [4_096u32, 1 << 20] {
        let fdb = filled(entries);
        let keys = shuffled_keys(entries, BATCH);
        group.bench_function(format!("{entries}_entries"), |b| {
            b.iter(|| {
                for (vni, mac) in &keys {
                    black_box(fdb.lookup(black_box(*vni), black_box(mac)));
                }
            })
        });
    }
    group.finish();
}

fn learning<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("fdb_learn");
    group.throughput(Throughput::Elements(BATCH as u64));
    // Steady state of a switch: sources are mostly known, learning refreshes in place.
    let entries = 1u32 << 20;
    let mut fdb = filled(entries);
    let keys = shuffled_keys(entries, BATCH);
    let mut now = 0u64;
    group.bench_function("refresh_1M_entries", |b| {
        b.iter(|| {
            now += 1;
            for (vni, mac) in &keys {
                black_box(fdb.learn(*vni, mac, Destination::Port(7), now));
            }
        })
    });
    // New MACs into a table sized for them (growth is measured separately below).
    let fresh = shuffled_keys(u32::MAX, BATCH);
    let config = FdbConfig {
        max_age: 1_000,
        default_learn_limit: u32::MAX,
    };
    group.bench_function("new_entries", |b| {
        b.iter_batched_ref(
            || Fdb::with_capacity(config, BATCH),
            |fdb| {
                for (vni, mac) in &fresh {
                    black_box(fdb.learn(*vni, mac, Destination::Port(1), 0));
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("new_entries_with_growth", |b| {
        b.iter_batched_ref(
            || Fdb::new(config),
            |fdb| {
                for (vni, mac) in &fresh {
                    black_box(fdb.learn(*vni, mac, Destination::Port(1), 0));
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn aging<M: Measurement>(c: &mut Criterion<M>) {
    let mut group = c.benchmark_group("fdb_age");
    group.sample_size(10);
    let table = filled(1 << 20);
    // Entries were learned at times 0..100 with max_age 1000: at 1050 about half expire,
    // including the rebuild that drops the tombstones; at 500 none do (pure scan).
    for (name, now) in [
        ("sweep_1M_none_expire", 500u64),
        ("sweep_1M_half_expire", 1_050),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || table.clone(),
                |fdb| black_box(fdb.age(now)),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

wall_or_cpu_time_main!(lookups, learning, aging);
