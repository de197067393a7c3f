//! The `/etc/hosts` managed block.
//!
//! Each container's hosts file gets one block, between [`BEGIN_MARKER`] and [`END_MARKER`],
//! listing every endpoint on every network the container is on (itself included) as
//! `IP name name.network alias alias.network`. Everything outside the block (Docker's own lines,
//! user lines) is kept as is.
//!
//! # Rewriting in place
//!
//! Docker bind-mounts the hosts file into the container, and `ip netns exec` bind-mounts
//! `/etc/netns/X/hosts`, so the file must keep its inode: write-to-temp-then-rename would leave
//! the container looking at the old file forever. [`write_in_place`] therefore overwrites the
//! file, and arranges the writes so a concurrent reader never sees a mixture of two versions:
//!
//! * the size never changes under the content ([`plan_write`]): the file never shrinks in a
//!   separate step (the new content is padded with trailing whitespace to the old length and
//!   written with one `pwrite`), and when it grows the old content is first extended with
//!   whitespace;
//! * the writes happen under a write lease (`F_SETLEASE`): buffered reads and writes of a
//!   regular file are not atomic with respect to each other (a reader can copy a page while the
//!   writer is copying into it, or straddle a write with several `read` calls), but while the
//!   lease is held anyone else's `open` of the file waits, and the lease is only granted while
//!   nobody has the file open. Readers that open, read and close (glibc, musl, Go and Docker's
//!   resolvers all do) therefore see the old or the new file, never a mixture. A reader that
//!   keeps the file open for longer than the lease wait makes the write go ahead without it.
//!
//! `tests/hosts_torn.rs` measures torn reads for this and for the naive strategies.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use crate::NamesError;
use crate::records::{NameRecord, Zone, validate_record};

/// First line of the managed block.
pub const BEGIN_MARKER: &str = "# BEGIN overlay-agent managed";
/// Last line of the managed block.
pub const END_MARKER: &str = "# END overlay-agent managed";

/// Docker's default lines for a fresh hosts file (etchosts.go). [`merge`] never adds them (a
/// file without localhost lines is left as it is); use this when creating a file from nothing,
/// e.g. `/etc/netns/X/hosts`.
pub const DEFAULT_LINES: &str = "127.0.0.1\tlocalhost\n\
::1\tlocalhost ip6-localhost ip6-loopback\n\
fe00::0\tip6-localnet\n\
ff00::0\tip6-mcastprefix\n\
ff02::1\tip6-allnodes\n\
ff02::2\tip6-allrouters\n";

/// When shrinking, trailing padding up to this many bytes (or the new length, if larger) is
/// kept instead of truncating the file.
pub const MAX_KEPT_PADDING: u64 = 4096;

fn render_line(out: &mut String, r: &NameRecord) {
    let _ = write!(out, "{}\t{} {}.{}", r.ip, r.name, r.name, r.network);
    for a in &r.aliases {
        let _ = write!(out, " {a} {a}.{}", r.network);
    }
    out.push('\n');
}

/// Renders the managed block: the container's own records first, then its peers, each group
/// sorted, one line per record: `IP name name.network alias alias.network ...`.
///
/// Records that fail [`validate_record`] are left out (a name with a space or `#` would corrupt
/// the file). The result starts with [`BEGIN_MARKER`], ends with [`END_MARKER`] and a newline.
pub fn render_block(own: &[NameRecord], peers: &[NameRecord]) -> String {
    let mut out = String::with_capacity(64 * (own.len() + peers.len() + 2));
    out.push_str(BEGIN_MARKER);
    out.push('\n');
    for group in [own, peers] {
        let mut group: Vec<&NameRecord> = group
            .iter()
            .filter(|r| validate_record(r).is_ok())
            .collect();
        group.sort();
        group.dedup();
        for r in group {
            render_line(&mut out, r);
        }
    }
    out.push_str(END_MARKER);
    out.push('\n');
    out
}

