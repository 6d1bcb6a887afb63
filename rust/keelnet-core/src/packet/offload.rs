//! The offload path: the virtio-net header that TAP devices (`IFF_VNET_HDR`) put in front
//! of frames, software segmentation of TCP super-frames (GSO/TSO) and coalescing of
//! consecutive TCP segments into super-frames (GRO).
//!
//! Segmentation does what the kernel's TSO emulation does: every segment gets the
//! super-frame's headers with IPv4 total length / IPv6 payload length, IPv4 ID (+1 per
//! segment), TCP sequence number adjusted; FIN and PSH only on the last segment, CWR only
//! on the first; IPv4 header and TCP checksums computed in full.
//!
//! Coalescing merges what segmentation produced (and what a kernel sends): segments of
//! one flow, identical headers but for those fields, in sequence, each but the last
//! exactly `mss` long. The super-frame leaves with a partial TCP checksum
//! (`NEEDS_CSUM`: pseudo-header sum in the field, as Linux's `CHECKSUM_PARTIAL`) and a
//! virtio-net header announcing GSO with the segments' size.

use super::ethernet::{self, EthernetFrame, ethertype};
use super::ipv4::{self, Ipv4Packet};
use super::ipv6::{self, Ipv6Packet};
use super::tcp::{self, TcpSegment};
use super::{Layer, PacketError, be16, be32, checksum, ip_proto, need, put16, put32};

/// Length of `struct virtio_net_hdr` (without `num_buffers`).
pub const VIRTIO_NET_HDR_LEN: usize = 10;
/// `flags`: the checksum at `csum_start + csum_offset` is to be completed.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was verified.
pub const F_DATA_VALID: u8 = 2;

/// `gso_type` values.
pub mod gso_type {
    pub const NONE: u8 = 0;
    pub const TCPV4: u8 = 1;
    pub const UDP: u8 = 3;
    pub const TCPV6: u8 = 4;
    pub const UDP_L4: u8 = 5;
    /// Or-ed in: the super-frame has CWR set on its first segment.
    pub const ECN: u8 = 0x80;
    /// Or-ed in: the segments travel in a UDP tunnel over IPv4 / IPv6 (kernel >= 6.17).
    pub const UDP_TUNNEL_IPV4: u8 = 0x20;
    pub const UDP_TUNNEL_IPV6: u8 = 0x40;
}

/// `flags`: the kernel completes the outer UDP checksum of each segment.
pub const F_UDP_TUNNEL_CSUM: u8 = 8;

/// Length of `struct virtio_net_hdr_v1_hash_tunnel`: the header a TAP with UDP-tunnel
/// offloads exchanges (the 12-byte v1 header, 8 bytes of hash report, then the offsets
/// of the outer transport header and the inner network header).
pub const TUNNEL_HDR_LEN: usize = 24;

/// Writes the virtio-net header of an encapsulated super-frame: `inner` describes the
/// inner frame as its own TAP reported it (offsets relative to the inner frame),
/// `outer_len` bytes of outer headers go in front, whose transport (UDP) header starts at
/// `outer_transport`. The inner frame's checksum must be partial (`NEEDS_CSUM`).
pub fn write_tunnel_header(
    buf: &mut [u8; TUNNEL_HDR_LEN],
    inner: &VirtioNetHdr,
    inner_frame: &[u8],
    outer_len: usize,
    outer_transport: usize,
    outer_ipv6: bool,
    outer_checksum: bool,
) -> Result<(), PacketError> {
    let invalid = |what| PacketError::Invalid {
        layer: Layer::VirtioNet,
        what,
    };
    if inner.flags & F_NEEDS_CSUM == 0 || inner.gso_type & !gso_type::ECN == gso_type::NONE {
        return Err(invalid("not a super-frame with a partial checksum"));
    }
    // hdr_len covers every header up to and including the inner TCP header.
    let transport = usize::from(inner.csum_start);
    let data_offset = inner_frame
        .get(transport + 12)
        .ok_or(invalid("inner transport header out of the frame"))?;
    let headers = outer_len + transport + usize::from(data_offset >> 4) * 4;
    let inner_network = outer_len + ethernet_header_len(inner_frame)?;
    let narrow = |value: usize| u16::try_from(value).map_err(|_| invalid("offset beyond 64 KB"));
    let tunnel = if outer_ipv6 {
        gso_type::UDP_TUNNEL_IPV6
    } else {
        gso_type::UDP_TUNNEL_IPV4
    };
    let header = VirtioNetHdr {
        // Only these two: the kernel refuses DATA_VALID next to NEEDS_CSUM here.
        flags: F_NEEDS_CSUM | if outer_checksum { F_UDP_TUNNEL_CSUM } else { 0 },
        gso_type: inner.gso_type | tunnel,
        hdr_len: narrow(headers)?,
        gso_size: inner.gso_size,
        csum_start: narrow(outer_len + transport)?,
        csum_offset: inner.csum_offset,
    };
    buf.fill(0);
    header.write(buf)?;
    buf[20..22].copy_from_slice(&narrow(outer_transport)?.to_le_bytes());
    buf[22..24].copy_from_slice(&narrow(inner_network)?.to_le_bytes());
    Ok(())
}

/// Bytes of Ethernet header (with a VLAN tag, if any) in front of the network header.
fn ethernet_header_len(frame: &[u8]) -> Result<usize, PacketError> {
    let ethernet = super::ethernet::EthernetFrame::parse(frame)?;
    Ok(frame.len() - ethernet.payload().len())
}

