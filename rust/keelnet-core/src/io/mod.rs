//! Kernel I/O for the userspace data plane: network namespaces, TAP devices, AF_PACKET
//! sockets and the VTEP's UDP socket. Everything here is a thin, checked wrapper over
//! `libc` calls; the forwarding logic lives in [`crate::switch`].
//!
//! All descriptors are non-blocking and close-on-exec, owned by [`std::os::fd::OwnedFd`]
//! so dropping a port closes it.

pub mod netns;
pub mod packet_socket;
pub mod poller;
pub mod tap;
pub mod tunnel_tap;
pub mod udp;

mod sys;

pub(crate) use sys::{RecvBatch, check, context, send_batch, socket_for};

pub use sys::{OsErrorWithContext, errno_of, interface_index, interface_mtu};

/// Bytes of `struct virtio_net_hdr` in front of every frame a TAP port or a packet
/// socket with `PACKET_VNET_HDR` reads or writes (the kernel default for both).
pub const VNET_HDR_LEN: usize = crate::packet::offload::VIRTIO_NET_HDR_LEN;
