//! Carving subnets out of address pools, with Docker's semantics: pools are
//! tried in order, each split into subnets of its `size`, the lowest free subnet
//! that overlaps nothing to avoid wins.

use std::net::{IpAddr, Ipv6Addr};

use super::bitmap::{Bitmap, DENSE_LIMIT};
use super::codec::{Reader, Writer};
use super::error::{ErrorKind, IpamError, Result};
use super::subnet::Subnet;

const MAGIC: &[u8; 4] = b"KNSP";

/// One `default-address-pools` entry: carve subnets of length `size` out of `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpec {
    pub base: Subnet,
    pub size: u8,
}

impl PoolSpec {
    pub fn new(base: Subnet, size: u8) -> Result<PoolSpec> {
        if size < base.prefix() || size > base.family_bits() {
            return Err(IpamError::new(
                ErrorKind::InvalidSubnet,
                format!(
                    "address pool {base} cannot be split into /{size} subnets; size must be between {} and {}",
                    base.prefix(),
                    base.family_bits()
                ),
            ));
        }
        if u32::from(size - base.prefix()) > DENSE_LIMIT.trailing_zeros() {
            return Err(IpamError::new(
                ErrorKind::InvalidSubnet,
                format!(
                    "address pool {base} split into /{size} gives more than 2^24 subnets; use a larger size"
                ),
            ));
        }
        Ok(PoolSpec { base, size })
    }

    fn count(&self) -> u64 {
        1 << (self.size - self.base.prefix())
    }
}

pub struct SubnetPools {
    pools: Vec<(PoolSpec, Bitmap)>,
}

impl std::fmt::Debug for SubnetPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.specs()).finish()
    }
}

impl SubnetPools {
    pub fn new(specs: Vec<PoolSpec>) -> Result<SubnetPools> {
        for (i, a) in specs.iter().enumerate() {
            if let Some(b) = specs[..i].iter().find(|b| b.base.overlaps(&a.base)) {
                return Err(IpamError::new(
                    ErrorKind::InvalidSubnet,
                    format!(
                        "address pools {} and {} overlap; give disjoint pools",
                        b.base, a.base
                    ),
                ));
            }
        }
        let pools = specs
            .into_iter()
            .map(|spec| (spec, Bitmap::new(spec.count() - 1)))
            .collect();
        Ok(SubnetPools { pools })
    }

    /// Docker's local defaults: 172.17.0.0/16 … 172.31.0.0/16, then 192.168.0.0/16
    /// in /20s, and for IPv6 a ULA /48 (global ID `ula_global_id`, 40 bits) in /64s.
    pub fn docker_defaults(ula_global_id: u64) -> SubnetPools {
        let mut specs: Vec<PoolSpec> = (17..=31)
            .map(|second| PoolSpec {
                base: Subnet::new(IpAddr::from([172, second, 0, 0]), 16).expect("canonical"),
                size: 16,
            })
            .collect();
        specs.push(PoolSpec {
            base: Subnet::new(IpAddr::from([192, 168, 0, 0]), 16).expect("canonical"),
            size: 20,
        });
        let ula = (0xfd_u128 << 120) | (u128::from(ula_global_id & 0xff_ffff_ffff) << 80);
        specs.push(PoolSpec {
            base: Subnet::new(IpAddr::V6(Ipv6Addr::from(ula)), 48).expect("canonical"),
            size: 64,
        });
        SubnetPools::new(specs).expect("Docker's defaults are disjoint")
    }

