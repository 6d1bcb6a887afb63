//! An address pool: one subnet, its reserved addresses, an optional dynamic
//! range (`ip_range`), lowest-free or serial allocation.

use std::net::IpAddr;

use super::bitmap::Bitmap;
use super::codec::{Reader, Writer};
use super::error::{ErrorKind, IpamError, Result};
use super::subnet::Subnet;

/// Largest pools: an IPv4 /8 (16 M addresses) and an IPv6 /64.
pub const MIN_PREFIX_V4: u8 = 8;
pub const MIN_PREFIX_V6: u8 = 64;

const MAGIC: &[u8; 4] = b"KNAP";

/// Why an address is held back from allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reservation {
    Network = 0,
    Broadcast = 1,
    Gateway = 2,
    Auxiliary = 3,
}

impl Reservation {
    fn describe(self) -> &'static str {
        match self {
            Reservation::Network => "the network address",
            Reservation::Broadcast => "the broadcast address",
            Reservation::Gateway => "the gateway",
            Reservation::Auxiliary => "an auxiliary (reserved) address",
        }
    }

    fn from_u8(value: u8) -> Option<Reservation> {
        Some(match value {
            0 => Reservation::Network,
            1 => Reservation::Broadcast,
            2 => Reservation::Gateway,
            3 => Reservation::Auxiliary,
            _ => return None,
        })
    }
}

/// How to build a pool; `AddressPool::new` checks it all.
#[derive(Debug, Clone, Default)]
pub struct PoolConfig {
    pub ip_range: Option<Subnet>,
    pub gateway: Option<IpAddr>,
    pub reserved: Vec<IpAddr>,
    pub serial: bool,
}

#[derive(Clone)]
pub struct AddressPool {
    subnet: Subnet,
    bits: Bitmap,
    ip_range: Option<Subnet>,
    /// Dynamic allocation stays within `range_first..=range_last`.
    range_first: u64,
    range_last: u64,
    /// Sorted by offset.
    reserved: Vec<(u64, Reservation)>,
    gateway: Option<IpAddr>,
    serial: bool,
    /// Where the next serial search starts.
    next: u64,
    used: u64,
}

impl std::fmt::Debug for AddressPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressPool")
            .field("subnet", &self.subnet)
            .field("ip_range", &self.ip_range)
            .field("gateway", &self.gateway)
            .field("serial", &self.serial)
            .field("used", &self.used)
            .finish_non_exhaustive()
    }
}

impl AddressPool {
    pub fn new(subnet: Subnet, config: PoolConfig) -> Result<AddressPool> {
        let min_prefix = if subnet.is_ipv6() {
            MIN_PREFIX_V6
        } else {
            MIN_PREFIX_V4
        };
        if subnet.prefix() < min_prefix {
            return Err(IpamError::new(
                ErrorKind::InvalidSubnet,
                format!(
                    "subnet {subnet} is too large for one address pool (at most /{min_prefix}); split it into smaller subnets"
                ),
            ));
        }
        // Fits: the prefix checks above bound the host bits to 64.
        let last = subnet.last_offset() as u64;
        let (range_first, range_last) = match config.ip_range {
            None => (0, last),
            Some(range) => {
                if !subnet.covers(&range) {
                    return Err(IpamError::new(
                        ErrorKind::InvalidSubnet,
                        format!(
                            "ip_range {range} is not inside subnet {subnet}; pick a range within it"
                        ),
                    ));
                }
                let first = subnet.offset_of(range.network())? as u64;
                (first, first + range.last_offset() as u64)
            }
        };
        let mut pool = AddressPool {
            subnet,
            bits: Bitmap::new(last),
            ip_range: config.ip_range,
            range_first,
            range_last,
            reserved: Vec::new(),
            gateway: config.gateway,
            serial: config.serial,
            next: range_first,
            used: 0,
        };
        let host_bits = subnet.host_bits();
        if !subnet.is_ipv6() && host_bits >= 2 {
            pool.reserve_offset(0, Reservation::Network)?;
            pool.reserve_offset(last, Reservation::Broadcast)?;
        } else if subnet.is_ipv6() && host_bits >= 2 {
            // RFC 4291 subnet-router anycast address.
            pool.reserve_offset(0, Reservation::Network)?;
        }
        if let Some(gateway) = config.gateway {
            pool.reserve(gateway, Reservation::Gateway)?;
        }
        for address in config.reserved {
            pool.reserve(address, Reservation::Auxiliary)?;
        }
        Ok(pool)
    }

