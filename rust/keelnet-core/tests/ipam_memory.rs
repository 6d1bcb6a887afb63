//! Heap held by address pools, measured with a counting allocator. The bounds
//! are the issue's: a full IPv4 /8 <= 2.5 MB, an empty /8 <= 64 KB, an IPv6 /64
//! holding 100 000 random addresses <= 100 bytes per address.
//! Figures: `cargo test --release -p keelnet-core --test ipam_memory -- --nocapture`

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicIsize, Ordering};

use keelnet_core::ipam::{AddressPool, PoolConfig};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarding the caller's layout to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Tests in this file run one at a time: the counter is process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

fn heap_of<T>(build: impl FnOnce() -> T) -> (T, usize) {
    let before = LIVE.load(Ordering::SeqCst);
    let value = build();
    (value, (LIVE.load(Ordering::SeqCst) - before) as usize)
}

fn pool(subnet: &str) -> AddressPool {
    AddressPool::new(subnet.parse().unwrap(), PoolConfig::default()).unwrap()
}

#[test]
fn empty_and_full_ipv4_slash8() {
    let _one = SERIAL.lock().unwrap();
    let (mut p, empty) = heap_of(|| pool("10.0.0.0/8"));
    println!("empty /8: {empty} bytes");
    assert!(empty <= 64 * 1024, "empty /8 holds {empty} bytes");
    let before = LIVE.load(Ordering::SeqCst);
    while p.allocate_offset().is_ok() {}
    let full = empty as isize + LIVE.load(Ordering::SeqCst) - before;
    println!("full /8 ({} addresses): {full} bytes", p.used());
    assert!(full <= 2_500_000, "full /8 holds {full} bytes");
}

#[test]
fn fragmented_ipv4_slash8() {
    let _one = SERIAL.lock().unwrap();
    let (mut p, empty) = heap_of(|| pool("10.0.0.0/8"));
    let before = LIVE.load(Ordering::SeqCst);
    while p.allocate_offset().is_ok() {}
    // Every fourth address released: every chunk becomes mixed, the worst case.
    for offset in (1..(1u64 << 24) - 1).step_by(4) {
        p.release_offset(offset).unwrap();
    }
    let held = empty as isize + LIVE.load(Ordering::SeqCst) - before;
    println!("/8 with 25 % holes everywhere: {held} bytes");
    assert!(held <= 2_500_000, "fragmented /8 holds {held} bytes");
}

#[test]
fn ipv6_slash64_with_random_addresses() {
    let _one = SERIAL.lock().unwrap();
    let (mut p, empty) = heap_of(|| pool("fd00:1::/64"));
    let before = LIVE.load(Ordering::SeqCst);
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut placed = 0;
    while placed < 100_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let address = IpAddr::V6(Ipv6Addr::from((0xfd00_0001_u128 << 96) | u128::from(x)));
        if p.allocate(Some(address)).is_ok() {
            placed += 1;
        }
    }
    let held = empty as isize + LIVE.load(Ordering::SeqCst) - before;
    let per_address = held as f64 / placed as f64;
    println!("/64 with {placed} random addresses: {held} bytes, {per_address:.1} bytes/address");
    assert!(per_address <= 100.0, "{per_address} bytes per address");
}