/// `struct virtio_net_hdr` (little-endian on the wire, as TUN uses by default on
/// little-endian hosts and always with `TUNSETVNETLE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Bytes of headers (Ethernet to TCP) in front of the payload.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    pub fn parse(bytes: &[u8]) -> Result<Self, PacketError> {
        need(Layer::VirtioNet, bytes, VIRTIO_NET_HDR_LEN)?;
        let le16 = |offset: usize| u16::from_le_bytes([bytes[offset], bytes[offset + 1]]);
        Ok(VirtioNetHdr {
            flags: bytes[0],
            gso_type: bytes[1],
            hdr_len: le16(2),
            gso_size: le16(4),
            csum_start: le16(6),
            csum_offset: le16(8),
        })
    }

    pub fn write(&self, buf: &mut [u8]) -> Result<usize, PacketError> {
        super::room(buf, VIRTIO_NET_HDR_LEN)?;
        buf[0] = self.flags;
        buf[1] = self.gso_type;
        buf[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        buf[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        buf[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        buf[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        Ok(VIRTIO_NET_HDR_LEN)
    }
}

/// Completes a `NEEDS_CSUM` checksum in place: sums `frame[csum_start..]` (whose
/// checksum field holds the pseudo-header sum) and stores the result.
pub fn complete_checksum(frame: &mut [u8], hdr: &VirtioNetHdr) -> Result<(), PacketError> {
    if hdr.flags & F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    need(Layer::VirtioNet, frame, field + 2)?;
    let sum = checksum::finish(checksum::add(0, &frame[start..]));
    put16(frame, field, sum);
    Ok(())
}

/// Where the headers of an Ethernet + IP + TCP frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TcpFrame {
    version: IpVersion,
    l3: usize,
    tcp: usize,
    /// Ethernet + IP (+ IPv6 extension headers) + TCP header.
    headers_len: usize,
    /// End of the IP packet (Ethernet padding excluded).
    end: usize,
}

/// IP version of a [`TcpFrame`]. Word-sized so that the struct has no padding: LLVM
/// copies the padding of a value merged from two paths (fast and general parse) with
/// overlapping narrow moves, whose reloads then stall (no store forwarding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
enum IpVersion {
    V4 = 4,
    V6 = 6,
}

impl IpVersion {
    fn new(v6: bool) -> Self {
        if v6 { IpVersion::V6 } else { IpVersion::V4 }
    }
}

impl TcpFrame {
    fn v6(&self) -> bool {
        self.version == IpVersion::V6
    }

    #[inline]
    fn parse(frame: &[u8]) -> Result<Self, PacketError> {
        match Self::parse_common(frame) {
            Some(layout) => Ok(layout),
            None => Self::parse_any(frame),
        }
    }

    /// The common shapes, untagged IPv4 without options and untagged IPv6 without
    /// extension headers, checked at fixed offsets after one bounds check. `None` sends
    /// the frame through [`TcpFrame::parse_any`], which handles the rest and names the
    /// reason for a refusal.
    #[inline(always)]
    fn parse_common(frame: &[u8]) -> Option<Self> {
        const L3: usize = ethernet::HEADER_LEN;
        const LONGEST: usize = L3 + ipv6::HEADER_LEN + tcp::MIN_HEADER_LEN;
        let head = frame.first_chunk::<LONGEST>()?;
        let (v6, tcp, end) = match be16(head, 12) {
            ethertype::IPV4 => {
                if head[L3] != 0x45
                    || be16(head, L3 + 6) & 0x3fff != 0
                    || head[L3 + 9] != ip_proto::TCP
                {
                    return None;
                }
                let tcp = L3 + ipv4::MIN_HEADER_LEN;
                (false, tcp, L3 + usize::from(be16(head, L3 + 2)))
            }
            ethertype::IPV6 => {
                if head[L3] >> 4 != 6 || head[L3 + 6] != ip_proto::TCP {
                    return None;
                }
                let tcp = L3 + ipv6::HEADER_LEN;
                (true, tcp, tcp + usize::from(be16(head, L3 + 4)))
            }
            _ => return None,
        };
        let tcp_header_len = usize::from(head[tcp + 12] >> 4) * 4;
        let headers_len = tcp + tcp_header_len;
        if tcp_header_len < tcp::MIN_HEADER_LEN || end < headers_len || end > frame.len() {
            return None;
        }
        Some(TcpFrame {
            version: IpVersion::new(v6),
            l3: L3,
            tcp,
            headers_len,
            end,
        })
    }

    /// [`TcpFrame::parse`] for every frame shape, and the reasons for refusals. Cold and
    /// out of line, so the common path keeps the layout in registers.
    #[cold]
    #[inline(never)]
    fn parse_any(frame: &[u8]) -> Result<Self, PacketError> {
        let eth = EthernetFrame::parse(frame)?;
        let l3 = eth.header_len();
        let (v6, upper_offset, ip_len) = match eth.ethertype() {
            ethertype::IPV4 => {
                let ip = Ipv4Packet::parse(eth.payload())?;
                if ip.is_fragment() {
                    return Err(PacketError::Fragmented { layer: Layer::Ipv4 });
                }
                if ip.protocol() != ip_proto::TCP {
                    return Err(PacketError::Offload { what: "not TCP" });
                }
                (false, ip.header_len(), ip.total_len())
            }
            ethertype::IPV6 => {
                let ip = Ipv6Packet::parse(eth.payload())?;
                if ip.fragment().is_some() {
                    return Err(PacketError::Fragmented { layer: Layer::Ipv6 });
                }
                if ip.upper_protocol() != ip_proto::TCP {
                    return Err(PacketError::Offload { what: "not TCP" });
                }
                (true, ip.upper_offset(), ipv6::HEADER_LEN + ip.payload_len())
            }
            _ => {
                return Err(PacketError::Offload {
                    what: "not IPv4 or IPv6",
                });
            }
        };
        let tcp = l3 + upper_offset;
        let end = l3 + ip_len;
        let segment = TcpSegment::parse(&frame[tcp..end])?;
        Ok(TcpFrame {
            version: IpVersion::new(v6),
            l3,
            tcp,
            headers_len: tcp + segment.header_len(),
            end,
        })
    }

    /// Pseudo-header sum without the length.
    fn pseudo_header(&self, frame: &[u8]) -> u64 {
        let addresses = if self.v6() {
            &frame[self.l3 + 8..self.l3 + 40]
        } else {
            &frame[self.l3 + 12..self.l3 + 20]
        };
        checksum::add(0, addresses) + u64::from(ip_proto::TCP)
    }

    /// Sum of the IPv4 header without its total length, ID and checksum (0 for IPv6):
    /// [`TcpFrame::set_ip_fields`] adds the new ones back.
    fn ipv4_fixed_sum(&self, frame: &[u8]) -> u64 {
        if self.v6() {
            return 0;
        }
        let header = &frame[self.l3..self.tcp];
        checksum::add(0, header)
            + checksum::without16(be16(header, 2))
            + checksum::without16(be16(header, 4))
            + checksum::without16(be16(header, 10))
    }

    /// Sum of the TCP header without sequence number, data offset and flags word, and
    /// checksum, plus the pseudo-header without the length: what every segment's TCP
    /// checksum shares.
    fn tcp_fixed_sum(&self, frame: &[u8]) -> u64 {
        let header = &frame[self.tcp..self.headers_len];
        self.pseudo_header(frame)
            + checksum::add(0, header)
            + checksum::without16(be16(header, 4))
            + checksum::without16(be16(header, 6))
            + checksum::without16(be16(header, 12))
            + checksum::without16(be16(header, 16))
    }

    /// Sets the IP length field for `payload` bytes after the headers and, for IPv4,
    /// the ID and the header checksum, computed from `ipv4_fixed_sum` (see
    /// [`TcpFrame::ipv4_fixed_sum`]) instead of re-reading the header just written.
    fn set_ip_fields(&self, frame: &mut [u8], payload: usize, id: u16, ipv4_fixed_sum: u64) {
        let ip_len = self.headers_len - self.l3 + payload;
        if self.v6() {
            put16(frame, self.l3 + 4, (ip_len - ipv6::HEADER_LEN) as u16);
        } else {
            put16(frame, self.l3 + 2, ip_len as u16);
            put16(frame, self.l3 + 4, id);
            let sum = ipv4_fixed_sum + ip_len as u64 + u64::from(id);
            put16(frame, self.l3 + 10, checksum::finish(sum));
        }
    }

    /// A mask over the headers: 0x00 on the bytes that differ between segments of one
    /// super-frame and are checked on their own (IP length, IPv4 ID and checksum, TCP
    /// sequence number, flags and checksum), 0xff on those that must be equal.
    fn varying_fields_mask(&self, mask: &mut Vec<u8>) {
        mask.clear();
        mask.resize(self.headers_len, 0xff);
        let (l3, tcp) = (self.l3, self.tcp);
        if self.v6() {
            mask[l3 + 4..l3 + 6].fill(0);
        } else {
            mask[l3 + 2..l3 + 6].fill(0);
            mask[l3 + 10..l3 + 12].fill(0);
        }
        mask[tcp + 4..tcp + 8].fill(0);
        mask[tcp + 13] = 0;
        mask[tcp + 16..tcp + 18].fill(0);
    }

    /// Largest payload that keeps the IP length field in range.
    fn max_payload(&self) -> usize {
        let ip_headers = self.headers_len - self.l3;
        if self.v6() {
            0xffff + ipv6::HEADER_LEN - ip_headers
        } else {
            0xffff - ip_headers
        }
    }
}

/// Frames produced by [`segment`], stored back to back so that segmenting allocates
/// nothing once the buffers have grown.
#[derive(Debug, Clone, Default)]
pub struct Segments {
    /// Initialised bytes, of which the first `used` hold frames: kept initialised across
    /// `clear` so segments are written in place (and checksummed while copied) without
    /// zero-filling the buffer each time.
    data: Vec<u8>,
    used: usize,
    ends: Vec<usize>,
}

impl Segments {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn clear(&mut self) {
        self.used = 0;
        self.ends.clear();
    }

    /// `len` writable bytes after the used ones (growing the buffer if needed).
    fn grow(&mut self, len: usize) -> &mut [u8] {
        let end = self.used + len;
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        &mut self.data[self.used..end]
    }

    /// Marks the next `len` bytes as one frame.
    fn commit(&mut self, len: usize) {
        self.used += len;
        self.ends.push(self.used);
    }
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
    /// The `index`-th frame.
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        let end = *self.ends.get(index)?;
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        self.data[..self.used].get(start..end)
    }
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.len()).filter_map(|index| self.get(index))
    }
}

