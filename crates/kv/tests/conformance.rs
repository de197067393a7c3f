//! Conformance suite: the same checks run against the embedded store (a temp SQLite file)
//! and a real etcd (`/usr/bin/etcd` started on loopback with free ports and a temp data dir).
//!
//! Multi-process checks re-execute this test binary in worker mode (`kvt_worker`, selected
//! by the `KVT_WORKER` environment variable).

mod support;

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use ovl_kv::{Compare, Kv, KvError, TxnOp, WatchEvent, WatchStream};
use support::{EtcdCluster, Fixture, Workers};

/// Generous bound for anything that should happen "soon" (no timing assertions).
const WAIT: Duration = Duration::from_secs(30);

async fn next_event(w: &mut WatchStream) -> Result<WatchEvent> {
    match tokio::time::timeout(WAIT, w.next()).await {
        Err(_) => bail!("no watch event within {WAIT:?}"),
        Ok(None) => bail!("watch stream ended"),
        Ok(Some(r)) => Ok(r?),
    }
}

async fn next_events(w: &mut WatchStream, n: usize) -> Result<Vec<WatchEvent>> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        v.push(
            next_event(w)
                .await
                .with_context(|| format!("event {i} of {n}"))?,
        );
    }
    Ok(v)
}

fn ensure_increasing(events: &[WatchEvent]) -> Result<()> {
    for pair in events.windows(2) {
        ensure!(
            pair[0].revision() < pair[1].revision(),
            "revisions not increasing: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Checks, each run against both backends.

async fn basics(f: &Fixture) -> Result<()> {
    let kv = &f.kv;
    kv.health().await?;
    ensure!(!kv.describe().is_empty());
    ensure!(kv.get("/b/missing").await?.is_none());

    let r1 = kv.put("/b/k1", b"v1", None).await?;
    let e = kv.get("/b/k1").await?.context("k1 after put")?;
    ensure!(e.value == b"v1" && e.create_revision == r1 && e.mod_revision == r1);
    ensure!(e.lease.is_none());

    let r2 = kv.put("/b/k1", b"v2", None).await?;
    ensure!(r2 > r1, "revision must grow: {r1} then {r2}");
    let e = kv.get("/b/k1").await?.context("k1 after update")?;
    ensure!(e.value == b"v2" && e.create_revision == r1 && e.mod_revision == r2);

    kv.put("/b/k3", b"", None).await?;
    kv.put("/b/k2", b"two", None).await?;
    let l = kv.list("/b/").await?;
    let keys: Vec<&str> = l.entries.iter().map(|e| e.key.as_str()).collect();
    ensure!(
        keys == ["/b/k1", "/b/k2", "/b/k3"],
        "sorted listing: {keys:?}"
    );
    ensure!(l.entries[2].value.is_empty(), "empty value kept");
    ensure!(l.revision >= l.entries.iter().map(|e| e.mod_revision).max().unwrap());

    ensure!(kv.delete("/b/k1").await?, "delete of a present key");
    ensure!(!kv.delete("/b/k1").await?, "delete of an absent key");
    ensure!(kv.get("/b/k1").await?.is_none());

    // Re-creating a deleted key starts a new life.
    let r3 = kv.put("/b/k1", b"again", None).await?;
    let e = kv.get("/b/k1").await?.unwrap();
    ensure!(e.create_revision == r3);

    // Unicode keys and binary values survive.
    let bin: Vec<u8> = (0..=255u8).collect();
    kv.put("/b/ключ/✓", &bin, None).await?;
    ensure!(kv.get("/b/ключ/✓").await?.unwrap().value == bin);
    Ok(())
}

async fn prefix_isolation(f: &Fixture) -> Result<()> {
    let kv = &f.kv;
    let mut w = kv.watch("/a/", 0).await?;
    for k in ["/a", "/ab", "/ab/x", "/a/x", "/a/y", "/a0", "/b"] {
        kv.put(k, k.as_bytes(), None).await?;
    }
    let l = kv.list("/a/").await?;
    let keys: Vec<&str> = l.entries.iter().map(|e| e.key.as_str()).collect();
    ensure!(keys == ["/a/x", "/a/y"], "listing /a/: {keys:?}");
    let l = kv.list("/a").await?;
    ensure!(l.entries.len() == 6, "listing /a: {:?}", l.entries);
    kv.put("/a/z", b"z", None).await?;
    let ev = next_events(&mut w, 3).await?;
    let keys: Vec<&str> = ev.iter().map(|e| e.key()).collect();
    ensure!(keys == ["/a/x", "/a/y", "/a/z"], "watch /a/ saw {keys:?}");
    Ok(())
}

async fn create_and_cas(f: &Fixture) -> Result<()> {
    let kv = &f.kv;
    let r = kv.create("/c/k", b"first", None).await?.context("create")?;
    ensure!(kv.create("/c/k", b"second", None).await?.is_none());
    ensure!(kv.get("/c/k").await?.unwrap().value == b"first");

    ensure!(
        kv.cas("/c/k", b"x", r + 1000, None).await?.is_none(),
        "stale cas"
    );
    ensure!(
        kv.cas("/c/k", b"x", 0, None).await?.is_none(),
        "cas-absent on present"
    );
    let r2 = kv.cas("/c/k", b"x", r, None).await?.context("cas")?;
    ensure!(r2 > r);
    ensure!(
        kv.cas("/c/k", b"y", r, None).await?.is_none(),
        "second cas on old rev"
    );
    ensure!(kv.get("/c/k").await?.unwrap().value == b"x");

    ensure!(
        !kv.delete_cas("/c/k", r).await?,
        "delete_cas with stale rev"
    );
    ensure!(!kv.delete_cas("/c/k", 0).await?, "delete_cas with 0");
    ensure!(kv.delete_cas("/c/k", r2).await?, "delete_cas");
    ensure!(kv.get("/c/k").await?.is_none());
    ensure!(
        kv.cas("/c/k", b"new", 0, None).await?.is_some(),
        "cas 0 on absent"
    );
    Ok(())
}

async fn txn_all_or_nothing(f: &Fixture) -> Result<()> {
    let kv = &f.kv;
    let ra = kv.put("/t/a", b"a", None).await?;
    kv.put("/t/gone", b"g", None).await?;

    // A failing compare changes nothing.
    let r = kv
        .txn(
            vec![
                Compare::ModRevision("/t/a".into(), ra),
                Compare::ModRevision("/t/b".into(), 5),
            ],
            vec![
                TxnOp::Put {
                    key: "/t/a".into(),
                    value: b"a2".to_vec(),
                    lease: None,
                },
                TxnOp::Delete {
                    key: "/t/gone".into(),
                },
            ],
        )
        .await?;
    ensure!(r.is_none(), "txn with a failing compare applied");
    ensure!(kv.get("/t/a").await?.unwrap().value == b"a");
    ensure!(kv.get("/t/gone").await?.is_some());

    // Holding compares apply every op at one revision.
    let r = kv
        .txn(
            vec![
                Compare::ModRevision("/t/a".into(), ra),
                Compare::ModRevision("/t/b".into(), 0),
            ],
            vec![
                TxnOp::Put {
                    key: "/t/a".into(),
                    value: b"a2".to_vec(),
                    lease: None,
                },
                TxnOp::Put {
                    key: "/t/b".into(),
                    value: b"b".to_vec(),
                    lease: None,
                },
                TxnOp::Delete {
                    key: "/t/gone".into(),
                },
            ],
        )
        .await?
        .context("txn with holding compares")?;
    let a = kv.get("/t/a").await?.unwrap();
    let b = kv.get("/t/b").await?.unwrap();
    ensure!(a.value == b"a2" && b.value == b"b");
    ensure!(
        a.mod_revision == r && b.mod_revision == r,
        "one revision per txn"
    );
    ensure!(kv.get("/t/gone").await?.is_none());

    // An op that fails (unknown lease) rolls back the whole txn.
    let before = kv.list("/t/").await?;
    let err = kv
        .txn(
            vec![],
            vec![
                TxnOp::Delete { key: "/t/a".into() },
                TxnOp::Put {
                    key: "/t/c".into(),
                    value: b"c".to_vec(),
                    lease: Some(0x7eadbeef),
                },
            ],
        )
        .await;
    ensure!(
        matches!(err, Err(KvError::LeaseNotFound(_))),
        "txn with an unknown lease: {err:?}"
    );
    let after = kv.list("/t/").await?;
    ensure!(
        before.entries == after.entries,
        "failed txn changed something"
    );
    Ok(())
}

async fn watch_ordering(f: &Fixture) -> Result<()> {
    let kv = &f.kv;
    let start = kv.list("/w/").await?.revision;
    let mut live = kv.watch("/w/", 0).await?;
    let mut expected = Vec::new();
    for i in 0..150 {
        let key = format!("/w/k{}", i % 17);
        if i % 5 == 4 {
            if kv.delete(&key).await? {
                expected.push((key, true));
            }
        } else {
            let r = kv.put(&key, format!("{i}").as_bytes(), None).await?;
            expected.push((key.clone(), false));
            let _ = r;
        }
        // Unrelated writes in between must not show up.
        kv.put("/other", b"x", None).await?;
    }
    let check = |events: &[WatchEvent]| -> Result<()> {
        ensure_increasing(events)?;
        for (ev, (key, del)) in events.iter().zip(&expected) {
            ensure!(ev.key() == key, "expected {key}, got {ev:?}");
            ensure!(
                matches!(ev, WatchEvent::Delete { .. }) == *del,
                "kind of {ev:?}"
            );
        }
        Ok(())
    };
    let got = next_events(&mut live, expected.len()).await?;
    check(&got).context("live watch")?;

    // A watch from an older revision replays the same history, then continues live.
    let mut old = kv.watch("/w/", start + 1).await?;
    let replay = next_events(&mut old, expected.len()).await?;
    ensure!(replay == got, "replay differs from live events");
    let r = kv.put("/w/after", b"1", None).await?;
    let ev = next_event(&mut old).await?;
    ensure!(
        ev.key() == "/w/after" && ev.revision() == r,
        "live after replay: {ev:?}"
    );
    let ev = next_event(&mut live).await?;
    ensure!(ev.key() == "/w/after" && ev.revision() == r);

    // A watch from the middle starts exactly there.
    let mid = got[40].revision();
    let mut from_mid = kv.watch("/w/", mid).await?;
    let ev = next_event(&mut from_mid).await?;
    ensure!(ev == got[40], "watch from {mid} began with {ev:?}");
    Ok(())
}

async fn lease_expiry(f: &Fixture) -> Result<()> {
    let kv = &f.kv;
    let lease = kv.grant_lease(Duration::from_secs(2)).await?;
    let mut w = kv.watch("/l/", 0).await?;
    kv.put("/l/a", b"a", Some(lease)).await?;
    kv.put("/l/b", b"b", Some(lease)).await?;
    kv.put("/l/keep", b"k", None).await?;
    let e = kv.get("/l/a").await?.unwrap();
    ensure!(e.lease == Some(lease), "lease recorded: {e:?}");
    let ev = next_events(&mut w, 3).await?;
    ensure!(ev.iter().all(|e| matches!(e, WatchEvent::Put(_))));
    // Expiry shows up as delete events for both keys (bounded wait).
    let mut deleted: Vec<String> = next_events(&mut w, 2)
        .await?
        .into_iter()
        .map(|e| match e {
            WatchEvent::Delete { key, .. } => Ok(key),
            other => bail!("expected delete, got {other:?}"),
        })
        .collect::<Result<_>>()?;
    deleted.sort();
    ensure!(deleted == ["/l/a", "/l/b"], "{deleted:?}");
    ensure!(kv.get("/l/a").await?.is_none() && kv.get("/l/b").await?.is_none());
    ensure!(kv.get("/l/keep").await?.is_some(), "key without lease kept");

    // The lease is gone for every lease operation.
    let r = kv.keep_alive(lease).await;
    ensure!(
        matches!(r, Err(KvError::LeaseNotFound(_))),
        "keep_alive: {r:?}"
    );
    let r = kv.put("/l/c", b"c", Some(lease)).await;
    ensure!(matches!(r, Err(KvError::LeaseNotFound(_))), "put: {r:?}");
    let r = kv.create("/l/c", b"c", Some(lease)).await;
    ensure!(matches!(r, Err(KvError::LeaseNotFound(_))), "create: {r:?}");
    let r = kv.revoke(lease).await;
    ensure!(matches!(r, Err(KvError::LeaseNotFound(_))), "revoke: {r:?}");
    ensure!(kv.get("/l/c").await?.is_none());
    Ok(())
}

async fn lease_keep_alive(f: &Fixture) -> Result<()> {
    let kv = &f.kv;
    let lease = kv.grant_lease(Duration::from_secs(2)).await?;
    kv.put("/ka/k", b"k", Some(lease)).await?;
    // Renew for well over two TTLs.
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < until {
        kv.keep_alive(lease).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ensure!(kv.get("/ka/k").await?.is_some(), "kept-alive key vanished");

    // Revoke deletes at once.
    let mut w = kv.watch("/ka/", 0).await?;
    kv.revoke(lease).await?;
    let ev = next_event(&mut w).await?;
    ensure!(
        matches!(&ev, WatchEvent::Delete { key, .. } if key == "/ka/k"),
        "{ev:?}"
    );
    ensure!(kv.get("/ka/k").await?.is_none());
    let r = kv.keep_alive(lease).await;
    ensure!(matches!(r, Err(KvError::LeaseNotFound(_))), "{r:?}");
    Ok(())
}

/// `lease_ttl` reads a lease's time to live without renewing it: it runs down, a renewal
/// restores it, and a revoked or unknown lease has none.
async fn lease_ttl(f: &Fixture) -> Result<()> {
    let kv = &f.kv;
    let lease = kv.grant_lease(Duration::from_secs(6)).await?;
    let t = kv.lease_ttl(lease).await?.context("a fresh lease")?;
    // etcd may raise a TTL to its minimum; 6 s is above it.
    ensure!(t.granted == Duration::from_secs(6), "{t:?}");
    ensure!(
        t.remaining <= t.granted && t.remaining >= Duration::from_secs(4),
        "{t:?}"
    );
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let t = kv.lease_ttl(lease).await?.context("still held")?;
    ensure!(
        t.remaining <= Duration::from_secs(4),
        "not renewed by reading: {t:?}"
    );
    kv.keep_alive(lease).await?;
    let t = kv.lease_ttl(lease).await?.context("renewed")?;
    ensure!(t.remaining >= Duration::from_secs(5), "renewed: {t:?}");
    kv.revoke(lease).await?;
    ensure!(kv.lease_ttl(lease).await?.is_none(), "revoked lease");
    ensure!(kv.lease_ttl(0x7e57).await?.is_none(), "unknown lease");
    Ok(())
}

async fn large_values(f: &Fixture) -> Result<()> {
    let kv = &f.kv;
    let big: Vec<u8> = (0..1024 * 1024).map(|i: u32| (i * 7 % 251) as u8).collect();
    let mut w = kv.watch("/big/", 0).await?;
    kv.put("/big/one", &big, None).await?;
    ensure!(kv.get("/big/one").await?.unwrap().value == big);
    match next_event(&mut w).await? {
        WatchEvent::Put(e) => ensure!(e.value == big, "watched value differs"),
        other => bail!("{other:?}"),
    }
    let huge = vec![1u8; 2 * 1024 * 1024];
    let r = kv.put("/big/two", &huge, None).await;
    ensure!(
        matches!(r, Err(KvError::TooLarge { .. })),
        "2 MiB put: {r:?}"
    );
    ensure!(kv.get("/big/two").await?.is_none());
    Ok(())
}

/// A listing far larger than gRPC's default 4 MiB answer (the size of a 20k-endpoint
/// cluster) comes back whole, sorted and at one revision; keys beside the prefix stay out.
async fn large_listing(f: &Fixture) -> Result<()> {
    let kv = &f.kv;
    const KEYS: usize = 2400;
    let value = |i: usize| -> Vec<u8> { (0..5000).map(|j| ((i * 31 + j) % 251) as u8).collect() };
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(100) {
        let ops = chunk
            .iter()
            .map(|&i| TxnOp::Put {
                key: format!("/list/{i:05}"),
                value: value(i),
                lease: None,
            })
            .collect();
        ensure!(kv.txn(vec![], ops).await?.is_some());
    }
    kv.put("/lisu", b"beside", None).await?;
    kv.put("/list", b"the prefix itself, not under it", None)
        .await?;
    let l = kv.list("/list/").await?;
    let bytes: usize = l.entries.iter().map(|e| e.value.len()).sum();
    ensure!(bytes > 2 * 4 * 1024 * 1024, "only {bytes} bytes listed");
    ensure!(
        l.entries.len() == KEYS,
        "{} of {KEYS} keys",
        l.entries.len()
    );
    for (i, e) in l.entries.iter().enumerate() {
        ensure!(e.key == format!("/list/{i:05}"), "key {i} is {}", e.key);
        ensure!(e.value == value(i), "value of {} differs", e.key);
    }
    ensure!(l.revision >= l.entries.iter().map(|e| e.mod_revision).max().unwrap_or(0));
    // The whole keyspace too (the agent's relist reads everything under its root).
    let all = kv.list("").await?;
    ensure!(
        all.entries.len() >= KEYS + 2,
        "{} keys in all",
        all.entries.len()
    );
    Ok(())
}

/// A listing of several prefixes (the agent's view reads four of its root's) comes back in
/// the order asked, each sorted, nothing from beside them, and all from one snapshot while
/// a writer keeps adding keys under two of them in one write: what it holds is exactly what
/// the store held at the listing's revision.
async fn list_many_one_snapshot(f: &Fixture) -> Result<()> {
    let kv = f.kv.clone();
    // More than one page of etcd's listing under /many/a/.
    for chunk in (0..2500usize).collect::<Vec<_>>().chunks(100) {
        let ops = chunk
            .iter()
            .map(|&i| TxnOp::Put {
                key: format!("/many/a/{i:05}"),
                value: vec![b'a'; 100],
                lease: None,
            })
            .collect();
        ensure!(kv.txn(vec![], ops).await?.is_some());
    }
    kv.put("/many/c/skipped", b"not asked for", None).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (kv, stop) = (kv.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // One write to both prefixes: in any one snapshot they hold as many.
                let put = |key: String| TxnOp::Put {
                    key,
                    value: b"w".to_vec(),
                    lease: None,
                };
                let ops = vec![
                    put(format!("/many/a/w{n:06}")),
                    put(format!("/many/z/{n:06}")),
                ];
                anyhow::ensure!(kv.txn(vec![], ops).await?.is_some());
                n += 1;
            }
            anyhow::Ok(n)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The writer's prefix last: a backend reading it at its own moment, not at the
    // revision of the first prefix's snapshot, lists keys newer than the listing.
    let l = kv.list_many(&["/many/a/", "/many/z/"]).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await??;
    let keys: Vec<&str> = l.entries.iter().map(|e| e.key.as_str()).collect();
    let (a, zs) = keys.split_at(
        keys.iter()
            .take_while(|k| k.starts_with("/many/a/"))
            .count(),
    );
    let ws = a.iter().filter(|k| k.starts_with("/many/a/w")).count();
    ensure!(
        a.len() - ws == 2500 && ws == zs.len(),
        "{} keys under /many/a/ ({ws} of the writer's) and {} under /many/z/",
        a.len(),
        zs.len()
    );
    ensure!(
        a.iter().all(|k| k.starts_with("/many/a/")),
        "{:?}... where /many/a/ was asked first",
        a.first()
    );
    ensure!(
        zs.iter().all(|k| k.starts_with("/many/z/")),
        "{:?}... after /many/a/",
        zs.first()
    );
    ensure!(a.windows(2).all(|w| w[0] < w[1]), "not sorted");
    ensure!(zs.windows(2).all(|w| w[0] < w[1]), "not sorted");
    ensure!(
        l.entries.iter().all(|e| e.mod_revision <= l.revision),
        "an entry newer than the listing's revision {}",
        l.revision
    );
    let then = kv
        .list("/many/z/")
        .await?
        .entries
        .iter()
        .filter(|e| e.mod_revision <= l.revision)
        .count();
    ensure!(
        zs.len() == then && written > then,
        "listed {} of the {then} keys at revision {} ({written} written in all)",
        zs.len(),
        l.revision
    );
    Ok(())
}

/// Several processes race to create one key: exactly one wins.
async fn multi_process_create(f: &Fixture) -> Result<()> {
    const N: usize = 4;
    let results = Workers::spawn(N, "create", &f.url, &[])?.wait()?;
    let winners: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.iter().any(|l| l == "won"))
        .map(|(i, _)| i)
        .collect();
    ensure!(winners.len() == 1, "winners: {winners:?} ({results:?})");
    let v = f.kv.get("/race/key").await?.context("raced key")?;
    ensure!(v.value == winners[0].to_string().as_bytes());
    Ok(())
}

/// Several processes increment one counter with CAS: no increment is lost, and a watch in
/// this process sees every value in order.
async fn multi_process_cas(f: &Fixture) -> Result<()> {
    const N: usize = 3;
    const EACH: usize = 15;
    let mut w = f.kv.watch("/counter", 0).await?;
    let results = Workers::spawn(N, "cas", &f.url, &[("KVT_EACH", EACH.to_string())])?.wait()?;
    let v = f.kv.get("/counter").await?.context("counter")?;
    let total: usize = String::from_utf8(v.value)?.parse()?;
    ensure!(
        total == N * EACH,
        "counter {total}, want {} ({results:?})",
        N * EACH
    );
    let events = next_events(&mut w, N * EACH).await?;
    ensure_increasing(&events)?;
    for (i, ev) in events.iter().enumerate() {
        match ev {
            WatchEvent::Put(e) => ensure!(e.value == (i + 1).to_string().as_bytes()),
            other => bail!("{other:?}"),
        }
    }
    Ok(())
}

/// The worker side of the multi-process checks, run only by them (`--ignored`, with
/// `KVT_WORKER` set): not a test of its own.
#[test]
#[ignore = "the worker process of the multi-process checks; they run it"]
fn kvt_worker() {
    let mode = std::env::var("KVT_WORKER").expect("KVT_WORKER: run by the multi-process checks");
    let url = std::env::var("KVT_URL").expect("KVT_URL");
    let id: usize = std::env::var("KVT_ID").unwrap().parse().unwrap();
    let start_at: u64 = std::env::var("KVT_START_AT").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let kv = ovl_kv::open(Some(&url), Path::new("/nonexistent"))
            .await
            .unwrap();
        kv.health().await.unwrap();
        let wait = start_at.saturating_sub(support::now_ms());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        match mode.as_str() {
            "create" => {
                let won = kv
                    .create("/race/key", id.to_string().as_bytes(), None)
                    .await
                    .unwrap()
                    .is_some();
                println!("KVT-RESULT {}", if won { "won" } else { "lost" });
            }
            "cas" => {
                let each: usize = std::env::var("KVT_EACH").unwrap().parse().unwrap();
                let mut conflicts = 0;
                for _ in 0..each {
                    loop {
                        let cur = kv.get("/counter").await.unwrap();
                        let (n, rev) = match &cur {
                            Some(e) => (
                                String::from_utf8_lossy(&e.value).parse::<usize>().unwrap(),
                                e.mod_revision,
                            ),
                            None => (0, 0),
                        };
                        let next = (n + 1).to_string();
                        if kv
                            .cas("/counter", next.as_bytes(), rev, None)
                            .await
                            .unwrap()
                            .is_some()
                        {
                            break;
                        }
                        conflicts += 1;
                    }
                }
                println!("KVT-RESULT conflicts={conflicts}");
            }
            other => panic!("unknown worker mode {other}"),
        }
    });
}

macro_rules! both_backends {
    ($($check:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let f = crate::Fixture::embedded().await.expect("embedded fixture");
                    crate::$check(&f).await.expect(stringify!($check));
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let f = crate::Fixture::etcd().await.expect("etcd fixture");
                    crate::$check(&f).await.expect(stringify!($check));
                }
            )*
        }
    };
}

