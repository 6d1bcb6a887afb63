//! Property tests of the IPAM against a plain model: nothing is handed out twice,
//! released addresses come back, serial order holds, reserved addresses are never
//! handed out, and a round trip through bytes preserves everything.

use std::collections::BTreeSet;
use std::net::IpAddr;

use keelnet_core::ipam::{AddressPool, Bitmap, DENSE_LIMIT, ErrorKind, PoolConfig, Subnet};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    AllocateNext,
    AllocateAt(u64),
    Release(u64),
    RoundTrip,
}

/// The obvious allocator: a set of taken offsets and a linear search.
struct Model {
    last: u64,
    range: (u64, u64),
    reserved: BTreeSet<u64>,
    allocated: BTreeSet<u64>,
    serial: bool,
    next: u64,
}

impl Model {
    fn taken(&self, offset: u64) -> bool {
        self.reserved.contains(&offset) || self.allocated.contains(&offset)
    }

    fn first_free(&self, from: u64, to: u64) -> Option<u64> {
        (from..=to).find(|o| !self.taken(*o))
    }

    fn allocate_next(&mut self) -> Option<u64> {
        let (first, last) = self.range;
        let found = if self.serial {
            self.first_free(self.next, last)
                .or_else(|| self.first_free(first, self.next))
        } else {
            self.first_free(first, last)
        }?;
        self.allocated.insert(found);
        if self.serial {
            self.next = if found >= last { first } else { found + 1 };
        }
        Some(found)
    }
}

#[derive(Debug, Clone)]
struct Case {
    subnet: &'static str,
    range: Option<&'static str>,
    gateway_offset: Option<u64>,
    serial: bool,
    ops: Vec<Op>,
}

fn case() -> impl Strategy<Value = Case> {
    let subnets = prop_oneof![
        Just(("10.0.0.7/32", None)),
        Just(("10.0.0.6/31", None)),
        Just(("10.0.0.4/30", None)),
        Just(("10.1.2.0/24", None)),
        Just(("10.1.2.0/24", Some("10.1.2.64/27"))),
        Just(("10.16.0.0/12", Some("10.17.0.0/28"))),
        Just(("fd00::/126", None)),
        Just(("fd00::/116", None)),
        Just(("fd00:1::/64", None)),
        Just(("fd00:1::/64", Some("fd00:1::ffff:ffff:ff00:0/104"))),
    ];
    (subnets, any::<bool>(), proptest::option::of(0u64..6)).prop_flat_map(
        |((subnet, range), serial, gateway)| {
            let last: u64 = subnet.parse::<Subnet>().unwrap().last_offset() as u64;
            let offset = prop_oneof![
                0..=last.min(40),
                Just(last),
                any::<u64>().prop_map(move |o| o % (last.saturating_add(1)).max(1)),
            ];
            let op = prop_oneof![
                4 => Just(Op::AllocateNext),
                2 => offset.clone().prop_map(Op::AllocateAt),
                3 => offset.prop_map(Op::Release),
                1 => Just(Op::RoundTrip),
            ];
            proptest::collection::vec(op, 1..120).prop_map(move |ops| Case {
                subnet,
                range,
                gateway_offset: gateway.filter(|g| *g <= last),
                serial,
                ops,
            })
        },
    )
}

