//! VXLAN (RFC 7348): encapsulation into headroom in front of the inner frame, and
//! checked decapsulation that says why it drops a packet.
//!
//! Outer frame: Ethernet (optionally one 802.1Q tag) + IPv4 or IPv6 + UDP + 8-byte VXLAN
//! header (flags with the I bit, 24-bit VNI). Encapsulation precomputes everything that
//! does not change per packet (an [`Encapsulator`] per tunnel), so the per-packet work is
//! a few stores, a 20-byte IPv4 checksum finished from a precomputed sum, and, over IPv6
//! (where RFC 8200 requires it), the UDP checksum over the inner frame.

use std::net::IpAddr;

use super::ethernet::{self, EthernetFrame, VlanTag, ethertype};
use super::ipv4::{self, Ipv4Header, Ipv4Packet};
use super::ipv6::{self, Ipv6Header, Ipv6Packet};
use super::udp::{self, UdpDatagram};
use super::{
    Layer, MacAddr, PacketError, be16, be32, checksum, ip_proto, need, put16, put32, room,
};

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// IANA-assigned VXLAN port.
pub const DEFAULT_PORT: u16 = 4789;
/// Linux's default source port range (`net.ipv4.ip_local_port_range`).
pub const DEFAULT_SOURCE_PORTS: (u16, u16) = (32768, 60999);
/// The I flag: the VNI is valid.
const FLAG_VNI_VALID: u32 = 0x0800_0000;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;
/// Outer header bytes in front of the inner frame (untagged outer Ethernet).
pub const OVERHEAD_V4: usize =
    ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + udp::HEADER_LEN + HEADER_LEN;
pub const OVERHEAD_V6: usize =
    ethernet::HEADER_LEN + ipv6::HEADER_LEN + udp::HEADER_LEN + HEADER_LEN;
/// Headroom that fits any outer header this module writes (IPv6 and a VLAN tag).
pub const MAX_OVERHEAD: usize = OVERHEAD_V6 + 4;

/// Per-tunnel encapsulation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanConfig {
    pub destination_port: u16,
    /// Inclusive range the flow-hashed source port is taken from.
    pub source_ports: (u16, u16),
    /// Outer TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    /// Outer DSCP/ECN (IPv4 TOS, IPv6 traffic class).
    pub tos: u8,
    /// IPv4 only: set the don't-fragment bit.
    pub dont_fragment: bool,
    /// IPv4 only: compute the outer UDP checksum (zero, "none", otherwise). Over IPv6 it
    /// is always computed.
    pub udp_checksum_v4: bool,
}

impl Default for VxlanConfig {
    /// What a Linux vxlan device sends by default: port 4789, source ports from the local
    /// port range, TTL 64 here (the kernel inherits it), DF clear, no IPv4 UDP checksum.
    fn default() -> Self {
        VxlanConfig {
            destination_port: DEFAULT_PORT,
            source_ports: DEFAULT_SOURCE_PORTS,
            ttl: 64,
            tos: 0,
            dont_fragment: false,
            udp_checksum_v4: false,
        }
    }
}

/// The outer addresses of a tunnel. Both IPs must be of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    pub source_mac: MacAddr,
    pub destination_mac: MacAddr,
    pub source: IpAddr,
    pub destination: IpAddr,
    pub vlan: Option<VlanTag>,
}

/// IPv4 + UDP + VXLAN header bytes after the outer Ethernet header.
const TUNNEL_HEADERS_V4_LEN: usize = ipv4::MIN_HEADER_LEN + udp::HEADER_LEN + HEADER_LEN;
/// IPv6 + UDP + VXLAN header bytes after the outer Ethernet header.
const TUNNEL_HEADERS_V6_LEN: usize = ipv6::HEADER_LEN + udp::HEADER_LEN + HEADER_LEN;

/// The outer IP, UDP and VXLAN headers of a tunnel as sent, with the per-packet fields
/// zero (IP length fields, IPv4 ID and header checksum, UDP source port, length and
/// checksum, VNI): one fixed-size copy per packet, then a few stores.
#[derive(Debug, Clone)]
enum TunnelHeaders {
    V4 {
        template: [u8; TUNNEL_HEADERS_V4_LEN],
        /// Checksum sum of the IPv4 header template; length and ID are added per packet.
        ip_sum: u64,
    },
    V6 {
        template: [u8; TUNNEL_HEADERS_V6_LEN],
    },
}

/// Encapsulates frames for one tunnel (one pair of outer endpoints).
#[derive(Debug, Clone)]
pub struct Encapsulator {
    config: VxlanConfig,
    ethernet: [u8; ethernet::VLAN_HEADER_LEN],
    ethernet_len: usize,
    tunnel_headers: TunnelHeaders,
    /// The per-tunnel part of the UDP checksum sum: pseudo-header addresses and
    /// protocol, destination port, VXLAN flags. Per packet only the lengths, the source
    /// port, the VNI and the inner frame are added (incremental checksum).
    udp_constant_sum: u64,
    /// The pseudo-header sum without the length (the seed of an offloaded checksum).
    pseudo_sum: u64,
    overhead: usize,
    next_id: u16,
}

