//! Docker's embedded DNS server: `127.0.0.11:53` inside every sandbox of a network that
//! has it, answering the names of the sandboxes that share a network with the asker
//! and forwarding everything else upstream.
//!
//! - [`table`]: the names per network (fed by the owner of the networks) and what
//!   each sandbox sees;
//! - [`message`]: from a query's bytes to an answer, a forward, or silence;
//! - [`resolver`]: the handle (names, sandboxes, upstreams); `worker`: its thread,
//!   sockets and TCP clients; `upstream`: exchanges with upstream servers.

pub mod message;
pub mod resolver;
pub mod table;
mod upstream;
mod worker;

pub use resolver::{DEFAULT_UPSTREAM_TIMEOUT, LISTEN, Resolver, Stats, Upstream};
pub use table::{Family, Lookup, NameTable};
