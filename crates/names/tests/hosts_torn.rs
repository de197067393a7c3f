//! Torn-read measurement for in-place hosts file rewrites.
//!
//! A reader thread re-reads the file in a tight loop (opening it each time and reading it in
//! 4 KiB chunks like glibc's stdio does) while the writer applies 1000 updates (override with
//! `NMT_TORN_UPDATES`) going through versions of different sizes. A read is torn unless it is
//! one of the written versions (ignoring trailing whitespace, which is the padding
//! `write_in_place` adds). Three write strategies run side by side and the tear rate of each is
//! printed, for two kinds of updates ("churn": a few peers come and go, names stable;
//! "rewrite": every line changes) and two sizes (one page, several pages).
//!
//! Buffered reads and writes of a regular file are not atomic with respect to each other on
//! ext4/tmpfs (a read can copy a page while a write is copying into it), which is why the naive
//! strategies tear. `write_in_place` holds a write lease on the file while it writes, so a
//! reader's `open` waits for the write to finish: the assertions are that the measurement is
//! real (reads overlapped writes, the naive strategy tears) and `write_in_place` never tears.
//!
//! A second test reads through glibc itself (`getent hosts` enumerating the file bind-mounted
//! over `/etc/hosts` in a private mount namespace made by `unshare`).
//!
//! Run: `cargo test -p ovl-names --test hosts_torn -- --nocapture --test-threads=1`.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use ovl_names::hosts;
use ovl_names::records::NameRecord;