impl Encapsulator {
    pub fn new(config: VxlanConfig, endpoints: &Endpoints) -> Result<Self, PacketError> {
        if config.source_ports.0 > config.source_ports.1 {
            return Err(PacketError::Invalid {
                layer: Layer::Udp,
                what: "source port range is empty",
            });
        }
        let (tunnel_headers, pseudo_header, ether_type, tunnel_len) =
            match (endpoints.source, endpoints.destination) {
                (IpAddr::V4(source), IpAddr::V4(destination)) => {
                    let mut template = [0u8; TUNNEL_HEADERS_V4_LEN];
                    Ipv4Header {
                        source,
                        destination,
                        protocol: ip_proto::UDP,
                        ttl: config.ttl,
                        dscp_ecn: config.tos,
                        identification: 0,
                        dont_fragment: config.dont_fragment,
                        payload_len: 0,
                    }
                    .write(&mut template)?;
                    // Zero length and checksum; the per-packet sum adds the real length.
                    put16(&mut template, 2, 0);
                    put16(&mut template, 10, 0);
                    let ip_sum = checksum::add(0, &template[..ipv4::MIN_HEADER_LEN]);
                    write_udp_and_vxlan(
                        &mut template[ipv4::MIN_HEADER_LEN..],
                        0,
                        config.destination_port,
                        0,
                        0,
                    );
                    (
                        TunnelHeaders::V4 { template, ip_sum },
                        checksum::pseudo_header_v4(source, destination, ip_proto::UDP, 0),
                        ethertype::IPV4,
                        TUNNEL_HEADERS_V4_LEN,
                    )
                }
                (IpAddr::V6(source), IpAddr::V6(destination)) => {
                    let mut template = [0u8; TUNNEL_HEADERS_V6_LEN];
                    Ipv6Header {
                        source,
                        destination,
                        next_header: ip_proto::UDP,
                        hop_limit: config.ttl,
                        traffic_class: config.tos,
                        flow_label: 0,
                        payload_len: 0,
                    }
                    .write(&mut template)?;
                    write_udp_and_vxlan(
                        &mut template[ipv6::HEADER_LEN..],
                        0,
                        config.destination_port,
                        0,
                        0,
                    );
                    (
                        TunnelHeaders::V6 { template },
                        checksum::pseudo_header_v6(&source, &destination, ip_proto::UDP, 0),
                        ethertype::IPV6,
                        TUNNEL_HEADERS_V6_LEN,
                    )
                }
                _ => {
                    return Err(PacketError::Invalid {
                        layer: Layer::Vxlan,
                        what: "outer source and destination are of different address families",
                    });
                }
            };
        let mut eth = [0u8; ethernet::VLAN_HEADER_LEN];
        let ethernet_len = ethernet::write_header(
            &mut eth,
            &endpoints.destination_mac,
            &endpoints.source_mac,
            endpoints.vlan,
            ether_type,
        )?;
        Ok(Encapsulator {
            config,
            ethernet: eth,
            ethernet_len,
            tunnel_headers,
            udp_constant_sum: pseudo_header
                + u64::from(config.destination_port)
                + u64::from(FLAG_VNI_VALID >> 16),
            pseudo_sum: pseudo_header,
            overhead: ethernet_len + tunnel_len,
            next_id: 0,
        })
    }

    /// Outer header bytes written in front of the inner frame.
    pub fn overhead(&self) -> usize {
        self.overhead
    }

    pub fn config(&self) -> &VxlanConfig {
        &self.config
    }

    /// Encapsulates the inner frame `buf[inner_start..]` in place: the outer headers are
    /// written into `buf[inner_start - overhead..inner_start]` (the headroom), the inner
    /// frame is not moved. Returns the offset where the outer frame starts.
    ///
    /// `source_port: None` takes the port from a hash of the inner flow.
    #[inline]
    pub fn encapsulate(
        &mut self,
        buf: &mut [u8],
        inner_start: usize,
        vni: u32,
        source_port: Option<u16>,
    ) -> Result<usize, PacketError> {
        if vni > MAX_VNI {
            return Err(PacketError::VniOutOfRange { vni });
        }
        let start = inner_start
            .checked_sub(self.overhead)
            .ok_or(PacketError::NoRoom {
                needed: self.overhead,
                available: inner_start,
            })?;
        let (headroom_and_outer, inner) =
            buf.split_at_mut_checked(inner_start)
                .ok_or(PacketError::NoRoom {
                    needed: inner_start,
                    available: 0,
                })?;
        need(Layer::Ethernet, inner, ethernet::HEADER_LEN)?;
        let udp_len = udp::HEADER_LEN + HEADER_LEN + inner.len();
        let source_port =
            source_port.unwrap_or_else(|| flow_source_port(inner, self.config.source_ports));
        let outer = &mut headroom_and_outer[start..];
        // Constant-size copies compile to a few moves; a variable length calls memcpy.
        if self.ethernet_len == ethernet::HEADER_LEN {
            outer[..ethernet::HEADER_LEN].copy_from_slice(&self.ethernet[..ethernet::HEADER_LEN]);
        } else {
            outer[..ethernet::VLAN_HEADER_LEN].copy_from_slice(&self.ethernet);
        }
        let tunnel = &mut outer[self.ethernet_len..];
        let udp_sum = |udp_len: usize| {
            let vni_word = vni << 8;
            // The length appears twice: in the pseudo-header and in the UDP header.
            self.udp_constant_sum
                + 2 * udp_len as u64
                + u64::from(source_port)
                + u64::from(vni_word >> 16)
                + u64::from(vni_word & 0xffff)
        };
        match &self.tunnel_headers {
            TunnelHeaders::V4 { template, ip_sum } => {
                let total = ipv4::MIN_HEADER_LEN + udp_len;
                let total16 = u16::try_from(total).map_err(|_| PacketError::BadLength {
                    layer: Layer::Ipv4,
                    value: total,
                })?;
                let headers = fixed_size(tunnel)?;
                *headers = *template;
                let id = self.next_id;
                self.next_id = id.wrapping_add(1);
                put16(headers, 2, total16);
                put16(headers, 4, id);
                put16(
                    headers,
                    10,
                    checksum::finish(ip_sum + u64::from(total16) + u64::from(id)),
                );
                let udp = &mut headers[ipv4::MIN_HEADER_LEN..];
                fill_udp_and_vxlan(udp, source_port, udp_len as u16, vni);
                if self.config.udp_checksum_v4 {
                    let sum = checksum::add(udp_sum(udp_len), inner);
                    put16(udp, 6, nonzero_checksum(checksum::finish(sum)));
                }
            }
            TunnelHeaders::V6 { template } => {
                let udp_len16 = u16::try_from(udp_len).map_err(|_| PacketError::BadLength {
                    layer: Layer::Udp,
                    value: udp_len,
                })?;
                let headers = fixed_size(tunnel)?;
                *headers = *template;
                put16(headers, 4, udp_len16);
                let udp = &mut headers[ipv6::HEADER_LEN..];
                fill_udp_and_vxlan(udp, source_port, udp_len16, vni);
                // RFC 8200 §8.1: a zero UDP checksum is not allowed over IPv6.
                let sum = checksum::add(udp_sum(udp_len), inner);
                put16(udp, 6, nonzero_checksum(checksum::finish(sum)));
            }
        }
        Ok(start)
    }