/// Splits the TCP super-frame `frame` (Ethernet + IPv4/IPv6 + TCP, checksums in any
/// state) into frames of at most `mss` payload bytes, appended to `out`. Returns the
/// number of frames. A frame without payload is passed through with fresh checksums.
pub fn segment(frame: &[u8], mss: usize, out: &mut Segments) -> Result<usize, PacketError> {
    if mss == 0 {
        return Err(PacketError::Offload {
            what: "MSS is zero",
        });
    }
    let layout = TcpFrame::parse(frame)?;
    let headers = &frame[..layout.headers_len];
    let payload = &frame[layout.headers_len..layout.end];
    let tcp_header_len = layout.headers_len - layout.tcp;
    // Each segment's headers are the super-frame's, copied, with a few fields patched;
    // their checksums are the sums of the fixed fields plus the patched ones, so no
    // header is summed again (nor read back right after being written).
    let ipv4_fixed_sum = layout.ipv4_fixed_sum(frame);
    let tcp_fixed_sum = layout.tcp_fixed_sum(frame);
    let first_id = be16(frame, layout.l3 + 4);
    let first_seq = be32(frame, layout.tcp + 4);
    let data_offset = frame[layout.tcp + 12];
    let flags = frame[layout.tcp + 13];
    let count = payload.len().div_ceil(mss).max(1);
    let mut chunks = payload.chunks(mss);
    let headers_len = layout.headers_len;
    let tcp = layout.tcp;
    for index in 0..count {
        let chunk = chunks.next().unwrap_or(&[]);
        let segment = out.grow(headers_len + chunk.len());
        segment[..headers_len].copy_from_slice(headers);
        // One pass over the payload: copied and summed together.
        let payload_sum = checksum::copy_and_add(&mut segment[headers_len..], chunk);
        let id = first_id.wrapping_add(index as u16);
        layout.set_ip_fields(segment, chunk.len(), id, ipv4_fixed_sum);
        let seq = first_seq.wrapping_add((index * mss) as u32);
        put32(segment, tcp + 4, seq);
        let mut segment_flags = flags;
        if index + 1 < count {
            segment_flags &= !(tcp::flags::FIN | tcp::flags::PSH);
        }
        if index > 0 {
            segment_flags &= !tcp::flags::CWR;
        }
        segment[tcp + 13] = segment_flags;
        let tcp_len = tcp_header_len + chunk.len();
        let sum = tcp_fixed_sum
            + tcp_len as u64
            + u64::from(seq >> 16)
            + u64::from(seq & 0xffff)
            + u64::from(u16::from_be_bytes([data_offset, segment_flags]))
            + payload_sum;
        put16(segment, tcp + 16, checksum::finish(sum));
        out.commit(headers_len + chunk.len());
    }
    Ok(count)
}