both_backends!(
    basics,
    prefix_isolation,
    create_and_cas,
    txn_all_or_nothing,
    watch_ordering,
    lease_expiry,
    lease_keep_alive,
    lease_ttl,
    large_values,
    large_listing,
    list_many_one_snapshot,
    multi_process_create,
    multi_process_cas,
);

// ---------------------------------------------------------------------------------------
// Backend-specific checks.

/// A watch from a revision whose history was trimmed reports `Compacted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_compacted_watch() -> Result<()> {
    let dir = support::tempdir();
    let path = dir.path().join("kv.db");
    let opts = ovl_kv::embedded::EmbeddedOptions {
        keep_revisions: 10,
        sweep_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let kv = ovl_kv::embedded::EmbeddedKv::open_with(&path, opts).await?;
    let first = kv.put("/x/0", b"0", None).await?;
    for i in 1..40 {
        kv.put(&format!("/x/{i}"), b"v", None).await?;
    }
    // Wait (bounded) for the sweeper to trim the log.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut w = kv.watch("/x/", first).await?;
        match next_event(&mut w).await {
            Err(e)
                if e.downcast_ref::<KvError>()
                    .is_some_and(|k| matches!(k, KvError::Compacted { .. })) =>
            {
                ensure!(w.next().await.is_none(), "stream must end after Compacted");
                break;
            }
            _ if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => bail!("no compaction seen: {other:?}"),
        }
    }
    // Recent history is still there.
    let recent = kv.list("/x/").await?.revision - 5;
    let mut w = kv.watch("/x/", recent).await?;
    ensure!(next_event(&mut w).await?.revision() == recent);
    Ok(())
}

