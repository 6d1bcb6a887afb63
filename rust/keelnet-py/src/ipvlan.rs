//! `keelnet.dataplane_ipvlan`: ipvlan emulated in userspace. Blocking calls (opening the
//! parent, adding slaves, which enter namespaces; stopping, which joins the worker)
//! release the GIL.

use std::net::IpAddr;

use keelnet_core::io::netns;
use keelnet_core::ipvlan::{Ipvlan, IpvlanConfig, Mode};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::engine::{InvalidRequest, Owned, parse_ip, to_py, traffic};
use crate::mac;

/// An emulated ipvlan (see `keelnet.dataplane_ipvlan.Ipvlan`, the public wrapper).
#[pyclass(module = "keelnet._core", name = "Ipvlan")]
pub struct PyIpvlan {
    inner: Owned<Ipvlan>,
}

#[pymethods]
impl PyIpvlan {
    #[new]
    #[pyo3(signature = (netns, parent, mode, vlan=None))]
    fn new(
        py: Python<'_>,
        netns: Option<&str>,
        parent: &str,
        mode: &str,
        vlan: Option<u16>,
    ) -> PyResult<Self> {
        let mode = match mode {
            "l2" => Mode::L2,
            "l3" => Mode::L3,
            other => {
                return Err(InvalidRequest::new_err(format!(
                    "ipvlan mode {other:?}: use l2 or l3"
                )));
            }
        };
        let config = IpvlanConfig {
            netns: netns.map(netns::resolve).transpose().map_err(to_py)?,
            parent: parent.to_owned(),
            mode,
            vlan,
        };
        let inner = py.detach(|| Ipvlan::open(config)).map_err(to_py)?;
        Ok(PyIpvlan {
            inner: Owned::new(inner, "ipvlan"),
        })
    }

    #[pyo3(signature = (name, sandbox, ifname, addresses, mtu, port_security=false))]
    #[allow(clippy::too_many_arguments)]
    fn add_slave(
        &self,
        py: Python<'_>,
        name: &str,
        sandbox: &str,
        ifname: &str,
        addresses: Vec<String>,
        mtu: Option<u32>,
        port_security: bool,
    ) -> PyResult<()> {
        let addresses = addresses
            .iter()
            .map(|text| parse_ip(text))
            .collect::<PyResult<Vec<IpAddr>>>()?;
        let sandbox = netns::resolve(sandbox).map_err(to_py)?;
        let ipvlan = self.inner.get()?;
        py.detach(|| ipvlan.add_slave(name, sandbox, ifname, &addresses, mtu, port_security))
            .map_err(to_py)
    }

    fn remove_slave(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let ipvlan = self.inner.get()?;
        py.detach(|| ipvlan.remove_slave(name)).map_err(to_py)
    }

    fn start(&mut self, py: Python<'_>) -> PyResult<()> {
        self.inner.start(py)
    }

    fn stop(&mut self, py: Python<'_>) {
        self.inner.stop(py)
    }

    /// Stops and releases everything; the ipvlan cannot be used afterwards.
    fn close(&mut self, py: Python<'_>) {
        self.inner.close(py)
    }

    #[getter]
    fn running(&self) -> bool {
        self.inner.running()
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.closed()
    }

    #[getter]
    fn parent_mac(&self) -> PyResult<String> {
        Ok(mac::format(&self.inner.get()?.parent_mac()))
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let ipvlan = self.inner.get()?;
        let stats = py.detach(|| ipvlan.stats());
        let dict = PyDict::new(py);
        dict.set_item("parent", &stats.parent)?;
        dict.set_item("parent_mac", mac::format(&stats.parent_mac))?;
        dict.set_item("mode", stats.mode.as_str())?;
        dict.set_item("vlan", stats.vlan)?;
        dict.set_item("running", stats.running)?;
        dict.set_item("wire_rx", traffic(py, &stats.wire_rx)?)?;
        dict.set_item("wire_tx", traffic(py, &stats.wire_tx)?)?;
        dict.set_item("for_host", stats.for_host)?;
        dict.set_item("parent_failed", stats.parent_failed)?;
        let slaves = PyDict::new(py);
        for slave in &stats.slaves {
            let entry = PyDict::new(py);
            entry.set_item("ifname", &slave.ifname)?;
            let addresses: Vec<String> = slave.addresses.iter().map(|a| a.to_string()).collect();
            entry.set_item("addresses", addresses)?;
            entry.set_item("rx", traffic(py, &slave.rx)?)?;
            entry.set_item("tx", traffic(py, &slave.tx)?)?;
            entry.set_item("failed", &slave.failed)?;
            slaves.set_item(&slave.name, entry)?;
        }
        dict.set_item("slaves", slaves)?;
        let drops = PyDict::new(py);
        for (reason, count) in &stats.drops {
            drops.set_item(reason.as_str(), count)?;
        }
        dict.set_item("drops", drops)?;
        Ok(dict)
    }
}