/// [`segment`] driven by the virtio-net header read with the frame from a TAP device: a
/// GSO TCP frame is split by `gso_size`; a non-GSO frame with `NEEDS_CSUM` gets its
/// checksum completed; any other frame is passed through.
pub fn segment_with_header(
    hdr: &VirtioNetHdr,
    frame: &[u8],
    out: &mut Segments,
) -> Result<usize, PacketError> {
    match hdr.gso_type & !gso_type::ECN {
        gso_type::NONE => {
            let copy = out.grow(frame.len());
            copy.copy_from_slice(frame);
            complete_checksum(copy, hdr)?;
            out.commit(frame.len());
            Ok(1)
        }
        kind @ (gso_type::TCPV4 | gso_type::TCPV6) => {
            let layout = TcpFrame::parse(frame)?;
            if layout.v6() != (kind == gso_type::TCPV6) {
                return Err(PacketError::Offload {
                    what: "GSO type does not match the IP version",
                });
            }
            segment(frame, usize::from(hdr.gso_size), out)
        }
        _ => Err(PacketError::Unsupported {
            layer: Layer::VirtioNet,
            what: "GSO type",
            value: u32::from(hdr.gso_type),
        }),
    }
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    layout: TcpFrame,
    mss: usize,
    payload: usize,
    next_seq: u32,
    next_id: u16,
    dont_fragment: bool,
    segments: usize,
    /// A short segment, PSH or FIN ended the super-frame.
    closed: bool,
    first_flags: u8,
}

/// Coalesces consecutive in-order TCP segments of one flow into one super-frame (GRO).
///
/// Feed frames with [`Coalescer::push`]; when it returns `Ok(false)` the frame does not
/// continue the current super-frame: [`Coalescer::finish`] it and push the frame again.
#[derive(Debug, Clone)]
pub struct Coalescer {
    /// Initialised buffer; the pending super-frame is `frame[..frame_len]`. Kept
    /// initialised so segments are copied (and checksummed) in without zero-filling.
    frame: Vec<u8>,
    frame_len: usize,
    flow: Option<Flow>,
    /// The pending flow's [`TcpFrame::varying_fields_mask`].
    header_mask: Vec<u8>,
    verify_checksums: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer::new(true)
    }
}

const MERGEABLE_FLAGS: u8 =
    tcp::flags::ACK | tcp::flags::PSH | tcp::flags::FIN | tcp::flags::CWR | tcp::flags::ECE;

