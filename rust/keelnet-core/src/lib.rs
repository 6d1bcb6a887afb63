//! keelnet's data plane in pure Rust: no Python here, so everything can be
//! tested, fuzzed and benchmarked on its own. `keelnet-py` is the thin pyo3 layer.

pub mod dns;
pub mod fdb;
pub mod io;
pub mod ipam;
pub mod ipvlan;
pub mod packet;
pub mod switch;
