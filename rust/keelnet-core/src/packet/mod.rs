//! Packets: zero-copy views over received bytes and builders that write headers into
//! caller-provided buffers.
//!
//! Every parser takes untrusted bytes and returns a [`PacketError`] on short, truncated or
//! inconsistent input; none panics on any byte string (fuzzed in `rust/fuzz`). Views
//! borrow the buffer and read fields on demand; nothing is copied.
//!
//! - [`ethernet`], [`arp`], [`ipv4`], [`ipv6`] (with extension headers), [`udp`], [`tcp`]
//! - [`checksum`]: the Internet checksum, pseudo-headers, incremental update (RFC 1624)
//! - [`vxlan`]: encapsulation into headroom and checked decapsulation (RFC 7348)
//! - [`offload`]: the virtio-net header, software TCP segmentation (GSO) and coalescing (GRO)

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod ipv4;
pub mod ipv6;
pub mod offload;
pub mod tcp;
pub mod udp;
pub mod vxlan;

use std::fmt;

pub use crate::fdb::MacAddr;

/// The protocol layer an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    Ethernet,
    Arp,
    Ipv4,
    Ipv6,
    Udp,
    Tcp,
    Vxlan,
    VirtioNet,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Ethernet => "Ethernet",
            Layer::Arp => "ARP",
            Layer::Ipv4 => "IPv4",
            Layer::Ipv6 => "IPv6",
            Layer::Udp => "UDP",
            Layer::Tcp => "TCP",
            Layer::Vxlan => "VXLAN",
            Layer::VirtioNet => "virtio-net header",
        })
    }
}

/// Why bytes were rejected (by a parser) or a packet dropped (by decapsulation,
/// segmentation or coalescing). The one error type of the packet module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    /// Fewer bytes than the header (or the length it announces) needs.
    Truncated {
        layer: Layer,
        needed: usize,
        available: usize,
    },
    /// A length field disagrees with the bytes present or with another length.
    BadLength { layer: Layer, value: usize },
    /// An IP version nibble that does not match the header's type.
    BadVersion { layer: Layer, version: u8 },
    /// A checksum that does not verify.
    BadChecksum { layer: Layer },
    /// A field value this code does not handle (EtherType, ARP hardware type, …).
    Unsupported {
        layer: Layer,
        what: &'static str,
        value: u32,
    },
    /// A header field with a value the protocol forbids.
    Invalid { layer: Layer, what: &'static str },
    /// VXLAN: the outer packet is not UDP.
    NotUdp { protocol: u8 },
    /// VXLAN: the UDP destination port is not the VXLAN port.
    WrongPort { port: u16 },
    /// VXLAN: the I flag is clear or reserved flag bits are set.
    BadVxlanFlags { flags: u32 },
    /// VXLAN: the reserved low byte of the VNI word is not zero.
    BadVxlanReserved { value: u8 },
    /// VXLAN: a VNI above 24 bits was asked for.
    VniOutOfRange { vni: u32 },
    /// The outer IP packet is a fragment (tunnels are not reassembled here).
    Fragmented { layer: Layer },
    /// A builder was given too small a buffer or too little headroom.
    NoRoom { needed: usize, available: usize },
    /// Segmentation or coalescing met a frame it cannot handle.
    Offload { what: &'static str },
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PacketError::Truncated {
                layer,
                needed,
                available,
            } => {
                write!(
                    f,
                    "{layer} truncated: needs {needed} bytes, {available} present"
                )
            }
            PacketError::BadLength { layer, value } => {
                write!(
                    f,
                    "{layer} length field {value} is inconsistent with the packet"
                )
            }
            PacketError::BadVersion { layer, version } => {
                write!(f, "{layer} header has IP version {version}")
            }
            PacketError::BadChecksum { layer } => write!(f, "{layer} checksum does not verify"),
            PacketError::Unsupported { layer, what, value } => {
                write!(f, "{layer} {what} {value:#x} is not supported")
            }
            PacketError::Invalid { layer, what } => write!(f, "{layer} {what}"),
            PacketError::NotUdp { protocol } => {
                write!(f, "outer packet is not UDP (protocol {protocol})")
            }
            PacketError::WrongPort { port } => {
                write!(f, "UDP destination port {port} is not the VXLAN port")
            }
            PacketError::BadVxlanFlags { flags } => {
                write!(
                    f,
                    "VXLAN flags word {flags:#010x}: I flag must be set, reserved bits clear"
                )
            }
            PacketError::BadVxlanReserved { value } => {
                write!(
                    f,
                    "VXLAN reserved byte after the VNI is {value:#04x}, not zero"
                )
            }
            PacketError::VniOutOfRange { vni } => write!(f, "VNI {vni} does not fit in 24 bits"),
            PacketError::Fragmented { layer } => write!(f, "outer {layer} packet is a fragment"),
            PacketError::NoRoom { needed, available } => {
                write!(
                    f,
                    "buffer too small: needs {needed} bytes, {available} available"
                )
            }
            PacketError::Offload { what } => write!(f, "cannot segment/coalesce: {what}"),
        }
    }
}

impl std::error::Error for PacketError {}

/// `Ok(())` when `bytes` holds at least `needed` bytes of `layer`.
#[inline(always)]
pub(crate) fn need(layer: Layer, bytes: &[u8], needed: usize) -> Result<(), PacketError> {
    if bytes.len() < needed {
        return Err(PacketError::Truncated {
            layer,
            needed,
            available: bytes.len(),
        });
    }
    Ok(())
}

/// Big-endian u16 at `offset`; callers check the length first.
#[inline(always)]
pub(crate) fn be16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_be_bytes([bytes[offset], bytes[offset + 1]])
}

#[inline(always)]
pub(crate) fn be32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes([
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ])
}

#[inline(always)]
pub(crate) fn put16(bytes: &mut [u8], offset: usize, value: u16) {
    bytes[offset..offset + 2].copy_from_slice(&value.to_be_bytes());
}

#[inline(always)]
pub(crate) fn put32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + 4].copy_from_slice(&value.to_be_bytes());
}

/// `Ok(())` when a builder's buffer has room for `needed` bytes.
#[inline(always)]
pub(crate) fn room(buf: &[u8], needed: usize) -> Result<(), PacketError> {
    if buf.len() < needed {
        return Err(PacketError::NoRoom {
            needed,
            available: buf.len(),
        });
    }
    Ok(())
}

/// IP protocol numbers used here.
pub mod ip_proto {
    pub const HOP_BY_HOP: u8 = 0;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const NO_NEXT_HEADER: u8 = 59;
    pub const DESTINATION_OPTIONS: u8 = 60;
}