impl Coalescer {
    /// `verify_checksums`: check each segment's IPv4 header and TCP checksums before
    /// merging (the super-frame's checksum is recomputed, so a corrupt segment would
    /// otherwise be laundered). Turn it off only for frames already verified.
    pub fn new(verify_checksums: bool) -> Self {
        Coalescer {
            frame: Vec::new(),
            frame_len: 0,
            flow: None,
            header_mask: Vec::new(),
            verify_checksums,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.flow.is_none()
    }

    /// Segments in the pending super-frame.
    pub fn segments(&self) -> usize {
        self.flow.map_or(0, |flow| flow.segments)
    }

    /// Takes `frame` into the pending super-frame (`Ok(true)`), or says it does not
    /// continue it (`Ok(false)`; nothing changed). An error means the frame cannot be
    /// coalesced at all (not TCP, SYN/RST/URG, no payload, bad checksum…): forward it
    /// as it is.
    pub fn push(&mut self, frame: &[u8]) -> Result<bool, PacketError> {
        let layout = TcpFrame::parse(frame)?;
        let flags = frame[layout.tcp + 13];
        if flags & !MERGEABLE_FLAGS != 0 {
            return Err(PacketError::Offload {
                what: "SYN, RST or URG segment",
            });
        }
        let payload = &frame[layout.headers_len..layout.end];
        if payload.is_empty() {
            return Err(PacketError::Offload {
                what: "segment without payload",
            });
        }
        // The TCP checksum is verified while the payload is copied in (one pass); here
        // only the IPv4 header and the sum of the TCP header.
        let header_sum = if self.verify_checksums {
            if !layout.v6() && !checksum::verifies(checksum::add(0, &frame[layout.l3..layout.tcp]))
            {
                return Err(PacketError::BadChecksum { layer: Layer::Ipv4 });
            }
            let tcp_len = (layout.end - layout.tcp) as u64;
            Some(checksum::add(
                layout.pseudo_header(frame) + tcp_len,
                &frame[layout.tcp..layout.headers_len],
            ))
        } else {
            None
        };
        // Copies the payload into `dst`; false when the TCP checksum is checked and fails.
        let copy_checked = |dst: &mut [u8]| match header_sum {
            Some(sum) => checksum::verifies(sum + checksum::copy_and_add(dst, payload)),
            None => {
                dst.copy_from_slice(payload);
                true
            }
        };
        let seq = be32(frame, layout.tcp + 4);
        let id = be16(frame, layout.l3 + 4);
        let closes = payload.len() < self.flow.map_or(0, |flow| flow.mss)
            || flags & (tcp::flags::PSH | tcp::flags::FIN) != 0;
        let Some(flow) = self.flow.as_mut() else {
            let copy = grow(&mut self.frame, 0, layout.end);
            copy[..layout.headers_len].copy_from_slice(&frame[..layout.headers_len]);
            if !copy_checked(&mut copy[layout.headers_len..]) {
                return Err(PacketError::BadChecksum { layer: Layer::Tcp });
            }
            self.frame_len = layout.end;
            layout.varying_fields_mask(&mut self.header_mask);
            self.flow = Some(Flow {
                layout,
                mss: payload.len(),
                payload: payload.len(),
                next_seq: seq.wrapping_add(payload.len() as u32),
                next_id: id.wrapping_add(1),
                dont_fragment: !layout.v6() && be16(frame, layout.l3 + 6) & 0x4000 != 0,
                segments: 1,
                closed: flags & (tcp::flags::PSH | tcp::flags::FIN) != 0,
                first_flags: flags,
            });
            return Ok(true);
        };
        let headers_len = layout.headers_len;
        let fits = !flow.closed
            && layout.version == flow.layout.version
            && layout.l3 == flow.layout.l3
            && layout.tcp == flow.layout.tcp
            && headers_len == flow.layout.headers_len
            && payload.len() <= flow.mss
            && flow.payload + payload.len() <= layout.max_payload()
            && seq == flow.next_seq
            && flags & tcp::flags::CWR == 0
            && flags & !(tcp::flags::PSH | tcp::flags::FIN)
                == flow.first_flags & !(tcp::flags::PSH | tcp::flags::CWR | tcp::flags::FIN)
            && (layout.v6() || flow.dont_fragment || id == flow.next_id)
            // All other header bytes as in the first segment: one masked comparison.
            && equal_under_mask(
                &frame[..headers_len],
                &self.frame[..headers_len],
                &self.header_mask,
            );
        if !fits {
            return Ok(false);
        }
        let copy = grow(&mut self.frame, self.frame_len, payload.len());
        if !copy_checked(copy) {
            return Err(PacketError::BadChecksum { layer: Layer::Tcp });
        }
        self.frame_len += payload.len();
        self.frame[layout.tcp + 13] |= flags & (tcp::flags::PSH | tcp::flags::FIN);
        flow.payload += payload.len();
        flow.next_seq = seq.wrapping_add(payload.len() as u32);
        flow.next_id = id.wrapping_add(1);
        flow.segments += 1;
        flow.closed = closes;
        Ok(true)
    }

    /// Moves the pending super-frame into `out` (replacing its contents) and returns its
    /// virtio-net header; `None` when nothing is pending. A single segment leaves as it
    /// came, with `DATA_VALID` when checksums were verified.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Option<VirtioNetHdr> {
        let flow = self.flow.take()?;
        std::mem::swap(out, &mut self.frame);
        out.truncate(self.frame_len);
        let layout = flow.layout;
        if flow.segments == 1 {
            let flags = if self.verify_checksums {
                F_DATA_VALID
            } else {
                0
            };
            return Some(VirtioNetHdr {
                flags,
                ..VirtioNetHdr::default()
            });
        }
        // The super-frame keeps the first segment's IPv4 ID.
        let first_id = be16(out, layout.l3 + 4);
        let ipv4_fixed_sum = layout.ipv4_fixed_sum(out);
        layout.set_ip_fields(out, flow.payload, first_id, ipv4_fixed_sum);
        let tcp_len = (layout.headers_len - layout.tcp + flow.payload) as u64;
        let partial = checksum::fold(layout.pseudo_header(out) + tcp_len);
        put16(out, layout.tcp + 16, partial);
        let mut kind = if layout.v6() {
            gso_type::TCPV6
        } else {
            gso_type::TCPV4
        };
        if flow.first_flags & tcp::flags::CWR != 0 {
            kind |= gso_type::ECN;
        }
        Some(VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: kind,
            hdr_len: layout.headers_len as u16,
            gso_size: flow.mss as u16,
            csum_start: layout.tcp as u16,
            csum_offset: 16,
        })
    }
}

