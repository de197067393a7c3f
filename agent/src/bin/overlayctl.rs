//! `overlayctl`: talks to one agent over its control socket. Every command takes `--json`.

use std::process::ExitCode;

use clap::Parser;
use overlay_agent::{
    api::{
        client::{Client, ClientError},
        types::*,
    },
    ctl::{Cli, Cmd, DnsCmd, GraphFormat, HostsCmd, KeysCmd, NetCmd},
    doctor::{self, Report},
    graph,
};
use ovl_core::{EndpointRecord, store::NetworkRequest};
use serde::Serialize;

fn print<T: Serialize>(json: bool, v: &T, human: impl FnOnce(&T)) {
    if json {
        println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
    } else {
        human(v);
    }
}

/// Prints rows as left-aligned columns.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:w$}", c, w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn network_rows(nets: &[NetworkInfo]) -> Vec<Vec<String>> {
    nets.iter()
        .map(|n| {
            vec![
                n.record.name.clone(),
                n.record.vni.to_string(),
                n.record.subnet.to_string(),
                n.record.gateway.to_string(),
                n.mtu_here.to_string(),
                if n.record.internal {
                    "yes".into()
                } else {
                    "no".into()
                },
                n.endpoints.to_string(),
            ]
        })
        .collect()
}

const NET_HEADER: &[&str] = &[
    "NAME",
    "VNI",
    "SUBNET",
    "GATEWAY",
    "MTU",
    "INTERNAL",
    "ENDPOINTS",
];

