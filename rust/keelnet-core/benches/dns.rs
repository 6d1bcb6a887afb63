//! The embedded DNS server's answer path (issue 13): from a query's bytes to the answer's
//! bytes for a local name among 10 000 (A, PTR, NXDOMAIN), and the table update a
//! connect makes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};

#[path = "support/thread_cpu_time.rs"]
#[macro_use]
mod thread_cpu_time;

use criterion::measurement::Measurement;
use criterion::{Criterion, Throughput};
use keelnet_core::dns::NameTable;
use keelnet_core::dns::message::{Decision, Transport, decide};

const NAMES: u32 = 10_000;

/// Counts the bytes live on the heap, for the table's memory per name.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn address(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 | n)
}

fn table() -> NameTable {
    let mut table = NameTable::new();
    table.set_network("n1", "front").unwrap();
    for n in 0..NAMES {
        let name = format!("sandbox-{n}");
        let endpoint_id = format!("{n:064x}");
        table
            .set_endpoint("n1", &endpoint_id, &[&name], Some(address(n)), None)
            .unwrap();
    }
    table.set_sandbox("client", &["n1"]).unwrap();
    table
}

/// A standard query (RD set) for `name`, type `kind`, id 0x1234.
fn query(name: &str, kind: u16) -> Vec<u8> {
    let mut bytes = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        bytes.push(label.len() as u8);
        bytes.extend_from_slice(label.as_bytes());
    }
    bytes.push(0);
    bytes.extend_from_slice(&kind.to_be_bytes());
    bytes.extend_from_slice(&1u16.to_be_bytes());
    bytes
}

fn answer_path<M: Measurement>(c: &mut Criterion<M>) {
    let before = LIVE.load(Ordering::Relaxed);
    let table = table();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "name table of {NAMES} names (64-hex-digit endpoint ids, as the Host's): {} KiB, {} bytes per name",
        bytes / 1024,
        bytes / NAMES as usize
    );
    let mut group = c.benchmark_group("dns_answer");
    group.throughput(Throughput::Elements(1));
    for (what, bytes) in [
        ("a_local", query("sandbox-4242", 1)),
        ("a_name_dot_network", query("sandbox-4242.front", 1)),
        ("ptr_local", query("146.16.0.10.in-addr.arpa", 12)),
        ("nxdomain", query("nosuch", 1)),
    ] {
        assert!(matches!(
            decide(&table, "client", &bytes, Transport::Udp),
            Decision::Reply(_)
        ));
        group.bench_function(what, |b| {
            b.iter(|| {
                decide(
                    black_box(&table),
                    "client",
                    black_box(&bytes),
                    Transport::Udp,
                )
            })
        });
    }
    group.finish();
}

fn updates<M: Measurement>(c: &mut Criterion<M>) {
    let mut table = table();
    let mut group = c.benchmark_group("dns_table");
    group.throughput(Throughput::Elements(1));
    group.bench_function("connect_and_disconnect_at_10k", |b| {
        b.iter(|| {
            table
                .set_endpoint(
                    "n1",
                    "new",
                    &["newcomer", "alias"],
                    Some(address(NAMES)),
                    None,
                )
                .unwrap();
            table.remove_endpoint("n1", black_box("new"));
        })
    });
    group.finish();
}

wall_or_cpu_time_main!(answer_path, updates);