/// Two handles on one file (as two agents on one machine) see each other's writes and
/// watches, and `open(None, default)` creates the default file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_shared_file_and_default_path() -> Result<()> {
    let dir = support::tempdir();
    let path = dir.path().join("state/sub/kv.db");
    let a = ovl_kv::open(None, &path).await?;
    ensure!(path.exists(), "default path created");
    let b = ovl_kv::open(
        Some(&format!("embedded://{}", path.display())),
        Path::new("/x"),
    )
    .await?;
    ensure!(a.describe() == format!("embedded:{}", path.display()));
    let mut wb = b.watch("/s/", 0).await?;
    let r = a.put("/s/k", b"from a", None).await?;
    let ev = next_event(&mut wb).await?;
    ensure!(ev.revision() == r && ev.key() == "/s/k");
    ensure!(b.get("/s/k").await?.unwrap().value == b"from a");
    let lease = b.grant_lease(Duration::from_secs(30)).await?;
    a.keep_alive(lease).await?;
    a.revoke(lease).await?;
    let r = b.keep_alive(lease).await;
    ensure!(matches!(r, Err(KvError::LeaseNotFound(_))), "{r:?}");
    Ok(())
}

/// Bad URLs are refused by `open` without side effects.
#[tokio::test]
async fn open_refuses_bad_urls() {
    for url in ["etcd://nohost", "embedded://relative/x.db", "redis://h:1"] {
        match ovl_kv::open(Some(url), Path::new("/nonexistent/x.db")).await {
            Err(KvError::InvalidUrl { .. }) => {}
            Err(e) => panic!("{url}: wrong error {e}"),
            Ok(_) => panic!("{url}: accepted"),
        }
    }
}

