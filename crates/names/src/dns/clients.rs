//! Who asks through a shared listener, and what they may ask.
//!
//! A container's own listener (127.0.0.11 inside its namespace) knows who asks: the namespace
//! tells. A *shared* listener (one address in the agent's namespace that many containers reach
//! through their default route, like Docker's upstream DNS) only sees the source address of a
//! query, so it asks a [`Clients`] implementation what that address is:
//!
//! - [`Client::Container`]: a container of this host, answered on the networks it is on (which
//!   may be none: a container on none of the cluster's networks still gets recursion);
//! - [`Client::Host`]: the host itself (Docker 28 forwards from the host namespace to servers
//!   of the host's resolv.conf, so the container is unknown): cluster names on every network,
//!   and no recursion;
//! - [`Client::Stranger`]: anyone else gets no answer at all (not even REFUSED: no reflection).
//!
//! [`Clients::known`] is on the hot path and must only read memory; an address it does not
//! know goes to [`Clients::identify`], which may take a few milliseconds (the agent looks into
//! its containers' namespaces), so the very first query of a new container is answered too.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;

/// What the source of a query is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Client {
    /// A container of this host, on these cluster networks (maybe none).
    Container(Arc<Vec<String>>),
    /// The host itself: every cluster network, no recursion.
    Host,
    /// Not ours: no answer.
    Stranger,
}

impl Client {
    /// A container on `networks`.
    pub fn container<I, S>(networks: I) -> Client
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Client::Container(Arc::new(networks.into_iter().map(Into::into).collect()))
    }

    /// Whether non-cluster names are forwarded upstream for this client.
    pub fn recursion(&self) -> bool {
        matches!(self, Client::Container(_))
    }
}

/// A boxed future of a [`Client`].
pub type Identify = Pin<Box<dyn Future<Output = Client> + Send + 'static>>;

/// Tells who a source address is. See the module docs.
pub trait Clients: Send + Sync + 'static {
    /// From memory only (called for every query): `None` when the address is not known.
    fn known(&self, ip: IpAddr) -> Option<Client>;

    /// Finds out about an address [`Clients::known`] did not know. Must finish in bounded
    /// time; an address it cannot place is a [`Client::Stranger`].
    fn identify(&self, ip: IpAddr) -> Identify;
}

/// A table of addresses, swapped whole; unknown addresses are `fallback`. For tests,
/// benchmarks, and as the memory of richer [`Clients`].
#[derive(Debug)]
pub struct ClientMap {
    map: ArcSwap<HashMap<IpAddr, Client>>,
    fallback: Client,
}

impl ClientMap {
    /// A table with these entries, answering `fallback` for everything else.
    pub fn new(entries: HashMap<IpAddr, Client>, fallback: Client) -> ClientMap {
        ClientMap {
            map: ArcSwap::from_pointee(entries),
            fallback,
        }
    }

    /// Replaces every entry.
    pub fn set(&self, entries: HashMap<IpAddr, Client>) {
        self.map.store(Arc::new(entries));
    }

    /// Adds or replaces one entry.
    pub fn insert(&self, ip: IpAddr, client: Client) {
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(ip, client.clone());
            m
        });
    }

    /// The entry of `ip`, if any.
    pub fn get(&self, ip: IpAddr) -> Option<Client> {
        self.map.load().get(&ip).cloned()
    }

    /// How many entries the table holds.
    pub fn len(&self) -> usize {
        self.map.load().len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Clients for ClientMap {
    fn known(&self, ip: IpAddr) -> Option<Client> {
        Some(self.get(ip).unwrap_or_else(|| self.fallback.clone()))
    }

    fn identify(&self, ip: IpAddr) -> Identify {
        let c = self.known(ip).unwrap_or(Client::Stranger);
        Box::pin(async move { c })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_answers_entries_then_fallback() {
        let a: IpAddr = "172.18.0.2".parse().unwrap();
        let b: IpAddr = "172.18.0.3".parse().unwrap();
        let m = ClientMap::new(
            HashMap::from([(a, Client::container(["net1"]))]),
            Client::Stranger,
        );
        assert_eq!(m.known(a), Some(Client::container(["net1"])));
        assert_eq!(m.known(b), Some(Client::Stranger));
        m.insert(b, Client::Host);
        assert_eq!(m.get(b), Some(Client::Host));
        assert_eq!(m.len(), 2);
        m.set(HashMap::new());
        assert!(m.is_empty());
        assert!(Client::container(Vec::<String>::new()).recursion());
        assert!(!Client::Host.recursion() && !Client::Stranger.recursion());
    }
}