    pub fn specs(&self) -> impl Iterator<Item = PoolSpec> + '_ {
        self.pools.iter().map(|(spec, _)| *spec)
    }

    /// The first free subnet of the family that overlaps none of `avoid`.
    pub fn request(&mut self, avoid: &[Subnet], ipv6: bool) -> Result<Subnet> {
        for (spec, taken) in self
            .pools
            .iter_mut()
            .filter(|(s, _)| s.base.is_ipv6() == ipv6)
        {
            let last = spec.count() - 1;
            let mut index = 0;
            while let Some(free) = taken.first_clear(index, last) {
                let candidate = spec.base.nth_subnet(spec.size, u128::from(free));
                match avoid.iter().find(|a| a.overlaps(&candidate)) {
                    None => {
                        taken.set(free);
                        return Ok(candidate);
                    }
                    // Jump past everything the overlapping subnet covers.
                    Some(blocker) => {
                        let blocker_end = blocker.network_u128() + blocker.last_offset();
                        let pool_start = spec.base.network_u128();
                        let past = (blocker_end.saturating_sub(pool_start)
                            >> (spec.base.family_bits() - spec.size))
                            + 1;
                        index = u64::try_from(past).unwrap_or(u64::MAX).max(free + 1);
                    }
                }
            }
        }
        let family = if ipv6 { "IPv6" } else { "IPv4" };
        let pools: Vec<String> = self
            .specs()
            .filter(|s| s.base.is_ipv6() == ipv6)
            .map(|s| format!("{}/{}", s.base, s.size))
            .collect();
        Err(IpamError::new(
            ErrorKind::Exhausted,
            format!(
                "all predefined {family} address pools have been fully subnetted ({}); give the network a subnet, remove unused networks or configure more pools",
                if pools.is_empty() {
                    "none configured".to_string()
                } else {
                    pools.join(", ")
                }
            ),
        ))
    }

    /// Give back a subnet handed out by `request`.
    pub fn release(&mut self, subnet: &Subnet) -> Result<()> {
        let found = self
            .pools
            .iter_mut()
            .find(|(spec, _)| spec.size == subnet.prefix() && spec.base.covers(subnet));
        let Some((spec, taken)) = found else {
            return Err(IpamError::new(
                ErrorKind::OutOfRange,
                format!("subnet {subnet} was not carved from any of these address pools"),
            ));
        };
        let index = (subnet.network_u128() - spec.base.network_u128())
            >> (spec.base.family_bits() - spec.size);
        if !taken.clear(index as u64) {
            return Err(IpamError::new(
                ErrorKind::NotAllocated,
                format!("subnet {subnet} is not allocated; was it released twice?"),
            ));
        }
        Ok(())
    }

    /// Is `subnet` handed out?
    pub fn contains(&self, subnet: &Subnet) -> bool {
        self.pools.iter().any(|(spec, taken)| {
            spec.size == subnet.prefix()
                && spec.base.covers(subnet)
                && taken.get(
                    ((subnet.network_u128() - spec.base.network_u128())
                        >> (spec.base.family_bits() - spec.size)) as u64,
                )
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(MAGIC);
        w.varint(self.pools.len() as u128);
        for (spec, taken) in &self.pools {
            w.bytes(spec.base.to_string().as_bytes());
            w.u8(spec.size);
            w.bitmap(taken);
        }
        w.finish()
    }

    pub fn from_bytes(data: &[u8]) -> Result<SubnetPools> {
        let mut r = Reader::open(data, MAGIC, "subnet pools")?;
        let count = r.varint_u64()?;
        let mut pools = Vec::new();
        for _ in 0..count {
            let base: Subnet = std::str::from_utf8(r.bytes()?)
                .map_err(|_| IpamError::corrupt("text is not UTF-8"))?
                .parse()
                .map_err(|e: IpamError| IpamError::corrupt(e.message))?;
            let spec = PoolSpec::new(base, r.u8()?).map_err(|e| IpamError::corrupt(e.message))?;
            let taken = r.bitmap(spec.count() - 1)?;
            pools.push((spec, taken));
        }
        r.finish()?;
        let specs: Vec<PoolSpec> = pools.iter().map(|(s, _)| *s).collect();
        let mut result = SubnetPools::new(specs).map_err(|e| IpamError::corrupt(e.message))?;
        result.pools = pools;
        Ok(result)
    }
}

/// A 40-bit ULA global ID stable for this machine (RFC 4193 asks for a random one;
/// the machine id is random and keeps the default IPv6 pool stable across runs).
pub fn host_ula_global_id() -> u64 {
    let seed = std::fs::read("/etc/machine-id").unwrap_or_else(|_| b"keelnet".to_vec());
    // FNV-1a: small and good enough to spread the machine id over 40 bits.
    let hash = seed.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    hash & 0xff_ffff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(text: &str) -> Subnet {
        text.parse().unwrap()
    }

    #[test]
    fn defaults_follow_docker() {
        let mut pools = SubnetPools::docker_defaults(0x12_3456_789a);
        assert_eq!(pools.request(&[], false).unwrap(), subnet("172.17.0.0/16"));
        assert_eq!(
            pools.request(&[subnet("172.18.0.0/24")], false).unwrap(),
            subnet("172.19.0.0/16")
        );
        assert_eq!(pools.request(&[], false).unwrap(), subnet("172.18.0.0/16"));
        for second in 20..=31 {
            assert_eq!(
                pools.request(&[], false).unwrap(),
                subnet(&format!("172.{second}.0.0/16"))
            );
        }
        assert_eq!(pools.request(&[], false).unwrap(), subnet("192.168.0.0/20"));
        assert_eq!(
            pools.request(&[], true).unwrap(),
            subnet("fd12:3456:789a::/64")
        );
        assert_eq!(
            pools.request(&[], true).unwrap(),
            subnet("fd12:3456:789a:1::/64")
        );
        for _ in 1..16 {
            pools.request(&[], false).unwrap();
        }
        let err = pools.request(&[], false).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Exhausted);
        assert!(err.message.contains("fully subnetted"), "{}", err.message);
        pools.release(&subnet("192.168.16.0/20")).unwrap();
        assert_eq!(
            pools.release(&subnet("192.168.16.0/20")).unwrap_err().kind,
            ErrorKind::NotAllocated
        );
        assert_eq!(
            pools.request(&[], false).unwrap(),
            subnet("192.168.16.0/20")
        );
    }

    #[test]
    fn a_large_blocker_is_jumped_over() {
        let spec = PoolSpec::new(subnet("10.0.0.0/8"), 24).unwrap();
        let mut pools = SubnetPools::new(vec![spec]).unwrap();
        let got = pools
            .request(&[subnet("10.0.0.0/9"), subnet("0.0.0.0/32")], false)
            .unwrap();
        assert_eq!(got, subnet("10.128.0.0/24"));
        let blob = pools.to_bytes();
        let back = SubnetPools::from_bytes(&blob).unwrap();
        assert!(back.contains(&got));
        assert_eq!(back.to_bytes(), blob);
    }

    #[test]
    fn bad_specs() {
        assert!(PoolSpec::new(subnet("10.0.0.0/8"), 7).is_err());
        assert!(PoolSpec::new(subnet("10.0.0.0/8"), 33).is_err());
        assert!(PoolSpec::new(subnet("fd00::/16"), 64).is_err());
        let a = PoolSpec::new(subnet("10.0.0.0/8"), 16).unwrap();
        let b = PoolSpec::new(subnet("10.1.0.0/16"), 24).unwrap();
        assert_eq!(
            SubnetPools::new(vec![a, b]).err().unwrap().kind,
            ErrorKind::InvalidSubnet
        );
    }
}