fn check(case: Case) -> Result<(), TestCaseError> {
    let subnet: Subnet = case.subnet.parse().unwrap();
    let last = subnet.last_offset() as u64;
    let gateway = case
        .gateway_offset
        .map(|o| subnet.address_at(u128::from(o)));
    let ip_range: Option<Subnet> = case.range.map(|r| r.parse().unwrap());
    let config = PoolConfig {
        ip_range,
        gateway,
        reserved: vec![],
        serial: case.serial,
    };
    let mut pool = match AddressPool::new(subnet, config) {
        Ok(pool) => pool,
        Err(e) => {
            // Only a gateway on the network/broadcast address may be refused.
            prop_assert_eq!(e.kind, ErrorKind::InUse);
            return Ok(());
        }
    };
    let range = match ip_range {
        Some(r) => {
            let first = subnet.offset_of(r.network()).unwrap() as u64;
            (first, first + r.last_offset() as u64)
        }
        None => (0, last),
    };
    let reserved: BTreeSet<u64> = pool
        .reserved()
        .map(|(a, _)| subnet.offset_of(a).unwrap() as u64)
        .collect();
    let mut model = Model {
        last,
        range,
        reserved,
        allocated: BTreeSet::new(),
        serial: case.serial,
        next: range.0,
    };
    let at = |o: u64| -> IpAddr { subnet.address_at(u128::from(o)) };
    for op in case.ops {
        match op {
            Op::AllocateNext => {
                let expected = model.allocate_next();
                let got = pool
                    .allocate(None)
                    .ok()
                    .map(|a| subnet.offset_of(a).unwrap() as u64);
                prop_assert_eq!(got, expected);
            }
            Op::AllocateAt(o) => {
                let free = !model.taken(o);
                let got = pool.allocate(Some(at(o)));
                prop_assert_eq!(got.is_ok(), free, "allocate {}", at(o));
                if free {
                    model.allocated.insert(o);
                } else {
                    prop_assert_eq!(got.unwrap_err().kind, ErrorKind::InUse);
                }
            }
            Op::Release(o) => {
                let was = model.allocated.remove(&o);
                let got = pool.release(at(o));
                prop_assert_eq!(got.is_ok(), was, "release {}", at(o));
                if !was {
                    let kind = got.unwrap_err().kind;
                    prop_assert!(kind == ErrorKind::NotAllocated || kind == ErrorKind::InUse);
                }
            }
            Op::RoundTrip => {
                let blob = pool.to_bytes();
                pool = AddressPool::from_bytes(&blob).unwrap();
                prop_assert_eq!(pool.to_bytes(), blob);
            }
        }
        prop_assert_eq!(pool.used(), model.allocated.len() as u64);
        prop_assert!(model.reserved.iter().all(|o| pool.contains(at(*o))));
    }
    for o in model.allocated.iter().chain([0, last].iter()) {
        prop_assert_eq!(pool.contains(at(*o)), model.taken(*o));
    }
    prop_assert!(model.last == last);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn pool_matches_model(case in case()) {
        check(case)?;
    }

    /// The bitmap's search and take against a set, around chunk edges and the dense limit.
    #[test]
    fn bitmap_search_matches_model(
        base in prop_oneof![Just(0u64), Just(4096 - 70), Just(DENSE_LIMIT - 130), Just(3 * DENSE_LIMIT - 150), Just(u64::MAX - 300)],
        ops in proptest::collection::vec((any::<bool>(), 0u64..300), 1..300),
        queries in proptest::collection::vec((0u64..300, 0u64..300), 1..20),
    ) {
        let mut bitmap = Bitmap::new(u64::MAX);
        let mut set = BTreeSet::new();
        for (insert, o) in ops {
            let offset = base + o;
            if insert {
                prop_assert_eq!(bitmap.set(offset), set.insert(offset));
            } else {
                prop_assert_eq!(bitmap.clear(offset), set.remove(&offset));
            }
        }
        for &(a, b) in &queries {
            let (from, to) = (base + a.min(b), base + a.max(b));
            let expected = (from..=to).find(|o| !set.contains(o));
            prop_assert_eq!(bitmap.first_clear(from, to), expected);
        }
        // Taking sets what the search finds, and nothing when it finds nothing.
        for (a, b) in queries {
            let (from, to) = (base + a.min(b), base + a.max(b));
            let expected = (from..=to).find(|o| !set.contains(o));
            prop_assert_eq!(bitmap.take_first_clear(from, to), expected);
            if let Some(offset) = expected {
                set.insert(offset);
            }
            prop_assert!((from..=to).all(|o| bitmap.get(o) == set.contains(&o)));
        }
    }

    /// Garbage never panics and never decodes into a pool.
    #[test]
    fn random_bytes_are_corrupt(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let err = AddressPool::from_bytes(&data).unwrap_err();
        prop_assert_eq!(err.kind, ErrorKind::Corrupt);
    }

    /// Any single flipped bit or cut is caught.
    #[test]
    fn damaged_blobs_are_corrupt(allocs in 0usize..300, flip in any::<prop::sample::Index>(), bit in 0u8..8, cut in any::<prop::sample::Index>()) {
        let mut pool = AddressPool::new("10.2.0.0/20".parse().unwrap(), PoolConfig::default()).unwrap();
        for _ in 0..allocs {
            pool.allocate(None).unwrap();
        }
        let blob = pool.to_bytes();
        let mut flipped = blob.clone();
        flipped[flip.index(blob.len())] ^= 1 << bit;
        prop_assert_eq!(AddressPool::from_bytes(&flipped).unwrap_err().kind, ErrorKind::Corrupt);
        let short = &blob[..cut.index(blob.len())];
        prop_assert_eq!(AddressPool::from_bytes(short).unwrap_err().kind, ErrorKind::Corrupt);
    }
}
