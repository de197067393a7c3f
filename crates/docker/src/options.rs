//! Helpers that turn libnetwork's loosely typed option maps into typed values.
//!
//! libnetwork passes options as Go `map[string]interface{}` values, JSON-encoded. The well-known
//! keys (libnetwork `netlabel/labels.go`) are constants here. Every helper is strict about the
//! type of a key that is present (a clear [`OptionError`]) and lenient about keys that are absent.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;

use crate::wire::{OptionMap, PortBindingWire, TransportPortWire};

/// `-o k=v` driver options, nested under this key.
pub const GENERIC: &str = "com.docker.network.generic";
/// `--ipv6`.
pub const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
/// `--internal` (a top-level boolean in `CreateNetwork` options).
pub const INTERNAL: &str = "com.docker.network.internal";
/// MTU, given as `-o com.docker.network.driver.mtu=N`.
pub const MTU: &str = "com.docker.network.driver.mtu";
/// `-o encrypted`: WireGuard between hosts (Docker's own overlay spells it the same way).
pub const ENCRYPTED: &str = "encrypted";
/// Published ports (`-p`).
pub const PORT_MAP: &str = "com.docker.network.portmap";
/// Exposed ports (`EXPOSE`, `--expose`).
pub const EXPOSED_PORTS: &str = "com.docker.network.endpoint.exposedports";
/// DNS servers of the endpoint (`--dns` or the daemon's).
pub const DNS_SERVERS: &str = "com.docker.network.endpoint.dnsservers";
/// `RequestAddress` option naming what the address is for.
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
/// Value of [`REQUEST_ADDRESS_TYPE`] for the network gateway, and the `RequestPool` data key that
/// carries a gateway chosen by the IPAM driver.
pub const GATEWAY_LABEL: &str = "com.docker.network.gateway";
/// MAC address option of `RequestAddress` when `RequiresMACAddress` is set.
pub const MAC_ADDRESS: &str = "com.docker.network.endpoint.macaddress";

/// A malformed option value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("option {key}: {reason}")]
pub struct OptionError {
    /// The option key.
    pub key: String,
    /// What is wrong with its value.
    pub reason: String,
}

impl OptionError {
    fn new(key: &str, reason: impl Into<String>) -> Self {
        Self {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// Transport protocol of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
}

impl Protocol {
    /// Maps Go's `types.Protocol` numbers.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            132 => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }
}

/// A published port (`-p [HOSTIP:]HOSTPORT[-END]:PORT[/proto]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortBinding {
    /// Protocol.
    pub proto: Protocol,
    /// Container port.
    pub port: u16,
    /// Host address to bind; `None` means every address.
    pub host_ip: Option<IpAddr>,
    /// First host port; 0 lets the driver choose.
    pub host_port: u16,
    /// Last host port (equal to `host_port` for a single port).
    pub host_port_end: u16,
}

/// An exposed (not published) port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExposedPort {
    /// Protocol.
    pub proto: Protocol,
    /// Port.
    pub port: u16,
}

/// The `-o k=v` map. Non-string scalars (seen when options come from the API as JSON numbers or
/// booleans) are turned into their JSON text; nested values are an error.
pub fn generic_options(options: &OptionMap) -> Result<BTreeMap<String, String>, OptionError> {
    let mut out = BTreeMap::new();
    let generic = match options.get(GENERIC) {
        None | Some(Value::Null) => return Ok(out),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(OptionError::new(
                GENERIC,
                format!("expected an object, got {}", type_name(other)),
            ));
        }
    };
    for (k, v) in generic {
        let s = match v {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::Null => String::new(),
            other => {
                return Err(OptionError::new(
                    &format!("{GENERIC}.{k}"),
                    format!("expected a scalar, got {}", type_name(other)),
                ));
            }
        };
        out.insert(k.clone(), s);
    }
    Ok(out)
}

/// A boolean option at the top level or in the generic map (`"true"`, `"1"`...).
pub fn bool_option(options: &OptionMap, key: &str) -> Result<bool, OptionError> {
    if let Some(v) = options.get(key) {
        return parse_bool(key, v);
    }
    if let Some(Value::Object(g)) = options.get(GENERIC)
        && let Some(v) = g.get(key)
    {
        return parse_bool(key, v);
    }
    Ok(false)
}

fn parse_bool(key: &str, v: &Value) -> Result<bool, OptionError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Null => Ok(false),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" | "" => Ok(false),
            _ => Err(OptionError::new(key, format!("not a boolean: {s:?}"))),
        },
        other => Err(OptionError::new(
            key,
            format!("expected a boolean, got {}", type_name(other)),
        )),
    }
}

