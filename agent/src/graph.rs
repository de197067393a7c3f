//! `overlayctl graph`: hosts, networks and endpoints as a picture, with the health of each
//! host pair as the asking host sees it. Pure: `overlayctl` fills a [`Topology`] from the
//! control API and renders it as Graphviz DOT ([`dot`]) or as a self-contained SVG laid out
//! here ([`svg`]: one column per host, one band per network), so no Graphviz is needed to
//! look at it.

use std::fmt::Write;

use serde::Serialize;

/// One host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    /// Host id.
    pub id: String,
    /// VTEP address.
    pub vtep: String,
    /// `alive`, `agent down, datapath answering` or `dead`, as the asking host sees it.
    pub state: String,
    /// Datapath mode.
    pub datapath: String,
    /// WireGuard kind, if any.
    pub wireguard: Option<String>,
}

/// One network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Net {
    /// Network name.
    pub name: String,
    /// Its subnet.
    pub subnet: String,
    /// Encrypted (WireGuard).
    pub encrypted: bool,
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Its network.
    pub network: String,
    /// Its host.
    pub host: String,
    /// Container name.
    pub name: String,
    /// Address.
    pub ip: String,
}

/// One cell of the health matrix: probes from `from` to `to` through the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probed {
    /// The probing host.
    pub from: String,
    /// The probed host.
    pub to: String,
    /// Answered.
    pub ok: bool,
}

/// What the picture shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    /// The host asking: without a health matrix, pair health is its view of the others.
    pub from: String,
    /// The health matrix; empty when no host publishes one.
    pub matrix: Vec<Probed>,
    /// Every host.
    pub hosts: Vec<Host>,
    /// Every network.
    pub networks: Vec<Net>,
    /// Every endpoint.
    pub endpoints: Vec<Endpoint>,
}

/// Fill colours of networks, in order (picked to stay apart on screen and in print).
const PALETTE: [&str; 8] = [
    "#cfe3f7", "#fde2c4", "#d7efd2", "#f3d1e6", "#e3dcf5", "#fff3b0", "#d2f0ef", "#eadbcf",
];

fn net_color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Line colour of a host state: green alive, amber agent down (traffic still flows), red else.
fn state_color(state: &str) -> &'static str {
    match state {
        "alive" => "#2e7d32",
        s if s.contains("datapath answering") => "#ef8f00",
        _ => "#c62828",
    }
}

fn host_label(h: &Host) -> String {
    let wg = h
        .wireguard
        .as_deref()
        .map(|w| format!(" + wg {w}"))
        .unwrap_or_default();
    format!("{} ({}{wg})", h.vtep, h.datapath)
}

/// A line between two hosts (indexes into `hosts`): its colour and what it says.
struct Edge {
    a: usize,
    b: usize,
    color: &'static str,
    label: String,
}

/// The host pairs to draw: from the health matrix (every pair; green both ways, amber one
/// way, red neither, grey unmeasured), else from the asking host to each other host,
/// coloured by that host's state.
fn edges(t: &Topology) -> Vec<Edge> {
    let idx = |id: &str| t.hosts.iter().position(|h| h.id == id);
    if t.matrix.is_empty() {
        let Some(me) = idx(&t.from) else {
            return Vec::new();
        };
        return t
            .hosts
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me)
            .map(|(i, h)| Edge {
                a: me,
                b: i,
                color: state_color(&h.state),
                label: h.state.clone(),
            })
            .collect();
    }
    let cell = |a: &str, b: &str| {
        t.matrix
            .iter()
            .find(|p| p.from == a && p.to == b)
            .map(|p| p.ok)
    };
    let mut out = Vec::new();
    for (i, a) in t.hosts.iter().enumerate() {
        for (j, b) in t.hosts.iter().enumerate().skip(i + 1) {
            let (color, label) = match (cell(&a.id, &b.id), cell(&b.id, &a.id)) {
                (Some(true), Some(true)) => ("#2e7d32", "vxlan ok".to_string()),
                (Some(false), Some(false)) => ("#c62828", "vxlan down".to_string()),
                (Some(false), _) => ("#ef8f00", format!("{} -> {} down", a.id, b.id)),
                (_, Some(false)) => ("#ef8f00", format!("{} -> {} down", b.id, a.id)),
                _ => ("#9e9e9e", "not measured".to_string()),
            };
            out.push(Edge {
                a: i,
                b: j,
                color,
                label,
            });
        }
    }
    out
}

/// The picture's title: the counts, and what the lines between hosts mean.
fn title(t: &Topology) -> String {
    let lines = if t.matrix.is_empty() {
        format!("host states as {} sees them", t.from)
    } else {
        "host pairs from the health matrix".to_string()
    };
    format!(
        "{} hosts, {} networks, {} endpoints; {lines}",
        t.hosts.len(),
        t.networks.len(),
        t.endpoints.len()
    )
}