/// True when `a` and `b` are equal in every byte where `mask` (as long as both) is 0xff;
/// a word at a time, without a branch per field.
fn equal_under_mask(a: &[u8], b: &[u8], mask: &[u8]) -> bool {
    let word = |bytes: &[u8]| u64::from_ne_bytes(bytes.try_into().unwrap_or([0; 8]));
    let (a_words, b_words, mask_words) =
        (a.chunks_exact(8), b.chunks_exact(8), mask.chunks_exact(8));
    let tail_differs = a_words
        .remainder()
        .iter()
        .zip(b_words.remainder())
        .zip(mask_words.remainder())
        .fold(0u8, |differs, ((x, y), m)| differs | ((x ^ y) & m));
    let words_differ = a_words
        .zip(b_words)
        .zip(mask_words)
        .fold(0u64, |differs, ((x, y), m)| {
            differs | ((word(x) ^ word(y)) & word(m))
        });
    a.len() == b.len() && a.len() == mask.len() && words_differ == 0 && tail_differs == 0
}

/// `len` writable bytes of `buf` from `start`, growing it (zero-filled) only if needed.
fn grow(buf: &mut Vec<u8>, start: usize, len: usize) -> &mut [u8] {
    if buf.len() < start + len {
        buf.resize(start + len, 0);
    }
    &mut buf[start..start + len]
}

/// Coalesces all of `frames` into one super-frame in `out`; an error if any frame does
/// not continue the previous ones.
pub fn coalesce(
    frames: &[&[u8]],
    out: &mut Vec<u8>,
    verify_checksums: bool,
) -> Result<VirtioNetHdr, PacketError> {
    let mut coalescer = Coalescer::new(verify_checksums);
    for frame in frames {
        if !coalescer.push(frame)? {
            return Err(PacketError::Offload {
                what: "frames are not consecutive segments of one flow",
            });
        }
    }
    coalescer
        .finish(out)
        .ok_or(PacketError::Offload { what: "no frames" })
}

/// Builds an Ethernet + IPv4/IPv6 + TCP frame with valid checksums (tests, benches,
/// fuzz seeds).
pub mod build {
    use std::net::IpAddr;

    use super::super::ethernet::{self, ethertype};
    use super::super::ipv4::Ipv4Header;
    use super::super::ipv6::Ipv6Header;
    use super::super::{PacketError, checksum, ip_proto, put16, put32};

    /// Fields of a TCP frame to build.
    #[derive(Debug, Clone, Copy)]
    pub struct TcpFrameSpec {
        pub source: IpAddr,
        pub destination: IpAddr,
        pub source_port: u16,
        pub destination_port: u16,
        pub sequence: u32,
        pub acknowledgment: u32,
        pub flags: u8,
        pub window: u16,
        pub identification: u16,
    }

    /// An Ethernet frame carrying one TCP segment with `payload`; 12 bytes of timestamp
    /// options make the TCP header 32 bytes, as Linux sends.
    pub fn tcp_frame(spec: &TcpFrameSpec, payload: &[u8]) -> Result<Vec<u8>, PacketError> {
        let tcp_len = 32 + payload.len();
        let (ether_type, ip_len) = match spec.source {
            IpAddr::V4(_) => (ethertype::IPV4, 20),
            IpAddr::V6(_) => (ethertype::IPV6, 40),
        };
        let mut frame = vec![0u8; 14 + ip_len + tcp_len];
        ethernet::write_header(
            &mut frame,
            &[2, 0, 0, 0, 0, 2],
            &[2, 0, 0, 0, 0, 1],
            None,
            ether_type,
        )?;
        let payload_len = u16::try_from(tcp_len).map_err(|_| PacketError::NoRoom {
            needed: tcp_len,
            available: 0xffff,
        })?;
        let pseudo = match (spec.source, spec.destination) {
            (IpAddr::V4(source), IpAddr::V4(destination)) => {
                Ipv4Header {
                    source,
                    destination,
                    protocol: ip_proto::TCP,
                    ttl: 64,
                    dscp_ecn: 0,
                    identification: spec.identification,
                    dont_fragment: true,
                    payload_len,
                }
                .write(&mut frame[14..])?;
                checksum::pseudo_header_v4(source, destination, ip_proto::TCP, payload_len)
            }
            (IpAddr::V6(source), IpAddr::V6(destination)) => {
                Ipv6Header {
                    source,
                    destination,
                    next_header: ip_proto::TCP,
                    hop_limit: 64,
                    traffic_class: 0,
                    flow_label: 0,
                    payload_len,
                }
                .write(&mut frame[14..])?;
                checksum::pseudo_header_v6(
                    &source,
                    &destination,
                    ip_proto::TCP,
                    u32::from(payload_len),
                )
            }
            _ => {
                return Err(PacketError::Offload {
                    what: "mixed address families",
                });
            }
        };
        let tcp = &mut frame[14 + ip_len..];
        put16(tcp, 0, spec.source_port);
        put16(tcp, 2, spec.destination_port);
        put32(tcp, 4, spec.sequence);
        put32(tcp, 8, spec.acknowledgment);
        tcp[12] = 8 << 4;
        tcp[13] = spec.flags;
        put16(tcp, 14, spec.window);
        // NOP, NOP, timestamps (kind 8, length 10).
        tcp[20..24].copy_from_slice(&[1, 1, 8, 10]);
        put32(tcp, 24, 0x0102_0304);
        put32(tcp, 28, 0x0506_0708);
        tcp[32..].copy_from_slice(payload);
        let sum = checksum::finish(checksum::add(pseudo, tcp));
        put16(tcp, 16, sum);
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::build::{TcpFrameSpec, tcp_frame};
    use super::*;
    use std::net::IpAddr;

    fn spec(v6: bool, flags: u8) -> TcpFrameSpec {
        let (source, destination): (IpAddr, IpAddr) = if v6 {
            (
                "2001:db8::1".parse().unwrap(),
                "2001:db8::2".parse().unwrap(),
            )
        } else {
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap())
        };
        TcpFrameSpec {
            source,
            destination,
            source_port: 40000,
            destination_port: 5201,
            sequence: 0xffff_f000,
            acknowledgment: 99,
            flags,
            window: 512,
            identification: 0xfffe,
        }
    }