/// etcd down at start: `open` succeeds, every call fails fast with `Unreachable`, and the
/// same handle works once etcd comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable() -> Result<()> {
    let ports = support::free_ports(2);
    let url = format!("etcd://127.0.0.1:{}", ports[0]);
    let kv = tokio::time::timeout(WAIT, ovl_kv::open(Some(&url), Path::new("/x")))
        .await
        .context("open must not hang")??;
    let started = std::time::Instant::now();
    let r = kv.get("/k").await;
    ensure!(matches!(&r, Err(e) if e.is_unreachable()), "get: {r:?}");
    let r = kv.put("/k", b"v", None).await;
    ensure!(matches!(&r, Err(e) if e.is_unreachable()), "put: {r:?}");
    let r = kv.cas("/k", b"v", 0, None).await;
    ensure!(matches!(&r, Err(e) if e.is_unreachable()), "cas: {r:?}");
    let r = kv.health().await;
    ensure!(matches!(&r, Err(e) if e.is_unreachable()), "health: {r:?}");
    let r = kv.grant_lease(Duration::from_secs(5)).await;
    ensure!(matches!(&r, Err(e) if e.is_unreachable()), "grant: {r:?}");
    match kv.watch("/", 0).await {
        Err(e) => ensure!(e.is_unreachable(), "watch: {e}"),
        Ok(_) => bail!("watch on a dead store succeeded"),
    }
    // Bounded by the per-request deadline, not by connection retries (generous margin).
    ensure!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let msg = kv.get("/k").await.unwrap_err().to_string();
    ensure!(msg.contains(&url), "error names the store: {msg}");

    // Once etcd comes up on that address, the same handle works.
    let _cluster = EtcdCluster::start_on(ports).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Err(e) = kv.health().await {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "never recovered: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = kv.put("/k", b"v", None).await?;
    ensure!(kv.get("/k").await?.unwrap().mod_revision == r);
    Ok(())
}

