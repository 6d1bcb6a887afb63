//! The one error type of the IPAM module. Each kind maps onto a class of
//! `keelnet.errors`; the message names the subnet or address and what to do.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A subnet, range or pool definition that cannot be used.
    InvalidSubnet,
    /// A string that is not an IP address of the pool's family.
    InvalidAddress,
    /// An address outside the pool it was asked of.
    OutOfRange,
    /// An address or subnet already allocated, or reserved (gateway, network, ...).
    InUse,
    /// Releasing what is not allocated.
    NotAllocated,
    /// Nothing free is left.
    Exhausted,
    /// A serialized blob that fails its checks.
    Corrupt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamError {
    pub kind: ErrorKind,
    pub message: String,
}

impl IpamError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        IpamError {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn corrupt(what: impl fmt::Display) -> Self {
        IpamError::new(
            ErrorKind::Corrupt,
            format!("corrupt IPAM state: {what}; restore it from a backup or recreate the network"),
        )
    }
}

impl fmt::Display for IpamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for IpamError {}

pub type Result<T> = std::result::Result<T, IpamError>;