    fn checksums_ok(frame: &[u8]) -> bool {
        let layout = TcpFrame::parse(frame).unwrap();
        let ip_ok =
            layout.v6() || checksum::verifies(checksum::add(0, &frame[layout.l3..layout.tcp]));
        let tcp_len = (layout.end - layout.tcp) as u64;
        ip_ok
            && checksum::verifies(checksum::add(
                layout.pseudo_header(frame) + tcp_len,
                &frame[layout.tcp..layout.end],
            ))
    }

    #[test]
    fn tunnel_header_points_at_outer_udp_and_inner_headers() {
        let frame = tcp_frame(&spec(false, 0x10), &[7u8; 4000]).unwrap();
        let inner = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: gso_type::TCPV4,
            hdr_len: 66,
            gso_size: 1398,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut buf = [0xffu8; TUNNEL_HDR_LEN];
        write_tunnel_header(&mut buf, &inner, &frame, 50, 34, false, false).unwrap();
        let header = VirtioNetHdr::parse(&buf).unwrap();
        assert_eq!(header.gso_type, gso_type::TCPV4 | gso_type::UDP_TUNNEL_IPV4);
        assert_eq!(header.flags, F_NEEDS_CSUM);
        assert_eq!(header.hdr_len, 50 + 34 + 32);
        assert_eq!(header.gso_size, 1398);
        assert_eq!((header.csum_start, header.csum_offset), (84, 16));
        assert_eq!(&buf[10..20], &[0; 10]);
        assert_eq!(u16::from_le_bytes([buf[20], buf[21]]), 34);
        assert_eq!(u16::from_le_bytes([buf[22], buf[23]]), 64);
        write_tunnel_header(&mut buf, &inner, &frame, 70, 54, true, true).unwrap();
        let header = VirtioNetHdr::parse(&buf).unwrap();
        assert_eq!(header.gso_type, gso_type::TCPV4 | gso_type::UDP_TUNNEL_IPV6);
        assert_eq!(header.flags, F_NEEDS_CSUM | F_UDP_TUNNEL_CSUM);
        // Not a super-frame with a partial checksum: refused.
        let plain = VirtioNetHdr::default();
        assert!(write_tunnel_header(&mut buf, &plain, &frame, 50, 34, false, false).is_err());
    }

    proptest::proptest! {
        /// The header comes from a sandbox's kernel: nothing in it may panic the switch.
        #[test]
        fn tunnel_header_never_panics(
            header in proptest::collection::vec(proptest::num::u8::ANY, VIRTIO_NET_HDR_LEN),
            frame in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            outer_len in 0usize..70_000,
            outer_transport in 0usize..70_000,
            outer_ipv6 in proptest::bool::ANY,
        ) {
            let inner = VirtioNetHdr::parse(&header).unwrap();
            let mut buf = [0u8; TUNNEL_HDR_LEN];
            let _ = write_tunnel_header(&mut buf, &inner, &frame, outer_len, outer_transport, outer_ipv6, true);
        }
    }

