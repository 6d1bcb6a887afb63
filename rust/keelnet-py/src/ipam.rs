//! `keelnet.ipam`: AddressPool and SubnetPools over keelnet-core's allocators.

use std::net::IpAddr;

use keelnet_core::ipam::{self, ErrorKind, IpamError, PoolConfig, PoolSpec, Subnet};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyType};

pyo3::import_exception!(keelnet.errors, InvalidSubnet);
pyo3::import_exception!(keelnet.errors, InvalidAddress);
pyo3::import_exception!(keelnet.errors, AddressOutOfRange);
pyo3::import_exception!(keelnet.errors, AddressInUse);
pyo3::import_exception!(keelnet.errors, AddressNotAllocated);
pyo3::import_exception!(keelnet.errors, PoolExhausted);
pyo3::import_exception!(keelnet.errors, CorruptState);

fn to_py(error: IpamError) -> PyErr {
    let message = error.message;
    match error.kind {
        ErrorKind::InvalidSubnet => InvalidSubnet::new_err(message),
        ErrorKind::InvalidAddress => InvalidAddress::new_err(message),
        ErrorKind::OutOfRange => AddressOutOfRange::new_err(message),
        ErrorKind::InUse => AddressInUse::new_err(message),
        ErrorKind::NotAllocated => AddressNotAllocated::new_err(message),
        ErrorKind::Exhausted => PoolExhausted::new_err(message),
        ErrorKind::Corrupt => CorruptState::new_err(message),
    }
}

fn subnet(text: &str) -> PyResult<Subnet> {
    text.parse().map_err(to_py)
}

/// A pool of addresses in one subnet (IPv4 /8../32 or IPv6 /64../128).
///
/// Network and broadcast addresses (IPv4, not for /31 and /32), the IPv6
/// subnet-router anycast address, the gateway and `reserved` addresses are never
/// handed out. `ip_range` (a subnet inside `subnet`) restricts dynamic allocation;
/// `serial=True` allocates round-robin after the last allocation, like Docker's
/// `com.docker.network.ipam.serial`, so released addresses are not reused at once.
#[pyclass(module = "keelnet.ipam", name = "AddressPool")]
pub struct PyAddressPool {
    inner: ipam::AddressPool,
}

#[pymethods]
impl PyAddressPool {
    #[new]
    #[pyo3(signature = (subnet, *, ip_range=None, gateway=None, reserved=Vec::new(), serial=false))]
    fn new(
        subnet: &str,
        ip_range: Option<&str>,
        gateway: Option<&str>,
        reserved: Vec<String>,
        serial: bool,
    ) -> PyResult<Self> {
        let subnet = self::subnet(subnet)?;
        let parse = |text: &str, what: &str| -> PyResult<IpAddr> {
            ipam::parse_address(text, &subnet)
                .map_err(|e| to_py(IpamError::new(e.kind, format!("{what}: {}", e.message))))
        };
        let config = PoolConfig {
            ip_range: ip_range.map(self::subnet).transpose()?,
            gateway: gateway.map(|g| parse(g, "gateway")).transpose()?,
            reserved: reserved
                .iter()
                .map(|r| parse(r, "reserved address"))
                .collect::<PyResult<_>>()?,
            serial,
        };
        let inner = ipam::AddressPool::new(subnet, config).map_err(to_py)?;
        Ok(PyAddressPool { inner })
    }

    /// Allocate `address`, or the next free address when None; returns it.
    #[pyo3(signature = (address=None))]
    fn allocate(&mut self, address: Option<&str>) -> PyResult<String> {
        let wanted = address.map(|a| self.parse(a)).transpose()?;
        self.inner
            .allocate(wanted)
            .map(|a| a.to_string())
            .map_err(to_py)
    }

    /// Give `address` back to the pool.
    fn release(&mut self, address: &str) -> PyResult<()> {
        let address = self.parse(address)?;
        self.inner.release(address).map_err(to_py)
    }

    /// True when `address` is allocated or reserved; False outside the subnet.
    fn contains(&self, address: &str) -> PyResult<bool> {
        match ipam::parse_address(address, &self.inner.subnet()) {
            Ok(address) => Ok(self.inner.contains(address)),
            Err(e) if e.kind == ErrorKind::OutOfRange => Ok(false),
            Err(e) => Err(to_py(e)),
        }
    }

    fn __contains__(&self, address: &str) -> PyResult<bool> {
        self.contains(address)
    }

    /// Addresses that can be handed out: the subnet less its reserved addresses.
    #[getter]
    fn size(&self) -> u128 {
        self.inner.size()
    }

    /// Addresses handed out now.
    #[getter]
    fn used(&self) -> u64 {
        self.inner.used()
    }

    #[getter]
    fn subnet(&self) -> String {
        self.inner.subnet().to_string()
    }

    #[getter]
    fn ip_range(&self) -> Option<String> {
        self.inner.ip_range().map(|r| r.to_string())
    }

    #[getter]
    fn gateway(&self) -> Option<String> {
        self.inner.gateway().map(|g| g.to_string())
    }