/// Renders the block for endpoint `endpoint_id` attached to `networks`: its own records (same
/// endpoint id) first, then every other record on those networks.
pub fn block_for_endpoint(zone: &Zone, endpoint_id: &str, networks: &[String]) -> String {
    let (own, peers): (Vec<NameRecord>, Vec<NameRecord>) = zone
        .records_on(networks)
        .cloned()
        .partition(|r| r.endpoint_id == endpoint_id);
    render_block(&own, &peers)
}

fn is_begin(line: &str) -> bool {
    line.trim().starts_with(BEGIN_MARKER)
}

fn is_end(line: &str) -> bool {
    line.trim().starts_with(END_MARKER)
}

/// Puts `block` into `existing` (a whole hosts file): replaces the old managed block where it
/// was, or appends it at the end.
///
/// Every line outside the old block is kept, in order. Trailing whitespace at the end of the
/// file (the padding [`write_in_place`] may have left) is dropped. A `BEGIN` marker without an
/// `END` (someone cut the file) is taken to run to the end of the file; a stray `END` line is
/// dropped. Pass an empty `block` to remove the managed block.
pub fn merge(existing: &str, block: &str) -> String {
    let mut out = String::with_capacity(existing.len() + block.len());
    let mut inside = false;
    let mut placed = false;
    for line in existing.trim_end().lines() {
        if inside {
            inside = !is_end(line);
            continue;
        }
        if is_begin(line) {
            inside = true;
            if !placed {
                out.push_str(block);
                placed = true;
            }
            continue;
        }
        if is_end(line) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !placed {
        out.push_str(block);
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// Removes the managed block from a hosts file's content (for detach).
pub fn remove_block(existing: &str) -> String {
    merge(existing, "")
}

/// How [`write_in_place`] changes a file of `old.len()` bytes into `new`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WritePlan {
    /// When growing: whitespace written at the old end of file first, so the size changes while
    /// the file still holds the old content (`(offset, bytes)`).
    pub extend: Option<(u64, Vec<u8>)>,
    /// The one `pwrite` that changes the content: the new content, padded with whitespace to at
    /// least the old length, restricted to the range that differs from what is in the file
    /// (`(offset, bytes)`). `None` when nothing differs.
    pub patch: Option<(u64, Vec<u8>)>,
    /// When the padding would be excessive: truncate to this length afterwards. Only padding
    /// is cut, so a reader racing the truncation still sees the complete new content.
    pub truncate_to: Option<u64>,
}

/// Whitespace padding of exactly `len` bytes: spaces then a newline. A whitespace-only line is
/// ignored by every hosts parser (glibc, musl, Go, Docker's etchosts).
fn padding(len: usize) -> Vec<u8> {
    let mut pad = vec![b' '; len];
    if let Some(last) = pad.last_mut() {
        *last = b'\n';
    }
    pad
}

/// Plans the writes that turn a file holding `old` into `new`, such that at every instant the
/// file's size and bytes form either the old content or the new content, each followed by
/// whitespace only, as far as size changes are concerned:
///
/// * never shrink before writing: the new content is padded with whitespace to the old length;
/// * grow before writing: the old content is first extended with whitespace to the new length;
/// * write only the byte range that differs, with one `pwrite` (the shorter the copy, the
///   smaller the window in which a concurrent reader can catch it half done; see module docs);
/// * truncate (cutting padding only) when the padding would exceed
///   `max(MAX_KEPT_PADDING, new.len())`.
pub fn plan_write(old: &[u8], new: &[u8]) -> WritePlan {
    let (old_len, new_len) = (old.len(), new.len());
    let mut extend = None;
    let mut truncate_to = None;
    let mut body = new.to_vec();
    // What the file holds just before the patch is written.
    let mut before: Vec<u8> = old.to_vec();
    if new_len > old_len {
        let pad = padding(new_len - old_len);
        before.extend_from_slice(&pad);
        extend = Some((old_len as u64, pad));
    } else if new_len < old_len {
        let slack = old_len - new_len;
        body.extend_from_slice(&padding(slack));
        if slack as u64 > MAX_KEPT_PADDING.max(new_len as u64) {
            truncate_to = Some(new_len as u64);
        }
    }
    debug_assert_eq!(before.len(), body.len());
    let first = body.iter().zip(&before).position(|(a, b)| a != b);
    let patch = first.map(|first| {
        let last = body
            .iter()
            .zip(&before)
            .rposition(|(a, b)| a != b)
            .unwrap_or(first);
        (first as u64, body[first..=last].to_vec())
    });
    WritePlan {
        extend,
        patch,
        truncate_to,
    }
}

fn file_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NamesError {
    let path = path.to_path_buf();
    move |source| NamesError::File {
        action,
        path,
        source,
    }
}

/// Opens (creating it 0644 if missing) and exclusively locks the file. The lock (flock) only
/// serialises cooperating writers (several agents, several tasks); readers never lock.
fn open_locked(path: &Path) -> Result<File, NamesError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
        .map_err(file_err("open", path))?;
    file.lock().map_err(file_err("lock", path))?;
    Ok(file)
}

fn read_all(mut file: &File, path: &Path) -> Result<Vec<u8>, NamesError> {
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).map_err(file_err("read", path))?;
    Ok(buf)
}