    fn reserve(&mut self, address: IpAddr, why: Reservation) -> Result<()> {
        let offset = self.offset_of(address).map_err(|e| {
            IpamError::new(
                e.kind,
                format!("{} {address}: {}", why.describe(), e.message),
            )
        })?;
        self.reserve_offset(offset, why)
    }

    fn reserve_offset(&mut self, offset: u64, why: Reservation) -> Result<()> {
        if let Some(holder) = self.reservation_at(offset) {
            let address = self.subnet.address_at(u128::from(offset));
            return Err(IpamError::new(
                ErrorKind::InUse,
                format!(
                    "{address} cannot be {} of {}: it is already {}",
                    why.describe(),
                    self.subnet,
                    holder.describe()
                ),
            ));
        }
        self.bits.set(offset);
        let at = self.reserved.partition_point(|(o, _)| *o < offset);
        self.reserved.insert(at, (offset, why));
        Ok(())
    }

    fn reservation_at(&self, offset: u64) -> Option<Reservation> {
        self.reserved
            .binary_search_by_key(&offset, |(o, _)| *o)
            .ok()
            .map(|i| self.reserved[i].1)
    }

    fn offset_of(&self, address: IpAddr) -> Result<u64> {
        // Fits: pools have at most 64 host bits.
        self.subnet.offset_of(address).map(|o| o as u64)
    }

    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    pub fn ip_range(&self) -> Option<Subnet> {
        self.ip_range
    }

    pub fn gateway(&self) -> Option<IpAddr> {
        self.gateway
    }

    pub fn is_serial(&self) -> bool {
        self.serial
    }

    /// Addresses that can ever be handed out: the subnet less its reservations.
    pub fn size(&self) -> u128 {
        self.subnet.last_offset() + 1 - self.reserved.len() as u128
    }