    #[getter]
    fn serial(&self) -> bool {
        self.inner.is_serial()
    }

    /// Reserved addresses and why: {"10.0.0.0": "network", "10.0.0.1": "gateway", ...}.
    #[getter]
    fn reserved<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (address, why) in self.inner.reserved() {
            let why = match why {
                ipam::Reservation::Network => "network",
                ipam::Reservation::Broadcast => "broadcast",
                ipam::Reservation::Gateway => "gateway",
                ipam::Reservation::Auxiliary => "auxiliary",
            };
            dict.set_item(address.to_string(), why)?;
        }
        Ok(dict)
    }

    /// The pool as versioned, checksummed bytes (what the store persists).
    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_bytes())
    }

    /// A pool from `to_bytes()` output; CorruptState when the bytes fail any check.
    #[classmethod]
    fn from_bytes(_cls: &Bound<'_, PyType>, data: &[u8]) -> PyResult<Self> {
        let inner = ipam::AddressPool::from_bytes(data).map_err(to_py)?;
        Ok(PyAddressPool { inner })
    }

    fn __repr__(&self) -> String {
        format!(
            "AddressPool({:?}, used={}, size={})",
            self.inner.subnet().to_string(),
            self.inner.used(),
            self.inner.size()
        )
    }
}

impl PyAddressPool {
    fn parse(&self, text: &str) -> PyResult<IpAddr> {
        ipam::parse_address(text, &self.inner.subnet()).map_err(to_py)
    }
}

/// Subnets carved from address pools, Docker's way (`default-address-pools`).
///
/// `pools` is a sequence of `(base, size)` pairs or `{"base": ..., "size": ...}`
/// dicts; None means Docker's defaults: 172.17.0.0/16 … 172.31.0.0/16, then
/// 192.168.0.0/16 in /20s, and for IPv6 a ULA /48 derived from the machine id in /64s.
#[pyclass(module = "keelnet.ipam", name = "SubnetPools")]
pub struct PySubnetPools {
    inner: ipam::SubnetPools,
}

#[pymethods]
impl PySubnetPools {
    #[new]
    #[pyo3(signature = (pools=None))]
    fn new(pools: Option<Vec<Bound<'_, PyAny>>>) -> PyResult<Self> {
        let inner = match pools {
            None => ipam::SubnetPools::docker_defaults(ipam::host_ula_global_id()),
            Some(entries) => {
                let specs = entries
                    .iter()
                    .map(pool_spec)
                    .collect::<PyResult<Vec<_>>>()?;
                ipam::SubnetPools::new(specs).map_err(to_py)?
            }
        };
        Ok(PySubnetPools { inner })
    }

    /// The lowest free subnet that overlaps none of `avoid` (CIDR strings).
    #[pyo3(signature = (avoid=Vec::new(), *, ipv6=false))]
    fn request(&mut self, avoid: Vec<String>, ipv6: bool) -> PyResult<String> {
        let avoid = avoid
            .iter()
            .map(|a| subnet(a))
            .collect::<PyResult<Vec<_>>>()?;
        self.inner
            .request(&avoid, ipv6)
            .map(|s| s.to_string())
            .map_err(to_py)
    }

    /// Give back a subnet that `request` handed out.
    fn release(&mut self, subnet: &str) -> PyResult<()> {
        let subnet = self::subnet(subnet)?;
        self.inner.release(&subnet).map_err(to_py)
    }

    fn __contains__(&self, subnet: &str) -> PyResult<bool> {
        Ok(self.inner.contains(&self::subnet(subnet)?))
    }

    /// The pools, as (base, size) pairs.
    #[getter]
    fn pools(&self) -> Vec<(String, u8)> {
        self.inner
            .specs()
            .map(|s| (s.base.to_string(), s.size))
            .collect()
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.inner.to_bytes())
    }

    #[classmethod]
    fn from_bytes(_cls: &Bound<'_, PyType>, data: &[u8]) -> PyResult<Self> {
        let inner = ipam::SubnetPools::from_bytes(data).map_err(to_py)?;
        Ok(PySubnetPools { inner })
    }

    fn __repr__(&self) -> String {
        format!("SubnetPools({:?})", self.pools())
    }
}

fn pool_spec(entry: &Bound<'_, PyAny>) -> PyResult<PoolSpec> {
    let (base, size): (String, u8) = if let Ok(dict) = entry.cast::<PyDict>() {
        let field = |key: &str| {
            dict.get_item(key)?.ok_or_else(|| {
                InvalidSubnet::new_err(format!("address pool {dict} has no {key:?}; give {{\"base\": CIDR, \"size\": prefix length}}"))
            })
        };
        (field("base")?.extract()?, field("size")?.extract()?)
    } else {
        entry.extract().map_err(|_| {
            PyTypeError::new_err(
                "an address pool is a (base, size) pair or a {\"base\", \"size\"} dict",
            )
        })?
    };
    PoolSpec::new(subnet(&base)?, size).map_err(to_py)
}