/// `fcntl` command setting the lease-break signal (`<fcntl.h>`, Linux; the libc crate lacks it).
const F_SETSIG: libc::c_int = 10;
/// How long taking the write lease is tried before writing without it: a reader holds the
/// file open for microseconds, unless it is descheduled on a busy machine.
const LEASE_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
/// Pause between lease attempts (a reader holding the file open closes it within microseconds).
const LEASE_RETRY: std::time::Duration = std::time::Duration::from_micros(100);

/// A write lease (`F_SETLEASE`, `F_WRLCK`) held on the file while it is rewritten: an `open` of
/// the file by anyone else waits until the lease is released, so a reader that opens, reads and
/// closes (every resolver does) sees the file before or after the update, never during it.
/// The kernel grants the lease only while nobody else has the file open, so taking it also
/// waits for readers already in the middle of a read.
struct WriteLease<'a>(&'a File);

impl<'a> WriteLease<'a> {
    /// Takes the lease, retrying for a bounded time; `None` if the file stays open elsewhere
    /// or the file system has no leases (the write then goes ahead without it).
    fn take(file: &'a File, path: &Path) -> Option<WriteLease<'a>> {
        let fd = file.as_raw_fd();
        // The kernel tells the lease holder of an open by others with a signal (SIGIO by
        // default, which would end the agent). SIGURG is ignored by default: the open still
        // waits for our release, which follows the write at once.
        // SAFETY: plain fcntl on a descriptor we own.
        if unsafe { libc::fcntl(fd, F_SETSIG, libc::SIGURG) } != 0 {
            return None;
        }
        let deadline = std::time::Instant::now() + LEASE_WAIT;
        while std::time::Instant::now() < deadline {
            // SAFETY: plain fcntl on a descriptor we own.
            if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_WRLCK) } == 0 {
                return Some(WriteLease(file));
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EAGAIN) {
                tracing::debug!(file = %path.display(), error = %err, "no write lease; writing without");
                return None;
            }
            std::thread::sleep(LEASE_RETRY);
        }
        tracing::debug!(file = %path.display(), "file kept open by a reader; writing without a lease");
        None
    }
}

