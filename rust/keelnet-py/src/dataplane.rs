//! `keelnet.dataplane`: the userspace switch. Blocking calls (opening ports, which
//! enters namespaces and talks netlink; stopping, which joins the worker) release the GIL.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use keelnet_core::fdb::MacAddr;
use keelnet_core::io::netns;
use keelnet_core::io::tap::TapConfig;
use keelnet_core::switch::{DEFAULT_BUSY_POLL, Drops, Isolation, PortRules, Switch, SwitchConfig};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::engine::{InvalidRequest, Owned, parse_ip, to_py, traffic};
use crate::mac;

fn parse_mac(text: &str) -> PyResult<MacAddr> {
    mac::parse(text, &[':'])
        .ok_or_else(|| InvalidRequest::new_err(format!("{text:?} is not a MAC address")))
}

fn drops<'py>(py: Python<'py>, drops: &Drops) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (reason, count) in drops.iter() {
        dict.set_item(reason.as_str(), count)?;
    }
    Ok(dict)
}

/// The userspace switch (see `keelnet.dataplane.Switch`, the public wrapper).
#[pyclass(module = "keelnet._core", name = "Switch")]
pub struct PySwitch {
    inner: Owned<Switch>,
}

#[pymethods]
impl PySwitch {
    #[new]
    #[pyo3(signature = (netns=None, *, learn_remote=true, learn_peers=false, arp_suppression=false, fdb_max_age=300.0, coalesce=true, udp_gso=true, tunnel_gso=true, busy_poll_us=None, workers=1))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        netns: Option<&str>,
        learn_remote: bool,
        learn_peers: bool,
        arp_suppression: bool,
        fdb_max_age: f64,
        coalesce: bool,
        udp_gso: bool,
        tunnel_gso: bool,
        busy_poll_us: Option<u64>,
        workers: usize,
    ) -> PyResult<Self> {
        if !(1..=64).contains(&workers) {
            return Err(InvalidRequest::new_err("workers must be between 1 and 64"));
        }
        if !(fdb_max_age.is_finite() && fdb_max_age > 0.0) {
            return Err(InvalidRequest::new_err(
                "fdb_max_age must be a positive number of seconds",
            ));
        }
        let netns = netns.map(netns::resolve).transpose().map_err(to_py)?;
        let config = SwitchConfig {
            netns,
            learn_remote,
            learn_peers,
            arp_suppression,
            fdb_max_age: Duration::from_secs_f64(fdb_max_age),
            coalesce,
            udp_gso,
            tunnel_gso,
            busy_poll: busy_poll_us.map_or(DEFAULT_BUSY_POLL, Duration::from_micros),
            workers,
        };
        let inner = py.detach(|| Switch::new(config)).map_err(to_py)?;
        Ok(PySwitch {
            inner: Owned::new(inner, "switch"),
        })
    }

    #[pyo3(signature = (name, vni, sandbox, ifname, mac, mtu, isolation="open", queues=1, allowed_ips=None))]
    #[allow(clippy::too_many_arguments)]
    fn add_tap(
        &self,
        py: Python<'_>,
        name: &str,
        vni: u32,
        sandbox: Option<&str>,
        ifname: &str,
        mac: Option<&str>,
        mtu: Option<u32>,
        isolation: &str,
        queues: usize,
        allowed_ips: Option<Vec<String>>,
    ) -> PyResult<()> {
        let isolation = Isolation::parse(isolation).ok_or_else(|| {
            InvalidRequest::new_err(format!(
                "isolation {isolation:?}: use one of open, vepa, private"
            ))
        })?;
        let allowed_ips = allowed_ips
            .map(|texts| texts.iter().map(|text| parse_ip(text)).collect())
            .transpose()?;
        let rules = PortRules {
            isolation,
            allowed_ips,
        };
        let mut config = TapConfig::new(ifname);
        config.sandbox_netns = sandbox.map(netns::resolve).transpose().map_err(to_py)?;
        config.mac = mac.map(parse_mac).transpose()?;
        config.mtu = mtu;
        config.queues = queues;
        let switch = self.inner.get()?;
        py.detach(|| switch.add_tap(name, vni, config, rules))
            .map_err(to_py)
    }

    #[pyo3(signature = (ifname, vni, vlan=None))]
    fn add_packet_port(
        &self,
        py: Python<'_>,
        ifname: &str,
        vni: u32,
        vlan: Option<u16>,
    ) -> PyResult<()> {
        let switch = self.inner.get()?;
        py.detach(|| switch.add_packet_port(ifname, vni, vlan))
            .map_err(to_py)
    }

    #[pyo3(signature = (local, port, tunnel_refused=None))]
    fn add_vtep(
        &self,
        py: Python<'_>,
        local: &str,
        port: u16,
        tunnel_refused: Option<String>,
    ) -> PyResult<()> {
        let switch = self.inner.get()?;
        let address = SocketAddr::new(parse_ip(local)?, port);
        py.detach(|| switch.add_vtep(address, tunnel_refused))
            .map_err(to_py)
    }

    #[pyo3(signature = (vni, remote, mac, ip))]
    fn add_peer(
        &self,
        py: Python<'_>,
        vni: u32,
        remote: &str,
        mac: Option<&str>,
        ip: Option<&str>,
    ) -> PyResult<()> {
        let switch = self.inner.get()?;
        let remote = parse_ip(remote)?;
        let mac = mac.map(parse_mac).transpose()?;
        let ip = ip
            .map(|text| {
                text.parse::<Ipv4Addr>().map_err(|_| {
                    InvalidRequest::new_err(format!("{text:?} is not an IPv4 address"))
                })
            })
            .transpose()?;
        // The engine lock may be held by the worker for a batch: never wait with the GIL.
        py.detach(|| switch.add_peer(vni, remote, mac, ip))
            .map_err(to_py)
    }

    #[pyo3(signature = (vni, remote, mac))]
    fn remove_peer(
        &self,
        py: Python<'_>,
        vni: u32,
        remote: &str,
        mac: Option<&str>,
    ) -> PyResult<()> {
        let switch = self.inner.get()?;
        let remote = parse_ip(remote)?;
        let mac = mac.map(parse_mac).transpose()?;
        py.detach(|| switch.remove_peer(vni, remote, mac))
            .map_err(to_py)
    }

    fn remove_port(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let switch = self.inner.get()?;
        py.detach(|| switch.remove_port(name)).map_err(to_py)
    }

    fn start(&mut self, py: Python<'_>) -> PyResult<()> {
        self.inner.start(py)
    }

    fn stop(&mut self, py: Python<'_>) {
        self.inner.stop(py)
    }

    /// Stops and releases everything; the switch cannot be used afterwards.
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

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let switch = self.inner.get()?;
        let stats = py.detach(|| switch.stats());
        let result = PyDict::new(py);
        let ports = PyDict::new(py);
        for port in &stats.ports {
            let entry = PyDict::new(py);
            entry.set_item("kind", port.kind.as_str())?;
            entry.set_item("ifname", &port.ifname)?;
            entry.set_item("mac", port.mac.as_ref().map(mac::format))?;
            entry.set_item("vni", port.vni)?;
            entry.set_item(
                "allowed_ips",
                port.allowed_ips
                    .as_ref()
                    .map(|ips| ips.iter().map(ToString::to_string).collect::<Vec<_>>()),
            )?;
            entry.set_item("rx", traffic(py, &port.rx)?)?;
            entry.set_item("queue_rx", &port.queue_rx)?;
            entry.set_item("tx", traffic(py, &port.tx)?)?;
            entry.set_item("drops", drops(py, &port.drops)?)?;
            entry.set_item("errors", port.errors)?;
            ports.set_item(&port.name, entry)?;
        }
        result.set_item("ports", ports)?;
        let vnis = PyDict::new(py);
        for vni in &stats.vnis {
            let entry = PyDict::new(py);
            entry.set_item("ports", vni.ports.clone())?;
            entry.set_item(
                "peers",
                vni.peers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )?;
            entry.set_item("rx", traffic(py, &vni.rx)?)?;
            entry.set_item("tx", traffic(py, &vni.tx)?)?;
            entry.set_item("flooded", vni.flooded)?;
            entry.set_item("arp_suppressed", vni.arp_suppressed)?;
            entry.set_item("drops", drops(py, &vni.drops)?)?;
            vnis.set_item(vni.vni, entry)?;
        }
        result.set_item("vnis", vnis)?;
        let vteps = PyList::empty(py);
        for vtep in &stats.vteps {
            let entry = PyDict::new(py);
            entry.set_item("local", vtep.local.ip().to_string())?;
            entry.set_item("port", vtep.local.port())?;
            entry.set_item("rx", traffic(py, &vtep.rx)?)?;
            entry.set_item("tx", traffic(py, &vtep.tx)?)?;
            entry.set_item("drops", drops(py, &vtep.drops)?)?;
            entry.set_item("errors", vtep.errors)?;
            entry.set_item("gso", vtep.gso)?;
            entry.set_item("gro", vtep.gro)?;
            entry.set_item("tunnel_device", &vtep.tunnel_device)?;
            entry.set_item("tunnel_error", &vtep.tunnel_error)?;
            entry.set_item("tunnel_frames", vtep.tunnel_frames)?;
            vteps.append(entry)?;
        }
        result.set_item("vteps", vteps)?;
        result.set_item("drops", drops(py, &stats.drops)?)?;
        let removed = PyList::empty(py);
        for (name, error) in &stats.removed_ports {
            let entry = PyDict::new(py);
            entry.set_item("name", name)?;
            entry.set_item("error", error)?;
            removed.append(entry)?;
        }
        result.set_item("removed_ports", removed)?;
        let fdb = PyDict::new(py);
        fdb.set_item("entries", stats.fdb_entries)?;
        fdb.set_item("learned", stats.fdb.learned)?;
        fdb.set_item("moves", stats.fdb.moves)?;
        fdb.set_item("aged_out", stats.fdb.aged_out)?;
        fdb.set_item("limit_drops", stats.fdb.limit_drops)?;
        fdb.set_item("static_conflicts", stats.fdb.static_conflicts)?;
        fdb.set_item("local_conflicts", stats.fdb.local_conflicts)?;
        result.set_item("fdb", fdb)?;
        result.set_item("running", stats.running)?;
        Ok(result)
    }

    fn fdb<'py>(&self, py: Python<'py>, vni: u32) -> PyResult<Bound<'py, PyList>> {
        let switch = self.inner.get()?;
        let entries = py.detach(|| switch.fdb(vni));
        let list = PyList::empty(py);
        for entry in entries {
            let item = PyDict::new(py);
            item.set_item("mac", mac::format(&entry.mac))?;
            item.set_item("port", entry.port)?;
            item.set_item("remote", entry.remote.map(|ip| ip.to_string()))?;
            item.set_item("static", entry.is_static)?;
            list.append(item)?;
        }
        Ok(list)
    }
}