fn updates() -> usize {
    std::env::var("NMT_TORN_UPDATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}
const HEADER: &str = "127.0.0.1\tlocalhost\n10.1.0.2\tabc123def456\n";

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("nmt-torn-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A hosts file listing the peers in `peers`; `salt` renames every peer.
fn version(peers: &[usize], salt: usize) -> String {
    let own = [NameRecord {
        network: "net1".into(),
        endpoint_id: "self".into(),
        name: "c0".into(),
        aliases: vec![],
        ip: "10.1.0.2".parse().unwrap(),
    }];
    let peers: Vec<NameRecord> = peers
        .iter()
        .map(|&i| NameRecord {
            network: "net1".into(),
            endpoint_id: format!("e{i}"),
            name: format!("c{i}-{salt}"),
            aliases: if i % 3 == 0 {
                vec![format!("svc{}", i % 7)]
            } else {
                vec![]
            },
            ip: std::net::Ipv4Addr::new(10, 1, 1 + (i / 250) as u8, (i % 250) as u8 + 3),
        })
        .collect();
    format!("{HEADER}{}", hosts::render_block(&own, &peers))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Each update adds or removes a few peers (a container starts or stops); names are stable.
    Churn,
    /// Each update renames every peer: the whole block changes.
    Rewrite,
}

/// Deterministic sequence of versions whose sizes go up and down between the two peer counts.
fn versions(kind: Kind, min_peers: usize, max_peers: usize) -> Vec<String> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as usize
    };
    let mut present: Vec<usize> = (1..=min_peers).collect();
    (0..updates())
        .map(|step| match kind {
            Kind::Rewrite => {
                let n = min_peers + next() % (max_peers - min_peers + 1);
                version(&(1..=n).collect::<Vec<_>>(), step % 10)
            }
            Kind::Churn => {
                for _ in 0..1 + next() % 3 {
                    let grow = present.len() <= min_peers
                        || (present.len() < max_peers && next() % 2 == 0);
                    if grow {
                        let id = (1..=max_peers * 2).find(|i| !present.contains(i)).unwrap();
                        present.push(id);
                    } else {
                        let at = next() % present.len();
                        present.remove(at);
                    }
                }
                version(&present, 0)
            }
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Strategy {
    /// `open(O_TRUNC)` + `write`: what `os.WriteFile` (Docker) does.
    TruncateThenWrite,
    /// One `pwrite` at 0 then `ftruncate` to the new length.
    PwriteThenTruncate,
    /// `ovl_names::hosts::write_in_place`.
    Padded,
}

fn write(strategy: Strategy, path: &Path, content: &str) {
    match strategy {
        Strategy::TruncateThenWrite => {
            let mut f = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .unwrap();
            f.write_all(content.as_bytes()).unwrap();
        }
        Strategy::PwriteThenTruncate => {
            let f = OpenOptions::new().write(true).open(path).unwrap();
            f.write_all_at(content.as_bytes(), 0).unwrap();
            f.set_len(content.len() as u64).unwrap();
        }
        Strategy::Padded => hosts::write_in_place(path, content).unwrap(),
    }
}

/// Reads the whole file the way glibc's stdio does: one open, 4 KiB `read` calls until EOF.
fn read_like_stdio(path: &Path, buf: &mut Vec<u8>) {
    buf.clear();
    let mut f = File::open(path).unwrap();
    let mut chunk = [0u8; 4096];
    loop {
        let n = f.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[derive(Debug)]
struct Measurement {
    strategy: Strategy,
    reads: u64,
    /// Reads during which a write was in progress or happened.
    overlapping: u64,
    torn: u64,
    example: Option<String>,
}

fn measure(strategy: Strategy, all: &[String], dir: &Path) -> Measurement {
    let path = dir.join(format!("hosts-{strategy:?}"));
    std::fs::write(&path, &all[0]).unwrap();
    let valid: Arc<HashSet<String>> =
        Arc::new(all.iter().map(|v| v.trim_end().to_string()).collect());
    let done = Arc::new(AtomicBool::new(false));
    // Seqlock-style: odd while a write is in progress.
    let seq = Arc::new(AtomicU64::new(0));
    let reads_done = Arc::new(AtomicU64::new(0));

    let reader = {
        let (path, valid, done, seq, reads_done) = (
            path.clone(),
            valid.clone(),
            done.clone(),
            seq.clone(),
            reads_done.clone(),
        );
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let (mut overlapping, mut torn, mut example) = (0u64, 0u64, None);
            while !done.load(Ordering::Acquire) {
                let before = seq.load(Ordering::Acquire);
                read_like_stdio(&path, &mut buf);
                let after = seq.load(Ordering::Acquire);
                overlapping += u64::from(before != after || before % 2 == 1);
                let text = String::from_utf8_lossy(&buf);
                if !valid.contains(text.trim_end()) {
                    torn += 1;
                    if example.is_none() {
                        example = Some(text.into_owned());
                    }
                }
                reads_done.fetch_add(1, Ordering::AcqRel);
            }
            (
                reads_done.load(Ordering::Acquire),
                overlapping,
                torn,
                example,
            )
        })
    };

    for v in &all[1..] {
        seq.fetch_add(1, Ordering::AcqRel);
        write(strategy, &path, v);
        seq.fetch_add(1, Ordering::AcqRel);
        // Let the reader complete a couple of reads between updates (bounded wait), so every
        // strategy is measured against a live reader even on a loaded machine.
        let start = reads_done.load(Ordering::Acquire);
        let t = Instant::now();
        while reads_done.load(Ordering::Acquire) < start + 2 && t.elapsed().as_millis() < 50 {
            std::hint::spin_loop();
        }
    }
    done.store(true, Ordering::Release);
    let (reads, overlapping, torn, example) = reader.join().unwrap();
    Measurement {
        strategy,
        reads,
        overlapping,
        torn,
        example,
    }
}

fn report(label: &str, m: &Measurement, sizes: (usize, usize)) {
    println!(
        "{label:<18} {:<19} {:>5}..{:<5} B  reads {:>7}  overlapping {:>6}  torn {:>6}  = {:.3}% of reads, {:.2}% of overlapping reads",
        format!("{:?}", m.strategy),
        sizes.0,
        sizes.1,
        m.reads,
        m.overlapping,
        m.torn,
        100.0 * m.torn as f64 / m.reads.max(1) as f64,
        100.0 * m.torn as f64 / m.overlapping.max(1) as f64,
    );
    if let Some(e) = &m.example {
        let tail: String = e
            .chars()
            .rev()
            .take(100)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        println!(
            "{:18} first torn read: {} bytes, ending {tail:?}",
            "",
            e.len()
        );
    }
}

const STRATEGIES: [Strategy; 3] = [
    Strategy::TruncateThenWrite,
    Strategy::PwriteThenTruncate,
    Strategy::Padded,
];

/// Runs every strategy on the same versions and checks the measurement is meaningful.
fn run_all(label: &str, all: &[String], dir: &Path) -> Vec<Measurement> {
    let s = sizes(all);
    let results: Vec<Measurement> = STRATEGIES
        .iter()
        .map(|&strategy| {
            let m = measure(strategy, all, dir);
            report(label, &m, s);
            m
        })
        .collect();
    for m in &results {
        assert!(
            m.overlapping > 0,
            "{:?}: no read overlapped a write",
            m.strategy
        );
    }
    results
}

fn sizes(all: &[String]) -> (usize, usize) {
    let min = all.iter().map(String::len).min().unwrap();
    let max = all.iter().map(String::len).max().unwrap();
    (min, max)
}

fn check_padded_beats_naive(results: &[Measurement]) {
    let (naive, padded) = (&results[0], &results[2]);
    assert!(
        naive.torn > 0,
        "truncate+write never tore: the measurement is not exercising the race"
    );
    assert!(
        padded.torn == 0,
        "write_in_place tore {} reads, the naive strategy {}: {:?}",
        padded.torn,
        naive.torn,
        padded.example
    );
}

#[test]
fn torn_reads_single_page() {
    let dir = TempDir::new("page");
    for (label, kind) in [
        ("one page, churn", Kind::Churn),
        ("one page, rewrite", Kind::Rewrite),
    ] {
        // 3..60 peers: roughly 200 B to 2.9 KB, always below one 4 KiB page.
        let all = versions(kind, 3, 60);
        assert!(sizes(&all).1 < 4096, "versions must fit in a page");
        let results = run_all(label, &all, &dir.0);
        check_padded_beats_naive(&results);
    }
}

#[test]
fn torn_reads_multi_page() {
    let dir = TempDir::new("pages");
    for (label, kind) in [
        ("pages, churn", Kind::Churn),
        ("pages, rewrite", Kind::Rewrite),
    ] {
        // 160..300 peers: roughly 5 KB to 12 KB, so readers need several read() calls.
        let all = versions(kind, 160, 300);
        assert!(sizes(&all).0 > 4096);
        let results = run_all(label, &all, &dir.0);
        check_padded_beats_naive(&results);
    }
}

/// Normalised `getent hosts` lines (IPv4 only: "ip name name...") a version should produce.
fn expected_getent(content: &str) -> Vec<String> {
    content
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

/// Kills and reaps the reader process if the test fails half-way.
struct ChildGuard(std::process::Child);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// glibc enumerates the file (`getent hosts`, i.e. gethostent) in a loop while `strategy`
/// applies every version; returns (enumerations, inconsistent enumerations).
fn getent_run(strategy: Strategy, all: &[String], dir: &Path) -> (usize, usize) {
    let path = dir.join(format!("hosts-{strategy:?}"));
    let out_path = dir.join(format!("getent-{strategy:?}.out"));
    let stop = dir.join(format!("stop-{strategy:?}"));
    std::fs::write(&path, &all[0]).unwrap();
    let valid: HashSet<Vec<String>> = all.iter().map(|v| expected_getent(v)).collect();
    // A private mount namespace with our file over /etc/hosts; the host's /etc/hosts is not
    // touched.
    let script = format!(
        "mount --bind {file} /etc/hosts || exit 1; while [ ! -e {stop} ]; do getent hosts; echo ===; done > {out}",
        file = path.display(),
        stop = stop.display(),
        out = out_path.display()
    );
    let mut child = ChildGuard(
        std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .spawn()
            .expect("unshare (util-linux) must be installed"),
    );
    // Wait for the reader to produce output before starting the updates.
    let t = Instant::now();
    while std::fs::metadata(&out_path).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(t.elapsed().as_secs() < 30, "getent reader did not start");
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "getent reader exited early"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for v in &all[1..] {
        write(strategy, &path, v);
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
    File::create(&stop).unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "reader failed: {status}");

    let out = std::fs::read_to_string(&out_path).unwrap();
    let mut reads = 0;
    let mut torn = 0;
    for chunk in out.split("===\n").filter(|c| !c.is_empty()) {
        reads += 1;
        let got: Vec<String> = chunk
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if !valid.contains(&got) {
            torn += 1;
            if torn == 1 {
                let tail: String = chunk.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                println!(
                    "{:18} {strategy:?}: first inconsistent enumeration ends: {tail}",
                    ""
                );
            }
        }
    }
    println!(
        "getent (glibc)     {:<19} reads {reads:>7}  torn {torn:>6}  = {:.3}% of reads",
        format!("{strategy:?}"),
        100.0 * torn as f64 / reads.max(1) as f64
    );
    (reads, torn)
}

#[test]
fn torn_reads_through_glibc_getent() {
    assert!(
        is_root(),
        "this test needs root (unshare --mount, bind mount over /etc/hosts)"
    );
    let dir = TempDir::new("getent");
    let all = versions(Kind::Churn, 3, 60);
    let (_, naive_torn) = getent_run(Strategy::TruncateThenWrite, &all, &dir.0);
    let (reads, torn) = getent_run(Strategy::Padded, &all, &dir.0);
    assert!(
        reads > 10,
        "the glibc reader barely ran ({reads} enumerations)"
    );
    assert!(
        torn == 0,
        "write_in_place: {torn} of {reads} glibc enumerations inconsistent (naive: {naive_torn})"
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
