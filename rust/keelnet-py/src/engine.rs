//! What the engine classes (`Switch`, `Ipvlan`) share: error mapping, counters, and
//! the life cycle of a Rust engine owned by a Python object.

use std::io;
use std::net::IpAddr;

use keelnet_core::io::errno_of;
use keelnet_core::ipvlan::Ipvlan;
use keelnet_core::switch::{Switch, Traffic};
use pyo3::prelude::*;
use pyo3::types::PyDict;

pyo3::import_exception!(keelnet.errors, DataplaneError);
pyo3::import_exception!(keelnet.errors, InvalidRequest);
pyo3::import_exception!(keelnet.errors, NotFound);
pyo3::import_exception!(keelnet.errors, Conflict);

/// Maps an I/O error onto `keelnet.errors`, keeping the errno.
pub fn to_py(error: io::Error) -> PyErr {
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

pub fn parse_ip(text: &str) -> PyResult<IpAddr> {
    text.parse()
        .map_err(|_| InvalidRequest::new_err(format!("{text:?} is not an IP address")))
}

pub fn traffic<'py>(py: Python<'py>, traffic: &Traffic) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("packets", traffic.packets)?;
    dict.set_item("bytes", traffic.bytes)?;
    Ok(dict)
}

/// A data-plane engine: worker threads started and stopped from Python.
pub trait Engine: Send {
    fn start(&mut self) -> io::Result<()>;
    fn stop(&mut self);
    fn is_running(&self) -> bool;
}

impl Engine for Switch {
    fn start(&mut self) -> io::Result<()> {
        Switch::start(self)
    }
    fn stop(&mut self) {
        Switch::stop(self)
    }
    fn is_running(&self) -> bool {
        Switch::is_running(self)
    }
}

impl Engine for Ipvlan {
    fn start(&mut self) -> io::Result<()> {
        Ipvlan::start(self)
    }
    fn stop(&mut self) {
        Ipvlan::stop(self)
    }
    fn is_running(&self) -> bool {
        Ipvlan::is_running(self)
    }
}

/// An engine owned by a Python object. Blocking steps (starting, joining workers,
/// closing descriptors) release the GIL; once closed, every descriptor is released
/// and calls fail with `InvalidRequest`.
pub struct Owned<T> {
    engine: Option<T>,
    /// What the engine is called in errors ("switch", "ipvlan").
    what: &'static str,
}

impl<T: Engine> Owned<T> {
    pub fn new(engine: T, what: &'static str) -> Self {
        Owned {
            engine: Some(engine),
            what,
        }
    }

    pub fn get(&self) -> PyResult<&T> {
        self.engine
            .as_ref()
            .ok_or_else(|| InvalidRequest::new_err(format!("the {} is closed", self.what)))
    }

    pub fn start(&mut self, py: Python<'_>) -> PyResult<()> {
        let what = self.what;
        let engine = self
            .engine
            .as_mut()
            .ok_or_else(|| InvalidRequest::new_err(format!("the {what} is closed")))?;
        py.detach(|| engine.start()).map_err(to_py)
    }

    pub fn stop(&mut self, py: Python<'_>) {
        if let Some(engine) = self.engine.as_mut() {
            py.detach(|| engine.stop());
        }
    }

    pub fn close(&mut self, py: Python<'_>) {
        if let Some(engine) = self.engine.take() {
            py.detach(move || drop(engine));
        }
    }

    pub fn running(&self) -> bool {
        self.engine.as_ref().is_some_and(T::is_running)
    }

    pub fn closed(&self) -> bool {
        self.engine.is_none()
    }
}
