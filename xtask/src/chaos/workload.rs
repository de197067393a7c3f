//! The workload: on every host a user who attaches, detaches and pings throughout (and on
//! the first host one who creates and removes scratch networks), seeded; and the checker
//! that holds the KV to the invariants while it runs.

use std::{process::Command, sync::atomic::Ordering, time::Duration};

use anyhow::{Result, bail};
use rand::{Rng, SeedableRng, seq::IndexedRandom};
use rand_chacha::ChaCha8Rng;

use super::{
    CHECK_EVERY, World,
    check::LeakTracker,
    ledger::{EpState, NetState},
    ops::Outcome,
};

/// The networks endpoints are attached to: `n1` with the gateway bridge, `n2` internal.
pub const NETWORKS: [&str; 2] = ["n1", "n2"];
/// Endpoints each host's user keeps between.
const MIN_EPS: usize = 2;
const MAX_EPS: usize = 6;
/// How long a user keeps asking to settle an operation with no clear answer at the end.
const SETTLE: Duration = Duration::from_secs(120);

/// The networks and two endpoints per host, before any fault.
pub fn baseline(w: &World) -> Result<()> {
    for net in NETWORKS {
        match w.create(0, net, true, net == "n2") {
            Outcome::Done(_) => {}
            o => bail!("creating {net}: {o:?}"),
        }
    }
    for h in 0..w.hosts() {
        for k in 0..MIN_EPS {
            let net = NETWORKS[k % NETWORKS.len()];
            let name = format!("w{}-{}", h + 1, w.next());
            match w.attach(h, net, &name, &format!("workload h{}", h + 1)) {
                Outcome::Done(_) => {}
                o => bail!("attaching {name} on h{}: {o:?}", h + 1),
            }
        }
    }
    Ok(())
}

/// One host's user, until [`World::stop`]; then it settles what it left open.
pub fn worker(w: &World, host: usize, seed: u64) {
    let me = format!("workload h{}", host + 1);
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (host as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    while !w.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(rng.random_range(200..800)));
        // First what is open: a user who got no answer asks again.
        for (net, name) in open_of(w, &me) {
            let prefer_attach = rng.random_bool(0.5);
            w.resolve_ep(&net, &name, prefer_attach, w.now());
        }
        let mine = live_of(w, &me);
        let roll: f64 = rng.random_range(0.0..1.0);
        if mine.len() < MIN_EPS || (mine.len() < MAX_EPS && roll < 0.35) {
            let nets = w.ledger.lock().expect("ledger").attachable();
            let Some(net) = nets.choose(&mut rng).cloned() else {
                continue;
            };
            let name = format!("w{}-{}", host + 1, w.next());
            w.attach(host, &net, &name, &me);
        } else if mine.len() > MAX_EPS || roll < 0.6 {
            if let Some((net, name)) = mine.choose(&mut rng) {
                w.detach(host, net, name);
            }
        } else if roll < 0.95 || host != 0 {
            ping_someone(w, &mine, &mut rng);
        } else {
            scratch(w, host);
        }
    }
    let deadline = w.now() + SETTLE;
    for (net, name) in open_of(w, &me) {
        if !w.resolve_ep(&net, &name, false, deadline) {
            w.harness_error(
                None,
                format!("{me} could not settle {net}/{name} within {SETTLE:?}"),
            );
        }
    }
    if host == 0 {
        let open: Vec<String> = w
            .ledger
            .lock()
            .expect("ledger")
            .nets
            .values()
            .filter(|n| n.state.open() && n.name.starts_with('s'))
            .map(|n| n.name.clone())
            .collect();
        for n in open {
            if !w.resolve_net(0, &n, deadline) {
                w.harness_error(None, format!("{me} could not settle network {n}"));
            }
        }
    }
}

fn open_of(w: &World, me: &str) -> Vec<(String, String)> {
    w.ledger
        .lock()
        .expect("ledger")
        .eps
        .values()
        .filter(|e| e.by == me && e.state.open())
        .map(|e| (e.net.clone(), e.name.clone()))
        .collect()
}

fn live_of(w: &World, me: &str) -> Vec<(String, String)> {
    w.ledger
        .lock()
        .expect("ledger")
        .eps
        .values()
        .filter(|e| e.by == me && e.state == EpState::Live)
        .map(|e| (e.net.clone(), e.name.clone()))
        .collect()
}

/// One ping from one of `mine` to another live endpoint of its network.
fn ping_someone(w: &World, mine: &[(String, String)], rng: &mut ChaCha8Rng) {
    let Some((net, name)) = mine.choose(rng) else {
        return;
    };
    let (from, to) = {
        let l = w.ledger.lock().expect("ledger");
        let Some(from) = l.eps.get(&(net.clone(), name.clone())).cloned() else {
            return;
        };
        let peers: Vec<_> = l
            .eps
            .values()
            .filter(|e| e.net == *net && e.name != *name && e.state == EpState::Live)
            .cloned()
            .collect();
        let Some(to) = peers.choose(rng).cloned() else {
            return;
        };
        (from, to)
    };
    let Some(ip) = to.ip else { return };
    let during = w.active.load(Ordering::SeqCst) > 0;
    let ok = ping(&from.ns, &ip.to_string(), 1);
    let mut p = w.pings.lock().expect("pings");
    let slot = if during {
        &mut p.during_faults
    } else {
        &mut p.quiet
    };
    slot.0 += 1;
    if ok {
        slot.1 += 1;
    }
}

/// Creates a scratch network, or removes the one there is.
fn scratch(w: &World, host: usize) {
    let live: Option<String> = w
        .ledger
        .lock()
        .expect("ledger")
        .nets
        .values()
        .find(|n| n.state == NetState::Live && n.name.starts_with('s'))
        .map(|n| n.name.clone());
    match live {
        Some(n) => {
            w.remove_net(host, &n);
        }
        None => {
            let name = format!("s{}", w.next());
            w.create(host, &name, false, false);
        }
    }
    // A create or removal without a clear answer is asked again now.
    let open: Vec<String> = w
        .ledger
        .lock()
        .expect("ledger")
        .nets
        .values()
        .filter(|n| n.state.open() && n.name.starts_with('s'))
        .map(|n| n.name.clone())
        .collect();
    for n in open {
        w.resolve_net(host, &n, w.now());
    }
}

/// One ping from namespace `ns` (`-W wait` seconds).
pub fn ping(ns: &str, ip: &str, wait: u32) -> bool {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["ping", "-c1", "-q", "-W", &wait.to_string(), ip])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Checks the invariants every [`CHECK_EVERY`] until the workload stops.
pub fn checker(w: &World) {
    let mut leaks = LeakTracker::default();
    let (mut ok, mut down) = (0usize, 0usize);
    while !w.stop.load(Ordering::SeqCst) {
        if w.check_now(&mut leaks) {
            ok += 1;
        } else {
            down += 1;
        }
        std::thread::sleep(CHECK_EVERY);
    }
    w.event(
        None,
        format!("continuous checks: {ok} KV snapshots checked, {down} while the KV did not answer"),
    );
}