    /// Writes the outer headers for `inner` into `out[..overhead]` and returns their
    /// length, for a super-frame the kernel segments (UDP-tunnel GSO): the outer UDP
    /// checksum, where one is sent, holds only the pseudo-header sum, as the kernel's own
    /// UDP tunnels leave it for GSO (`udp_set_csum`); the kernel completes it per segment
    /// (`VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM`). Whether one is sent:
    /// [`Encapsulator::offloaded_udp_checksum`]. (Not shared with
    /// [`Encapsulator::encapsulate`]: a common body measured 20-40 % slower there.)
    pub fn write_outer_for_gso(
        &mut self,
        out: &mut [u8],
        inner: &[u8],
        vni: u32,
        source_port: Option<u16>,
    ) -> Result<usize, PacketError> {
        if vni > MAX_VNI {
            return Err(PacketError::VniOutOfRange { vni });
        }
        need(Layer::Ethernet, inner, ethernet::HEADER_LEN)?;
        let overhead = self.overhead;
        room(out, overhead)?;
        let udp_len = udp::HEADER_LEN + HEADER_LEN + inner.len();
        let udp_len16 = u16::try_from(udp_len).map_err(|_| PacketError::BadLength {
            layer: Layer::Udp,
            value: udp_len,
        })?;
        let source_port =
            source_port.unwrap_or_else(|| flow_source_port(inner, self.config.source_ports));
        out[..self.ethernet_len].copy_from_slice(&self.ethernet[..self.ethernet_len]);
        let seed = checksum::fold(self.pseudo_sum + udp_len as u64);
        let tunnel = &mut out[self.ethernet_len..overhead];
        match &self.tunnel_headers {
            TunnelHeaders::V4 { template, ip_sum } => {
                let total = ipv4::MIN_HEADER_LEN + udp_len;
                let total16 = u16::try_from(total).map_err(|_| PacketError::BadLength {
                    layer: Layer::Ipv4,
                    value: total,
                })?;
                tunnel.copy_from_slice(template);
                let id = self.next_id;
                self.next_id = id.wrapping_add(1);
                put16(tunnel, 2, total16);
                put16(tunnel, 4, id);
                put16(
                    tunnel,
                    10,
                    checksum::finish(ip_sum + u64::from(total16) + u64::from(id)),
                );
                let udp = &mut tunnel[ipv4::MIN_HEADER_LEN..];
                fill_udp_and_vxlan(udp, source_port, udp_len16, vni);
                if self.config.udp_checksum_v4 {
                    put16(udp, 6, seed);
                }
            }
            TunnelHeaders::V6 { template } => {
                tunnel.copy_from_slice(template);
                put16(tunnel, 4, udp_len16);
                let udp = &mut tunnel[ipv6::HEADER_LEN..];
                fill_udp_and_vxlan(udp, source_port, udp_len16, vni);
                put16(udp, 6, seed);
            }
        }
        Ok(overhead)
    }

    /// Whether [`Encapsulator::write_outer_for_gso`] leaves an outer UDP checksum for
    /// the kernel to complete (always over IPv6).
    pub fn offloaded_udp_checksum(&self) -> bool {
        matches!(self.tunnel_headers, TunnelHeaders::V6 { .. }) || self.config.udp_checksum_v4
    }