/// Several processes opening a brand-new embedded file at once all succeed and still agree
/// on one winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_concurrent_first_open() -> Result<()> {
    let dir = support::tempdir();
    let path = dir.path().join("fresh/kv.db");
    let url = format!("embedded://{}", path.display());
    let results = Workers::spawn(4, "create", &url, &[])?.wait()?;
    let winners = results
        .iter()
        .filter(|r| r.iter().any(|l| l == "won"))
        .count();
    ensure!(winners == 1, "{results:?}");
    Ok(())
}

/// Opening an embedded store where no file can be created fails cleanly.
#[tokio::test]
async fn embedded_open_bad_path() {
    let r = ovl_kv::open(Some("embedded:///proc/kvt-no-such/kv.db"), Path::new("/x")).await;
    match r {
        Err(KvError::Backend(msg)) => assert!(msg.contains("/proc/kvt-no-such"), "{msg}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a store under /proc"),
    }
}

/// The same watch stream survives an etcd restart: every event, in order, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_resumes_after_restart() -> Result<()> {
    let mut cluster = EtcdCluster::start(1).await?;
    let kv = ovl_kv::open(Some(&cluster.url()), Path::new("/x")).await?;
    let mut w = kv.watch("/r/", 0).await?;
    let mut revs = Vec::new();
    for i in 0..20 {
        revs.push(kv.put(&format!("/r/{i:03}"), b"before", None).await?);
    }
    // Read a few so the stream is known to be live before the outage.
    let first = next_events(&mut w, 5).await?;

    cluster.members[0].kill();
    let r = kv.put("/r/during", b"x", None).await;
    ensure!(
        matches!(&r, Err(e) if e.is_unreachable()),
        "put while down: {r:?}"
    );
    cluster.members[0].start()?;
    cluster.wait_member_ready(0).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while kv.health().await.is_err() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "store never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 20..40 {
        revs.push(kv.put(&format!("/r/{i:03}"), b"after", None).await?);
    }
    let sentinel = kv.put("/r/zzz-sentinel", b"end", None).await?;

    let mut all = first;
    all.extend(next_events(&mut w, 35).await?);
    ensure_increasing(&all)?;
    let got: Vec<i64> = all.iter().map(|e| e.revision()).collect();
    ensure!(
        got == revs,
        "lost or repeated events: got {got:?}, want {revs:?}"
    );
    let ev = next_event(&mut w).await?;
    ensure!(ev.revision() == sentinel, "after the 40 events: {ev:?}");
    Ok(())
}