    #[test]
    fn segments_carry_correct_headers() {
        use tcp::flags::*;
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..10_000u32).map(|n| n as u8).collect();
            let frame = tcp_frame(&spec(v6, ACK | PSH | FIN | CWR), &payload).unwrap();
            let mut out = Segments::new();
            assert_eq!(segment(&frame, 1448, &mut out).unwrap(), 7);
            let mut reassembled = Vec::new();
            for (index, piece) in out.iter().enumerate() {
                assert!(checksums_ok(piece), "segment {index} checksums");
                let layout = TcpFrame::parse(piece).unwrap();
                let segment = TcpSegment::parse(&piece[layout.tcp..layout.end]).unwrap();
                assert_eq!(
                    segment.sequence(),
                    0xffff_f000u32.wrapping_add(index as u32 * 1448)
                );
                let last = index == 6;
                assert_eq!(segment.flags() & (FIN | PSH) != 0, last);
                assert_eq!(segment.flags() & CWR != 0, index == 0);
                assert_eq!(segment.flags() & ACK, ACK);
                if !v6 {
                    let ip = Ipv4Packet::parse(&piece[14..]).unwrap();
                    assert_eq!(ip.identification(), 0xfffeu16.wrapping_add(index as u16));
                }
                reassembled.extend_from_slice(segment.payload());
            }
            assert_eq!(reassembled, payload);
        }
    }

    #[test]
    fn coalescing_inverts_segmentation() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..60_000u32).map(|n| (n * 7) as u8).collect();
            let frame = tcp_frame(&spec(v6, tcp::flags::ACK | tcp::flags::PSH), &payload).unwrap();
            let mut pieces = Segments::new();
            segment(&frame, 1448, &mut pieces).unwrap();
            let frames: Vec<&[u8]> = pieces.iter().collect();
            let mut merged = Vec::new();
            let hdr = coalesce(&frames, &mut merged, true).unwrap();
            assert_eq!(hdr.gso_size, 1448);
            assert_eq!(
                hdr.gso_type,
                if v6 { gso_type::TCPV6 } else { gso_type::TCPV4 }
            );
            assert_eq!(usize::from(hdr.hdr_len), frame.len() - payload.len());
            complete_checksum(&mut merged, &hdr).unwrap();
            assert_eq!(merged, frame, "the super-frame comes back byte for byte");
            let mut again = Segments::new();
            segment_with_header(&hdr, &merged, &mut again).unwrap();
            assert!(again.iter().eq(pieces.iter()));
        }
    }

    #[test]
    fn coalescer_refuses_gaps_other_flows_and_bad_checksums() {
        let ack = tcp::flags::ACK;
        let first = tcp_frame(&spec(false, ack), &[1; 100]).unwrap();
        let mut gap_spec = spec(false, ack);
        gap_spec.sequence = gap_spec.sequence.wrapping_add(101);
        gap_spec.identification = gap_spec.identification.wrapping_add(1);
        let gap = tcp_frame(&gap_spec, &[2; 100]).unwrap();
        let mut other_spec = spec(false, ack);
        other_spec.sequence = other_spec.sequence.wrapping_add(100);
        other_spec.source_port += 1;
        let other_flow = tcp_frame(&other_spec, &[3; 100]).unwrap();
        let mut coalescer = Coalescer::default();
        assert!(coalescer.push(&first).unwrap());
        assert!(!coalescer.push(&gap).unwrap());
        assert!(!coalescer.push(&other_flow).unwrap());
        let mut next_spec = spec(false, ack);
        next_spec.sequence = next_spec.sequence.wrapping_add(100);
        next_spec.identification = next_spec.identification.wrapping_add(1);
        let mut corrupt = tcp_frame(&next_spec, &[2; 100]).unwrap();
        *corrupt.last_mut().unwrap() ^= 1;
        assert_eq!(
            coalescer.push(&corrupt),
            Err(PacketError::BadChecksum { layer: Layer::Tcp })
        );
        let syn = tcp_frame(&spec(false, tcp::flags::SYN), &[1; 10]).unwrap();
        assert!(matches!(
            coalescer.push(&syn),
            Err(PacketError::Offload { .. })
        ));
        let mut out = Vec::new();
        let hdr = coalescer.finish(&mut out).unwrap();
        assert_eq!(hdr.gso_type, gso_type::NONE);
        assert_eq!(out, first);
    }

    proptest::proptest! {
        /// The fixed-offset fast path accepts only what the general path accepts, with
        /// the same result.
        #[test]
        fn parse_fast_path_agrees_with_general_path(
            v6 in proptest::bool::ANY,
            flips in proptest::collection::vec((0usize..90, proptest::num::u8::ANY), 0..3),
            cut in 0usize..120,
        ) {
            let mut frame = tcp_frame(&spec(v6, tcp::flags::ACK), &[7; 100]).unwrap();
            for (at, value) in flips {
                frame[at] = value;
            }
            frame.truncate(frame.len().saturating_sub(cut));
            if let Some(fast) = TcpFrame::parse_common(&frame) {
                proptest::prop_assert_eq!(Ok(fast), TcpFrame::parse_any(&frame));
            }
        }

        /// A segment whose headers differ from the first one's in any byte outside the
        /// per-segment fields does not join it (checksums trusted, so that only the
        /// header comparison decides).
        #[test]
        fn coalescer_refuses_any_other_header_difference(
            v6 in proptest::bool::ANY,
            at in 0usize..86,
            value in proptest::num::u8::ANY,
        ) {
            let ack = tcp::flags::ACK;
            let payload: Vec<u8> = (0..2896u32).map(|n| n as u8).collect();
            let frame = tcp_frame(&spec(v6, ack), &payload).unwrap();
            let mut pieces = Segments::new();
            segment(&frame, 1448, &mut pieces).unwrap();
            let layout = TcpFrame::parse(&frame).unwrap();
            let mut mask = Vec::new();
            layout.varying_fields_mask(&mut mask);
            let at = at % layout.headers_len;
            let mut second = pieces.get(1).unwrap().to_vec();
            proptest::prop_assume!(second[at] != value);
            second[at] = value;
            let mut coalescer = Coalescer::new(false);
            proptest::prop_assert!(coalescer.push(pieces.get(0).unwrap()).unwrap());
            let joined = coalescer.push(&second) == Ok(true);
            if mask[at] == 0xff {
                proptest::prop_assert!(!joined, "byte {} differs but joined", at);
            }
            let checksum_bytes = [layout.tcp + 16, layout.tcp + 17];
            if checksum_bytes.contains(&at) || (!v6 && [layout.l3 + 10, layout.l3 + 11].contains(&at)) {
                proptest::prop_assert!(joined, "checksum byte {} differs, not joined", at);
            }
        }
    }

    #[test]
    fn virtio_header_round_trip() {
        let hdr = VirtioNetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: gso_type::TCPV4,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut buf = [0u8; 10];
        hdr.write(&mut buf).unwrap();
        assert_eq!(buf, [1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0]);
        assert_eq!(VirtioNetHdr::parse(&buf).unwrap(), hdr);
        assert!(VirtioNetHdr::parse(&buf[..9]).is_err());
    }
}
