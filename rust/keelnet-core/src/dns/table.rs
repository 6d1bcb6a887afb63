//! The names the resolver answers for: one table per network (keyed by network id),
//! filled by whoever owns the networks (Python pushes every connect, disconnect and
//! alias; an overlay watcher can push other hosts' endpoints the same way), and the
//! networks each sandbox sees.
//!
//! Docker's rules (moby `Sandbox.ResolveName`): a sandbox sees the names of the networks
//! it is attached to, in its attachment order, and the first network that knows a name
//! answers; `name.network` asks one network; several endpoints under one name (an alias
//! they share) answer together; a name the network knows with addresses of the other
//! family only answers with no records (NOERROR), not NXDOMAIN.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a name is looked up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// The outcome of a forward lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name exists: its addresses of the asked family (possibly none), rotated.
    Found(Vec<IpAddr>),
    /// Under a network's scope (a single label, or `x.<network>`) but unknown: NXDOMAIN.
    Unknown,
    /// Not ours: ask the upstream servers.
    Elsewhere,
}

/// One endpoint: its names on the network and its addresses.
#[derive(Debug)]
struct Endpoint {
    names: Vec<Arc<str>>,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
}

/// The endpoints answering under one name, and where the next answer starts.
#[derive(Debug, Default)]
struct NameEntry {
    endpoints: Vec<Arc<str>>,
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct NetworkNames {
    /// Lower-case network name: `sandbox.<name>` asks this network only.
    name: String,
    endpoints: HashMap<Arc<str>, Endpoint>,
    /// Lower-case name (sandbox name or alias) → endpoints under it, oldest first.
    names: HashMap<Arc<str>, NameEntry>,
    /// Address → endpoints holding it (one, unless the store is mid-change), for PTR.
    by_address: HashMap<IpAddr, Vec<Arc<str>>>,
}

#[derive(Debug, Clone, Default)]
struct SandboxView {
    networks: Vec<Arc<str>>,
}

/// Every network's names and every sandbox's view of them.
#[derive(Debug, Default)]
pub struct NameTable {
    networks: HashMap<Arc<str>, NetworkNames>,
    sandboxes: HashMap<Arc<str>, SandboxView>,
}

/// Longest name in presentation form without the final dot (RFC 1035: 255 octets on
/// the wire).
const MAX_NAME: usize = 253;
const MAX_LABEL: usize = 63;

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// A name as stored: lower case, no final dot, labels of 1-63 octets, at most 253 in all.
pub fn normalize(name: &str) -> io::Result<String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > MAX_NAME {
        return Err(invalid(format!(
            "{name:?} is not a DNS name: it must have 1 to {MAX_NAME} characters"
        )));
    }
    for label in trimmed.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL {
            return Err(invalid(format!(
                "{name:?} is not a DNS name: each dot-separated label needs 1 to {MAX_LABEL} characters"
            )));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(format!(
                "{name:?} is not a DNS name: use letters, digits, '-', '_' and dots"
            )));
        }
    }
    Ok(trimmed.to_ascii_lowercase())
}

impl Endpoint {
    fn addresses(&self) -> impl Iterator<Item = IpAddr> {
        self.v4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.v6.map(IpAddr::V6))
    }
}

impl NameEntry {
    fn with(endpoint: Arc<str>) -> NameEntry {
        NameEntry {
            endpoints: vec![endpoint],
            next: AtomicUsize::new(0),
        }
    }
}

impl NetworkNames {
    fn unlink(&mut self, endpoint_id: &str) -> Option<Endpoint> {
        let endpoint = self.endpoints.remove(endpoint_id)?;
        for address in endpoint.addresses() {
            if let Some(ids) = self.by_address.get_mut(&address) {
                ids.retain(|id| &**id != endpoint_id);
                if ids.is_empty() {
                    self.by_address.remove(&address);
                }
            }
        }
        for name in &endpoint.names {
            if let Some(entry) = self.names.get_mut(name) {
                entry.endpoints.retain(|id| &**id != endpoint_id);
                if entry.endpoints.is_empty() {
                    self.names.remove(name);
                }
            }
        }
        Some(endpoint)
    }