/// A watch from a compacted revision reports `Compacted` and ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_compacted_watch() -> Result<()> {
    let f = Fixture::etcd().await?;
    let first = f.kv.put("/x/0", b"0", None).await?;
    let mut last = first;
    for i in 1..10 {
        last = f.kv.put(&format!("/x/{i}"), b"v", None).await?;
    }
    let ep = format!(
        "http://{}",
        f.cluster.as_ref().unwrap().members[0].endpoint()
    );
    let mut c = etcd_client::Client::connect([ep], None).await?;
    c.compact(last - 2, None).await?;
    let mut w = f.kv.watch("/x/", first).await?;
    match tokio::time::timeout(WAIT, w.next()).await? {
        Some(Err(KvError::Compacted {
            requested,
            compacted,
        })) => {
            ensure!(requested == first && compacted == last - 2);
        }
        other => bail!("expected Compacted, got {other:?}"),
    }
    ensure!(
        tokio::time::timeout(WAIT, w.next()).await?.is_none(),
        "stream must end"
    );
    Ok(())
}

/// A 3-member cluster keeps serving through the remaining members when one stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_failover() -> Result<()> {
    let mut cluster = EtcdCluster::start(3).await?;
    let kv: Arc<dyn Kv> = ovl_kv::open(Some(&cluster.url()), Path::new("/x")).await?;
    let mut w = kv.watch("/f/", 0).await?;
    let mut revs = vec![kv.put("/f/a", b"1", None).await?];
    for i in 0..10 {
        revs.push(kv.put(&format!("/f/pre{i}"), b"x", None).await?);
    }
    // Stop a follower (stopping the leader is an election, covered by retrying callers).
    let leader = cluster.leader(0).await?;
    let victim = (0..3).find(|&i| i != leader).unwrap();
    cluster.members[victim].kill();

    for i in 0..20 {
        let key = format!("/f/k{i}");
        revs.push(
            kv.put(&key, b"v", None)
                .await
                .with_context(|| format!("put {i}"))?,
        );
        let e = kv.get(&key).await?.context("get")?;
        let r = kv
            .cas(&key, b"w", e.mod_revision, None)
            .await?
            .context("cas")?;
        revs.push(r);
        ensure!(kv.list("/f/").await?.entries.len() == 12 + i);
    }
    kv.health().await?;
    let events = next_events(&mut w, revs.len()).await?;
    let got: Vec<i64> = events.iter().map(|e| e.revision()).collect();
    ensure!(
        got == revs,
        "watch across failover: got {got:?}, want {revs:?}"
    );
    ensure!(
        !cluster.members[victim].running(),
        "the stopped member stays stopped"
    );
    Ok(())
}