/// `-o encrypted` among the driver options: present (empty, as Docker passes `-o encrypted`,
/// or `true`/`1`/`yes`/`on`) asks for it; `false`/`0`/`no`/`off` or absent does not.
pub fn encrypted(generic: &BTreeMap<String, String>) -> Result<bool, OptionError> {
    match generic
        .get(ENCRYPTED)
        .map(|v| v.trim().to_ascii_lowercase())
    {
        None => Ok(false),
        Some(v) if matches!(v.as_str(), "" | "true" | "1" | "yes" | "on") => Ok(true),
        Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => Ok(false),
        Some(v) => Err(OptionError::new(
            ENCRYPTED,
            format!("expected nothing (-o encrypted) or true/false, got {v:?}"),
        )),
    }
}

/// `--internal`.
pub fn internal(options: &OptionMap) -> Result<bool, OptionError> {
    bool_option(options, INTERNAL)
}

/// `--ipv6`.
pub fn enable_ipv6(options: &OptionMap) -> Result<bool, OptionError> {
    bool_option(options, ENABLE_IPV6)
}

/// The MTU from `-o com.docker.network.driver.mtu=N` (or a top-level key). Values outside
/// 68..=65535 are refused.
pub fn mtu(options: &OptionMap) -> Result<Option<u32>, OptionError> {
    let raw = options
        .get(MTU)
        .cloned()
        .or_else(|| match options.get(GENERIC) {
            Some(Value::Object(g)) => g.get(MTU).cloned(),
            _ => None,
        });
    let n = match raw {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| OptionError::new(MTU, format!("not a positive integer: {n}")))?,
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| OptionError::new(MTU, format!("not a positive integer: {s:?}")))?,
        Some(other) => {
            return Err(OptionError::new(
                MTU,
                format!("expected an integer, got {}", type_name(&other)),
            ));
        }
    };
    if !(68..=65535).contains(&n) {
        return Err(OptionError::new(MTU, format!("{n} is outside 68..=65535")));
    }
    Ok(Some(n as u32))
}

/// Published ports (`com.docker.network.portmap`).
pub fn port_map(options: &OptionMap) -> Result<Vec<PortBinding>, OptionError> {
    let wire: Vec<PortBindingWire> = array_option(options, PORT_MAP)?;
    wire.into_iter()
        .map(|w| {
            let proto = Protocol::from_number(w.proto).ok_or_else(|| {
                OptionError::new(PORT_MAP, format!("unknown protocol {}", w.proto))
            })?;
            let host_ip = if w.host_ip.is_empty() {
                None
            } else {
                Some(w.host_ip.parse().map_err(|_| {
                    OptionError::new(PORT_MAP, format!("bad HostIP {:?}", w.host_ip))
                })?)
            };
            let host_port_end = if w.host_port_end == 0 {
                w.host_port
            } else {
                w.host_port_end
            };
            if host_port_end < w.host_port {
                return Err(OptionError::new(
                    PORT_MAP,
                    format!("HostPortEnd {} < HostPort {}", host_port_end, w.host_port),
                ));
            }
            Ok(PortBinding {
                proto,
                port: w.port,
                host_ip,
                host_port: w.host_port,
                host_port_end,
            })
        })
        .collect()
}

/// Exposed ports (`com.docker.network.endpoint.exposedports`).
pub fn exposed_ports(options: &OptionMap) -> Result<Vec<ExposedPort>, OptionError> {
    let wire: Vec<TransportPortWire> = array_option(options, EXPOSED_PORTS)?;
    wire.into_iter()
        .map(|w| {
            let proto = Protocol::from_number(w.proto).ok_or_else(|| {
                OptionError::new(EXPOSED_PORTS, format!("unknown protocol {}", w.proto))
            })?;
            Ok(ExposedPort {
                proto,
                port: w.port,
            })
        })
        .collect()
}

/// DNS servers given to the endpoint (`com.docker.network.endpoint.dnsservers`), unparsed.
pub fn dns_servers(options: &OptionMap) -> Result<Vec<String>, OptionError> {
    array_option(options, DNS_SERVERS)
}

