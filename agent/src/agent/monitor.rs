//! `overlayctl monitor`: feeds the records of [`crate::monitor`] from the datapath's drop
//! stream (eBPF), the drops only counted (admission, the kernel path's anti-spoofing), and
//! the host states, into one stream per subscriber.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::{broadcast, mpsc};

use super::Agent;
use crate::{
    counters::Counters,
    datapath::{Details, DroppedFrame},
    health,
    monitor::{CountedDrops, Event, Filter, Frame, HostWatch, reason_text},
};

/// How often counted drops and host states are looked at.
const POLL: Duration = Duration::from_secs(1);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Which local endpoint a host end is, by its ifindex (eBPF maps): network VNI and address.
type Ports = BTreeMap<u32, (u32, Ipv4Addr)>;

impl Agent {
    /// The events `filter` lets through from now on, until the receiver is dropped.
    pub fn monitor(self: &Arc<Self>, filter: Filter) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(1024);
        let agent = self.clone();
        tokio::spawn(async move { agent.monitor_loop(filter, tx).await });
        rx
    }

    async fn monitor_loop(&self, filter: Filter, tx: mpsc::Sender<Event>) {
        let mut frames = self.rec.datapath().drops();
        let mut counted = CountedDrops::default();
        let mut hosts = HostWatch::default();
        let mut ports = ports_of(&self.rec.datapath().details().await);
        let mut tick = tokio::time::interval(POLL);
        loop {
            let events: Vec<Event> = tokio::select! {
                _ = tx.closed() => return,
                r = next_frame(&mut frames) => match r {
                    Ok(f) => {
                        // A host end attached since the last look.
                        if f.vni == 0 && !ports.contains_key(&f.ifindex) {
                            ports = ports_of(&self.rec.datapath().details().await);
                        }
                        vec![self.frame_event(&f, &ports)]
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => vec![Event {
                        at_ms: now_ms(),
                        host: self.settings.host_id.clone(),
                        kind: "drop".into(),
                        code: "monitor_lagged".into(),
                        reason: format!("{n} drop records skipped: this monitor read too slowly"),
                        network: None,
                        endpoint: None,
                        count: n,
                        frame: None,
                    }],
                    Err(broadcast::error::RecvError::Closed) => {
                        frames = None;
                        Vec::new()
                    }
                },
                _ = tick.tick() => {
                    let details = self.rec.datapath().details().await;
                    ports = ports_of(&details);
                    let mut out = self.counted_events(&details, &mut counted);
                    out.extend(self.host_events(&mut hosts).await);
                    out
                }
            };
            for e in events.into_iter().filter(|e| filter.matches(e)) {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
        }
    }

    /// A frame the datapath dropped, with its network and endpoint where they are known:
    /// the sender's for frames from a container, the addressee's for frames from the
    /// overlay.
    fn frame_event(&self, f: &DroppedFrame, ports: &Ports) -> Event {
        let frame = Frame::decode(&f.head);
        let view = self.view();
        let (vni, ip) = match ports.get(&f.ifindex) {
            Some((vni, ip)) => (*vni, Some(*ip)),
            None => (f.vni, frame.as_ref().and_then(|fr| fr.dst_ip)),
        };
        let network = if vni == health::VNI {
            Some(health::NETWORK.to_string())
        } else {
            view.networks
                .values()
                .find(|n| n.vni == vni && vni != 0)
                .map(|n| n.name.clone())
        };
        let endpoint = network.as_ref().and_then(|n| {
            let ip = ip?;
            view.endpoints_on(n)
                .find(|e| e.ip == ip)
                .map(|e| e.name.clone())
        });
        Event {
            at_ms: now_ms(),
            host: self.settings.host_id.clone(),
            kind: "drop".into(),
            code: f.reason.to_string(),
            reason: reason_text(f.reason).to_string(),
            network,
            endpoint,
            count: 1,
            frame,
        }
    }

    /// Drops that are only counted: VXLAN refused by admission (both datapaths) and the
    /// kernel datapath's anti-spoofing rules.
    fn counted_events(&self, details: &Details, counted: &mut CountedDrops) -> Vec<Event> {
        counted
            .poll(&self.counted_now(details))
            .into_iter()
            .map(|(code, n)| Event {
                at_ms: now_ms(),
                host: self.settings.host_id.clone(),
                kind: "drop".into(),
                reason: reason_text(&code).to_string(),
                code,
                network: None,
                endpoint: None,
                count: n,
                frame: None,
            })
            .collect()
    }

    /// The counters of drops that are only counted, by reason code, as last read.
    pub(super) fn counted_now(&self, details: &Details) -> BTreeMap<String, u64> {
        let mut now = BTreeMap::new();
        now.insert(
            "vxlan_not_admitted".to_string(),
            Counters::get(&self.counters.vxlan_refused),
        );
        if let Details::Kernel(k) = details {
            now.insert("kernel_spoofed".to_string(), k.spoofed_dropped);
        }
        now
    }

    /// Hosts whose state changed, as this host sees them.
    async fn host_events(&self, hosts: &mut HostWatch) -> Vec<Event> {
        let states = self
            .hosts()
            .await
            .into_iter()
            .map(|h| (h.id, h.state))
            .collect();
        hosts
            .poll(states)
            .into_iter()
            .map(|(h, state)| Event {
                at_ms: now_ms(),
                host: self.settings.host_id.clone(),
                kind: "host".into(),
                reason: format!("{h} is now {state}"),
                code: state,
                network: None,
                endpoint: None,
                count: 1,
                frame: None,
            })
            .collect()
    }
}

/// The eBPF datapath's host ends by ifindex, from its details; empty on the kernel path.
fn ports_of(details: &Details) -> Ports {
    let Details::Ebpf { details, .. } = details else {
        return Ports::new();
    };
    let ovl_dp_ebpf::backend::OrError::Ok(maps) = &details.maps else {
        return Ports::new();
    };
    maps.local_endpoints
        .iter()
        .filter_map(|e| Some((e.ifindex, (e.vni, e.ip.parse().ok()?))))
        .collect()
}

/// The next dropped frame; never, without a drop stream.
async fn next_frame(
    rx: &mut Option<broadcast::Receiver<DroppedFrame>>,
) -> Result<DroppedFrame, broadcast::error::RecvError> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