/// A write whose answer is lost (the connection breaks after etcd received it) is settled
/// by reading the key back: the caller gets the revision it made, and the write is applied
/// exactly once whether or not etcd had applied it when the connection broke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_lost_answers() -> Result<()> {
    let cluster = EtcdCluster::start(1).await?;
    let cutter = support::AnswerCutter::start(cluster.members[0].endpoint()).await?;
    let url = format!("etcd://127.0.0.1:{}", cutter.port);
    let kv: Arc<dyn Kv> = ovl_kv::open(Some(&url), Path::new("/x")).await?;
    let mut w = kv.watch("/l/", 0).await?;
    let mut revs = vec![kv.put("/l/warm", b"x", None).await?];

    cutter.arm();
    let put = kv.put("/l/p", b"1", None).await.context("put")?;
    ensure!(cutter.cuts() == 1, "the put's answer was lost");
    revs.push(put);

    cutter.arm();
    let created = kv.create("/l/c", b"1", None).await.context("create")?;
    ensure!(cutter.cuts() == 2, "the create's answer was lost");
    revs.push(created.context("create must win: nobody else wrote /l/c")?);

    cutter.arm();
    let swapped = kv.cas("/l/c", b"2", revs[2], None).await.context("cas")?;
    ensure!(cutter.cuts() == 3, "the cas's answer was lost");
    revs.push(swapped.context("cas must win: nobody else wrote /l/c")?);

    ensure!(kv.get("/l/p").await?.context("p")?.mod_revision == put);
    let c = kv.get("/l/c").await?.context("c")?;
    ensure!(c.value == b"2" && c.mod_revision == revs[3]);
    // A losing compare-and-swap stays lost after its answer is lost too.
    cutter.arm();
    ensure!(kv.cas("/l/c", b"3", revs[2], None).await?.is_none());
    let events = next_events(&mut w, revs.len()).await?;
    let got: Vec<i64> = events.iter().map(|e| e.revision()).collect();
    ensure!(
        got == revs,
        "each write applied once: got {got:?}, want {revs:?}"
    );
    let extra = tokio::time::timeout(Duration::from_millis(500), w.next()).await;
    ensure!(extra.is_err(), "no further events: {extra:?}");
    Ok(())
}

