//! Policy routing verbs: a rule that sends one UDP destination port to its own routing table,
//! and the host routes of that table. Encrypted networks use them to route exactly their
//! VXLAN into the WireGuard interface, so nothing else (the KV, the WireGuard datagrams
//! themselves) ever depends on the tunnel.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::IpProtocol;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage, RulePortRange};
use rtnetlink::{IpVersion, RouteMessageBuilder};

use crate::error::{Error, Result};
use crate::link::Netlink;

/// `ip rule add priority P ipproto udp dport PORT lookup TABLE` (or `sport PORT` with
/// [`PortRule::source`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRule {
    /// Rule priority (lower is looked at first).
    pub priority: u32,
    /// UDP port the rule matches.
    pub port: u16,
    /// Match the source port instead of the destination port.
    pub source: bool,
    /// The table it sends those packets to.
    pub table: u32,
}

impl std::fmt::Display for PortRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = if self.source { "sport" } else { "dport" };
        write!(
            f,
            "priority {} ipproto udp {dir} {} lookup {}",
            self.priority, self.port, self.table
        )
    }
}

fn nl(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let context = context.into();
    move |e| Error::netlink(context, e)
}

/// The rule a kernel message describes, if it is a UDP destination-port rule with a table.
fn port_rule(m: &RuleMessage) -> Option<PortRule> {
    let mut udp = false;
    let (mut port, mut table, mut priority, mut source) = (None, None, 0, false);
    for a in &m.attributes {
        match a {
            RuleAttribute::IpProtocol(IpProtocol::Udp) => udp = true,
            RuleAttribute::DestinationPortRange(r) if r.start == r.end => port = Some(r.start),
            RuleAttribute::SourcePortRange(r) if r.start == r.end => {
                port = Some(r.start);
                source = true;
            }
            RuleAttribute::Table(t) => table = Some(*t),
            RuleAttribute::Priority(p) => priority = *p,
            _ => {}
        }
    }
    let table = table.or((m.header.table != 0).then_some(u32::from(m.header.table)))?;
    (udp && m.header.action == RuleAction::ToTable).then_some(PortRule {
        priority,
        port: port?,
        source,
        table,
    })
}

fn in_table(r: &RouteMessage, table: u32) -> bool {
    let t = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    t == table
}

impl Netlink {
    async fn rules_v4(&self) -> Result<Vec<RuleMessage>> {
        self.handle()
            .rule()
            .get(IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .map_err(nl("dump IPv4 rules"))
    }

    /// The IPv4 rules that send one UDP port to a table.
    pub async fn port_rules_v4(&self) -> Result<Vec<PortRule>> {
        Ok(self
            .rules_v4()
            .await?
            .iter()
            .filter_map(port_rule)
            .collect())
    }

    /// Adds `rule`.
    pub async fn add_port_rule(&self, rule: PortRule) -> Result<()> {
        let mut req = self
            .handle()
            .rule()
            .add()
            .v4()
            .priority(rule.priority)
            .table_id(rule.table)
            .action(RuleAction::ToTable);
        let attrs = &mut req.message_mut().attributes;
        attrs.push(RuleAttribute::IpProtocol(IpProtocol::Udp));
        let range = RulePortRange {
            start: rule.port,
            end: rule.port,
        };
        attrs.push(if rule.source {
            RuleAttribute::SourcePortRange(range)
        } else {
            RuleAttribute::DestinationPortRange(range)
        });
        req.execute().await.map_err(nl(format!("add rule {rule}")))
    }

    /// Deletes `rule` (every field must match).
    pub async fn del_port_rule(&self, rule: PortRule) -> Result<()> {
        for m in self.rules_v4().await? {
            if port_rule(&m) == Some(rule) {
                self.handle()
                    .rule()
                    .del(m)
                    .execute()
                    .await
                    .map_err(nl(format!("delete rule {rule}")))?;
            }
        }
        Ok(())
    }

    /// The IPv4 routes of `table` with a destination prefix, as (destination, output
    /// interface).
    pub async fn table_routes_v4(&self, table: u32) -> Result<Vec<(Ipv4Network, Option<u32>)>> {
        let mut filter = RouteMessageBuilder::<Ipv4Addr>::new()
            .table_id(table)
            .build();
        // The kernel filters a dump by table only when asked strictly; filter here as well.
        filter.header.table = 0;
        let routes: Vec<RouteMessage> = self
            .handle()
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("dump routes of table {table}")))?;
        Ok(routes
            .iter()
            .filter(|r| in_table(r, table) && r.header.destination_prefix_length > 0)
            .filter_map(|r| {
                let dst = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                    _ => None,
                })?;
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                });
                Some((
                    Ipv4Network::new(dst, r.header.destination_prefix_length).ok()?,
                    oif,
                ))
            })
            .collect())
    }

    /// Adds (or replaces) `dst dev oif` in `table`.
    pub async fn add_table_route_v4(&self, table: u32, dst: Ipv4Network, oif: u32) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.ip(), dst.prefix())
            .output_interface(oif)
            .table_id(table)
            .build();
        self.handle()
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("add route {dst} dev {oif} table {table}")))
    }

    /// Deletes `dst` from `table`.
    pub async fn del_table_route_v4(&self, table: u32, dst: Ipv4Network) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.ip(), dst.prefix())
            .table_id(table)
            .build();
        self.handle()
            .route()
            .del(msg)
            .execute()
            .await
            .map_err(nl(format!("delete route {dst} table {table}")))
    }
}