impl Drop for WriteLease<'_> {
    fn drop(&mut self) {
        // SAFETY: plain fcntl on a descriptor we own; closing the file would release it too.
        unsafe { libc::fcntl(self.0.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
    }
}

fn apply(file: &File, path: &Path, old: &[u8], new: &[u8]) -> Result<(), NamesError> {
    let plan = plan_write(old, new);
    if plan.extend.is_none() && plan.patch.is_none() && plan.truncate_to.is_none() {
        return Ok(());
    }
    {
        let _lease = WriteLease::take(file, path);
        if let Some((offset, pad)) = &plan.extend {
            file.write_all_at(pad, *offset)
                .map_err(file_err("extend", path))?;
        }
        if let Some((offset, bytes)) = &plan.patch {
            file.write_all_at(bytes, *offset)
                .map_err(file_err("write", path))?;
        }
    }
    // Outside the lease (a truncation by the holder may wait on its own lease): it only cuts
    // padding, so a reader racing it still sees the complete new content.
    if let Some(len) = plan.truncate_to {
        file.set_len(len).map_err(file_err("truncate", path))?;
    }
    Ok(())
}

/// Rewrites `path` in place (same inode) with `new_content`, following [`plan_write`].
/// Creates the file if it does not exist.
pub fn write_in_place(path: &Path, new_content: &str) -> Result<(), NamesError> {
    let file = open_locked(path)?;
    let old = read_all(&file, path)?;
    apply(&file, path, &old, new_content.as_bytes())
}

/// Reads `path`, merges `block` into it ([`merge`]) and rewrites it in place if the result
/// differs from what is there (ignoring trailing whitespace). Returns whether it wrote.
/// The read-merge-write runs under the file lock, so cooperating writers do not lose updates.
/// A missing file is created with just the block.
pub fn update_file(path: &Path, block: &str) -> Result<bool, NamesError> {
    let file = open_locked(path)?;
    let old = read_all(&file, path)?;
    let existing = String::from_utf8_lossy(&old);
    let merged = merge(&existing, block);
    if merged.trim_end() == existing.trim_end() {
        return Ok(false);
    }
    apply(&file, path, &old, merged.as_bytes())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::os::unix::fs::MetadataExt;

    fn rec(network: &str, id: &str, name: &str, aliases: &[&str], ip: [u8; 4]) -> NameRecord {
        NameRecord {
            network: network.into(),
            endpoint_id: id.into(),
            name: name.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            ip: Ipv4Addr::from(ip),
        }
    }

    #[test]
    fn block_lists_self_then_peers() {
        let own = [rec("net1", "e1", "c1", &[], [10, 1, 0, 2])];
        let peers = [
            rec("net1", "e3", "c3", &["web"], [10, 1, 0, 4]),
            rec("net1", "e2", "c2", &["web", "api"], [10, 1, 0, 3]),
        ];
        assert_eq!(
            render_block(&own, &peers),
            "# BEGIN overlay-agent managed\n\
             10.1.0.2\tc1 c1.net1\n\
             10.1.0.3\tc2 c2.net1 web web.net1 api api.net1\n\
             10.1.0.4\tc3 c3.net1 web web.net1\n\
             # END overlay-agent managed\n"
        );
    }

    #[test]
    fn block_skips_records_that_would_corrupt_the_file() {
        let peers = [
            rec("net1", "e2", "evil\n1.2.3.4 x", &[], [10, 1, 0, 3]),
            rec("net1", "e3", "c3", &["#x"], [10, 1, 0, 4]),
            rec("net1", "e4", "c4", &[], [10, 1, 0, 5]),
        ];
        let block = render_block(&[], &peers);
        assert_eq!(block.lines().count(), 3, "{block}");
        assert!(block.contains("10.1.0.5\tc4 c4.net1\n"));
    }

    #[test]
    fn block_for_endpoint_uses_zone_scope() {
        let zone = Zone::build(vec![
            rec("net1", "e2", "c2", &[], [10, 1, 0, 3]),
            rec("net1", "e1", "c1", &[], [10, 1, 0, 2]),
            rec("net2", "e1", "c1", &[], [10, 2, 0, 2]),
            rec("net2", "e9", "c9", &[], [10, 2, 0, 9]),
            rec("net3", "e7", "c7", &[], [10, 3, 0, 7]),
        ]);
        let block = block_for_endpoint(&zone, "e1", &["net1".into(), "net2".into()]);
        let lines: Vec<&str> = block.lines().collect();
        assert_eq!(
            lines,
            [
                BEGIN_MARKER,
                "10.1.0.2\tc1 c1.net1",
                "10.2.0.2\tc1 c1.net2",
                "10.1.0.3\tc2 c2.net1",
                "10.2.0.9\tc9 c9.net2",
                END_MARKER
            ]
        );
    }

    const DOCKER: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
                          10.1.0.2\tabc123\n";

    #[test]
    fn merge_appends_then_replaces_in_place() {
        let b1 = render_block(&[rec("net1", "e1", "c1", &[], [10, 1, 0, 2])], &[]);
        let once = merge(DOCKER, &b1);
        assert_eq!(once, format!("{DOCKER}{b1}"));
        // User adds a line after the block; the block is replaced where it is.
        let edited = format!("{once}192.0.2.1 mine\n");
        let b2 = render_block(&[rec("net1", "e1", "c1", &["x"], [10, 1, 0, 2])], &[]);
        assert_eq!(merge(&edited, &b2), format!("{DOCKER}{b2}192.0.2.1 mine\n"));
        // Idempotent.
        assert_eq!(merge(&merge(&edited, &b2), &b2), merge(&edited, &b2));
    }

    #[test]
    fn merge_keeps_files_without_localhost_untouched() {
        let odd = "# only a comment\n10.9.9.9 something\n";
        let b = render_block(&[], &[]);
        assert_eq!(merge(odd, &b), format!("{odd}{b}"));
        assert_eq!(merge("", &b), b);
        assert_eq!(
            merge("no-newline-at-end", &b),
            format!("no-newline-at-end\n{b}")
        );
    }

    #[test]
    fn merge_drops_padding_and_damaged_markers() {
        let b = render_block(&[rec("net1", "e1", "c1", &[], [10, 1, 0, 2])], &[]);
        let padded = format!("{DOCKER}{b}        \n   \n");
        assert_eq!(merge(&padded, &b), format!("{DOCKER}{b}"));
        // BEGIN without END: the rest of the file was ours.
        let cut = format!("{DOCKER}{BEGIN_MARKER}\n10.1.0.7\told\n");
        assert_eq!(merge(&cut, &b), format!("{DOCKER}{b}"));
        // Stray END.
        let stray = format!("{DOCKER}{END_MARKER}\n");
        assert_eq!(merge(&stray, &b), format!("{DOCKER}{b}"));
        // Two blocks collapse into one, at the first position.
        let two = format!("{b}{DOCKER}{b}");
        assert_eq!(merge(&two, &b), format!("{b}{DOCKER}"));
        assert_eq!(remove_block(&format!("{DOCKER}{b}")), DOCKER);
    }

    /// Applies a plan to an in-memory file, checking every intermediate state.
    fn simulate(old: &[u8], new: &[u8]) -> Vec<u8> {
        let plan = plan_write(old, new);
        let mut file = old.to_vec();
        let trimmed = |b: &[u8]| String::from_utf8_lossy(b).trim_end().to_string();
        if let Some((off, pad)) = &plan.extend {
            assert_eq!(*off as usize, file.len());
            assert!(pad.iter().all(u8::is_ascii_whitespace));
            file.extend_from_slice(pad);
            assert_eq!(
                trimmed(&file),
                trimmed(old),
                "extension changed the content"
            );
        }
        if let Some((off, bytes)) = &plan.patch {
            let off = *off as usize;
            assert!(
                off + bytes.len() <= file.len(),
                "the patch must not change the size"
            );
            file[off..off + bytes.len()].copy_from_slice(bytes);
        }
        assert_eq!(trimmed(&file), trimmed(new));
        if let Some(len) = plan.truncate_to {
            assert!(file[len as usize..].iter().all(u8::is_ascii_whitespace));
            file.truncate(len as usize);
        }
        assert_eq!(trimmed(&file), trimmed(new));
        file
    }

    #[test]
    fn plan_pads_instead_of_shrinking() {
        let p = plan_write(b"0123456789abcdefghi\n", b"short\n");
        assert_eq!(p.extend, None);
        let (off, bytes) = p.patch.unwrap();
        assert_eq!(off, 0);
        // The final newline is already there: 19 bytes change, the size stays 20.
        assert_eq!(bytes.len(), 19);
        assert!(bytes.starts_with(b"short\n"));
        assert!(bytes[6..].iter().all(|b| *b == b' '));
        assert_eq!(p.truncate_to, None);
        let after = simulate(b"0123456789abcdefghi\n", b"short\n");
        assert_eq!(after.len(), 20);
        assert_eq!(after.last(), Some(&b'\n'));

        let grow = plan_write(b"ab\n", b"longer\n");
        assert_eq!(grow.extend, Some((3, b"   \n".to_vec())));
        assert_eq!(grow.patch, Some((0, b"longer".to_vec())));
        assert_eq!(grow.truncate_to, None);

        let huge = plan_write(&vec![b'x'; 100_000], b"x\n");
        assert_eq!(huge.truncate_to, Some(2));
        simulate(&vec![b'x'; 100_000], b"x\n");
    }

    #[test]
    fn plan_writes_only_the_differing_range() {
        let same = plan_write(b"12345\n", b"12345\n");
        assert_eq!(
            same,
            WritePlan {
                extend: None,
                patch: None,
                truncate_to: None
            }
        );
        let mid = plan_write(b"a b c d\n", b"a X c d\n");
        assert_eq!(mid.patch, Some((2, b"X".to_vec())));
        // Inserting a line in the middle rewrites from there to the end.
        let old = b"head\n10.0.0.1 a\n10.0.0.3 c\n";
        let new = b"head\n10.0.0.1 a\n10.0.0.2 b\n10.0.0.3 c\n";
        let p = plan_write(old, new);
        // "10.0.0.3" and "10.0.0.2" first differ at offset 5 + 11 + 7.
        assert_eq!(p.patch.as_ref().unwrap().0, 23);
        simulate(old, new);
    }

    #[test]
    fn plan_states_are_always_old_or_new() {
        let versions: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"x".to_vec(),
            b"127.0.0.1 localhost\n".to_vec(),
            b"127.0.0.1 localhost\n10.0.0.2 c2 c2.net1\n".to_vec(),
            vec![b'y'; 9000],
            b"no newline".to_vec(),
        ];
        for a in &versions {
            for b in &versions {
                let after = simulate(a, b);
                // Applying the same update again is a no-op.
                let again = plan_write(&after, b);
                assert!(again.patch.is_none() && again.extend.is_none(), "{again:?}");
            }
        }
    }

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("nmt-hosts-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn write_in_place_keeps_inode_and_content() {
        let dir = tmpdir("inode");
        let path = dir.join("hosts");
        std::fs::write(&path, DOCKER).unwrap();
        let ino = std::fs::metadata(&path).unwrap().ino();
        let b = render_block(
            &[rec("net1", "e1", "c1", &[], [10, 1, 0, 2])],
            &[rec(
                "net1",
                "e2",
                "c2",
                &["alias-with-a-long-name"],
                [10, 1, 0, 3],
            )],
        );
        assert!(update_file(&path, &b).unwrap());
        assert!(
            !update_file(&path, &b).unwrap(),
            "second update must be a no-op"
        );
        let content = std::fs::read_to_string(&path).unwrap();
        assert_eq!(content, format!("{DOCKER}{b}"));
        // Shrink: padded, same inode, same semantic content.
        let small = render_block(&[rec("net1", "e1", "c1", &[], [10, 1, 0, 2])], &[]);
        assert!(update_file(&path, &small).unwrap());
        let content = std::fs::read_to_string(&path).unwrap();
        assert_eq!(content.len(), DOCKER.len() + b.len());
        assert_eq!(content.trim_end(), format!("{DOCKER}{small}").trim_end());
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
        // Removing the block keeps Docker's lines.
        assert!(update_file(&path, "").unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim_end(),
            DOCKER.trim_end()
        );
        // A missing file is created.
        let fresh = dir.join("fresh");
        assert!(update_file(&fresh, &small).unwrap());
        assert_eq!(std::fs::read_to_string(&fresh).unwrap(), small);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn write_in_place_reports_errors() {
        let err = write_in_place(Path::new("/nonexistent-dir-nmt/hosts"), "x").unwrap_err();
        assert!(
            matches!(err, NamesError::File { action: "open", .. }),
            "{err}"
        );
    }
}
