//! `overlayctl probe`: sends a probe from this host (or asks another host to), and watches
//! for probes other hosts send here. The hop analysis is [`crate::pathprobe`]'s.
//!
//! The sending host attaches a probe endpoint (`ovl-probe-<id>`, a real endpoint with an
//! address and a record, so every datapath programs it as it would a container) in a
//! namespace of its own, writes its frames through a TAP standing in for a container's stack,
//! and captures its underlay. The destination's agent, given a watch task through the KV,
//! captures its underlay and the destination's interface and answers what it saw. Endpoint,
//! namespace, TAP and KV keys are removed when the probe ends, whatever happened.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ovl_core::{
    EndpointRecord,
    probe::{PROBE_PREFIX, ProbeAnswer, ProbeId, ProbeTask, SendTask, Sightings, WatchTask},
};
use ovl_model::EndpointStatus;
use tokio::sync::broadcast;

use super::Agent;
use crate::{
    api::types::{AttachRequest, DetachRequest},
    datapath::DroppedFrame,
    error::{AgentError, Result},
    pathprobe::{
        self, BIG, Dest, Facts, Report, Request, SMALL,
        frame::{self, Ends},
        wire::{Port, Seen},
    },
};

/// How long the destination's agent has to arm its watch (it first waits until its datapath
/// has programmed the probe endpoint).
const ARM: Duration = Duration::from_secs(4);
/// How long the probe sends and listens.
const WINDOW: Duration = Duration::from_millis(1500);
/// Spacing of the echoes.
const GAP: Duration = Duration::from_millis(150);
/// How long a probe run elsewhere (`--from`) may take.
const REMOTE_RUN: Duration = Duration::from_secs(20);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn wire_err(e: impl std::fmt::Display) -> AgentError {
    AgentError::Internal(format!("probe: {e}"))
}

impl Agent {
    /// `overlayctl probe`: from this host, or from `req.from` through its agent.
    pub async fn probe(self: &Arc<Self>, req: Request) -> Result<Report> {
        match &req.from {
            Some(h) if *h != self.settings.host_id => self.probe_from(h, &req).await,
            _ => self.probe_here(&req).await,
        }
    }

    fn lease(&self) -> Option<ovl_kv::LeaseId> {
        *self.lease.lock().expect("lease lock")
    }

    /// Asks `host` to run the probe and waits for its report.
    async fn probe_from(&self, host: &str, req: &Request) -> Result<Report> {
        let view = self.view();
        if !view.hosts.contains_key(host) {
            return Err(AgentError::NotFound(format!("host {host} not found")));
        }
        if !view.is_alive(host) {
            return Err(AgentError::Unavailable(format!(
                "the agent of {host} is not running: it cannot send a probe"
            )));
        }
        let id: ProbeId = rand::random::<u16>().max(1);
        let task = ProbeTask::Send(SendTask {
            from: self.settings.host_id.clone(),
            network: req.network.clone(),
            to: req.to.clone(),
        });
        self.store
            .put_probe_task(host, id, &task, self.lease())
            .await?;
        let answer = self
            .await_answer(id, host, REMOTE_RUN, |a| {
                !matches!(a, ProbeAnswer::Watching)
            })
            .await;
        let forgot = self.store.forget_probe(id, host).await;
        let answer = answer?;
        forgot?;
        match answer {
            Some(ProbeAnswer::Report { report }) => serde_json::from_value(report)
                .map_err(|e| AgentError::Internal(format!("the report of {host}: {e}"))),
            Some(ProbeAnswer::Failed { error }) => Err(AgentError::Unavailable(format!(
                "probing from {host}: {error}"
            ))),
            _ => Err(AgentError::Unavailable(format!(
                "{host} sent no report within {} s",
                REMOTE_RUN.as_secs()
            ))),
        }
    }

