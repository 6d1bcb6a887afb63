//! The VTEP's way out for super-frames: a TAP in the host namespace that takes whole
//! encapsulated TCP super-frames (UDP-tunnel GSO, Linux >= 6.17) and hands them to the
//! host's IP stack, which routes them to the underlay as one skb, like the kernel's own
//! vxlan device does. No segmentation in userspace, no UDP send per 64 segments, one copy.
//!
//! Frames written to a TAP arrive as if received on it, so the host forwards them. The
//! device is set up for exactly that: IPv4 forwarding and `accept_local` on it (the outer
//! source is the VTEP's own address), reverse-path filtering off on it, IPv6
//! `force_forwarding` for an IPv6 VTEP. What the namespace decides globally is checked,
//! not changed: the loose reverse-path filter many distributions set on `all` passes
//! once the TAP holds the VTEP's address too (as a host-scope /32 without a route); the
//! strict one drops these frames whatever we do, so the TAP is refused.

use std::io;
use std::net::IpAddr;
use std::path::Path;

use super::tap::{Tap, TapConfig, offload};
use super::{netns, sys};
use crate::fdb::MacAddr;
use crate::packet::offload::TUNNEL_HDR_LEN;

/// Kernel-numbered name of the device in the host namespace.
const NAME_TEMPLATE: &str = "kn-vtep%d";

#[derive(Debug)]
pub struct TunnelTap {
    tap: Tap,
    /// Source MAC of the frames written (any unicast address but the TAP's own).
    source_mac: MacAddr,
}

impl TunnelTap {
    /// Creates the device in `netns` for a VTEP on `local`. Fails with `Unsupported` when
    /// the kernel or the namespace's settings cannot carry UDP-tunnel GSO this way.
    pub fn create(netns: Option<&Path>, local: IpAddr) -> io::Result<TunnelTap> {
        if local.is_ipv4()
            && netns::run_in(netns, || read_sysctl("net/ipv4/conf/all/rp_filter"))?.trim() == "1"
        {
            return Err(unsupported(
                "net.ipv4.conf.all.rp_filter is 1: strict reverse-path filtering would drop \
                 super-frames carrying the VTEP's own source address"
                    .to_owned(),
            ));
        }
        let mut config = TapConfig::new(NAME_TEMPLATE);
        config.host_netns = netns.map(Path::to_path_buf);
        config.offloads = offload::DEFAULT | offload::UDP_TUNNEL_GSO | offload::UDP_TUNNEL_GSO_CSUM;
        config.vnet_hdr_len = TUNNEL_HDR_LEN;
        let tap = Tap::create(&config).map_err(|error| {
            if super::errno_of(&error) == Some(libc::EINVAL) {
                unsupported(format!(
                    "the kernel refuses UDP-tunnel GSO on TAP devices (Linux >= 6.17): {error}"
                ))
            } else {
                error
            }
        })?;
        let name = tap.ifname().to_owned();
        netns::run_in(netns, || {
            let ipv4 = format!("net/ipv4/conf/{name}");
            write_sysctl(&format!("{ipv4}/forwarding"), "1")?;
            write_sysctl(&format!("{ipv4}/accept_local"), "1")?;
            write_sysctl(&format!("{ipv4}/rp_filter"), "0")?;
            if let IpAddr::V4(address) = local {
                sys::add_host_address(sys::interface_index(&name)?, address)
                    .map_err(|error| sys::context(error, format!("adding {address} to {name}")))?;
            }
            let ipv6 = format!("net/ipv6/conf/{name}");
            if local.is_ipv6() {
                write_sysctl(&format!("{ipv6}/force_forwarding"), "1").map_err(|error| {
                    unsupported(format!("IPv6 force_forwarding (Linux >= 6.17): {error}"))
                })?;
            } else {
                // Nothing of IPv6 happens here: no link-local address, no router
                // solicitations queued on a TAP nobody reads.
                write_sysctl(&format!("{ipv6}/disable_ipv6"), "1")?;
            }
            Ok(())
        })?;
        let mut source_mac = tap.mac();
        source_mac[5] ^= 1;
        Ok(TunnelTap { tap, source_mac })
    }

    pub fn ifname(&self) -> &str {
        self.tap.ifname()
    }

    /// Destination MAC of the frames written: the TAP's own, so the host takes them.
    pub fn mac(&self) -> MacAddr {
        self.tap.mac()
    }

    pub fn source_mac(&self) -> MacAddr {
        self.source_mac
    }

    /// Writes one frame given in parts (the [`TUNNEL_HDR_LEN`]-byte header first).
    pub fn write(&self, parts: &[&[u8]]) -> io::Result<usize> {
        self.tap.write(parts)
    }
}

fn unsupported(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, message)
}

fn read_sysctl(key: &str) -> io::Result<String> {
    std::fs::read_to_string(format!("/proc/sys/{key}"))
        .map_err(|error| sys::context(error, format!("reading {key}")))
}

fn write_sysctl(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/{key}"), value)
        .map_err(|error| sys::context(error, format!("setting {key}")))
}
