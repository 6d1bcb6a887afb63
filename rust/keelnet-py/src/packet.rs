//! `keelnet.packet`: VXLAN encapsulation and decapsulation over keelnet-core's packet
//! module, for tools, tests and users who inspect traffic. Conversions and error mapping
//! only.

use std::net::IpAddr;

use keelnet_core::packet::offload::{self, Coalescer, Segments};
use keelnet_core::packet::vxlan::{self, DecapConfig, Encapsulator, Endpoints, VxlanConfig};
use keelnet_core::packet::{MacAddr, PacketError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::mac;

pyo3::import_exception!(keelnet.errors, MalformedPacket);

fn malformed(error: PacketError) -> PyErr {
    MalformedPacket::new_err(error.to_string())
}

fn bad_argument(message: String) -> PyErr {
    MalformedPacket::new_err(message)
}

fn parse_ip(text: &str, what: &str) -> PyResult<IpAddr> {
    text.parse()
        .map_err(|_| bad_argument(format!("{what} {text:?} is not an IP address")))
}

/// `aa:bb:cc:dd:ee:ff` (or with `-`), case-insensitive.
fn parse_mac(text: &str, what: &str) -> PyResult<MacAddr> {
    mac::parse(text, &[':', '-']).ok_or_else(|| {
        bad_argument(format!(
            "{what} {text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"
        ))
    })
}

fn in_range(value: i64, max: i64, what: &str) -> PyResult<u32> {
    if (0..=max).contains(&value) {
        Ok(value as u32)
    } else {
        Err(bad_argument(format!("{what} {value} is outside 0..={max}")))
    }
}

/// Wraps an Ethernet frame in VXLAN; see `keelnet.packet.encapsulate`.
#[pyfunction]
#[pyo3(signature = (inner, *, vni, src, dst, src_mac, dst_mac, dst_port=4789, src_port=None))]
#[allow(clippy::too_many_arguments)] // the Python signature, keyword-only
fn encapsulate<'py>(
    py: Python<'py>,
    inner: &[u8],
    vni: i64,
    src: &str,
    dst: &str,
    src_mac: &str,
    dst_mac: &str,
    dst_port: i64,
    src_port: Option<i64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let vni = in_range(vni, i64::from(vxlan::MAX_VNI), "VNI")?;
    let destination_port = in_range(dst_port, 65535, "dst_port")? as u16;
    let source_port = src_port
        .map(|port| in_range(port, 65535, "src_port"))
        .transpose()?
        .map(|port| port as u16);
    let endpoints = Endpoints {
        source_mac: parse_mac(src_mac, "src_mac")?,
        destination_mac: parse_mac(dst_mac, "dst_mac")?,
        source: parse_ip(src, "src")?,
        destination: parse_ip(dst, "dst")?,
        vlan: None,
    };
    let config = VxlanConfig {
        destination_port,
        ..VxlanConfig::default()
    };
    let mut encapsulator = Encapsulator::new(config, &endpoints).map_err(malformed)?;
    let frame = encapsulator
        .encapsulate_to_vec(inner, vni, source_port)
        .map_err(malformed)?;
    Ok(PyBytes::new(py, &frame))
}

/// A decapsulated VXLAN frame: outer addresses and ports, VNI and the inner frame.
#[pyclass(frozen, module = "keelnet.packet", name = "Decapsulated")]
pub struct PyDecapsulated {
    #[pyo3(get)]
    vni: u32,
    #[pyo3(get)]
    src: String,
    #[pyo3(get)]
    dst: String,
    #[pyo3(get)]
    src_port: u16,
    #[pyo3(get)]
    dst_port: u16,
    #[pyo3(get)]
    src_mac: String,
    #[pyo3(get)]
    dst_mac: String,
    #[pyo3(get)]
    ttl: u8,
    #[pyo3(get)]
    inner: Py<PyBytes>,
}

#[pymethods]
impl PyDecapsulated {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Decapsulated(vni={}, src={:?}, dst={:?}, src_port={}, dst_port={}, inner=<{} bytes>)",
            self.vni,
            self.src,
            self.dst,
            self.src_port,
            self.dst_port,
            self.inner.bind(py).as_bytes().len()
        )
    }
}

/// Unwraps a VXLAN frame (outer Ethernet onwards); see `keelnet.packet.decapsulate`.
#[pyfunction]
#[pyo3(signature = (frame, *, dst_port=None))]
fn decapsulate(py: Python<'_>, frame: &[u8], dst_port: Option<i64>) -> PyResult<PyDecapsulated> {
    let destination_port = dst_port
        .map(|port| in_range(port, 65535, "dst_port"))
        .transpose()?
        .map(|port| port as u16);
    let config = DecapConfig {
        destination_port,
        ..DecapConfig::default()
    };
    let decap = vxlan::decapsulate(frame, &config).map_err(malformed)?;
    Ok(PyDecapsulated {
        vni: decap.vni,
        src: decap.source.to_string(),
        dst: decap.destination.to_string(),
        src_port: decap.source_port,
        dst_port: decap.destination_port,
        src_mac: mac::format(&decap.outer_source_mac),
        dst_mac: mac::format(&decap.outer_destination_mac),
        ttl: decap.ttl,
        inner: PyBytes::new(py, decap.inner).unbind(),
    })
}

/// Splits a TCP super-frame into `mss`-sized frames; see `keelnet.packet.segment`.
#[pyfunction]
fn segment<'py>(py: Python<'py>, frame: &[u8], mss: i64) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    if !(1..=65535).contains(&mss) {
        return Err(bad_argument(format!("mss {mss} is outside 1..=65535")));
    }
    let mut out = Segments::new();
    offload::segment(frame, mss as usize, &mut out).map_err(malformed)?;
    Ok(out.iter().map(|piece| PyBytes::new(py, piece)).collect())
}

/// Coalesces TCP segments into super-frames; see `keelnet.packet.coalesce`.
#[pyfunction]
#[pyo3(signature = (frames, *, verify_checksums=true))]
fn coalesce<'py>(
    py: Python<'py>,
    frames: Vec<Vec<u8>>,
    verify_checksums: bool,
) -> PyResult<Vec<(Bound<'py, PyBytes>, u16)>> {
    let mut coalescer = Coalescer::new(verify_checksums);
    let mut merged = Vec::new();
    let mut result = Vec::new();
    let mut flush =
        |coalescer: &mut Coalescer, result: &mut Vec<(Bound<'py, PyBytes>, u16)>| -> PyResult<()> {
            if let Some(hdr) = coalescer.finish(&mut merged) {
                offload::complete_checksum(&mut merged, &hdr).map_err(malformed)?;
                result.push((PyBytes::new(py, &merged), hdr.gso_size));
            }
            Ok(())
        };
    for frame in &frames {
        if !coalescer.push(frame).map_err(malformed)? {
            flush(&mut coalescer, &mut result)?;
            if !coalescer.push(frame).map_err(malformed)? {
                return Err(bad_argument("a frame could not start a super-frame".into()));
            }
        }
    }
    flush(&mut coalescer, &mut result)?;
    Ok(result)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(segment, m)?)?;
    m.add_function(wrap_pyfunction!(coalesce, m)?)?;
    m.add_function(wrap_pyfunction!(encapsulate, m)?)?;
    m.add_function(wrap_pyfunction!(decapsulate, m)?)?;
    m.add_class::<PyDecapsulated>()?;
    Ok(())
}
