//! `keelnet.dns`: the embedded DNS resolver. Calls that open sockets in a namespace or
//! join the thread release the GIL; name changes take a short write lock.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use keelnet_core::dns::{DEFAULT_UPSTREAM_TIMEOUT, Resolver, Upstream};
use keelnet_core::io::netns;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::engine::{InvalidRequest, parse_ip, to_py};

/// The resolver (see `keelnet.dns.Resolver`, the public wrapper).
#[pyclass(module = "keelnet._core", name = "Resolver")]
pub struct PyResolver {
    inner: Option<Resolver>,
}

fn family_address<T>(
    text: Option<&str>,
    pick: fn(IpAddr) -> Option<T>,
    what: &str,
) -> PyResult<Option<T>> {
    text.map(|text| {
        parse_ip(text).and_then(|address| {
            pick(address).ok_or_else(|| {
                InvalidRequest::new_err(format!("{text:?} is not an {what} address"))
            })
        })
    })
    .transpose()
}

fn v4(address: IpAddr) -> Option<Ipv4Addr> {
    match address {
        IpAddr::V4(address) => Some(address),
        IpAddr::V6(_) => None,
    }
}

fn v6(address: IpAddr) -> Option<Ipv6Addr> {
    match address {
        IpAddr::V6(address) => Some(address),
        IpAddr::V4(_) => None,
    }
}

impl PyResolver {
    fn get(&self) -> PyResult<&Resolver> {
        self.inner
            .as_ref()
            .ok_or_else(|| InvalidRequest::new_err("the resolver is closed"))
    }
}

#[pymethods]
impl PyResolver {
    #[new]
    #[pyo3(signature = (netns=None, *, upstream_timeout=None))]
    fn new(py: Python<'_>, netns: Option<&str>, upstream_timeout: Option<f64>) -> PyResult<Self> {
        let timeout = match upstream_timeout {
            None => DEFAULT_UPSTREAM_TIMEOUT,
            Some(seconds) if seconds.is_finite() && seconds > 0.0 && seconds <= 60.0 => {
                Duration::from_secs_f64(seconds)
            }
            Some(_) => {
                return Err(InvalidRequest::new_err(
                    "upstream_timeout must be a number of seconds in (0, 60]",
                ));
            }
        };
        let netns = netns.map(netns::resolve).transpose().map_err(to_py)?;
        let inner = py
            .detach(|| Resolver::start(netns.as_deref(), timeout))
            .map_err(to_py)?;
        Ok(PyResolver { inner: Some(inner) })
    }

    fn set_network(&self, network_id: &str, name: &str) -> PyResult<()> {
        self.get()?
            .names()
            .set_network(network_id, name)
            .map_err(to_py)
    }

    fn remove_network(&self, network_id: &str) -> PyResult<()> {
        self.get()?.names().remove_network(network_id);
        Ok(())
    }

    #[pyo3(signature = (network_id, endpoint_id, names, ipv4=None, ipv6=None))]
    fn set_endpoint(
        &self,
        network_id: &str,
        endpoint_id: &str,
        names: Vec<String>,
        ipv4: Option<&str>,
        ipv6: Option<&str>,
    ) -> PyResult<()> {
        let ipv4 = family_address(ipv4, v4, "IPv4")?;
        let ipv6 = family_address(ipv6, v6, "IPv6")?;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.get()?
            .names()
            .set_endpoint(network_id, endpoint_id, &names, ipv4, ipv6)
            .map_err(to_py)
    }

    fn remove_endpoint(&self, network_id: &str, endpoint_id: &str) -> PyResult<()> {
        self.get()?.names().remove_endpoint(network_id, endpoint_id);
        Ok(())
    }

    #[pyo3(signature = (sandbox, netns, networks, host_forwarding=true))]
    fn attach(
        &self,
        py: Python<'_>,
        sandbox: &str,
        netns: &str,
        networks: Vec<String>,
        host_forwarding: bool,
    ) -> PyResult<()> {
        let path = netns::resolve(netns).map_err(to_py)?;
        let networks: Vec<&str> = networks.iter().map(String::as_str).collect();
        let resolver = self.get()?;
        py.detach(|| resolver.attach(sandbox, &path, &networks, host_forwarding))
            .map_err(to_py)
    }

    fn detach(&self, sandbox: &str) -> PyResult<()> {
        self.get()?.detach(sandbox);
        Ok(())
    }

    /// `(address, port, from_host)` for each upstream server, in the order tried.
    fn set_upstreams(&self, upstreams: Vec<(String, u16, bool)>) -> PyResult<()> {
        let mut parsed = Vec::with_capacity(upstreams.len());
        for (address, port, from_host) in upstreams {
            parsed.push(Upstream {
                address: SocketAddr::new(parse_ip(&address)?, port),
                from_host,
            });
        }
        self.get()?.set_upstreams(parsed);
        Ok(())
    }

    fn sandboxes(&self) -> PyResult<Vec<String>> {
        Ok(self.get()?.sandboxes())
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let resolver = self.get()?;
        let stats = resolver.stats();
        let dict = PyDict::new(py);
        for (key, counter) in [
            ("answered", &stats.answered),
            ("forwarded", &stats.forwarded),
            ("ignored", &stats.ignored),
            ("failed", &stats.failed),
        ] {
            dict.set_item(key, counter.load(Ordering::Relaxed))?;
        }
        dict.set_item("names", resolver.names().name_count())?;
        Ok(dict)
    }

    #[getter]
    fn running(&self) -> bool {
        self.inner.as_ref().is_some_and(Resolver::is_running)
    }

    /// Stops the thread and closes every socket; idempotent.
    fn close(&mut self, py: Python<'_>) -> PyResult<()> {
        match self.inner.take() {
            Some(mut resolver) => py.detach(move || resolver.stop()).map_err(to_py),
            None => Ok(()),
        }
    }
}
