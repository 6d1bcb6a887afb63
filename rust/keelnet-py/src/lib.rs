//! pyo3 glue only: converts between Python objects and keelnet-core types and maps
//! core errors onto `keelnet.errors`. No logic lives here.

use pyo3::prelude::*;

mod dataplane;
mod dns;
mod engine;
mod ipam;
mod ipvlan;
mod mac;
mod packet;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<ipam::PyAddressPool>()?;
    m.add_class::<ipam::PySubnetPools>()?;
    packet::register(m)?;
    m.add_class::<dataplane::PySwitch>()?;
    m.add_class::<ipvlan::PyIpvlan>()?;
    m.add_class::<dns::PyResolver>()?;
    Ok(())
}