    /// Encapsulates a copy of `inner` into a new buffer holding exactly the outer frame.
    pub fn encapsulate_to_vec(
        &mut self,
        inner: &[u8],
        vni: u32,
        source_port: Option<u16>,
    ) -> Result<Vec<u8>, PacketError> {
        let mut buf = vec![0u8; self.overhead + inner.len()];
        buf[self.overhead..].copy_from_slice(inner);
        let start = self.encapsulate(&mut buf, self.overhead, vni, source_port)?;
        debug_assert_eq!(start, 0);
        Ok(buf)
    }
}

/// The first `N` bytes of `buf` as an array, so that stores at constant offsets into it
/// need no bounds checks.
#[inline(always)]
fn fixed_size<const N: usize>(buf: &mut [u8]) -> Result<&mut [u8; N], PacketError> {
    let available = buf.len();
    buf.first_chunk_mut::<N>().ok_or(PacketError::NoRoom {
        needed: N,
        available,
    })
}

#[inline(always)]
fn nonzero_checksum(sum: u16) -> u16 {
    if sum == 0 { 0xffff } else { sum }
}

/// Writes UDP and VXLAN headers (checksum zero) at the start of `buf`.
#[inline(always)]
fn write_udp_and_vxlan(
    buf: &mut [u8],
    source_port: u16,
    destination_port: u16,
    udp_len: u16,
    vni: u32,
) {
    put16(buf, 2, destination_port);
    put32(buf, 8, FLAG_VNI_VALID);
    fill_udp_and_vxlan(buf, source_port, udp_len, vni);
}

/// The per-packet fields of UDP and VXLAN headers written from a template: source
/// port, length, checksum (zero), VNI.
#[inline(always)]
fn fill_udp_and_vxlan(buf: &mut [u8], source_port: u16, udp_len: u16, vni: u32) {
    put16(buf, 0, source_port);
    put16(buf, 4, udp_len);
    put16(buf, 6, 0);
    put32(buf, 12, vni << 8);
}

/// A source port from `range` (inclusive) chosen by a hash of the inner frame's flow:
/// MACs and EtherType, plus addresses, protocol and ports of IPv4/IPv6 TCP/UDP. Packets
/// of one flow keep one outer port (no reordering across underlay ECMP paths), and
/// different flows spread over the range (RFC 7348 §5).
#[inline]
pub fn flow_source_port(inner: &[u8], range: (u16, u16)) -> u16 {
    let hash = flow_hash(inner);
    let span = u64::from(range.1.saturating_sub(range.0)) + 1;
    range.0 + ((u64::from(hash as u32) * span) >> 32) as u16
}

#[inline(always)]
/// A folded 64x64->128 multiply of two words (each offset by a constant so zeros do
/// not collapse the product), as in wyhash/foldhash.
fn mix(a: u64, b: u64) -> u64 {
    let wide = u128::from(a ^ 0x9E37_79B9_7F4A_7C15) * u128::from(b ^ 0xD6E8_FEB8_6659_FD93);
    (wide as u64) ^ ((wide >> 64) as u64)
}

fn word_at(bytes: &[u8], offset: usize) -> u64 {
    bytes
        .get(offset..offset + 8)
        .map_or(0, |w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
}

/// Seed of [`flow_hash`].
const FLOW_HASH_SEED: u64 = 0x6b65_656c_6e65_7421;

/// A hash of an Ethernet frame's flow (see [`flow_source_port`]): equal for every frame
/// of one direction of a flow.
#[inline(always)]
pub fn flow_hash(inner: &[u8]) -> u64 {
    // The common shape first, untagged IPv4 without options, at fixed offsets after one
    // bounds check; it hashes what the general path would.
    const IPV4_PORTS_END: usize = ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + 4;
    if let Some(head) = inner.first_chunk::<IPV4_PORTS_END>()
        && be16(head, 12) == ethertype::IPV4
        && head[ethernet::HEADER_LEN] == 0x45
    {
        return ipv4_flow_hash(&head[ethernet::HEADER_LEN..]);
    }
    flow_hash_any(inner)
}

/// [`flow_hash`] for every frame shape. Like the kernel's flow dissector: the 5-tuple
/// for IP, the Ethernet header otherwise. Words are combined before one or two
/// multiplies, not chained through one per field: this runs for every encapsulated
/// packet.
#[inline(never)]
fn flow_hash_any(inner: &[u8]) -> u64 {
    let (l3, ether_type) = match EthernetFrame::parse(inner) {
        Ok(frame) => (frame.payload(), frame.ethertype()),
        Err(_) => return mix(FLOW_HASH_SEED ^ word_at(inner, 0), word_at(inner, 6)),
    };
    match ether_type {
        ethertype::IPV4 if l3.len() >= ipv4::MIN_HEADER_LEN => ipv4_flow_hash(l3),
        ethertype::IPV6 if l3.len() >= ipv6::HEADER_LEN => {
            let protocol = l3[6];
            let ports = l4_ports(l3, protocol, ipv6::HEADER_LEN);
            let source = mix(FLOW_HASH_SEED ^ word_at(l3, 8), word_at(l3, 16));
            mix(
                source ^ word_at(l3, 24),
                word_at(l3, 32) ^ (ports << 8 | u64::from(protocol)),
            )
        }
        _ => mix(
            FLOW_HASH_SEED ^ word_at(inner, 0),
            word_at(inner, 6) ^ u64::from(ether_type),
        ),
    }
}

/// The flow hash of an IPv4 packet `l3` (at least a minimal header long).
#[inline(always)]
fn ipv4_flow_hash(l3: &[u8]) -> u64 {
    let addresses = u64::from(be32(l3, 12)) << 32 | u64::from(be32(l3, 16));
    let header_len = usize::from(l3[0] & 0x0f) * 4;
    let fragment = be16(l3, 6) & 0x3fff != 0;
    let protocol = l3[9];
    let ports = if fragment {
        0
    } else {
        l4_ports(l3, protocol, header_len)
    };
    mix(FLOW_HASH_SEED ^ addresses, ports << 8 | u64::from(protocol))
}

/// TCP or UDP ports at `offset` of `l3` as one word; 0 for other protocols.
#[inline(always)]
fn l4_ports(l3: &[u8], protocol: u8, offset: usize) -> u64 {
    match protocol {
        ip_proto::TCP | ip_proto::UDP => l3.get(offset..offset + 4).map_or(0, |ports| {
            u64::from(u32::from_be_bytes([ports[0], ports[1], ports[2], ports[3]]))
        }),
        _ => 0,
    }
}

/// What decapsulation checks beyond the headers' own consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecapConfig {
    /// The VXLAN port; `None` accepts any UDP port (for inspecting captures).
    pub destination_port: Option<u16>,
    /// Verify a non-zero outer UDP checksum (over the whole inner frame). Off when the
    /// NIC or kernel already verified it.
    pub verify_udp_checksum: bool,
    /// Accept a zero UDP checksum over IPv6 (RFC 6935 tunnels; Linux `udp6zerocsumrx`).
    pub allow_zero_checksum_v6: bool,
}