/// A DOT double-quoted string.
fn q(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Graphviz DOT: a cluster per host holding its endpoints, a node per network linked to its
/// endpoints, and an edge from the asking host to each other host coloured by its state.
pub fn dot(t: &Topology) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "graph overlay {{");
    let _ = writeln!(
        o,
        "  graph [label={}, labelloc=t, fontname=\"sans-serif\", compound=true];",
        q(&title(t))
    );
    let _ = writeln!(o, "  node [fontname=\"sans-serif\", fontsize=10];");
    for h in &t.hosts {
        let _ = writeln!(o, "  subgraph {} {{", q(&format!("cluster_host_{}", h.id)));
        let _ = writeln!(
            o,
            "    label={}; color={}; penwidth=2;",
            q(&h.id),
            q(state_color(&h.state))
        );
        let _ = writeln!(
            o,
            "    {} [label={}, shape=box, style=bold, color={}];",
            q(&format!("host:{}", h.id)),
            q(&format!("{}\n{}\n{}", h.id, host_label(h), h.state)),
            q(state_color(&h.state))
        );
        for e in t.endpoints.iter().filter(|e| e.host == h.id) {
            let color = t
                .networks
                .iter()
                .position(|n| n.name == e.network)
                .map(net_color)
                .unwrap_or("#eeeeee");
            let _ = writeln!(
                o,
                "    {} [label={}, shape=box, style=\"rounded,filled\", fillcolor={}];",
                q(&format!("ep:{}/{}", e.network, e.name)),
                q(&format!("{}\n{}", e.name, e.ip)),
                q(color)
            );
        }
        let _ = writeln!(o, "  }}");
    }
    for (i, n) in t.networks.iter().enumerate() {
        let _ = writeln!(
            o,
            "  {} [label={}, shape=ellipse, style=filled, fillcolor={}];",
            q(&format!("net:{}", n.name)),
            q(&format!(
                "{}\n{}{}",
                n.name,
                n.subnet,
                if n.encrypted { "\nencrypted" } else { "" }
            )),
            q(net_color(i))
        );
    }
    for e in &t.endpoints {
        let _ = writeln!(
            o,
            "  {} -- {};",
            q(&format!("ep:{}/{}", e.network, e.name)),
            q(&format!("net:{}", e.network))
        );
    }
    for e in edges(t) {
        let _ = writeln!(
            o,
            "  {} -- {} [color={}, penwidth=2, label={}, fontsize=9];",
            q(&format!("host:{}", t.hosts[e.a].id)),
            q(&format!("host:{}", t.hosts[e.b].id)),
            q(e.color),
            q(&e.label)
        );
    }
    o.push_str("}\n");
    o
}