/// Losing the leader: callers retrying on `Unreachable` (as the agent does) get through once
/// a new leader is elected, and a watch carries on without gaps or repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leader_loss() -> Result<()> {
    let mut cluster = EtcdCluster::start(3).await?;
    let kv: Arc<dyn Kv> = ovl_kv::open(Some(&cluster.url()), Path::new("/x")).await?;
    let mut w = kv.watch("/g/", 0).await?;
    let mut revs = Vec::new();
    for i in 0..5 {
        revs.push(kv.put(&format!("/g/pre{i}"), b"x", None).await?);
    }
    let leader = cluster.leader(0).await?;
    cluster.members[leader].kill();
    let mut unreachable = 0;
    for i in 0..10 {
        let key = format!("/g/k{i}");
        let deadline = tokio::time::Instant::now() + WAIT;
        // create is not blindly retryable: an ambiguous failure may have applied it, so a
        // retry that finds the key ours counts as success.
        loop {
            match kv.create(&key, b"v", None).await {
                Ok(Some(r)) => {
                    revs.push(r);
                    break;
                }
                Ok(None) => {
                    let e = kv.get(&key).await?.context("created key")?;
                    ensure!(e.value == b"v");
                    revs.push(e.mod_revision);
                    break;
                }
                Err(e) if e.is_unreachable() && tokio::time::Instant::now() < deadline => {
                    unreachable += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => bail!("create {key}: {e}"),
            }
        }
    }
    let events = next_events(&mut w, revs.len()).await?;
    let got: Vec<i64> = events.iter().map(|e| e.revision()).collect();
    ensure!(
        got == revs,
        "watch across leader loss: got {got:?}, want {revs:?} ({unreachable} retries)"
    );
    Ok(())
}