impl Default for DecapConfig {
    fn default() -> Self {
        DecapConfig {
            destination_port: Some(DEFAULT_PORT),
            verify_udp_checksum: true,
            allow_zero_checksum_v6: false,
        }
    }
}

/// A decapsulated frame: outer fields and the inner frame (borrowed, not copied).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decapsulated<'a> {
    pub vni: u32,
    pub outer_source_mac: MacAddr,
    pub outer_destination_mac: MacAddr,
    pub outer_vlan: Option<VlanTag>,
    pub source: IpAddr,
    pub destination: IpAddr,
    pub ttl: u8,
    pub source_port: u16,
    pub destination_port: u16,
    /// Offset of the inner frame in the outer frame.
    pub inner_offset: usize,
    pub inner: &'a [u8],
}

/// Decapsulates a whole outer Ethernet frame, checking every layer; the error says why
/// the packet is dropped.
#[inline]
pub fn decapsulate<'a>(
    frame: &'a [u8],
    config: &DecapConfig,
) -> Result<Decapsulated<'a>, PacketError> {
    if let Some(decap) = decapsulate_common(frame, config) {
        return Ok(decap);
    }
    decapsulate_any(frame, config)
}

/// [`decapsulate`] for every frame shape, and the reasons for drops.
fn decapsulate_any<'a>(
    frame: &'a [u8],
    config: &DecapConfig,
) -> Result<Decapsulated<'a>, PacketError> {
    let eth = EthernetFrame::parse(frame)?;
    let l3 = eth.payload();
    // The pseudo-header is summed only when a UDP checksum is verified.
    let (source, destination, ttl, udp_bytes, is_v6) = match eth.ethertype() {
        ethertype::IPV4 => {
            let ip = Ipv4Packet::parse(l3)?;
            if !ip.checksum_ok() {
                return Err(PacketError::BadChecksum { layer: Layer::Ipv4 });
            }
            if ip.is_fragment() {
                return Err(PacketError::Fragmented { layer: Layer::Ipv4 });
            }
            if ip.protocol() != ip_proto::UDP {
                return Err(PacketError::NotUdp {
                    protocol: ip.protocol(),
                });
            }
            (
                IpAddr::V4(ip.source()),
                IpAddr::V4(ip.destination()),
                ip.ttl(),
                ip.payload(),
                false,
            )
        }
        ethertype::IPV6 => {
            let ip = Ipv6Packet::parse(l3)?;
            if ip.fragment().is_some() {
                return Err(PacketError::Fragmented { layer: Layer::Ipv6 });
            }
            if ip.upper_protocol() != ip_proto::UDP {
                return Err(PacketError::NotUdp {
                    protocol: ip.upper_protocol(),
                });
            }
            (
                IpAddr::V6(ip.source()),
                IpAddr::V6(ip.destination()),
                ip.hop_limit(),
                ip.upper_payload(),
                true,
            )
        }
        other => {
            return Err(PacketError::Unsupported {
                layer: Layer::Ethernet,
                what: "outer EtherType",
                value: u32::from(other),
            });
        }
    };
    let udp = UdpDatagram::parse(udp_bytes)?;
    if udp.length() != udp_bytes.len() {
        // The IP layer says the datagram is longer than UDP does: trailing garbage.
        return Err(PacketError::BadLength {
            layer: Layer::Udp,
            value: udp.length(),
        });
    }
    if let Some(port) = config.destination_port
        && udp.destination_port() != port
    {
        return Err(PacketError::WrongPort {
            port: udp.destination_port(),
        });
    }
    if udp.checksum() == 0 {
        if is_v6 && !config.allow_zero_checksum_v6 {
            return Err(PacketError::Invalid {
                layer: Layer::Udp,
                what: "checksum is zero over IPv6",
            });
        }
    } else if config.verify_udp_checksum {
        let length = udp_bytes.len() as u32;
        let pseudo_header = match (source, destination) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                checksum::pseudo_header_v4(s, d, ip_proto::UDP, length as u16)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                checksum::pseudo_header_v6(&s, &d, ip_proto::UDP, length)
            }
            _ => 0,
        };
        if !udp.checksum_ok(pseudo_header) {
            return Err(PacketError::BadChecksum { layer: Layer::Udp });
        }
    }
    let (vni, inner) = parse_header(udp.payload())?;
    let inner_offset =
        frame.len() - (udp_bytes.len() - udp::HEADER_LEN - HEADER_LEN) - trailing(frame, udp_bytes);
    Ok(Decapsulated {
        vni,
        outer_source_mac: eth.source(),
        outer_destination_mac: eth.destination(),
        outer_vlan: eth.vlan(),
        source,
        destination,
        ttl,
        source_port: udp.source_port(),
        destination_port: udp.destination_port(),
        inner_offset,
        inner,
    })
}