fn array_option<T: serde::de::DeserializeOwned>(
    options: &OptionMap,
    key: &str,
) -> Result<Vec<T>, OptionError> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v @ Value::Array(_)) => {
            serde_json::from_value(v.clone()).map_err(|e| OptionError::new(key, e.to_string()))
        }
        Some(other) => Err(OptionError::new(
            key,
            format!("expected an array, got {}", type_name(other)),
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> OptionMap {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn generic_unwraps_strings_and_scalars() {
        let o = map(json!({GENERIC: {"a": "1", "b": true, "c": 7}, ENABLE_IPV6: false}));
        let g = generic_options(&o).unwrap();
        assert_eq!(g.get("a").unwrap(), "1");
        assert_eq!(g.get("b").unwrap(), "true");
        assert_eq!(g.get("c").unwrap(), "7");
        assert!(generic_options(&map(json!({}))).unwrap().is_empty());
        assert!(
            generic_options(&map(json!({GENERIC: null})))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn generic_rejects_bad_shapes() {
        let e = generic_options(&map(json!({GENERIC: "x"}))).unwrap_err();
        assert_eq!(e.key, GENERIC);
        let e = generic_options(&map(json!({GENERIC: {"a": [1]}}))).unwrap_err();
        assert!(e.to_string().contains("expected a scalar"), "{e}");
    }

    #[test]
    fn mtu_from_generic_or_top_level() {
        assert_eq!(
            mtu(&map(json!({GENERIC: {MTU: "1400"}}))).unwrap(),
            Some(1400)
        );
        assert_eq!(mtu(&map(json!({MTU: 9000}))).unwrap(), Some(9000));
        assert_eq!(mtu(&map(json!({GENERIC: {}}))).unwrap(), None);
        assert!(mtu(&map(json!({GENERIC: {MTU: "big"}}))).is_err());
        assert!(mtu(&map(json!({GENERIC: {MTU: "10"}}))).is_err());
        assert!(mtu(&map(json!({MTU: -1}))).is_err());
    }

    #[test]
    fn encrypted_as_docker_spells_it() {
        let g = |v: Option<&str>| {
            v.map(|v| BTreeMap::from([(ENCRYPTED.to_string(), v.to_string())]))
                .unwrap_or_default()
        };
        assert!(encrypted(&g(Some(""))).unwrap(), "-o encrypted");
        assert!(encrypted(&g(Some("true"))).unwrap());
        assert!(!encrypted(&g(Some("false"))).unwrap());
        assert!(!encrypted(&g(None)).unwrap());
        let e = encrypted(&g(Some("maybe"))).unwrap_err();
        assert!(e.to_string().contains("encrypted"), "{e}");
    }

    #[test]
    fn internal_and_ipv6_flags() {
        assert!(internal(&map(json!({INTERNAL: true}))).unwrap());
        assert!(internal(&map(json!({GENERIC: {INTERNAL: "true"}}))).unwrap());
        assert!(!internal(&map(json!({}))).unwrap());
        assert!(internal(&map(json!({INTERNAL: "maybe"}))).is_err());
        assert!(!enable_ipv6(&map(json!({ENABLE_IPV6: false}))).unwrap());
    }

    #[test]
    fn ports_from_transcript() {
        // Options of CreateEndpoint for `docker run -p 18080:80` (transcript call 10).
        let o = map(json!({
            DNS_SERVERS: ["198.18.0.1"],
            EXPOSED_PORTS: [{"Proto": 6, "Port": 80}],
            PORT_MAP: [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 18080, "HostPortEnd": 18080}]
        }));
        assert_eq!(
            port_map(&o).unwrap(),
            vec![PortBinding {
                proto: Protocol::Tcp,
                port: 80,
                host_ip: None,
                host_port: 18080,
                host_port_end: 18080
            }]
        );
        assert_eq!(
            exposed_ports(&o).unwrap(),
            vec![ExposedPort {
                proto: Protocol::Tcp,
                port: 80
            }]
        );
        assert_eq!(dns_servers(&o).unwrap(), vec!["198.18.0.1".to_string()]);
        let empty = map(json!({EXPOSED_PORTS: [], PORT_MAP: null}));
        assert!(port_map(&empty).unwrap().is_empty());
        assert!(exposed_ports(&empty).unwrap().is_empty());
    }

    #[test]
    fn ports_reject_garbage() {
        assert!(port_map(&map(json!({PORT_MAP: {"Proto": 6}}))).is_err());
        assert!(port_map(&map(json!({PORT_MAP: [{"Proto": 99, "Port": 1}]}))).is_err());
        assert!(port_map(&map(json!({PORT_MAP: [{"Proto": 6, "Port": 70000}]}))).is_err());
        assert!(
            port_map(&map(
                json!({PORT_MAP: [{"Proto": 17, "Port": 53, "HostIP": "nope"}]})
            ))
            .is_err()
        );
        assert!(
            port_map(&map(
                json!({PORT_MAP: [{"Proto": 6, "Port": 1, "HostPort": 10, "HostPortEnd": 5}]})
            ))
            .is_err()
        );
        let udp = port_map(&map(
            json!({PORT_MAP: [{"Proto": 17, "Port": 53, "HostIP": "198.18.0.11", "HostPort": 5353}]}),
        ))
        .unwrap();
        assert_eq!(udp[0].proto, Protocol::Udp);
        assert_eq!(udp[0].host_port_end, 5353);
        assert_eq!(udp[0].host_ip, Some("198.18.0.11".parse().unwrap()));
    }
}
