//! A standalone embedded DNS server with a synthetic zone, for benchmarks (dnsperf) and manual
//! poking. Runs until killed.
//!
//! ```text
//! dns_bench_server [--listen ADDR] [--netns PATH] [--records N] [--client IP] [--upstream IP:PORT]...
//! ```
//!
//! * `--listen ADDR` (default `127.0.0.1:5353`): a shared listener in the current namespace.
//! * `--netns PATH`: also serve `127.0.0.11:53` inside that namespace (as for a container),
//!   scoped to network `bench`.
//! * `--records N` (default 1000): endpoints `bench0` ... on network `bench` (10.64.0.0/16),
//!   plus the alias `pool` on the first 8 of them.
//! * `--client IP` (default `127.0.0.1`): a container on `bench` for the shared listener (any
//!   other source is a stranger and gets no answer).
//! * `--upstream IP:PORT`: forward non-cluster names there (default: no upstream, SERVFAIL).
//!
//! Queries worth sending: `benchN.bench A`, `pool A`, `x.bench A` (NXDOMAIN),
//! `N.0.64.10.in-addr.arpa PTR`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use ovl_names::ArcSwap;
use ovl_names::dns::{Client, ClientMap, DnsConfig, DnsServer, ForwardConfig, Upstreams};
use ovl_names::records::{NameRecord, Zone};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen: SocketAddr = "127.0.0.1:5353".parse()?;
    let mut netns: Option<PathBuf> = None;
    let mut records = 1000usize;
    let mut client: Ipv4Addr = Ipv4Addr::LOCALHOST;
    let mut upstreams: Vec<SocketAddr> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value()?.parse()?,
            "--netns" => netns = Some(value()?.into()),
            "--records" => records = value()?.parse()?,
            "--client" => client = value()?.parse()?,
            "--upstream" => upstreams.push(value()?.parse()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let list: Vec<NameRecord> = (0..records)
        .map(|i| NameRecord {
            network: "bench".into(),
            endpoint_id: format!("e{i}"),
            name: format!("bench{i}"),
            aliases: if i < 8 { vec!["pool".into()] } else { vec![] },
            ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 1)) + i as u32),
        })
        .collect();
    let zone = Arc::new(ArcSwap::from_pointee(Zone::try_build(list)?));
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let server = DnsServer::new(
            zone,
            DnsConfig {
                forward: ForwardConfig {
                    upstreams: Upstreams::Servers(upstreams),
                    ..ForwardConfig::default()
                },
                ..DnsConfig::default()
            },
        )?;
        let clients = ClientMap::new(
            [(client.into(), Client::container(["bench"]))].into(),
            Client::Stranger,
        );
        let bound = server
            .add_shared_listener(listen, Arc::new(clients))
            .await?;
        println!("listening on {bound} (udp+tcp)");
        if let Some(path) = netns {
            let addr = server
                .add_listener("bench", &path, vec!["bench".into()])
                .await?;
            println!("listening on {addr} in {}", path.display());
        }
        println!("ready");
        std::future::pending::<()>().await;
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