fn endpoint_rows(eps: &[EndpointRecord]) -> Vec<Vec<String>> {
    eps.iter()
        .map(|e| {
            vec![
                e.network.clone(),
                e.display_name().to_string(),
                e.host.clone(),
                e.ip.to_string(),
                e.mac.to_string(),
                e.aliases.join(","),
                e.publish
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect()
}

async fn run(cli: Cli) -> Result<ExitCode, ClientError> {
    let c = Client::new(&cli.socket);
    let json = cli.json;
    match cli.cmd {
        Cmd::Status => {
            let s: Status = c.get("/v1/status").await?;
            print(json, &s, |s| {
                println!("host:        {}", s.host_id);
                println!("version:     {}", s.version);
                println!(
                    "vtep:        {} (underlay MTU {})",
                    s.advertise_addr, s.underlay_mtu
                );
                println!("datapath:    {}", s.datapath);
                let kv = if s.kv.reachable {
                    "reachable".to_string()
                } else {
                    format!(
                        "UNREACHABLE ({})",
                        s.kv.error.as_deref().unwrap_or("never reached")
                    )
                };
                println!("kv:          {} {}", s.kv.backend, kv);
                let age = s.kv.view_age_ms.map_or("never confirmed".into(), |ms| {
                    format!("confirmed {:.1}s ago", ms as f64 / 1000.0)
                });
                let behind = match (s.kv.head_revision, s.kv.view_behind) {
                    (Some(h), Some(b)) => format!(", store at {h}, {b} behind"),
                    _ => String::new(),
                };
                let list = s.kv.last_list_ms.map_or(String::new(), |ms| {
                    format!(", last full listing {ms:.0} ms")
                });
                println!(
                    "view:        revision {}{behind}, {age}{list}",
                    s.view_revision
                );
                if let Some(e) = &s.kv.sync_error {
                    println!(
                        "sync:        FAILING for {}s: {e}",
                        s.kv.sync_failing_secs.unwrap_or(0)
                    );
                }
                println!("registered:  {}", if s.registered { "yes" } else { "no" });
                let n = &s.counts;
                println!("hosts:       {} ({} alive)", n.hosts, n.hosts_alive);
                println!("networks:    {}", n.networks);
                println!(
                    "endpoints:   {} ({} on this host)",
                    n.endpoints, n.local_endpoints
                );
                for (k, v) in &s.details {
                    println!("{:<12} {}", format!("{k}:"), v);
                }
                let w = &s.wireguard;
                let state = if w.revoked {
                    "key REVOKED (removed from the KV; `overlayctl keys rotate` makes a new one)"
                        .to_string()
                } else if w.up {
                    let shaken = w
                        .peers
                        .iter()
                        .filter(|p| p.handshake_secs_ago.is_some())
                        .count();
                    let offload = w
                        .offload
                        .as_deref()
                        .map(|o| format!(", offload {o}"))
                        .unwrap_or_default();
                    format!(
                        "up, {} peer(s), {shaken} with a handshake{offload}",
                        w.peers.len()
                    )
                } else {
                    "down (no encrypted network here)".into()
                };
                println!(
                    "wireguard:   {} udp {}, key {}, {state}",
                    w.kind, w.port, w.public_key
                );
                if let Some(e) = &w.last_error {
                    println!("wireguard:   FAILING: {e}");
                }
            });
        }
        Cmd::Keys(KeysCmd::Rotate) => {
            let k: KeyInfo = c.post("/v1/keys/rotate", &serde_json::json!({})).await?;
            print(json, &k, |k| {
                println!(
                    "host {}: new WireGuard public key {} ({}, udp {})",
                    k.host, k.public_key, k.kind, k.port
                )
            });
        }
        Cmd::Hosts {
            cmd: Some(HostsCmd::Rm { id }),
        } => {
            let f: ForgottenHost = c.delete(&format!("/v1/hosts/{id}")).await?;
            print(json, &f, |f| {
                println!(
                    "forgot host {} and its {} endpoint(s){}",
                    f.id,
                    f.endpoints.len(),
                    if f.endpoints.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", f.endpoints.join(", "))
                    }
                )
            });
        }
        Cmd::Hosts { cmd: None } => {
            let hosts: Vec<HostInfo> = c.get("/v1/hosts").await?;
            print(json, &hosts, |hs| {
                let rows = hs
                    .iter()
                    .map(|h| {
                        vec![
                            h.id.clone(),
                            h.vtep.to_string(),
                            if h.alive {
                                "alive".into()
                            } else {
                                "dead".into()
                            },
                            h.datapath.clone(),
                            h.wireguard.clone().unwrap_or_else(|| "-".into()),
                            h.underlay_mtu.to_string(),
                            h.version.clone(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "HOST",
                        "VTEP",
                        "STATE",
                        "DATAPATH",
                        "WIREGUARD",
                        "MTU",
                        "VERSION",
                    ],
                    rows,
                );
            });
        }
        Cmd::Network(NetCmd::Create {
            name,
            subnet,
            gateway,
            vni,
            internal,
            encrypted,
            mtu,
            labels,
        }) => {
            let req = NetworkRequest {
                name,
                subnet,
                gateway,
                vni,
                internal,
                encrypted,
                mtu,
                labels: labels.into_iter().collect(),
                ..Default::default()
            };
            let n: NetworkInfo = c.post("/v1/networks", &req).await?;
            print(json, &n, |n| {
                table(NET_HEADER, network_rows(std::slice::from_ref(n)))
            });
        }
        Cmd::Network(NetCmd::Ls) => {
            let nets: Vec<NetworkInfo> = c.get("/v1/networks").await?;
            print(json, &nets, |n| table(NET_HEADER, network_rows(n)));
        }
        Cmd::Network(NetCmd::Inspect { name }) => {
            let n: NetworkInfo = c.get(&format!("/v1/networks/{name}")).await?;
            print(json, &n, |n| {
                println!("name:       {}", n.record.name);
                println!("vni:        {}", n.record.vni);
                println!("subnet:     {}", n.record.subnet);
                println!("gateway:    {}", n.record.gateway);
                println!("internal:   {}", n.record.internal);
                println!("encrypted:  {}", n.record.encrypted);
                println!("mtu:        {}", n.mtu_here);
                println!("endpoints:  {}", n.endpoints);
                for (k, v) in &n.details {
                    println!("{:<11} {}", format!("{k}:"), v);
                }
            });
        }
        Cmd::Network(NetCmd::Rm { name }) => {
            let n: NetworkInfo = c.delete(&format!("/v1/networks/{name}")).await?;
            print(json, &n, |n| println!("removed network {}", n.record.name));
        }
        Cmd::Attach(a) => {
            let req = AttachRequest {
                network: a.network,
                name: a.name,
                netns: a.netns,
                pid: a.pid,
                aliases: a.aliases,
                ip: a.ip,
                mac: a.mac,
                publish: a.publish,
            };
            let r: AttachReply = c.post("/v1/attach", &req).await?;
            print(json, &r, |r| {
                let e = &r.endpoint;
                println!(
                    "attached {} to {}: {} {}/{} mac {} mtu {}{}",
                    e.display_name(),
                    e.network,
                    r.ifname,
                    e.ip,
                    r.prefix_len,
                    e.mac,
                    r.mtu,
                    r.gateway_ifname
                        .as_ref()
                        .map(|g| format!(", gateway via {g}"))
                        .unwrap_or_default()
                );
            });
        }
        Cmd::Detach { network, name } => {
            let r: DetachReply = c
                .post(
                    "/v1/detach",
                    &DetachRequest {
                        network: network.clone(),
                        name: name.clone(),
                    },
                )
                .await?;
            print(json, &r, |r| {
                if r.deferred {
                    println!(
                        "detached {name} from {network} on this host; the KV did not answer, so its record is removed when it does"
                    );
                } else if r.removed {
                    println!("detached {name} from {network}");
                } else {
                    println!("{name} was not attached to {network}");
                }
            });
        }
        Cmd::Endpoints { network } => {
            let path = match &network {
                Some(n) => format!("/v1/endpoints?network={n}"),
                None => "/v1/endpoints".into(),
            };
            let eps: Vec<EndpointView> = c.get(&path).await?;
            print(json, &eps, |e| {
                let records: Vec<EndpointRecord> = e.iter().map(|v| v.record.clone()).collect();
                let rows = endpoint_rows(&records)
                    .into_iter()
                    .zip(e)
                    .map(|(mut row, v)| {
                        row.push(v.status.as_ref().map_or(String::new(), |s| s.describe()));
                        row
                    })
                    .collect();
                table(
                    &[
                        "NETWORK", "NAME", "HOST", "IP", "MAC", "ALIASES", "PUBLISH", "STATE",
                    ],
                    rows,
                )
            });
        }
        Cmd::Peers { network } => {
            let path = match &network {
                Some(n) => format!("/v1/peers?network={n}"),
                None => "/v1/peers".into(),
            };
            let p: Peers = c.get(&path).await?;
            print(json, &p, |p| {
                for n in &p.networks {
                    println!(
                        "network {}: {}",
                        n.network,
                        if n.diff.is_empty() {
                            "converged"
                        } else {
                            "DIFFERS"
                        }
                    );
                    println!("  desired:");
                    n.desired.iter().for_each(|l| println!("    {l}"));
                    println!("  programmed:");
                    n.actual.iter().for_each(|l| println!("    {l}"));
                    if !n.diff.is_empty() {
                        println!("  to do:");
                        n.diff.iter().for_each(|l| println!("    {l}"));
                    }
                }
            });
        }
        Cmd::Dns(DnsCmd::Lookup { name, from }) => {
            let r: DnsLookup = c
                .get(&format!("/v1/dns/lookup?name={name}&from={from}"))
                .await?;
            print(json, &r, |r| {
                println!("{} from {}: {} ({})", r.name, r.from, r.rcode, r.source);
                r.answers.iter().for_each(|a| println!("  {a}"));
            });
        }
        Cmd::Datapath => {
            let d: serde_json::Value = c.get("/v1/datapath").await?;
            print(json, &d, |d| {
                println!("{}", serde_json::to_string_pretty(d).expect("json"))
            });
        }
        Cmd::Doctor => {
            let r: Report = c.get("/v1/doctor").await?;
            print(json, &r, |r| print!("{}", doctor::render(r)));
            if r.problems() > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Monitor {
            drops,
            network,
            endpoint,
        } => {
            let mut q = vec![format!("drops={drops}")];
            q.extend(network.map(|n| format!("network={n}")));
            q.extend(endpoint.map(|e| format!("endpoint={e}")));
            c.get_lines(&format!("/v1/monitor?{}", q.join("&")), |l| {
                if json {
                    println!("{l}");
                } else {
                    match serde_json::from_str::<overlay_agent::monitor::Event>(l) {
                        Ok(e) => println!("{}", e.line()),
                        Err(_) => println!("{l}"),
                    }
                }
                true
            })
            .await?;
        }
        Cmd::Probe { network, to, from } => {
            let req = overlay_agent::pathprobe::Request { network, to, from };
            let r: overlay_agent::pathprobe::Report = c.post("/v1/probe", &req).await?;
            print(json, &r, |r| print!("{}", r.render()));
            if r.failed.is_some() {
                return Ok(ExitCode::from(1));
            }
        }
        Cmd::Graph { format } => {
            let s: Status = c.get("/v1/status").await?;
            let hosts: Vec<HostInfo> = c.get("/v1/hosts").await?;
            let nets: Vec<NetworkInfo> = c.get("/v1/networks").await?;
            let eps: Vec<EndpointView> = c.get("/v1/endpoints").await?;
            let rows: Vec<ovl_core::HealthRow> = c.get("/v1/health").await?;
            let t = graph::Topology {
                from: s.host_id,
                matrix: rows
                    .into_iter()
                    .flat_map(|r| {
                        r.peers.into_iter().map(move |(to, c)| graph::Probed {
                            from: r.host.clone(),
                            to,
                            ok: c.ok,
                        })
                    })
                    .collect(),
                hosts: hosts
                    .into_iter()
                    .map(|h| graph::Host {
                        id: h.id,
                        vtep: h.vtep.to_string(),
                        state: h.state,
                        datapath: h.datapath,
                        wireguard: h.wireguard,
                    })
                    .collect(),
                networks: nets
                    .into_iter()
                    .map(|n| graph::Net {
                        name: n.record.name,
                        subnet: n.record.subnet.to_string(),
                        encrypted: n.record.encrypted,
                    })
                    .collect(),
                endpoints: eps
                    .into_iter()
                    .map(|e| graph::Endpoint {
                        network: e.record.network,
                        host: e.record.host,
                        name: e.record.name,
                        ip: e.record.ip.to_string(),
                    })
                    .collect(),
            };
            print(json, &t, |t| match format {
                GraphFormat::Dot => print!("{}", graph::dot(t)),
                GraphFormat::Svg => print!("{}", graph::svg(t)),
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // `overlayctl status | head` must end quietly when the reader goes, as other CLI tools
    // do, not panic in println!: the default action of SIGPIPE ends the process.
    // SAFETY: no other thread exists yet, and SIG_DFL installs no handler of ours.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("overlayctl: {e}");
            ExitCode::FAILURE
        }
    }
}