/// XML text or attribute content.
fn x(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

const COL: u32 = 210;
const LEFT: u32 = 170;
const TOP: u32 = 96;
const HOST_H: u32 = 64;
const EP_H: u32 = 22;

/// A self-contained SVG: the host row on top (border and pair arcs coloured by state), then
/// one band per network with each host's endpoints on it in that host's column.
pub fn svg(t: &Topology) -> String {
    let cols = t.hosts.len().max(1) as u32;
    let width = LEFT + cols * COL + 20;
    let col_x = |i: usize| LEFT + i as u32 * COL;
    let per_cell = |n: &Net, h: &Host| {
        t.endpoints
            .iter()
            .filter(|e| e.network == n.name && e.host == h.id)
            .count() as u32
    };
    let band_h = |n: &Net| {
        let most = t.hosts.iter().map(|h| per_cell(n, h)).max().unwrap_or(0);
        most.max(1) * (EP_H + 4) + 20
    };
    let bands_top = TOP + HOST_H + 24;
    let height = bands_top + t.networks.iter().map(band_h).sum::<u32>() + 20;

    let mut o = String::new();
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(
        o,
        "<title>{}</title>",
        x(&format!(
            "overlay: {} hosts, {} networks, {} endpoints",
            t.hosts.len(),
            t.networks.len(),
            t.endpoints.len()
        ))
    );
    let _ = writeln!(
        o,
        "<rect x=\"0\" y=\"0\" width=\"{width}\" height=\"{height}\" fill=\"#ffffff\"/>"
    );
    let _ = writeln!(
        o,
        "<text x=\"10\" y=\"20\" font-size=\"14\" font-weight=\"bold\">{}</text>",
        x(&title(t))
    );
    // Host pairs as arcs above the host row, wider pairs higher.
    for e in edges(t) {
        let (a, b) = (col_x(e.a) + COL / 2 - 10, col_x(e.b) + COL / 2 - 10);
        let mid = (a + b) / 2;
        let lift = 14 + (a.abs_diff(b) / COL) * 10;
        let _ = writeln!(
            o,
            "<path d=\"M {a} {TOP} Q {mid} {} {b} {TOP}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"><title>{}</title></path>",
            TOP.saturating_sub(2 * lift),
            e.color,
            x(&format!(
                "{} - {}: {}",
                t.hosts[e.a].id, t.hosts[e.b].id, e.label
            ))
        );
    }
    for (i, h) in t.hosts.iter().enumerate() {
        let hx = col_x(i);
        let c = state_color(&h.state);
        let _ = writeln!(
            o,
            "<g class=\"host\"><rect x=\"{hx}\" y=\"{TOP}\" width=\"{}\" height=\"{HOST_H}\" rx=\"6\" fill=\"#fafafa\" stroke=\"{c}\" stroke-width=\"3\"/>",
            COL - 20
        );
        let _ = writeln!(
            o,
            "<text x=\"{}\" y=\"{}\" font-weight=\"bold\">{}</text>",
            hx + 10,
            TOP + 18,
            x(&h.id)
        );
        let _ = writeln!(
            o,
            "<text x=\"{}\" y=\"{}\" font-size=\"10\">{}</text>",
            hx + 10,
            TOP + 34,
            x(&host_label(h))
        );
        let _ = writeln!(
            o,
            "<text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"{c}\">{}</text></g>",
            hx + 10,
            TOP + 50,
            x(&h.state)
        );
    }
    let mut y = bands_top;
    for (j, n) in t.networks.iter().enumerate() {
        let h = band_h(n);
        let _ = writeln!(
            o,
            "<g class=\"network\"><rect x=\"4\" y=\"{y}\" width=\"{}\" height=\"{}\" rx=\"4\" fill=\"{}\" fill-opacity=\"0.45\"/>",
            width - 8,
            h - 6,
            net_color(j)
        );
        let _ = writeln!(
            o,
            "<text x=\"12\" y=\"{}\" font-weight=\"bold\">{}</text>",
            y + 18,
            x(&n.name)
        );
        let _ = writeln!(
            o,
            "<text x=\"12\" y=\"{}\" font-size=\"10\">{}{}</text></g>",
            y + 32,
            x(&n.subnet),
            if n.encrypted { " (encrypted)" } else { "" }
        );
        for (i, host) in t.hosts.iter().enumerate() {
            let eps = t
                .endpoints
                .iter()
                .filter(|e| e.network == n.name && e.host == host.id);
            for (k, e) in eps.enumerate() {
                let ey = y + 8 + k as u32 * (EP_H + 4);
                let _ = writeln!(
                    o,
                    "<g class=\"endpoint\"><rect x=\"{}\" y=\"{ey}\" width=\"{}\" height=\"{EP_H}\" rx=\"4\" fill=\"{}\" stroke=\"#555555\"/><text x=\"{}\" y=\"{}\" font-size=\"11\">{}</text></g>",
                    col_x(i),
                    COL - 20,
                    net_color(j),
                    col_x(i) + 6,
                    ey + 15,
                    x(&format!("{} {}", e.name, e.ip))
                );
            }
        }
        y += h;
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> Topology {
        let host = |id: &str, state: &str| Host {
            id: id.into(),
            vtep: format!("198.18.0.{}", id[1..].parse::<u8>().unwrap() + 10),
            state: state.into(),
            datapath: "kernel".into(),
            wireguard: None,
        };
        let ep = |net: &str, host: &str, name: &str, ip: &str| Endpoint {
            network: net.into(),
            host: host.into(),
            name: name.into(),
            ip: ip.into(),
        };
        Topology {
            from: "h1".into(),
            matrix: vec![],
            hosts: vec![
                host("h1", "alive"),
                host("h2", "agent down, datapath answering"),
                host("h3", "dead"),
            ],
            networks: vec![
                Net {
                    name: "net1".into(),
                    subnet: "10.10.0.0/24".into(),
                    encrypted: false,
                },
                Net {
                    name: "sec".into(),
                    subnet: "10.10.1.0/24".into(),
                    encrypted: true,
                },
            ],
            endpoints: vec![
                ep("net1", "h1", "web", "10.10.0.2"),
                ep("net1", "h1", "db", "10.10.0.3"),
                ep("net1", "h2", "api", "10.10.0.4"),
                ep("sec", "h3", "vault", "10.10.1.2"),
            ],
        }
    }

    #[test]
    fn dot_has_a_cluster_per_host_and_pair_edges_coloured_by_state() {
        let d = dot(&lab());
        assert!(d.starts_with("graph overlay {"), "{d}");
        assert!(d.trim_end().ends_with('}'), "{d}");
        for h in ["h1", "h2", "h3"] {
            assert!(d.contains(&format!("subgraph \"cluster_host_{h}\"")), "{d}");
        }
        assert!(d.contains("\"ep:net1/web\" -- \"net:net1\";"), "{d}");
        assert!(d.contains("\"ep:sec/vault\" -- \"net:sec\";"), "{d}");
        assert!(d.contains("10.10.1.0/24\\nencrypted") || d.contains("10.10.1.0/24\nencrypted"));
        let pair = |to: &str| {
            d.lines()
                .find(|l| l.contains(&format!("\"host:h1\" -- \"host:{to}\"")))
                .unwrap_or_else(|| panic!("edge h1 -- {to}: {d}"))
                .to_string()
        };
        assert!(pair("h2").contains("#ef8f00"), "amber: agent down");
        assert!(pair("h3").contains("#c62828"), "red: dead");
        assert!(!d.contains("\"host:h1\" -- \"host:h1\""));
        // Braces and quotes balance.
        assert_eq!(d.matches('{').count(), d.matches('}').count());
        assert_eq!(d.matches('"').count() % 2, 0);
    }

    #[test]
    fn with_a_health_matrix_every_pair_is_drawn_by_what_its_probes_found() {
        let mut t = lab();
        let cell = |from: &str, to: &str, ok: bool| Probed {
            from: from.into(),
            to: to.into(),
            ok,
        };
        // h1-h2 fine both ways, h3 answers h1 but h1 does not answer h3, h2-h3 unmeasured.
        t.matrix = vec![
            cell("h1", "h2", true),
            cell("h2", "h1", true),
            cell("h1", "h3", true),
            cell("h3", "h1", false),
        ];
        let d = dot(&t);
        let pair = |a: &str, b: &str| {
            d.lines()
                .find(|l| l.contains(&format!("\"host:{a}\" -- \"host:{b}\"")))
                .unwrap_or_else(|| panic!("{a} -- {b}: {d}"))
                .to_string()
        };
        assert!(pair("h1", "h2").contains("vxlan ok") && pair("h1", "h2").contains("#2e7d32"));
        assert!(pair("h1", "h3").contains("h3 -> h1 down") && pair("h1", "h3").contains("#ef8f00"));
        assert!(pair("h2", "h3").contains("not measured"));
        assert!(d.contains("host pairs from the health matrix"));
        let s = svg(&t);
        assert_eq!(s.matches("<path ").count(), 3, "every pair of three hosts");
        assert!(s.contains("h1 - h3: h3 -&gt; h1 down"), "{s}");
        t.matrix.push(cell("h1", "h3", false));
        t.matrix
            .retain(|p| !(p.from == "h1" && p.to == "h3" && p.ok));
        assert!(dot(&t).contains("vxlan down"));
    }

    #[test]
    fn dot_strings_are_escaped() {
        assert_eq!(q(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn svg_names_every_host_network_and_endpoint_in_its_place() {
        let s = svg(&lab());
        assert!(
            s.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
            "{s}"
        );
        assert!(s.trim_end().ends_with("</svg>"));
        for name in [
            "h1",
            "h2",
            "h3",
            "net1",
            "sec",
            "web 10.10.0.2",
            "vault 10.10.1.2",
        ] {
            assert!(s.contains(&format!(">{name}<")), "{name}: {s}");
        }
        assert_eq!(s.matches("class=\"host\"").count(), 3);
        assert_eq!(s.matches("class=\"network\"").count(), 2);
        assert_eq!(s.matches("class=\"endpoint\"").count(), 4);
        // Two arcs: h1 to h2 and h1 to h3, in their states' colours.
        assert_eq!(s.matches("<path ").count(), 2);
        assert!(s.contains("h1 - h3: dead"), "{s}");
        // vault (h3, third column) sits in the third column.
        let vault = s.lines().find(|l| l.contains("vault 10.10.1.2")).unwrap();
        assert!(
            vault.contains(&format!("<rect x=\"{}\"", LEFT + 2 * COL)),
            "{vault}"
        );
        // Every element opened is closed.
        for tag in ["g", "text", "title", "path"] {
            let open =
                s.matches(&format!("<{tag}>")).count() + s.matches(&format!("<{tag} ")).count();
            assert_eq!(open, s.matches(&format!("</{tag}>")).count(), "<{tag}>");
        }
    }

    #[test]
    fn svg_text_is_escaped_and_an_empty_cluster_still_renders() {
        let mut t = lab();
        t.endpoints[0].name = "a<b>&\"c\"".into();
        let s = svg(&t);
        assert!(s.contains("a&lt;b&gt;&amp;&quot;c&quot; 10.10.0.2"), "{s}");
        let empty = Topology {
            from: "h1".into(),
            matrix: vec![],
            hosts: vec![],
            networks: vec![],
            endpoints: vec![],
        };
        let s = svg(&empty);
        assert!(s.contains("0 hosts, 0 networks, 0 endpoints"), "{s}");
        assert!(s.trim_end().ends_with("</svg>"));
        assert!(dot(&empty).contains("0 hosts"));
    }
}
