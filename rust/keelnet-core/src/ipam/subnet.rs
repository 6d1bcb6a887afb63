//! Subnets as (network address, prefix length), with addresses mapped to offsets
//! inside the subnet. The allocators work on offsets; only the edges see addresses.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::error::{ErrorKind, IpamError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    network: IpAddr,
    prefix: u8,
}

impl Subnet {
    /// A subnet from its network address and prefix length. Host bits must be zero.
    pub fn new(network: IpAddr, prefix: u8) -> Result<Subnet> {
        let width = family_bits(&network);
        if prefix > width {
            return Err(IpamError::new(
                ErrorKind::InvalidSubnet,
                format!("invalid subnet {network}/{prefix}: the prefix length must be 0..={width}"),
            ));
        }
        let value = ip_to_u128(network);
        let canonical = value & prefix_mask(prefix, width);
        if canonical != value {
            let fixed = u128_to_ip(canonical, network.is_ipv6());
            return Err(IpamError::new(
                ErrorKind::InvalidSubnet,
                format!(
                    "invalid subnet {network}/{prefix}: host bits are set; did you mean {fixed}/{prefix}?"
                ),
            ));
        }
        Ok(Subnet { network, prefix })
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The network address as an integer.
    pub fn network_u128(&self) -> u128 {
        ip_to_u128(self.network)
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_ipv6(&self) -> bool {
        self.network.is_ipv6()
    }

    /// Bits of the address family: 32 or 128.
    pub fn family_bits(&self) -> u8 {
        family_bits(&self.network)
    }

    /// Number of host bits: log2 of the number of addresses.
    pub fn host_bits(&self) -> u8 {
        self.family_bits() - self.prefix
    }

    /// Offset of the last address (the number of addresses minus one).
    /// Saturates at `u128::MAX` for /0 IPv6, which no pool accepts anyway.
    pub fn last_offset(&self) -> u128 {
        if self.host_bits() >= 128 {
            u128::MAX
        } else {
            (1u128 << self.host_bits()) - 1
        }
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        address.is_ipv6() == self.is_ipv6()
            && ip_to_u128(address) & prefix_mask(self.prefix, self.family_bits())
                == ip_to_u128(self.network)
    }

    /// The offset of `address` inside this subnet, or `OutOfRange`.
    pub fn offset_of(&self, address: IpAddr) -> Result<u128> {
        if !self.contains(address) {
            return Err(IpamError::new(
                ErrorKind::OutOfRange,
                format!("address {address} is outside subnet {self}; pick an address inside it"),
            ));
        }
        Ok(ip_to_u128(address) - ip_to_u128(self.network))
    }

    /// The address at `offset` (which the caller keeps within `last_offset`).
    pub fn address_at(&self, offset: u128) -> IpAddr {
        u128_to_ip(ip_to_u128(self.network) + offset, self.is_ipv6())
    }

    /// True when the two subnets share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        if self.is_ipv6() != other.is_ipv6() {
            return false;
        }
        let shorter = self.prefix.min(other.prefix);
        let mask = prefix_mask(shorter, self.family_bits());
        ip_to_u128(self.network) & mask == ip_to_u128(other.network) & mask
    }

    /// True when `other` lies entirely inside `self`.
    pub fn covers(&self, other: &Subnet) -> bool {
        other.prefix >= self.prefix && self.contains(other.network)
    }

    /// The `index`-th subnet of length `prefix` inside this one.
    pub fn nth_subnet(&self, prefix: u8, index: u128) -> Subnet {
        let shift = self.family_bits() - prefix;
        let network = u128_to_ip(ip_to_u128(self.network) + (index << shift), self.is_ipv6());
        Subnet { network, prefix }
    }
}

impl FromStr for Subnet {
    type Err = IpamError;

    fn from_str(text: &str) -> Result<Subnet> {
        let invalid = |why: &str| {
            IpamError::new(
                ErrorKind::InvalidSubnet,
                format!(
                    "invalid subnet {text:?}: {why}; write it in CIDR form, e.g. 10.1.0.0/16 or fd00:1::/64"
                ),
            )
        };
        let (address, prefix) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| invalid("no prefix length"))?;
        let network = IpAddr::from_str(address).map_err(|_| invalid("not an IP address"))?;
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("the prefix length is not a number"));
        }
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| invalid("the prefix length is too long"))?;
        Subnet::new(network, prefix)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Parse an address of the subnet's family, with an error that says what was expected.
pub fn parse_address(text: &str, subnet: &Subnet) -> Result<IpAddr> {
    match IpAddr::from_str(text.trim()) {
        Ok(address) if address.is_ipv6() == subnet.is_ipv6() => Ok(address),
        Ok(address) => Err(IpamError::new(
            ErrorKind::OutOfRange,
            format!(
                "address {address} is not of subnet {subnet}'s family (IPv{}); pick an address inside it",
                if subnet.is_ipv6() { 6 } else { 4 }
            ),
        )),
        Err(_) => Err(IpamError::new(
            ErrorKind::InvalidAddress,
            format!(
                "{text:?} is not an IP address (subnet {subnet}); write e.g. 10.1.0.7 or fd00::7"
            ),
        )),
    }
}

fn family_bits(address: &IpAddr) -> u8 {
    if address.is_ipv6() { 128 } else { 32 }
}

fn prefix_mask(prefix: u8, width: u8) -> u128 {
    let all = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    let host = width - prefix;
    let host_mask = if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    };
    all & !host_mask
}

fn ip_to_u128(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn u128_to_ip(value: u128, ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(Ipv6Addr::from(value))
    } else {
        // Truncation is the intent: IPv4 values never exceed 32 bits here.
        IpAddr::V4(Ipv4Addr::from(value as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let s: Subnet = "10.0.0.0/8".parse().unwrap();
        assert_eq!(s.to_string(), "10.0.0.0/8");
        assert_eq!(s.last_offset(), (1 << 24) - 1);
        let e = "10.0.0.1/8".parse::<Subnet>().unwrap_err();
        assert!(
            e.message.contains("did you mean 10.0.0.0/8"),
            "{}",
            e.message
        );
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.0/33",
            "fd00::/129",
            "x/8",
            "10.0.0.0/-1",
            "10.0.0.0/08x",
        ] {
            assert_eq!(
                bad.parse::<Subnet>().unwrap_err().kind,
                ErrorKind::InvalidSubnet,
                "{bad}"
            );
        }
        let v6: Subnet = "fd00:1::/64".parse().unwrap();
        assert_eq!(v6.last_offset(), u128::from(u64::MAX));
        assert_eq!(v6.address_at(5).to_string(), "fd00:1::5");
    }

    #[test]
    fn overlap_and_cover() {
        let a: Subnet = "10.0.0.0/8".parse().unwrap();
        let b: Subnet = "10.2.0.0/16".parse().unwrap();
        let c: Subnet = "11.0.0.0/16".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a) && a.covers(&b) && !b.covers(&a));
        assert!(!a.overlaps(&c));
        let all: Subnet = "0.0.0.0/0".parse().unwrap();
        assert!(all.overlaps(&c) && all.covers(&c));
        let host: Subnet = "10.1.2.3/32".parse().unwrap();
        assert!(host.contains("10.1.2.3".parse().unwrap()));
        assert!(!host.contains("10.1.2.4".parse().unwrap()));
    }
}
