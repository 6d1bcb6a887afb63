//! `keelnet.dataplane_ipvlan`: ipvlan emulated in userspace. Blocking calls (opening the
//! parent, adding slaves, which enter namespaces; stopping, which joins the worker)
//! release the GIL.

use std::io;
use std::net::IpAddr;

use keelnet_core::io::{errno_of, netns};
use keelnet_core::ipvlan::{Ipvlan, IpvlanConfig, Mode};
use keelnet_core::switch::Traffic;
use pyo3::prelude::*;
use pyo3::types::PyDict;

pyo3::import_exception!(keelnet.errors, DataplaneError);
pyo3::import_exception!(keelnet.errors, InvalidRequest);
pyo3::import_exception!(keelnet.errors, NotFound);
pyo3::import_exception!(keelnet.errors, Conflict);

/// Maps an I/O error onto `keelnet.errors`, keeping the errno.
fn to_py(error: io::Error) -> PyErr {
    let message = error.to_string();
    if let Some(errno) = errno_of(&error) {
        return DataplaneError::new_err((errno, message));
    }
    match error.kind() {
        io::ErrorKind::InvalidInput => InvalidRequest::new_err(message),
        io::ErrorKind::NotFound => NotFound::new_err(message),
        io::ErrorKind::AlreadyExists => Conflict::new_err(message),
        _ => DataplaneError::new_err((0, message)),
    }
}

fn traffic<'py>(py: Python<'py>, traffic: &Traffic) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("packets", traffic.packets)?;
    dict.set_item("bytes", traffic.bytes)?;
    Ok(dict)
}

/// An emulated ipvlan (see `keelnet.dataplane_ipvlan.Ipvlan`, the public wrapper).
#[pyclass(module = "keelnet._core", name = "Ipvlan")]
pub struct PyIpvlan {
    /// `None` once closed: every descriptor is released.
    inner: Option<Ipvlan>,
}

impl PyIpvlan {
    fn ipvlan(&self) -> PyResult<&Ipvlan> {
        self.inner
            .as_ref()
            .ok_or_else(|| InvalidRequest::new_err("the ipvlan is closed"))
    }
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
        Ok(PyIpvlan { inner: Some(inner) })
    }

    #[pyo3(signature = (name, sandbox, ifname, addresses, mtu))]
    fn add_slave(
        &self,
        py: Python<'_>,
        name: &str,
        sandbox: &str,
        ifname: &str,
        addresses: Vec<String>,
        mtu: Option<u32>,
    ) -> PyResult<()> {
        let addresses = addresses
            .iter()
            .map(|text| {
                text.parse::<IpAddr>()
                    .map_err(|_| InvalidRequest::new_err(format!("{text:?} is not an IP address")))
            })
            .collect::<PyResult<Vec<IpAddr>>>()?;
        let sandbox = netns::resolve(sandbox).map_err(to_py)?;
        let ipvlan = self.ipvlan()?;
        py.detach(|| ipvlan.add_slave(name, sandbox, ifname, &addresses, mtu))
            .map_err(to_py)
    }

    fn remove_slave(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let ipvlan = self.ipvlan()?;
        py.detach(|| ipvlan.remove_slave(name)).map_err(to_py)
    }

    fn start(&mut self, py: Python<'_>) -> PyResult<()> {
        let inner = self
            .inner
            .as_mut()
            .ok_or_else(|| InvalidRequest::new_err("the ipvlan is closed"))?;
        py.detach(|| inner.start()).map_err(to_py)
    }

    fn stop(&mut self, py: Python<'_>) {
        if let Some(inner) = self.inner.as_mut() {
            py.detach(|| inner.stop());
        }
    }

    /// Stops and releases everything; the ipvlan cannot be used afterwards.
    fn close(&mut self, py: Python<'_>) {
        if let Some(inner) = self.inner.take() {
            py.detach(move || drop(inner));
        }
    }

    #[getter]
    fn running(&self) -> bool {
        self.inner.as_ref().is_some_and(Ipvlan::is_running)
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_none()
    }

    #[getter]
    fn parent_mac(&self) -> PyResult<String> {
        Ok(format_mac(&self.ipvlan()?.parent_mac()))
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let ipvlan = self.ipvlan()?;
        let stats = py.detach(|| ipvlan.stats());
        let dict = PyDict::new(py);
        dict.set_item("parent", &stats.parent)?;
        dict.set_item("parent_mac", format_mac(&stats.parent_mac))?;
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

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|octet| format!("{octet:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