    /// Addresses handed out now.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Reserved addresses (network, broadcast, gateway, auxiliary), in order.
    pub fn reserved(&self) -> impl Iterator<Item = (IpAddr, Reservation)> + '_ {
        self.reserved
            .iter()
            .map(|(o, why)| (self.subnet.address_at(u128::from(*o)), *why))
    }

    /// Allocated or reserved?
    pub fn contains(&self, address: IpAddr) -> bool {
        self.offset_of(address)
            .is_ok_and(|o| self.contains_offset(o))
    }

    /// Allocated or reserved, by offset in the subnet.
    #[inline]
    pub fn contains_offset(&self, offset: u64) -> bool {
        offset <= self.bits.last() && self.bits.get(offset)
    }

    /// Allocate `address`, or the next free one in the dynamic range.
    #[inline]
    pub fn allocate(&mut self, address: Option<IpAddr>) -> Result<IpAddr> {
        let offset = match address {
            Some(address) => {
                let offset = self.offset_of(address)?;
                self.take(offset)?;
                offset
            }
            None => self.allocate_offset()?,
        };
        Ok(self.subnet.address_at(u128::from(offset)))
    }

    /// The dynamic allocation itself, on offsets: what the benchmarks measure.
    #[inline]
    pub fn allocate_offset(&mut self) -> Result<u64> {
        let found = if self.serial {
            self.bits
                .take_first_clear(self.next, self.range_last)
                .or_else(|| self.bits.take_first_clear(self.range_first, self.next))
        } else {
            self.bits
                .take_first_clear(self.range_first, self.range_last)
        };
        let offset = found.ok_or_else(|| self.exhausted())?;
        self.used += 1;
        if self.serial {
            self.next = if offset >= self.range_last {
                self.range_first
            } else {
                offset + 1
            };
        }
        Ok(offset)
    }

    fn take(&mut self, offset: u64) -> Result<()> {
        if self.bits.set(offset) {
            self.used += 1;
            return Ok(());
        }
        let address = self.subnet.address_at(u128::from(offset));
        Err(match self.reservation_at(offset) {
            Some(why) => IpamError::new(
                ErrorKind::InUse,
                format!(
                    "address {address} is {} of {}; pick another address",
                    why.describe(),
                    self.subnet
                ),
            ),
            None => IpamError::new(
                ErrorKind::InUse,
                format!(
                    "address {address} is already allocated in {}; pick another address or release it first",
                    self.subnet
                ),
            ),
        })
    }

    fn exhausted(&self) -> IpamError {
        let scope = match self.ip_range {
            Some(range) => format!("ip_range {range} of subnet {}", self.subnet),
            None => format!("subnet {}", self.subnet),
        };
        IpamError::new(
            ErrorKind::Exhausted,
            format!(
                "no free address left in {scope} ({} in use); release addresses or use a larger subnet",
                self.used
            ),
        )
    }

    pub fn release(&mut self, address: IpAddr) -> Result<()> {
        let offset = self.offset_of(address)?;
        self.release_offset(offset)
    }

    #[inline]
    pub fn release_offset(&mut self, offset: u64) -> Result<()> {
        if let Some(why) = self.reservation_at(offset) {
            let address = self.subnet.address_at(u128::from(offset));
            return Err(IpamError::new(
                ErrorKind::InUse,
                format!(
                    "address {address} is {} of {}, held for the pool's lifetime; it cannot be released",
                    why.describe(),
                    self.subnet
                ),
            ));
        }
        if !self.bits.clear(offset) {
            let address = self.subnet.address_at(u128::from(offset));
            return Err(IpamError::new(
                ErrorKind::NotAllocated,
                format!(
                    "address {address} is not allocated in {}; was it released twice?",
                    self.subnet
                ),
            ));
        }
        self.used -= 1;
        Ok(())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(MAGIC);
        w.bytes(self.subnet.to_string().as_bytes());
        match self.ip_range {
            Some(range) => w.bytes(range.to_string().as_bytes()),
            None => w.bytes(b""),
        }
        match self.gateway {
            Some(gateway) => w.bytes(gateway.to_string().as_bytes()),
            None => w.bytes(b""),
        }
        w.u8(u8::from(self.serial));
        w.varint(u128::from(self.next));
        w.varint(u128::from(self.used));
        w.varint(self.reserved.len() as u128);
        for (offset, why) in &self.reserved {
            w.varint(u128::from(*offset));
            w.u8(*why as u8);
        }
        w.bitmap(&self.bits);
        w.finish()
    }

    pub fn from_bytes(data: &[u8]) -> Result<AddressPool> {
        let mut r = Reader::open(data, MAGIC, "address pool")?;
        let text = |bytes: &[u8]| -> Result<String> {
            String::from_utf8(bytes.to_vec()).map_err(|_| IpamError::corrupt("text is not UTF-8"))
        };
        let subnet: Subnet = text(r.bytes()?)?
            .parse()
            .map_err(|e: IpamError| IpamError::corrupt(e.message))?;
        let ip_range = match text(r.bytes()?)?.as_str() {
            "" => None,
            range => Some(
                range
                    .parse()
                    .map_err(|e: IpamError| IpamError::corrupt(e.message))?,
            ),
        };
        let gateway: Option<IpAddr> = match text(r.bytes()?)?.as_str() {
            "" => None,
            gateway => Some(
                gateway
                    .parse()
                    .map_err(|_| IpamError::corrupt("bad gateway"))?,
            ),
        };
        let serial = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(IpamError::corrupt("bad serial flag")),
        };
        let next = r.varint_u64()?;
        let used = r.varint_u64()?;
        let reserved_count = r.varint_u64()?;
        // Rebuild the pool's frame from its config, then check the stored state against it.
        let mut pool = AddressPool::new(
            subnet,
            PoolConfig {
                ip_range,
                gateway: None,
                reserved: Vec::new(),
                serial,
            },
        )
        .map_err(|e| IpamError::corrupt(e.message))?;
        let last = pool.bits.last();
        let mut reserved = Vec::new();
        for _ in 0..reserved_count.min(last.saturating_add(1)) {
            let offset = r.varint_u64()?;
            let why = Reservation::from_u8(r.u8()?)
                .ok_or_else(|| IpamError::corrupt("unknown reservation kind"))?;
            if offset > last || reserved.last().is_some_and(|(o, _)| *o >= offset) {
                return Err(IpamError::corrupt(
                    "reserved addresses out of order or range",
                ));
            }
            reserved.push((offset, why));
        }
        if reserved.len() as u64 != reserved_count {
            return Err(IpamError::corrupt("more reservations than addresses"));
        }
        let gateway_ok = match gateway {
            Some(g) => pool
                .offset_of(g)
                .is_ok_and(|o| reserved.contains(&(o, Reservation::Gateway))),
            None => !reserved.iter().any(|(_, why)| *why == Reservation::Gateway),
        };
        let frame_ok = pool.reserved.iter().all(|r| reserved.contains(r));
        if !gateway_ok || !frame_ok {
            return Err(IpamError::corrupt(
                "reservations do not match the pool's configuration",
            ));
        }
        let bits = r.bitmap(last)?;
        r.finish()?;
        if bits.count_set() != u128::from(used) + reserved.len() as u128 {
            return Err(IpamError::corrupt(
                "the in-use count does not match the bitmap",
            ));
        }
        if reserved.iter().any(|(o, _)| !bits.get(*o)) {
            return Err(IpamError::corrupt("a reserved address is not marked taken"));
        }
        if next < pool.range_first || next > pool.range_last {
            return Err(IpamError::corrupt(
                "serial cursor outside the dynamic range",
            ));
        }
        pool.bits = bits;
        pool.reserved = reserved;
        pool.gateway = gateway;
        pool.next = next;
        pool.used = used;
        Ok(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(subnet: &str, config: PoolConfig) -> AddressPool {
        AddressPool::new(subnet.parse().unwrap(), config).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn lowest_free_skips_reserved() {
        let mut p = pool(
            "10.0.0.0/29",
            PoolConfig {
                gateway: Some(ip("10.0.0.1")),
                ..Default::default()
            },
        );
        assert_eq!(p.size(), 5);
        let got: Vec<String> = (0..5)
            .map(|_| p.allocate(None).unwrap().to_string())
            .collect();
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        assert_eq!(p.allocate(None).unwrap_err().kind, ErrorKind::Exhausted);
        p.release(ip("10.0.0.4")).unwrap();
        assert_eq!(p.allocate(None).unwrap(), ip("10.0.0.4"));
        assert_eq!(
            p.release(ip("10.0.0.1")).unwrap_err().kind,
            ErrorKind::InUse
        );
        assert_eq!(
            p.release(ip("10.0.0.7")).unwrap_err().kind,
            ErrorKind::InUse
        );
        assert_eq!(
            p.release(ip("10.0.1.0")).unwrap_err().kind,
            ErrorKind::OutOfRange
        );
    }

    #[test]
    fn serial_does_not_reuse_at_once() {
        let mut p = pool(
            "10.0.0.0/29",
            PoolConfig {
                serial: true,
                ..Default::default()
            },
        );
        let a = p.allocate(None).unwrap();
        p.release(a).unwrap();
        assert_eq!(p.allocate(None).unwrap(), ip("10.0.0.2"));
        for _ in 0..4 {
            p.allocate(None).unwrap();
        }
        // Wraps round to the released first address.
        assert_eq!(p.allocate(None).unwrap(), a);
    }

    #[test]
    fn edge_prefixes() {
        let mut p31 = pool("10.0.0.0/31", PoolConfig::default());
        assert_eq!(p31.size(), 2);
        assert_eq!(p31.allocate(None).unwrap(), ip("10.0.0.0"));
        assert_eq!(p31.allocate(None).unwrap(), ip("10.0.0.1"));
        let mut p32 = pool("10.0.0.9/32", PoolConfig::default());
        assert_eq!(p32.allocate(None).unwrap(), ip("10.0.0.9"));
        assert_eq!(p32.allocate(None).unwrap_err().kind, ErrorKind::Exhausted);
        let mut v6 = pool("fd00::/64", PoolConfig::default());
        assert_eq!(v6.size(), u128::from(u64::MAX));
        assert_eq!(v6.allocate(None).unwrap(), ip("fd00::1"));
        assert_eq!(
            v6.allocate(Some(ip("fd00::ffff:ffff:ffff:ffff"))).unwrap(),
            ip("fd00::ffff:ffff:ffff:ffff")
        );
        let err =
            AddressPool::new("10.0.0.0/7".parse().unwrap(), PoolConfig::default()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidSubnet);
    }

    #[test]
    fn ip_range_limits_dynamic_allocation_only() {
        let mut p = pool(
            "10.0.0.0/24",
            PoolConfig {
                ip_range: Some("10.0.0.128/30".parse().unwrap()),
                ..Default::default()
            },
        );
        for expected in ["10.0.0.128", "10.0.0.129", "10.0.0.130", "10.0.0.131"] {
            assert_eq!(p.allocate(None).unwrap(), ip(expected));
        }
        assert_eq!(p.allocate(None).unwrap_err().kind, ErrorKind::Exhausted);
        assert_eq!(p.allocate(Some(ip("10.0.0.7"))).unwrap(), ip("10.0.0.7"));
    }

    #[test]
    fn bad_configs_are_refused() {
        let subnet: Subnet = "10.0.0.0/24".parse().unwrap();
        let outside = PoolConfig {
            gateway: Some(ip("10.0.1.1")),
            ..Default::default()
        };
        assert_eq!(
            AddressPool::new(subnet, outside).unwrap_err().kind,
            ErrorKind::OutOfRange
        );
        let network = PoolConfig {
            gateway: Some(ip("10.0.0.0")),
            ..Default::default()
        };
        assert_eq!(
            AddressPool::new(subnet, network).unwrap_err().kind,
            ErrorKind::InUse
        );
        let range = PoolConfig {
            ip_range: Some("10.0.1.0/25".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(
            AddressPool::new(subnet, range).unwrap_err().kind,
            ErrorKind::InvalidSubnet
        );
    }

    #[test]
    fn bytes_round_trip_and_corruption_is_caught() {
        let mut p = pool(
            "10.0.0.0/16",
            PoolConfig {
                gateway: Some(ip("10.0.0.1")),
                reserved: vec![ip("10.0.0.9")],
                serial: true,
                ..Default::default()
            },
        );
        for _ in 0..5000 {
            p.allocate(None).unwrap();
        }
        p.release(ip("10.0.3.3")).unwrap();
        let blob = p.to_bytes();
        let q = AddressPool::from_bytes(&blob).unwrap();
        assert_eq!(q.to_bytes(), blob);
        assert_eq!(q.used(), p.used());
        for cut in [0, 4, 5, 9, blob.len() / 2, blob.len() - 1] {
            assert_eq!(
                AddressPool::from_bytes(&blob[..cut]).unwrap_err().kind,
                ErrorKind::Corrupt
            );
        }
        let mut flipped = blob.clone();
        flipped[20] ^= 0x40;
        assert_eq!(
            AddressPool::from_bytes(&flipped).unwrap_err().kind,
            ErrorKind::Corrupt
        );
    }
}
