//! IP address management: address pools over a hierarchical bitmap, and subnet
//! carving from Docker-style address pools.

mod bitmap;
mod codec;
mod error;
mod pool;
mod subnet;
mod subnets;

pub use bitmap::{Bitmap, DENSE_LIMIT};
pub use error::{ErrorKind, IpamError, Result};
pub use pool::{AddressPool, PoolConfig, Reservation};
pub use subnet::{Subnet, parse_address};
pub use subnets::{PoolSpec, SubnetPools, host_ula_global_id};