    /// The addresses under `name`, starting one further on each call.
    fn addresses(&self, name: &str, family: Family) -> Option<Vec<IpAddr>> {
        let entry = self.names.get(name)?;
        let count = entry.endpoints.len();
        let start = entry.next.fetch_add(1, Ordering::Relaxed) % count;
        let mut found = Vec::with_capacity(count);
        for offset in 0..count {
            let id = &entry.endpoints[(start + offset) % count];
            let Some(endpoint) = self.endpoints.get(id) else {
                continue;
            };
            let address = match family {
                Family::V4 => endpoint.v4.map(IpAddr::V4),
                Family::V6 => endpoint.v6.map(IpAddr::V6),
            };
            match address {
                Some(address) if !found.contains(&address) => found.push(address),
                _ => {}
            }
        }
        Some(found)
    }

    fn owner_of(&self, address: IpAddr) -> Option<&Arc<str>> {
        let id = self.by_address.get(&address)?.first()?;
        self.endpoints.get(id)?.names.first()
    }
}

impl NameTable {
    pub fn new() -> NameTable {
        NameTable::default()
    }

    /// Adds a network, or renames one (its endpoints stay).
    pub fn set_network(&mut self, network_id: &str, name: &str) -> io::Result<()> {
        let name = normalize(name)?;
        self.networks.entry(Arc::from(network_id)).or_default().name = name;
        Ok(())
    }

    /// Forgets a network, its names, and the sandboxes' view of it.
    pub fn remove_network(&mut self, network_id: &str) {
        self.networks.remove(network_id);
        for view in self.sandboxes.values_mut() {
            view.networks.retain(|id| &**id != network_id);
        }
    }