    /// Waits for `host`'s answer to probe `id` that `done` accepts.
    async fn await_answer(
        &self,
        id: ProbeId,
        host: &str,
        wait: Duration,
        done: impl Fn(&ProbeAnswer) -> bool,
    ) -> Result<Option<ProbeAnswer>> {
        let until = Instant::now() + wait;
        loop {
            if let Some((a, _)) = self.store.probe_answer(id, host).await?
                && done(&a)
            {
                return Ok(Some(a));
            }
            if Instant::now() >= until {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs a probe from this host.
    async fn probe_here(self: &Arc<Self>, req: &Request) -> Result<Report> {
        let view = self.view();
        let net =
            view.networks.get(&req.network).cloned().ok_or_else(|| {
                AgentError::NotFound(format!("network {} not found", req.network))
            })?;
        let dest = find_dest(view.endpoints_on(&net.name), &req.to).ok_or_else(|| {
            AgentError::NotFound(format!("no endpoint {} on network {}", req.to, net.name))
        })?;
        let host = view.hosts.get(&dest.host).cloned().ok_or_else(|| {
            AgentError::NotFound(format!("host {} of {} not found", dest.host, dest.name))
        })?;
        let me = self.host_record();
        let peers = self.peers(Some(&net.name)).await?;
        let lines = peers
            .networks
            .first()
            .map(|n| n.actual.clone())
            .unwrap_or_default();
        let id: ProbeId = rand::random::<u16>().max(1);
        let mut facts = Facts {
            network: net.name.clone(),
            vni: net.vni,
            encrypted: net.encrypted,
            me: me.id.clone(),
            my_vtep: me.vtep,
            my_underlay_mtu: me.underlay_mtu,
            dest: Dest {
                name: dest.display_name().to_string(),
                ip: dest.ip,
                mac: dest.mac,
                host: host.id.clone(),
                vtep: host.vtep,
                underlay_mtu: host.underlay_mtu,
                state: self.host_state(&view, &host.id).to_string(),
            },
            mtu: self.mtu_for(&net),
            entry: pathprobe::entry_for(&lines, dest.mac),
            left: Vec::new(),
            replies: Vec::new(),
            frag_needed: None,
            local_drops: Vec::new(),
            remote: None,
        };

        let ns_file = self.settings.run_dir.join(format!("probe-{id}"));
        let ns = self.wire.make_netns(&ns_file).await.map_err(|e| {
            AgentError::Internal(format!("probe namespace {}: {e}", ns_file.display()))
        })?;
        let name = format!("{PROBE_PREFIX}{id}");
        let attached = self
            .attach(AttachRequest {
                network: net.name.clone(),
                name: name.clone(),
                netns: Some(ns.clone()),
                pid: None,
                aliases: Vec::new(),
                ip: None,
                mac: None,
                publish: Vec::new(),
            })
            .await;
        let run = match attached {
            Ok(a) => {
                self.send_probe(id, &mut facts, &dest, &ns, &a.endpoint, &a.ifname)
                    .await
            }
            Err(e) => Err(e),
        };
        // Whatever happened: nothing of the probe stays.
        let mut cleanup = Vec::new();
        if let Err(e) = self
            .detach(DetachRequest {
                network: net.name.clone(),
                name,
            })
            .await
        {
            cleanup.push(format!("detaching the probe endpoint: {e}"));
        }
        if let Err(e) = self.wire.remove_netns(&ns_file).await {
            cleanup.push(format!("removing {}: {e}", ns_file.display()));
        }
        if dest.host != me.id
            && let Err(e) = self.store.forget_probe(id, &dest.host).await
        {
            cleanup.push(format!("removing the probe's KV keys: {e}"));
        }
        match (run, cleanup.is_empty()) {
            (Ok(()), true) => Ok(pathprobe::analyze(&facts)),
            (Ok(()), false) => Err(AgentError::Internal(format!(
                "probe: cleaning up failed: {}",
                cleanup.join("; ")
            ))),
            (Err(e), true) => Err(e),
            (Err(e), false) => Err(AgentError::Rollback {
                op: "probe".into(),
                error: Box::new(e),
                cleanup,
            }),
        }
    }

    /// Arms the destination's watch, sends the echoes through the TAP and gathers what came
    /// back into `facts`.
    async fn send_probe(
        self: &Arc<Self>,
        id: ProbeId,
        facts: &mut Facts,
        dest: &EndpointRecord,
        ns: &std::path::Path,
        src: &EndpointRecord,
        ifname: &str,
    ) -> Result<()> {
        // A remote watch first waits for its datapath (up to ARM); a local one arms at once.
        let local = dest.host == facts.me;
        let lead = if local { Duration::ZERO } else { ARM };
        let until_ms = now_ms() + (lead + WINDOW + Duration::from_millis(500)).as_millis() as u64;
        let task = WatchTask {
            from: facts.me.clone(),
            from_vtep: facts.my_vtep,
            network: facts.network.clone(),
            vni: facts.vni,
            endpoint: dest.id.clone(),
            src_ip: src.ip,
            src_mac: src.mac,
            icmp_id: id,
            until_ms,
        };
        // The destination's watch: local, or armed through the KV.
        let mut here = None;
        if local {
            let (armed_tx, armed_rx) = tokio::sync::oneshot::channel();
            let agent = self.clone();
            let t = task.clone();
            here = Some(tokio::spawn(async move { agent.watch(&t, armed_tx).await }));
            let _ = tokio::time::timeout(ARM, armed_rx).await;
        } else {
            self.store
                .put_probe_task(&dest.host, id, &ProbeTask::Watch(task), self.lease())
                .await?;
            // Longer than the watch itself waits for its datapath, so a watch armed late
            // (its datapath never programmed the probe) still counts.
            let armed = self
                .await_answer(id, &dest.host, ARM + Duration::from_secs(2), |_| true)
                .await?;
            if armed.is_none() {
                facts.remote = Some(Err(format!(
                    "its watch was not armed within {} s",
                    ARM.as_secs() + 2
                )));
            }
        }

        let port = self.vxlan_port(facts.encrypted);
        let out = self
            .wire
            .capture(
                None,
                Box::new(move |p| {
                    p.outgoing
                        && frame::echo_in_vxlan(p.ip, port, id).is_some_and(|c| c.echo.request)
                }),
            )
            .await
            .map_err(wire_err)?;
        let mut drops = self.rec.datapath().drops();
        let tap = self
            .wire
            .port(ns, ifname, facts.mtu)
            .await
            .map_err(wire_err)?;
        let ends = Ends {
            src_mac: src.mac,
            dst_mac: dest.mac,
            src_ip: src.ip,
            dst_ip: dest.ip,
        };
        let exchanged = exchange(tap.as_ref(), &ends, id, facts.mtu as usize, &mut drops).await;
        drop(tap);
        facts.left = out
            .stop()
            .await
            .map_err(wire_err)?
            .iter()
            .filter_map(|p| {
                let c = frame::echo_in_vxlan(&p.ip, port, id)?;
                Some((c.echo.seq, c.dst, c.vni, p.ifname.clone()))
            })
            .collect();
        let (replies, frag, local_drops) = exchanged.map_err(wire_err)?;
        facts.replies = replies;
        facts.frag_needed = frag;
        facts.local_drops = local_drops;

        if let Some(h) = here {
            facts.remote = Some(h.await.map_err(wire_err)?);
        } else if facts.remote.is_none() {
            let wait = Duration::from_millis(until_ms.saturating_sub(now_ms()) + 3000);
            let seen = self
                .await_answer(id, &dest.host, wait, |a| {
                    !matches!(a, ProbeAnswer::Watching)
                })
                .await?;
            facts.remote = Some(match seen {
                Some(ProbeAnswer::Seen(s)) => Ok(s),
                Some(ProbeAnswer::Failed { error }) => Err(error),
                _ => Err("no answer from its watch".into()),
            });
        }
        Ok(())
    }

    /// Watches for probe `task` arriving here until its end; says when armed.
    pub async fn watch(
        &self,
        task: &WatchTask,
        armed: tokio::sync::oneshot::Sender<()>,
    ) -> std::result::Result<Sightings, String> {
        let Some(att) = self.local.get(&task.network, &task.endpoint) else {
            let _ = armed.send(());
            return Ok(Sightings {
                missing: Some(format!(
                    "{} is not attached on this host (its record says it is)",
                    task.endpoint
                )),
                ..Sightings::default()
            });
        };
        // Armed only once this datapath sends to the probe endpoint: the reply needs it.
        let until = Instant::now() + ARM;
        let mut unprogrammed = task.from != self.settings.host_id;
        while unprogrammed && Instant::now() < until {
            if let Ok(p) = self.peers(Some(&task.network)).await
                && p.networks.first().is_some_and(|n| {
                    n.actual
                        .iter()
                        .any(|l| l.contains(&task.src_mac.to_string()))
                })
            {
                unprogrammed = false;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let id = task.icmp_id;
        let encrypted = self
            .view()
            .networks
            .get(&task.network)
            .is_some_and(|n| n.encrypted);
        let port = self.vxlan_port(encrypted);
        let underlay = self
            .wire
            .capture(
                None,
                Box::new(move |p| {
                    !p.outgoing
                        && frame::echo_in_vxlan(p.ip, port, id).is_some_and(|c| c.echo.request)
                }),
            )
            .await
            .map_err(|e| e.to_string())?;
        let ifname = self.ifname_now(&att);
        let inside = self
            .wire
            .capture(
                Some(att.netns.clone()),
                Box::new(move |p| {
                    ifname.as_ref().is_none_or(|n| p.ifname == *n)
                        && frame::echo_in_ip(p.ip, id).is_some_and(|e| e.request != p.outgoing)
                }),
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut drops = self.rec.datapath().drops();
        let mut counted = crate::monitor::CountedDrops::default();
        counted.poll(&self.counted_drops().await);
        let _ = armed.send(());

        let mut dropped = Vec::new();
        // The asker sends for WINDOW once it sees this watch armed.
        let end = tokio::time::Instant::now()
            + Duration::from_millis(task.until_ms.saturating_sub(now_ms()))
                .min(WINDOW + Duration::from_millis(800));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(end) => break,
                f = next_drop(&mut drops) => match f {
                    Some(f) => if frame::echo_in_frame(&f.head, id).is_some() {
                        dropped.push(f.reason.to_string());
                    },
                    None => drops = None,
                },
            }
        }
        let grew = counted.poll(&self.counted_drops().await);
        let underlay: Vec<(std::net::Ipv4Addr, String)> = underlay
            .stop()
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .filter_map(|p| Some((frame::echo_in_vxlan(&p.ip, port, id)?.src, p.ifname.clone())))
            .collect();
        let inside: Vec<frame::Echo> = inside
            .stop()
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .filter_map(|p: &Seen| frame::echo_in_ip(&p.ip, id))
            .collect();
        let view = self.view();
        dropped.dedup();
        Ok(Sightings {
            underlay,
            admitted: view.hosts.values().any(|h| h.vtep == task.from_vtep),
            delivered: inside.iter().filter(|e| e.request).map(|e| e.seq).collect(),
            answered: inside
                .iter()
                .filter(|e| !e.request)
                .map(|e| e.seq)
                .collect(),
            drops: dropped,
            unprogrammed,
            counted: grew,
            missing: None,
        })
    }

    /// The name a local endpoint's interface has in its container now. dockerd renames a
    /// Docker endpoint's (`ethN`) when it moves it in, and the datapath's last look saw that
    /// name; before that look, `None`: any interface of the namespace (the probe's ICMP id
    /// is its own).
    fn ifname_now(&self, att: &crate::local::Attachment) -> Option<String> {
        let key = (att.endpoint.network.clone(), att.endpoint.id.clone());
        match self.rec.datapath().endpoint_status().remove(&key) {
            Some(EndpointStatus::Ok { ifname }) => Some(ifname),
            // `overlayctl attach` named it; only Docker's endpoints lack the listener.
            _ if att.dns_listener => Some(att.ifname.clone()),
            _ => None,
        }
    }

    /// The UDP port of this host's VXLAN: encrypted networks' runs inside WireGuard on a
    /// port of its own.
    fn vxlan_port(&self, encrypted: bool) -> u16 {
        if encrypted {
            self.settings.encrypted_vxlan_port
        } else {
            self.settings.vxlan_port
        }
    }

    /// The drops only counted here (as `overlayctl monitor` reads them), with the admission
    /// counter read now rather than at the last pass.
    async fn counted_drops(&self) -> std::collections::BTreeMap<String, u64> {
        if let Ok(Some(n)) = self.gw.vxlan_refused().await {
            self.counters
                .vxlan_refused
                .store(n, std::sync::atomic::Ordering::Relaxed);
        }
        self.counted_now(&self.rec.datapath().details().await)
    }

    /// Carries out a probe task the KV gave this host, answering on its lease.
    pub async fn run_probe_task(self: &Arc<Self>, id: ProbeId, task: ProbeTask) {
        let me = self.settings.host_id.clone();
        let answer = match task {
            ProbeTask::Watch(t) => {
                let (armed_tx, armed_rx) = tokio::sync::oneshot::channel();
                let agent = self.clone();
                let store = self.store.clone();
                let lease = self.lease();
                let who = me.clone();
                tokio::spawn(async move {
                    if armed_rx.await.is_ok()
                        && let Err(e) = store
                            .put_probe_answer(id, &who, &ProbeAnswer::Watching, lease)
                            .await
                    {
                        tracing::warn!(probe = id, error = %e, "answering a probe watch");
                    }
                });
                match agent.watch(&t, armed_tx).await {
                    Ok(s) => ProbeAnswer::Seen(s),
                    Err(error) => ProbeAnswer::Failed { error },
                }
            }
            ProbeTask::Send(t) => {
                let req = Request {
                    network: t.network,
                    to: t.to,
                    from: None,
                };
                match self.probe_here(&req).await {
                    Ok(r) => ProbeAnswer::Report {
                        report: serde_json::to_value(&r).expect("reports serialize"),
                    },
                    Err(e) => ProbeAnswer::Failed {
                        error: e.to_string(),
                    },
                }
            }
        };
        if let Err(e) = self
            .store
            .put_probe_answer(id, &me, &answer, self.lease())
            .await
        {
            tracing::warn!(probe = id, error = %e, "answering a probe task");
        }
    }
}

impl Agent {
    /// Removes what an interrupted probe of this host left (the agent stopped while it
    /// ran): its endpoints (`ovl-probe-*` here) and namespaces (`probe-*` in the run dir).
    pub async fn forget_probes(&self) {
        let view = self.view();
        let me = &self.settings.host_id;
        let left: Vec<(String, String)> = view
            .endpoints
            .values()
            .filter(|e| e.host == *me && e.is_probe())
            .map(|e| (e.network.clone(), e.name.clone()))
            .collect();
        for (network, name) in left {
            match self
                .detach(DetachRequest {
                    network: network.clone(),
                    name: name.clone(),
                })
                .await
            {
                Ok(_) => {
                    tracing::info!(%network, endpoint = %name, "removed a probe endpoint an interrupted probe left")
                }
                Err(e) => {
                    tracing::warn!(%network, endpoint = %name, error = %e, "removing a probe endpoint left behind")
                }
            }
        }
        let Ok(dir) = std::fs::read_dir(&self.settings.run_dir) else {
            return;
        };
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with("probe-")
                && let Err(err) = self.wire.remove_netns(&e.path()).await
            {
                tracing::warn!(netns = %e.path().display(), error = %err, "removing a probe namespace left behind");
            }
        }
    }
}

/// The endpoint `to` names: a container name, an alias, an id or an address.
fn find_dest<'a>(
    mut eps: impl Iterator<Item = &'a EndpointRecord>,
    to: &str,
) -> Option<EndpointRecord> {
    eps.find(|e| {
        e.name == to || e.id == to || e.aliases.iter().any(|a| a == to) || e.ip.to_string() == to
    })
    .cloned()
}

/// Sends the echoes (small ones, then full-size ones of `mtu` bytes) through `tap`,
/// answers ARP for the probe, and collects the replies (seq, microseconds after sending), a
/// "fragmentation needed" MTU, and this host's drops of the probe's frames.
async fn exchange(
    tap: &dyn Port,
    ends: &Ends,
    id: ProbeId,
    mtu: usize,
    drops: &mut Option<broadcast::Receiver<DroppedFrame>>,
) -> std::io::Result<(Vec<(u16, u64)>, Option<u32>, Vec<String>)> {
    let mut plan: Vec<(u16, usize)> = Vec::new();
    for s in SMALL {
        plan.push((s, 64));
        plan.push((s + BIG, mtu));
    }
    let start = tokio::time::Instant::now();
    let mut sent_at = std::collections::BTreeMap::new();
    let mut replies = Vec::new();
    let mut frag = None;
    let mut dropped = Vec::new();
    let mut next = 0usize;
    let mut buf = vec![0u8; 65536];
    let mut gap = tokio::time::interval(GAP);
    loop {
        tokio::select! {
            _ = gap.tick(), if next < plan.len() => {
                let (seq, len) = plan[next];
                next += 1;
                sent_at.insert(seq, tokio::time::Instant::now());
                tap.send(&frame::echo_frame(ends, id, seq, len)).await?;
            }
            _ = tokio::time::sleep_until(start + WINDOW) => break,
            n = tap.recv(&mut buf) => {
                let f = &buf[..n?];
                if let Some(r) = frame::arp_reply(f, ends.src_mac, ends.src_ip) {
                    tap.send(&r).await?;
                } else if let Some(e) = frame::echo_in_frame(f, id) {
                    if !e.request && !replies.iter().any(|(s, _)| *s == e.seq) {
                        let us = sent_at.get(&e.seq).map_or(0, |t: &tokio::time::Instant| t.elapsed().as_micros() as u64);
                        replies.push((e.seq, us));
                    }
                } else if let Some(m) = frame::frag_needed(f, id) {
                    frag = Some(m);
                }
            }
            f = next_drop(drops) => match f {
                Some(f) => if frame::echo_in_frame(&f.head, id).is_some() {
                    dropped.push(f.reason.to_string());
                },
                None => *drops = None,
            },
        }
    }
    dropped.dedup();
    Ok((replies, frag, dropped))
}

/// The next dropped frame (`None`: the stream ended); never, without a stream.
async fn next_drop(rx: &mut Option<broadcast::Receiver<DroppedFrame>>) -> Option<DroppedFrame> {
    match rx {
        Some(r) => loop {
            match r.recv().await {
                Ok(f) => return Some(f),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        },
        None => std::future::pending().await,
    }
}