/// The common shapes, untagged IPv4 without options and untagged IPv6 without extension
/// headers, checked at fixed offsets after one bounds check. `None` sends the frame
/// through the general path, which handles the rest and names the reason for a drop.
#[inline(always)]
fn decapsulate_common<'a>(frame: &'a [u8], config: &DecapConfig) -> Option<Decapsulated<'a>> {
    const IP: usize = ethernet::HEADER_LEN;
    let v6 = match be16(frame.get(..IP)?, 12) {
        ethertype::IPV4 => false,
        ethertype::IPV6 => true,
        _ => return None,
    };
    let ip_header_len = if v6 {
        ipv6::HEADER_LEN
    } else {
        ipv4::MIN_HEADER_LEN
    };
    let udp = IP + ip_header_len;
    let vxlan = udp + udp::HEADER_LEN;
    let inner_offset = vxlan + HEADER_LEN;
    // Every fixed-offset header plus the inner Ethernet header.
    let headers = frame.get(..inner_offset + ethernet::HEADER_LEN)?;
    let (ip_end, source, destination, ttl) = if v6 {
        if headers[IP] >> 4 != 6 || headers[IP + 6] != ip_proto::UDP {
            return None;
        }
        let ip_end = IP + ipv6::HEADER_LEN + usize::from(be16(headers, IP + 4));
        let address = |offset: usize| -> Option<IpAddr> {
            let octets: [u8; 16] = headers.get(offset..offset + 16)?.try_into().ok()?;
            Some(IpAddr::from(octets))
        };
        (ip_end, address(IP + 8)?, address(IP + 24)?, headers[IP + 7])
    } else {
        let word = |offset: usize| u64::from(be32(headers, offset));
        let header_sum = word(IP) + word(IP + 4) + word(IP + 8) + word(IP + 12) + word(IP + 16);
        if headers[IP] != 0x45
            || !checksum::verifies(header_sum)
            || be16(headers, IP + 6) & 0x3fff != 0
            || headers[IP + 9] != ip_proto::UDP
        {
            return None;
        }
        let ip_end = IP + usize::from(be16(headers, IP + 2));
        let source = IpAddr::from(be32(headers, IP + 12).to_be_bytes());
        let destination = IpAddr::from(be32(headers, IP + 16).to_be_bytes());
        (ip_end, source, destination, headers[IP + 8])
    };
    // The UDP datagram must end exactly where the IP packet does (padding may follow).
    if ip_end > frame.len() || ip_end < inner_offset + ethernet::HEADER_LEN {
        return None;
    }
    if usize::from(be16(headers, udp + 4)) != ip_end - udp {
        return None;
    }
    let destination_port = be16(headers, udp + 2);
    if config
        .destination_port
        .is_some_and(|port| port != destination_port)
    {
        return None;
    }
    let udp_checksum = be16(headers, udp + 6);
    if udp_checksum == 0 {
        if v6 {
            return None;
        }
    } else if config.verify_udp_checksum {
        let addresses = if v6 {
            &headers[IP + 8..IP + 40]
        } else {
            &headers[IP + 12..IP + 20]
        };
        let pseudo_header =
            checksum::add(0, addresses) + u64::from(ip_proto::UDP) + (ip_end - udp) as u64;
        if !checksum::verifies(checksum::add(pseudo_header, &frame[udp..ip_end])) {
            return None;
        }
    }
    if be32(headers, vxlan) != FLAG_VNI_VALID || headers[vxlan + 7] != 0 {
        return None;
    }
    Some(Decapsulated {
        vni: be32(headers, vxlan + 4) >> 8,
        outer_source_mac: ethernet::mac_at(headers, 6),
        outer_destination_mac: ethernet::mac_at(headers, 0),
        outer_vlan: None,
        source,
        destination,
        ttl,
        source_port: be16(headers, udp),
        destination_port,
        inner_offset,
        inner: &frame[inner_offset..ip_end],
    })
}

/// Bytes of `frame` after the end of `tail` (a sub-slice of it): Ethernet padding.
fn trailing(frame: &[u8], tail: &[u8]) -> usize {
    let frame_end = frame.as_ptr() as usize + frame.len();
    let tail_end = tail.as_ptr() as usize + tail.len();
    frame_end - tail_end
}