    /// Adds (or replaces) an endpoint of a network under `names` (its sandbox name first:
    /// reverse lookups answer with it). Names are checked before anything changes.
    pub fn set_endpoint(
        &mut self,
        network_id: &str,
        endpoint_id: &str,
        names: &[&str],
        v4: Option<Ipv4Addr>,
        v6: Option<Ipv6Addr>,
    ) -> io::Result<()> {
        let network = self.networks.get_mut(network_id).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("network {network_id} has no name table"),
            )
        })?;
        if names.is_empty() {
            return Err(invalid(format!("endpoint {endpoint_id} needs a name")));
        }
        let mut normalized: Vec<Arc<str>> = Vec::with_capacity(names.len());
        for name in names {
            let name: Arc<str> = Arc::from(normalize(name)?);
            if !normalized.contains(&name) {
                normalized.push(name);
            }
        }
        network.unlink(endpoint_id);
        let id: Arc<str> = Arc::from(endpoint_id);
        for name in &normalized {
            match network.names.get_mut(name) {
                Some(entry) => entry.endpoints.push(id.clone()),
                None => {
                    network
                        .names
                        .insert(name.clone(), NameEntry::with(id.clone()));
                }
            }
        }
        let endpoint = Endpoint {
            names: normalized,
            v4,
            v6,
        };
        for address in endpoint.addresses() {
            network
                .by_address
                .entry(address)
                .or_default()
                .push(id.clone());
        }
        network.endpoints.insert(id, endpoint);
        Ok(())
    }

    /// Removes an endpoint; one that is not there is already removed.
    pub fn remove_endpoint(&mut self, network_id: &str, endpoint_id: &str) {
        if let Some(network) = self.networks.get_mut(network_id) {
            network.unlink(endpoint_id);
        }
    }

    /// The networks a sandbox sees, in the order it asks them. Unknown ids are refused.
    pub fn set_sandbox(&mut self, sandbox: &str, network_ids: &[&str]) -> io::Result<()> {
        let mut networks = Vec::with_capacity(network_ids.len());
        for id in network_ids {
            let Some((key, _)) = self.networks.get_key_value(*id) else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("network {id} has no name table"),
                ));
            };
            networks.push(key.clone());
        }
        self.sandboxes
            .insert(Arc::from(sandbox), SandboxView { networks });
        Ok(())
    }

    pub fn remove_sandbox(&mut self, sandbox: &str) {
        self.sandboxes.remove(sandbox);
    }

    fn view(&self, sandbox: &str) -> impl Iterator<Item = &NetworkNames> {
        self.sandboxes
            .get(sandbox)
            .into_iter()
            .flat_map(|view| view.networks.iter())
            .filter_map(|id| self.networks.get(id))
    }

    /// Looks `name` (lower case, no final dot) up for `sandbox`, as Docker does: the
    /// whole name in every network it sees, then `a.b` as `a` in network `b` for each
    /// split from the right.
    pub fn lookup(&self, sandbox: &str, name: &str, family: Family) -> Lookup {
        for network in self.view(sandbox) {
            if let Some(found) = network.addresses(name, family) {
                return Lookup::Found(found);
            }
        }
        let mut ours = !name.contains('.');
        let mut rest = name;
        while let Some((head, _)) = rest.rsplit_once('.') {
            let network_name = &name[head.len() + 1..];
            for network in self.view(sandbox).filter(|n| n.name == network_name) {
                ours = true;
                if let Some(found) = network.addresses(head, family) {
                    return Lookup::Found(found);
                }
            }
            rest = head;
        }
        if ours {
            Lookup::Unknown
        } else {
            Lookup::Elsewhere
        }
    }

    /// The name (`sandbox.network`) of `address` on a network `sandbox` sees.
    pub fn reverse(&self, sandbox: &str, address: IpAddr) -> Option<String> {
        self.view(sandbox).find_map(|network| {
            network
                .owner_of(address)
                .map(|name| format!("{name}.{}", network.name))
        })
    }

    /// Names held across all networks (for memory figures).
    pub fn name_count(&self) -> usize {
        self.networks.values().map(|n| n.names.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NET_A: &str = "aaaa";
    const NET_B: &str = "bbbb";

    fn v4(last: u8) -> Option<Ipv4Addr> {
        Some(Ipv4Addr::new(10, 0, 0, last))
    }

    fn table() -> NameTable {
        let mut table = NameTable::new();
        table.set_network(NET_A, "front").unwrap();
        table.set_network(NET_B, "back").unwrap();
        table
            .set_endpoint(NET_A, "e1", &["web", "www"], v4(2), None)
            .unwrap();
        table
            .set_endpoint(NET_B, "e2", &["db"], v4(3), "fd00::3".parse().ok())
            .unwrap();
        table.set_sandbox("client-a", &[NET_A]).unwrap();
        table.set_sandbox("client-ab", &[NET_A, NET_B]).unwrap();
        table
    }

    fn found(addresses: &[&str]) -> Lookup {
        Lookup::Found(addresses.iter().map(|a| a.parse().unwrap()).collect())
    }

    #[test]
    fn names_and_aliases_answer_on_networks_the_sandbox_sees() {
        let table = table();
        assert_eq!(
            table.lookup("client-a", "web", Family::V4),
            found(&["10.0.0.2"])
        );
        assert_eq!(
            table.lookup("client-a", "www", Family::V4),
            found(&["10.0.0.2"])
        );
        assert_eq!(table.lookup("client-a", "db", Family::V4), Lookup::Unknown);
        assert_eq!(
            table.lookup("client-ab", "db", Family::V4),
            found(&["10.0.0.3"])
        );
        assert_eq!(
            table.lookup("client-ab", "db", Family::V6),
            found(&["fd00::3"])
        );
        assert_eq!(table.lookup("nobody", "web", Family::V4), Lookup::Unknown);
    }

    #[test]
    fn a_name_of_the_other_family_only_answers_empty() {
        let table = table();
        assert_eq!(table.lookup("client-a", "web", Family::V6), found(&[]));
    }

    #[test]
    fn name_dot_network_asks_that_network_and_is_ours() {
        let table = table();
        assert_eq!(
            table.lookup("client-a", "web.front", Family::V4),
            found(&["10.0.0.2"])
        );
        assert_eq!(
            table.lookup("client-a", "nope.front", Family::V4),
            Lookup::Unknown
        );
        // A network the sandbox does not see is not our scope: upstream decides.
        assert_eq!(
            table.lookup("client-a", "db.back", Family::V4),
            Lookup::Elsewhere
        );
        assert_eq!(
            table.lookup("client-a", "example.com", Family::V4),
            Lookup::Elsewhere
        );
    }

    #[test]
    fn a_shared_alias_answers_with_all_in_rotating_order() {
        let mut table = table();
        for (id, last) in [("e3", 3), ("e4", 4)] {
            table
                .set_endpoint(NET_A, id, &[id, "pool"], v4(last), None)
                .unwrap();
        }
        table
            .set_endpoint(NET_A, "e1", &["web", "pool"], v4(2), None)
            .unwrap();
        let first = table.lookup("client-a", "pool", Family::V4);
        let second = table.lookup("client-a", "pool", Family::V4);
        let third = table.lookup("client-a", "pool", Family::V4);
        assert_eq!(first, found(&["10.0.0.3", "10.0.0.4", "10.0.0.2"]));
        assert_eq!(second, found(&["10.0.0.4", "10.0.0.2", "10.0.0.3"]));
        assert_eq!(third, found(&["10.0.0.2", "10.0.0.3", "10.0.0.4"]));
    }

    #[test]
    fn removal_and_replacement_forget_old_names() {
        let mut table = table();
        table
            .set_endpoint(NET_A, "e1", &["web2"], v4(9), None)
            .unwrap();
        assert_eq!(table.lookup("client-a", "www", Family::V4), Lookup::Unknown);
        assert_eq!(
            table.lookup("client-a", "web2", Family::V4),
            found(&["10.0.0.9"])
        );
        table.remove_endpoint(NET_A, "e1");
        table.remove_endpoint(NET_A, "e1");
        assert_eq!(
            table.lookup("client-a", "web2", Family::V4),
            Lookup::Unknown
        );
        assert_eq!(table.name_count(), 1);
        table.remove_network(NET_B);
        assert_eq!(table.lookup("client-ab", "db", Family::V4), Lookup::Unknown);
    }

    #[test]
    fn reverse_answers_sandbox_dot_network() {
        let table = table();
        let address = "10.0.0.2".parse().unwrap();
        assert_eq!(
            table.reverse("client-a", address).as_deref(),
            Some("web.front")
        );
        assert_eq!(table.reverse("client-a", "10.0.0.3".parse().unwrap()), None);
        assert_eq!(
            table
                .reverse("client-ab", "fd00::3".parse().unwrap())
                .as_deref(),
            Some("db.back")
        );
    }

    #[test]
    fn bad_names_and_unknown_networks_are_refused_before_any_change() {
        let mut table = table();
        for bad in [
            "",
            ".",
            "a..b",
            "bad name",
            &"x".repeat(64),
            &"a.".repeat(130),
        ] {
            let error = table.set_endpoint(NET_A, "e1", &["ok", bad], v4(7), None);
            assert_eq!(
                error.unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
        assert_eq!(
            table.lookup("client-a", "web", Family::V4),
            found(&["10.0.0.2"])
        );
        let error = table.set_endpoint("nope", "e9", &["x"], v4(7), None);
        assert_eq!(error.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(table.set_sandbox("s", &["nope"]).is_err());
        assert_eq!(normalize("Web.Front.").unwrap(), "web.front");
    }

    proptest! {
        /// Whatever is added and removed, every name a sandbox sees answers with exactly
        /// the addresses of the endpoints still under it, each once.
        #[test]
        fn lookups_match_a_model(
            ops in proptest::collection::vec((0u8..6, 0u8..4, any::<bool>()), 1..60)
        ) {
            let mut table = NameTable::new();
            table.set_network(NET_A, "net").unwrap();
            table.set_sandbox("s", &[NET_A]).unwrap();
            let mut model: HashMap<String, (String, u8)> = HashMap::new();
            for (endpoint, alias, add) in ops {
                let id = format!("e{endpoint}");
                if add {
                    let alias = format!("alias{alias}");
                    table.set_endpoint(NET_A, &id, &[&id, &alias], v4(endpoint), None).unwrap();
                    model.insert(id, (alias, endpoint));
                } else {
                    table.remove_endpoint(NET_A, &id);
                    model.remove(&id);
                }
            }
            for alias in 0..4 {
                let alias = format!("alias{alias}");
                let mut expected: Vec<IpAddr> = model
                    .values()
                    .filter(|(a, _)| *a == alias)
                    .map(|(_, last)| IpAddr::V4(v4(*last).unwrap()))
                    .collect();
                expected.sort();
                match table.lookup("s", &alias, Family::V4) {
                    Lookup::Found(mut got) => {
                        got.sort();
                        prop_assert_eq!(got, expected);
                    }
                    Lookup::Unknown => prop_assert!(expected.is_empty()),
                    Lookup::Elsewhere => prop_assert!(false, "a single label is ours"),
                }
            }
        }

        #[test]
        fn any_lookup_string_is_answered_without_panic(name in "\\PC{0,80}") {
            let table = table();
            let _ = table.lookup("client-ab", &name, Family::V4);
            let _ = normalize(&name);
        }
    }
}