/// Checks the VXLAN header at the start of a UDP payload (as a UDP socket delivers it)
/// and returns the VNI and the inner frame. Like Linux, rejects a clear I flag and any
/// reserved bit set.
#[inline]
pub fn parse_header(payload: &[u8]) -> Result<(u32, &[u8]), PacketError> {
    need(Layer::Vxlan, payload, HEADER_LEN)?;
    let flags = be32(payload, 0);
    if flags != FLAG_VNI_VALID {
        return Err(PacketError::BadVxlanFlags { flags });
    }
    let vni_word = be32(payload, 4);
    if vni_word & 0xff != 0 {
        return Err(PacketError::BadVxlanReserved {
            value: vni_word as u8,
        });
    }
    let inner = &payload[HEADER_LEN..];
    need(Layer::Ethernet, inner, ethernet::HEADER_LEN)?;
    Ok((vni_word >> 8, inner))
}

/// Writes a VXLAN header (I flag, `vni`) at the start of `buf`, for senders that let a
/// UDP socket build the outer headers.
pub fn write_header(buf: &mut [u8], vni: u32) -> Result<usize, PacketError> {
    if vni > MAX_VNI {
        return Err(PacketError::VniOutOfRange { vni });
    }
    super::room(buf, HEADER_LEN)?;
    put32(buf, 0, FLAG_VNI_VALID);
    put32(buf, 4, vni << 8);
    Ok(HEADER_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn inner_frame() -> Vec<u8> {
        let mut frame = vec![0u8; 60];
        ethernet::write_header(
            &mut frame,
            &[2, 0, 0, 0, 0, 2],
            &[2, 0, 0, 0, 0, 1],
            None,
            ethertype::IPV4,
        )
        .unwrap();
        Ipv4Header {
            source: Ipv4Addr::new(10, 0, 0, 1),
            destination: Ipv4Addr::new(10, 0, 0, 2),
            protocol: ip_proto::UDP,
            ttl: 64,
            dscp_ecn: 0,
            identification: 1,
            dont_fragment: true,
            payload_len: 26,
        }
        .write(&mut frame[14..])
        .unwrap();
        udp::write_header(&mut frame[34..], 5000, 53, 26).unwrap();
        frame
    }

    fn endpoints(v6: bool) -> Endpoints {
        let (source, destination) = if v6 {
            (
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
            )
        } else {
            (
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
            )
        };
        Endpoints {
            source_mac: [2, 0xaa, 0, 0, 0, 1],
            destination_mac: [2, 0xbb, 0, 0, 0, 2],
            source,
            destination,
            vlan: None,
        }
    }

    #[test]
    fn headers_for_gso_match_in_place_ones_but_leave_the_checksum_to_the_kernel() {
        for v6 in [false, true] {
            let inner = inner_frame();
            let mut in_place = Encapsulator::new(VxlanConfig::default(), &endpoints(v6)).unwrap();
            let mut buf = vec![0u8; MAX_OVERHEAD];
            buf.extend_from_slice(&inner);
            let start = in_place
                .encapsulate(&mut buf, MAX_OVERHEAD, 42, Some(40000))
                .unwrap();
            let mut for_gso = Encapsulator::new(VxlanConfig::default(), &endpoints(v6)).unwrap();
            let mut outer = [0u8; MAX_OVERHEAD];
            let length = for_gso
                .write_outer_for_gso(&mut outer, &inner, 42, Some(40000))
                .unwrap();
            assert_eq!(length, for_gso.overhead());
            assert_eq!(for_gso.offloaded_udp_checksum(), v6);
            let checksum_at = length - HEADER_LEN - 2;
            let mut expected = buf[start..start + length].to_vec();
            let mut got = outer[..length].to_vec();
            expected[checksum_at..checksum_at + 2].fill(0);
            got[checksum_at..checksum_at + 2].fill(0);
            assert_eq!(got, expected, "v6 {v6}");
            if v6 {
                // The kernel sums the datagram over the seed and stores the result
                // inverted: that must give the checksum computed in full.
                let mut datagram = outer[length - HEADER_LEN - udp::HEADER_LEN..length].to_vec();
                datagram.extend_from_slice(&inner);
                let completed = checksum::finish(checksum::add(0, &datagram));
                assert_eq!(completed, be16(&buf[start..], checksum_at));
            }
        }
    }

    #[test]
    fn encapsulates_in_place_and_decapsulates() {
        for v6 in [false, true] {
            for udp_checksum_v4 in [false, true] {
                let config = VxlanConfig {
                    udp_checksum_v4,
                    ..VxlanConfig::default()
                };
                let mut encap = Encapsulator::new(config, &endpoints(v6)).unwrap();
                let inner = inner_frame();
                let mut buf = vec![0u8; MAX_OVERHEAD];
                buf.extend_from_slice(&inner);
                let start = encap.encapsulate(&mut buf, MAX_OVERHEAD, 42, None).unwrap();
                assert_eq!(
                    MAX_OVERHEAD - start,
                    if v6 { OVERHEAD_V6 } else { OVERHEAD_V4 }
                );
                let outer = &buf[start..];
                let decap = decapsulate(outer, &DecapConfig::default()).unwrap();
                assert_eq!(decap.vni, 42);
                assert_eq!(decap.inner, &inner[..]);
                assert_eq!(decap.inner_offset, encap.overhead());
                assert_eq!(decap.source, endpoints(v6).source);
                assert_eq!(decap.destination_port, DEFAULT_PORT);
                assert!((32768..=60999).contains(&decap.source_port));
                let udp_checksum = be16(outer, encap.overhead() - 10);
                assert_eq!(udp_checksum != 0, v6 || udp_checksum_v4);
            }
        }
    }

    #[test]
    fn decap_reports_drop_reasons() {
        let mut encap = Encapsulator::new(
            VxlanConfig {
                udp_checksum_v4: true,
                ..VxlanConfig::default()
            },
            &endpoints(false),
        )
        .unwrap();
        let good = encap
            .encapsulate_to_vec(&inner_frame(), 7, Some(40000))
            .unwrap();
        let config = DecapConfig::default();
        // Header corruption also breaks the UDP checksum; check those without it.
        let lenient = DecapConfig {
            verify_udp_checksum: false,
            ..config
        };
        let corrupt = |offset: usize, value: u8, config: &DecapConfig| {
            let mut frame = good.clone();
            frame[offset] = value;
            decapsulate(&frame, config).map(|d| d.vni)
        };
        assert_eq!(
            corrupt(14 + 8, 1, &config),
            Err(PacketError::BadChecksum { layer: Layer::Ipv4 })
        );
        assert_eq!(
            corrupt(42, 0x0c, &lenient),
            Err(PacketError::BadVxlanFlags { flags: 0x0c00_0000 })
        );
        assert_eq!(
            corrupt(42, 0x00, &lenient),
            Err(PacketError::BadVxlanFlags { flags: 0 })
        );
        assert_eq!(
            corrupt(49, 1, &lenient),
            Err(PacketError::BadVxlanReserved { value: 1 })
        );
        assert_eq!(
            corrupt(60, 0xff, &config),
            Err(PacketError::BadChecksum { layer: Layer::Udp })
        );
        assert_eq!(corrupt(60, 0xff, &lenient), Ok(7));
        assert!(matches!(
            decapsulate(&good[..good.len() - 1], &config),
            Err(PacketError::Truncated { .. })
        ));
        let other_port = DecapConfig {
            destination_port: Some(8472),
            ..config
        };
        assert_eq!(
            decapsulate(&good, &other_port).map(|d| d.vni),
            Err(PacketError::WrongPort { port: 4789 })
        );
        assert_eq!(
            encap.encapsulate_to_vec(&inner_frame(), 1 << 24, None),
            Err(PacketError::VniOutOfRange { vni: 1 << 24 })
        );
    }

    #[test]
    fn source_port_is_stable_per_flow_and_in_range() {
        let inner = inner_frame();
        let a = flow_source_port(&inner, (1000, 1009));
        assert_eq!(a, flow_source_port(&inner, (1000, 1009)));
        assert!((1000..=1009).contains(&a));
        let ports: std::collections::HashSet<u16> = (0..64u16)
            .map(|n| {
                let mut other = inner.clone();
                other[34..36].copy_from_slice(&n.to_be_bytes());
                flow_source_port(&other, DEFAULT_SOURCE_PORTS)
            })
            .collect();
        assert!(
            ports.len() > 50,
            "flows spread over the range: {}",
            ports.len()
        );
    }

    #[test]
    fn refuses_mixed_families_and_missing_headroom() {
        let mut mixed = endpoints(false);
        mixed.destination = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert!(Encapsulator::new(VxlanConfig::default(), &mixed).is_err());
        let mut encap = Encapsulator::new(VxlanConfig::default(), &endpoints(false)).unwrap();
        let mut buf = inner_frame();
        assert!(matches!(
            encap.encapsulate(&mut buf, 10, 1, None),
            Err(PacketError::NoRoom { .. })
        ));
    }

    proptest::proptest! {
        /// The flow hash's fixed-offset path hashes what the general path does.
        #[test]
        fn flow_hash_fast_path_agrees_with_general_path(
            flips in proptest::collection::vec((0usize..60, proptest::num::u8::ANY), 0..3),
            cut in 0usize..30,
        ) {
            let mut frame = inner_frame();
            for (at, value) in flips {
                frame[at] = value;
            }
            frame.truncate(frame.len() - cut);
            proptest::prop_assert_eq!(flow_hash(&frame), flow_hash_any(&frame));
        }

        /// The fixed-offset fast path accepts only what the general path accepts, with
        /// the same result.
        #[test]
        fn fast_path_agrees_with_general_path(
            v6 in proptest::bool::ANY,
            checksum_v4 in proptest::bool::ANY,
            flips in proptest::collection::vec((0usize..120, proptest::num::u8::ANY), 0..3),
            cut in 0usize..4,
        ) {
            let config = VxlanConfig { udp_checksum_v4: checksum_v4, ..VxlanConfig::default() };
            let mut frame = Encapsulator::new(config, &endpoints(v6)).unwrap().encapsulate_to_vec(&inner_frame(), 9, None).unwrap();
            for (at, value) in flips {
                if let Some(byte) = frame.get_mut(at) {
                    *byte = value;
                }
            }
            frame.truncate(frame.len() - cut);
            for decap_config in [DecapConfig::default(), DecapConfig { destination_port: None, verify_udp_checksum: false, allow_zero_checksum_v6: true }] {
                if let Some(fast) = decapsulate_common(&frame, &decap_config) {
                    proptest::prop_assert_eq!(Ok(fast), decapsulate_any(&frame, &decap_config));
                }
            }
        }
    }
}
