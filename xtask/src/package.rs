//! `cargo xtask package`: the Debian package `overlay-agent_<version>_amd64.deb`.
//!
//! 1. Builds the release binaries.
//! 2. Generates, under `<target>/release/deb/`, what the package ships besides them, all from
//!    the project's own sources: the commented config file and the man pages and shell
//!    completions (from the clap definitions), the Debian and upstream changelogs (from
//!    `CHANGELOG.md`) and the copyright file (the project's licence and every crate linked
//!    into the binaries, from `cargo metadata`, with the licence files those crates ship).
//! 3. Runs cargo-deb ([`CARGO_DEB_VERSION`], installed by `scripts/package-deps.sh`) with the
//!    `[package.metadata.deb]` table of `agent/Cargo.toml`: stripped binaries, the systemd
//!    unit and maintainer scripts of `agent/debian/`.
//! 4. Checks what it built ([`check`]): the file list, modes, control fields, conffiles,
//!    maintainer scripts and that both binaries are stripped. A package that fails the check
//!    is an error.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, anyhow, bail};
use clap::CommandFactory;
use serde_json::Value;

use crate::sh;

/// The cargo-deb release the package is built with (`scripts/package-deps.sh` installs it).
pub const CARGO_DEB_VERSION: &str = "3.8.0";
/// Name of the package.
pub const NAME: &str = "overlay-agent";
/// The group the package creates for socket access (`socket-group` in the config file).
pub const GROUP: &str = "overlay-agent";

/// `cargo xtask package` flags.
#[derive(Debug, clap::Args)]
pub struct PackageArgs {
    /// Debian revision: the part of the package version after the release. A higher one is
    /// an upgrade of the same release.
    #[arg(long, default_value = "1")]
    pub revision: String,
    /// Directory to write the .deb to [default: <target>/debian].
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Where cargo puts build output: `CARGO_TARGET_DIR` (relative to the workspace) or
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    let ws = workspace();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => ws.join(d),
        None => ws.join("target"),
    }
}

/// Builds, generates, packages and checks; returns the path of the .deb.
pub fn run(args: &PackageArgs) -> Result<PathBuf> {
    if !args
        .revision
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "+.~".contains(c))
        || args.revision.is_empty()
    {
        bail!(
            "invalid --revision {:?}: letters, digits, '+', '.', '~'",
            args.revision
        );
    }
    check_tools()?;
    let ws = workspace();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("== cargo build --release -p {NAME} --bins");
    let status = Command::new(&cargo)
        .current_dir(&ws)
        .args(["build", "--quiet", "--release", "-p", NAME, "--bins"])
        .status()?;
    if !status.success() {
        bail!("building the release binaries failed");
    }
    let release = release_of(&ws)?;
    let version = format!("{release}-{}", args.revision);
    let gen_dir = target_dir().join("release/deb");
    println!("== generating {}", gen_dir.display());
    generate(&ws, &gen_dir, &release, &version)?;

    let out = args
        .output
        .clone()
        .unwrap_or_else(|| target_dir().join("debian"));
    fs::create_dir_all(&out)?;
    println!("== cargo deb {version}");
    let o = sh::run(
        Command::new(&cargo)
            .current_dir(&ws)
            .args([
                "deb",
                "-p",
                NAME,
                "--no-build",
                "--locked",
                "--strip",
                "--no-separate-debug-symbols",
                "--no-dbgsym",
                "--deb-revision",
                &args.revision,
                "--output",
            ])
            .arg(&out),
    )?;
    let printed = String::from_utf8_lossy(&o.stdout);
    let deb = printed
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo deb printed no .deb path")?;
    let want = out.join(format!("{NAME}_{version}_amd64.deb"));
    if deb != want && fs::canonicalize(&deb).ok() != fs::canonicalize(&want).ok() {
        bail!(
            "cargo deb wrote {}, expected {}",
            deb.display(),
            want.display()
        );
    }
    println!("== checking {}", want.display());
    let problems = inspect(&want, &version)?;
    if !problems.is_empty() {
        bail!(
            "{} is not right:\n  {}",
            want.display(),
            problems.join("\n  ")
        );
    }
    println!(
        "package ok: {} ({} KiB)",
        want.display(),
        fs::metadata(&want)?.len() >> 10
    );
    Ok(want)
}

fn check_tools() -> Result<()> {
    let out = Command::new("cargo").args(["deb", "--version"]).output();
    let have = out
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match have {
        Some(v) if v.split_whitespace().nth(1) == Some(CARGO_DEB_VERSION) => {}
        other => bail!(
            "cargo-deb {CARGO_DEB_VERSION} is needed (found: {}): run scripts/package-deps.sh",
            other.unwrap_or_else(|| "none".into())
        ),
    }
    for tool in ["dpkg-deb", "dpkg-shlibdeps", "readelf", "gzip"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is missing: run scripts/package-deps.sh");
        }
    }
    Ok(())
}

/// The workspace release (`version` of `[workspace.package]`).
fn release_of(ws: &Path) -> Result<String> {
    let text = fs::read_to_string(ws.join("Cargo.toml"))?;
    let mut in_section = false;
    for l in text.lines() {
        let l = l.trim();
        if l.starts_with('[') {
            in_section = l == "[workspace.package]";
        } else if in_section && let Some(v) = l.strip_prefix("version") {
            let v = v
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"');
            return Ok(v.to_string());
        }
    }
    bail!("no version in [workspace.package] of Cargo.toml")
}

/// Everything under `dir` the package ships besides the binaries and `agent/debian/`.
fn generate(ws: &Path, dir: &Path, release: &str, version: &str) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    let changelog_md = fs::read_to_string(ws.join("CHANGELOG.md")).context("CHANGELOG.md")?;
    let releases = parse_changelog(&changelog_md)?;
    let date = releases
        .iter()
        .find(|r| r.version == release)
        .map(|r| r.date.clone())
        .ok_or_else(|| {
            anyhow!("CHANGELOG.md has no section for {release}: add `## {release} - YYYY-MM-DD`")
        })?;

    // The config file, from the agent's flags.
    let entries = overlay_agent::conffile::entries()?;
    let conf = overlay_agent::conffile::render(
        &entries,
        &[("socket-group", toml::Value::String(GROUP.into()))],
    );
    write(&dir.join("config.toml"), conf.as_bytes())?;

    // Man pages: overlay-agent(8), overlayctl(1) and one page per overlayctl subcommand.
    let agent = overlay_agent::config::Cli::command();
    man_page(
        agent,
        "8",
        &date,
        &dir.join("man/man8"),
        Some(AGENT_MAN_EXTRA),
    )?;
    let ctl = overlay_agent::ctl::Cli::command().disable_help_subcommand(true);
    man_pages(ctl, "1", &date, &dir.join("man/man1"))?;

    // Shell completions.
    for (bin, mut cmd) in [
        ("overlay-agent", overlay_agent::config::Cli::command()),
        ("overlayctl", overlay_agent::ctl::Cli::command()),
    ] {
        for (shell, name) in [
            (clap_complete::Shell::Bash, bin.to_string()),
            (clap_complete::Shell::Zsh, format!("_{bin}")),
            (clap_complete::Shell::Fish, format!("{bin}.fish")),
        ] {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd, bin, &mut buf);
            write(
                &dir.join(format!("completions/{}/{name}", shell_dir(shell))),
                &buf,
            )?;
        }
    }

    // Changelogs: Debian's (one entry per release) and the upstream one, both compressed.
    let maintainer = deb_field(ws, "maintainer")?;
    let deb_changelog = debian_changelog(&releases, release, version, &maintainer)?;
    write(&dir.join("changelog"), deb_changelog.as_bytes())?;
    gzip(&dir.join("changelog"), &dir.join("changelog.Debian.gz"))?;
    write(&dir.join("changelog.upstream"), changelog_md.as_bytes())?;
    gzip(&dir.join("changelog.upstream"), &dir.join("changelog.gz"))?;

    // Copyright and the licences of every crate in the binaries.
    let crates = linked_crates(ws)?;
    let copyright = copyright_file(&crates, &deb_field(ws, "copyright")?);
    write(&dir.join("copyright"), copyright.as_bytes())?;
    for c in crates.iter().filter(|c| c.needs_own_licence()) {
        for f in &c.licence_files {
            let name = f.file_name().context("licence file name")?;
            let dst = dir
                .join("licenses")
                .join(format!("{}-{}", c.name, c.version))
                .join(name);
            fs::create_dir_all(dst.parent().expect("has a parent"))?;
            fs::copy(f, &dst).with_context(|| format!("copying {}", f.display()))?;
        }
    }
    Ok(())
}

fn shell_dir(shell: clap_complete::Shell) -> &'static str {
    match shell {
        clap_complete::Shell::Bash => "bash",
        clap_complete::Shell::Zsh => "zsh",
        clap_complete::Shell::Fish => "fish",
        _ => "other",
    }
}

fn write(path: &Path, data: &[u8]) -> Result<()> {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p)?;
    }
    fs::write(path, data).with_context(|| format!("writing {}", path.display()))
}

/// `gzip -9n` (no name or time stamp in the header: the same input gives the same bytes).
fn gzip(src: &Path, dst: &Path) -> Result<()> {
    let out = sh::run(Command::new("gzip").args(["-9n", "-c"]).arg(src))?;
    write(dst, &out.stdout)
}

/// Sections of the overlay-agent man page beyond the flags.
const AGENT_MAN_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/overlay\-agent/config.toml\fR
The settings, read with \fB\-\-config\fR by the systemd unit; every flag is a key.
.TP
\fI/run/overlay\-agent/overlay.sock\fR
The control socket \fBoverlayctl\fR(1) talks to (\fB\-\-run\-dir\fR).
.TP
\fI/run/docker/plugins/ovl.sock\fR
The Docker network and IPAM plugin, with \fB\-\-docker\-plugin\fR.
.TP
\fI/var/lib/overlay\-agent\fR
Local state: attachments, the gateway subnet, the embedded KV (\fB\-\-state\-dir\fR).
.SH SYSTEMD
The unit \fBoverlay\-agent.service\fR is ordered before \fBdocker.service\fR and reports
ready (Type=notify) once the control socket, and the plugin socket when enabled, answer.
Stopping or restarting the agent leaves the datapath in place: containers keep their
traffic, and the next agent adopts what is programmed.
.SH SEE ALSO
\fBoverlayctl\fR(1)
"#;

/// One page for `cmd` in `section`, written to `dir`; `extra` is roff put before the version.
fn man_page(
    cmd: clap::Command,
    section: &str,
    date: &str,
    dir: &Path,
    extra: Option<&str>,
) -> Result<()> {
    // Subcommands carry no version of their own; their pages show the binary's.
    let cmd = cmd.version(overlay_agent::VERSION);
    let man = clap_mangen::Man::new(cmd)
        .section(section)
        .date(date)
        .manual("overlay-agent manual");
    let mut buf = Vec::new();
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    man.render_options_section(&mut buf)?;
    if extra.is_none() && man_has_subcommands(&man) {
        man.render_subcommands_section(&mut buf)?;
    }
    if let Some(e) = extra {
        buf.extend_from_slice(e.as_bytes());
    }
    man.render_version_section(&mut buf)?;
    let raw = dir.join(man.get_filename());
    write(&raw, &buf)?;
    let gz = dir.join(format!("{}.gz", man.get_filename()));
    gzip(&raw, &gz)?;
    fs::remove_file(&raw)?;
    Ok(())
}

fn man_has_subcommands(man: &clap_mangen::Man) -> bool {
    let mut buf = Vec::new();
    man.render_subcommands_section(&mut buf).is_ok() && buf.len() > 20
}

/// Pages for `cmd` and, recursively, each of its subcommands (`overlayctl-network-create.1`).
fn man_pages(cmd: clap::Command, section: &str, date: &str, dir: &Path) -> Result<()> {
    let mut cmd = cmd;
    cmd.build();
    fn walk(cmd: &clap::Command, section: &str, date: &str, dir: &Path) -> Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, section, date, dir)?;
        }
        man_page(cmd.clone(), section, date, dir, None)
    }
    walk(&cmd, section, date, dir)
}

/// A field of `[package.metadata.deb]` in `agent/Cargo.toml`.
fn deb_field(ws: &Path, key: &str) -> Result<String> {
    let text = fs::read_to_string(ws.join("agent/Cargo.toml"))?;
    let doc: toml::Table = toml::from_str(&text).context("agent/Cargo.toml")?;
    doc.get("package")
        .and_then(|p| p.get("metadata"))
        .and_then(|m| m.get("deb"))
        .and_then(|d| d.get(key))
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no {key} in [package.metadata.deb] of agent/Cargo.toml"))
}

/// One release of `CHANGELOG.md`: `## VERSION - YYYY-MM-DD` and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The release (`0.1.0`).
    pub version: String,
    /// Its date, `YYYY-MM-DD`.
    pub date: String,
    /// Its lines, as written.
    pub body: Vec<String>,
}

/// The releases of a `CHANGELOG.md`, newest first.
pub fn parse_changelog(text: &str) -> Result<Vec<Release>> {
    let mut out: Vec<Release> = Vec::new();
    for l in text.lines() {
        if let Some(h) = l.strip_prefix("## ") {
            let (v, d) = h.split_once(" - ").ok_or_else(|| {
                anyhow!("CHANGELOG.md: heading {l:?} is not `## VERSION - YYYY-MM-DD`")
            })?;
            let (v, d) = (v.trim(), d.trim());
            if civil_from(d).is_none() {
                bail!("CHANGELOG.md: {d:?} in {l:?} is not a date YYYY-MM-DD");
            }
            out.push(Release {
                version: v.to_string(),
                date: d.to_string(),
                body: Vec::new(),
            });
        } else if let Some(r) = out.last_mut() {
            r.body.push(l.to_string());
        }
    }
    if out.is_empty() {
        bail!("CHANGELOG.md has no release (`## VERSION - YYYY-MM-DD`)");
    }
    Ok(out)
}

/// Year, month, day of `YYYY-MM-DD`.
fn civil_from(d: &str) -> Option<(i64, u32, u32)> {
    let mut it = d.split('-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: u32 = it.next()?.parse().ok()?;
    let day: u32 = it.next()?.parse().ok()?;
    (it.next().is_none() && (1..=12).contains(&m) && (1..=31).contains(&day) && d.len() == 10)
        .then_some((y, m, day))
}

/// `YYYY-MM-DD` as the RFC 2822 date a Debian changelog trailer wants (midnight UTC).
pub fn rfc2822(d: &str) -> Result<String> {
    let (y, m, day) = civil_from(d).ok_or_else(|| anyhow!("bad date {d:?}"))?;
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil), then the weekday.
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    Ok(format!("{wd}, {day:02} {mon} {y} 00:00:00 +0000"))
}

/// The Debian changelog: one entry per release of `CHANGELOG.md`, newest first; the entry of
/// `release` carries the package `version` (with its revision), older ones revision 1.
pub fn debian_changelog(
    releases: &[Release],
    release: &str,
    version: &str,
    maintainer: &str,
) -> Result<String> {
    let mut out = String::new();
    let mut found = false;
    for r in releases {
        let v = if r.version == release {
            found = true;
            version.to_string()
        } else {
            format!("{}-1", r.version)
        };
        writeln!(out, "{NAME} ({v}) unstable; urgency=medium\n")?;
        let mut items: Vec<String> = Vec::new();
        for l in &r.body {
            let t = l.trim();
            if let Some(item) = t.strip_prefix("- ") {
                items.push(item.to_string());
            } else if !t.is_empty() && l.starts_with("  ") && !items.is_empty() {
                let last = items.last_mut().expect("not empty");
                last.push(' ');
                last.push_str(t);
            } else if !t.is_empty() {
                items.push(t.to_string());
            }
        }
        if items.is_empty() {
            items.push(format!("Release {}.", r.version));
        }
        for item in items {
            let mut line = String::from("  *");
            for word in item.split_whitespace() {
                if line.len() + 1 + word.len() > 78 && line.len() > 3 {
                    writeln!(out, "{line}")?;
                    line = String::from("   ");
                }
                line.push(' ');
                line.push_str(word);
            }
            writeln!(out, "{line}")?;
        }
        writeln!(out, "\n -- {maintainer}  {}\n", rfc2822(&r.date)?)?;
    }
    if !found {
        bail!("CHANGELOG.md has no section for {release}");
    }
    Ok(out)
}

/// A crate linked into the binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crate {
    /// Crate name.
    pub name: String,
    /// Version.
    pub version: String,
    /// SPDX licence expression from its manifest.
    pub license: String,
    /// Its authors (may be empty).
    pub authors: Vec<String>,
    /// Whether it is one of this workspace's crates.
    pub local: bool,
    /// The licence files it ships (LICENSE*, COPYING*, NOTICE*, UNLICENSE).
    pub licence_files: Vec<PathBuf>,
}

impl Crate {
    /// Whether the package must carry this crate's own licence files: unless it is ours, or
    /// may be used under the Apache-2.0 licence alone (whose text Debian ships in
    /// `/usr/share/common-licenses`).
    pub fn needs_own_licence(&self) -> bool {
        !self.local && !apache_alternative(&self.license)
    }
}

/// Whether an SPDX expression offers Apache-2.0 alone as one of its alternatives
/// (`MIT OR Apache-2.0` yes; `(MIT OR Apache-2.0) AND Unicode-3.0` no).
pub fn apache_alternative(expr: &str) -> bool {
    let e = expr.replace('/', " OR ");
    if e.contains(" AND ") || e.contains(" WITH ") {
        return false;
    }
    e.split(" OR ")
        .map(|a| a.trim().trim_matches(|c| c == '(' || c == ')'))
        .any(|a| a == "Apache-2.0")
}

/// An SPDX expression in the syntax of Debian copyright files (`or`, `and`; Debian's names
/// for the licences in common-licenses).
pub fn dep5_license(expr: &str) -> String {
    expr.replace('/', " OR ")
        .split_whitespace()
        .map(|w| match w {
            "OR" => "or".to_string(),
            "AND" => "and".to_string(),
            "WITH" => "with".to_string(),
            _ => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every package `overlay-agent`'s binaries link (normal dependencies, transitively, for
/// x86_64 Linux; build scripts and dev-dependencies are not in the binaries).
fn linked_crates(ws: &Path) -> Result<Vec<Crate>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = sh::run(Command::new(cargo).current_dir(ws).args([
        "metadata",
        "--format-version",
        "1",
        "--locked",
        "--filter-platform",
        "x86_64-unknown-linux-gnu",
    ]))?;
    let meta: Value = serde_json::from_slice(&out.stdout)?;
    crates_from_metadata(&meta)
}

/// [`linked_crates`] over parsed `cargo metadata` output.
pub fn crates_from_metadata(meta: &Value) -> Result<Vec<Crate>> {
    let packages: HashMap<&str, &Value> = meta["packages"]
        .as_array()
        .context("metadata: packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: HashMap<&str, &Value> = meta["resolve"]["nodes"]
        .as_array()
        .context("metadata: resolve")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let root = packages
        .values()
        .find(|p| p["name"] == NAME)
        .and_then(|p| p["id"].as_str())
        .context("metadata: no overlay-agent package")?;
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        let node = nodes.get(id).context("metadata: node")?;
        for d in node["deps"].as_array().into_iter().flatten() {
            let normal = d["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            if normal && let Some(pkg) = d["pkg"].as_str() {
                stack.push(pkg);
            }
        }
    }
    let mut out = Vec::new();
    for id in seen {
        let p = packages.get(id).context("metadata: package")?;
        let manifest = PathBuf::from(p["manifest_path"].as_str().unwrap_or_default());
        let dir = manifest.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|f| {
                let n = f
                    .file_name()
                    .map(|n| n.to_string_lossy().to_ascii_uppercase())
                    .unwrap_or_default();
                f.is_file()
                    && ["LICENSE", "LICENCE", "COPYING", "NOTICE", "UNLICENSE"]
                        .iter()
                        .any(|pre| n.starts_with(pre))
            })
            .collect();
        files.sort();
        out.push(Crate {
            name: p["name"].as_str().unwrap_or_default().to_string(),
            version: p["version"].as_str().unwrap_or_default().to_string(),
            license: p["license"].as_str().unwrap_or("UNKNOWN").to_string(),
            authors: p["authors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect(),
            local: p["source"].is_null(),
            licence_files: files,
        });
    }
    out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    Ok(out)
}

/// The machine-readable copyright file: the project, then every crate in the binaries.
pub fn copyright_file(crates: &[Crate], holder: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: {NAME}\n\
         Comment: The binaries are statically linked with the Rust crates listed below\n \
         (vendor/NAME-VERSION). Crates that may be used under the Apache-2.0 licence are\n \
         used under it. The licence files of the others, with their copyright notices, are in\n \
         /usr/share/doc/{NAME}/licenses/NAME-VERSION/.\n"
    );
    let _ = writeln!(
        s,
        "Files: *\nCopyright: {holder}\nLicense: Apache-2.0\n\n\
         Files: ebpf/*\nCopyright: {holder}\nLicense: GPL-2 or Apache-2.0\n"
    );
    let mut licences: BTreeMap<String, ()> = BTreeMap::new();
    for c in crates.iter().filter(|c| !c.local) {
        let who = if c.authors.is_empty() {
            format!("the {} authors", c.name)
        } else {
            c.authors.join(", ")
        };
        let lic = dep5_license(&c.license);
        for w in lic.split(|ch: char| ch.is_whitespace() || ch == '(' || ch == ')') {
            if !w.is_empty() && !["or", "and", "with"].contains(&w) {
                licences.insert(w.to_string(), ());
            }
        }
        let _ = writeln!(
            s,
            "Files: vendor/{}-{}/*\nCopyright: {}\nLicense: {}",
            c.name,
            c.version,
            who.replace('\n', " "),
            lic
        );
        if c.name == "libsqlite3-sys" {
            let _ = writeln!(
                s,
                "Comment: bundles SQLite, which is in the public domain\n \
                 (https://www.sqlite.org/copyright.html)."
            );
        }
        s.push('\n');
    }
    licences.remove("Apache-2.0");
    s.push_str(
        "License: Apache-2.0\n \
         On Debian systems, the full text of the Apache License, Version 2.0 can be\n \
         found in the file `/usr/share/common-licenses/Apache-2.0'.\n\n\
         License: GPL-2\n \
         On Debian systems, the full text of the GNU General Public License version 2\n \
         can be found in the file `/usr/share/common-licenses/GPL-2'.\n",
    );
    for l in licences.keys() {
        let _ = write!(
            s,
            "\nLicense: {l}\n \
             The full text, with each crate's copyright notice, is in the licence files of\n \
             the crates under this licence: /usr/share/doc/{NAME}/licenses/NAME-VERSION/.\n"
        );
    }
    s
}

/// What the package must contain (paths as `dpkg-deb -c` prints them) besides the
/// per-subcommand man pages.
pub const REQUIRED: &[&str] = &[
    "./usr/sbin/overlay-agent",
    "./usr/bin/overlayctl",
    "./usr/lib/systemd/system/overlay-agent.service",
    "./etc/overlay-agent/config.toml",
    "./usr/share/man/man8/overlay-agent.8.gz",
    "./usr/share/man/man1/overlayctl.1.gz",
    "./usr/share/man/man1/overlayctl-network-create.1.gz",
    "./usr/share/man/man1/overlayctl-attach.1.gz",
    "./usr/share/bash-completion/completions/overlay-agent",
    "./usr/share/bash-completion/completions/overlayctl",
    "./usr/share/zsh/vendor-completions/_overlay-agent",
    "./usr/share/zsh/vendor-completions/_overlayctl",
    "./usr/share/fish/vendor_completions.d/overlay-agent.fish",
    "./usr/share/fish/vendor_completions.d/overlayctl.fish",
    "./usr/share/doc/overlay-agent/copyright",
    "./usr/share/doc/overlay-agent/changelog.Debian.gz",
    "./usr/share/doc/overlay-agent/changelog.gz",
];

/// Where files of the package may live.
const ALLOWED: &[&str] = &[
    "./usr/sbin/",
    "./usr/bin/",
    "./usr/lib/systemd/system/",
    "./etc/overlay-agent/",
    "./usr/share/man/",
    "./usr/share/bash-completion/",
    "./usr/share/zsh/",
    "./usr/share/fish/",
    "./usr/share/doc/overlay-agent/",
];

/// One line of `dpkg-deb -c`: mode, owner, path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// `-rwxr-xr-x`.
    pub mode: String,
    /// `root/root`.
    pub owner: String,
    /// `./usr/bin/overlayctl`.
    pub path: String,
}

/// Parses `dpkg-deb -c` output.
pub fn parse_listing(text: &str) -> Vec<Listed> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6).then(|| Listed {
                mode: f[0].to_string(),
                owner: f[1].to_string(),
                path: f[5..].join(" "),
            })
        })
        .collect()
}

/// What [`check`] looks at, read from a built package.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    /// `dpkg-deb -c`, parsed.
    pub listing: Vec<Listed>,
    /// The control file.
    pub control: String,
    /// The conffiles list.
    pub conffiles: String,
    /// Maintainer scripts by name (`postinst`, ...).
    pub scripts: BTreeMap<String, String>,
    /// Section names of the two binaries (`readelf -S`), by binary name.
    pub sections: BTreeMap<String, Vec<String>>,
}

/// Problems with a package: files, modes, owners, control fields, conffiles, maintainer
/// scripts, stripped binaries. Empty: all is well.
pub fn check(c: &Contents, version: &str) -> Vec<String> {
    let (listing, control, conffiles, scripts, sections) = (
        &c.listing,
        c.control.as_str(),
        c.conffiles.as_str(),
        &c.scripts,
        &c.sections,
    );
    let mut p = Vec::new();
    let paths: BTreeSet<&str> = listing.iter().map(|l| l.path.as_str()).collect();
    for r in REQUIRED {
        if !paths.contains(r) {
            p.push(format!("missing {r}"));
        }
    }
    for l in listing {
        if l.owner != "root/root" && l.owner != "0/0" {
            p.push(format!("{} is owned by {}", l.path, l.owner));
        }
        if l.mode.starts_with('d') {
            continue;
        }
        if !ALLOWED.iter().any(|a| l.path.starts_with(a)) {
            p.push(format!("unexpected file {}", l.path));
        }
        let exec = l.path.starts_with("./usr/sbin/") || l.path.starts_with("./usr/bin/");
        let want = if exec { "-rwxr-xr-x" } else { "-rw-r--r--" };
        if l.mode != want {
            p.push(format!("{} has mode {}, expected {want}", l.path, l.mode));
        }
        if l.path.starts_with("./usr/share/man/") && !l.path.ends_with(".gz") {
            p.push(format!("man page {} is not compressed", l.path));
        }
    }
    let field = |name: &str| {
        control
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    if field("Package") != NAME {
        p.push(format!("Package is {:?}", field("Package")));
    }
    if field("Version") != version {
        p.push(format!(
            "Version is {:?}, expected {version:?}",
            field("Version")
        ));
    }
    if field("Architecture") != "amd64" {
        p.push(format!("Architecture is {:?}", field("Architecture")));
    }
    let depends = field("Depends");
    for d in ["libc6", "adduser", "nftables", "iptables"] {
        if !depends.split(',').any(|x| x.trim().starts_with(d)) {
            p.push(format!("Depends lacks {d}: {depends:?}"));
        }
    }
    if !conffiles
        .lines()
        .any(|l| l.trim() == "/etc/overlay-agent/config.toml")
    {
        p.push(format!(
            "/etc/overlay-agent/config.toml is not a conffile ({conffiles:?})"
        ));
    }
    let script = |n: &str| scripts.get(n).map(String::as_str).unwrap_or("");
    if !script("postinst").contains(&format!("addgroup --system --quiet {GROUP}")) {
        p.push("postinst does not create the socket group".into());
    }
    if !script("postinst").contains("deb-systemd-helper") {
        p.push("postinst lacks the systemd unit handling".into());
    }
    if !script("postrm").contains("purge") || !script("postrm").contains("/var/lib/overlay-agent") {
        p.push("postrm does not clean up on purge".into());
    }
    for bin in ["overlay-agent", "overlayctl"] {
        match sections.get(bin) {
            None => p.push(format!("{bin}: no section list")),
            Some(s) => {
                // `.debug_gdb_scripts` is loaded with the program (it names gdb's pretty
                // printers): strip keeps it; it carries no debug information.
                if let Some(d) = s.iter().find(|n| {
                    *n == ".symtab" || (n.starts_with(".debug_") && *n != ".debug_gdb_scripts")
                }) {
                    p.push(format!("{bin} is not stripped (has {d})"));
                }
                if !s.iter().any(|n| n == ".text") {
                    p.push(format!("{bin}: no .text section (not a binary?)"));
                }
            }
        }
    }
    p
}

/// Section names from `readelf -S --wide` output.
pub fn parse_sections(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l.strip_prefix('[')?;
            let (idx, after) = rest.split_once(']')?;
            if idx.trim() == "Nr" {
                return None;
            }
            after.split_whitespace().next().map(str::to_string)
        })
        .collect()
}

/// Reads a built package and returns its problems (see [`check`]).
pub fn inspect(deb: &Path, version: &str) -> Result<Vec<String>> {
    let listing = String::from_utf8(sh::run(Command::new("dpkg-deb").arg("-c").arg(deb))?.stdout)?;
    let tmp = tempdir()?;
    let ctl = tmp.join("DEBIAN");
    sh::run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&ctl))?;
    sh::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
    let read = |p: PathBuf| fs::read_to_string(p).unwrap_or_default();
    let control = read(ctl.join("control"));
    let conffiles = read(ctl.join("conffiles"));
    let mut scripts = BTreeMap::new();
    for s in ["preinst", "postinst", "prerm", "postrm"] {
        scripts.insert(s.to_string(), read(ctl.join(s)));
    }
    let mut sections = BTreeMap::new();
    for (bin, path) in [
        ("overlay-agent", "usr/sbin/overlay-agent"),
        ("overlayctl", "usr/bin/overlayctl"),
    ] {
        if let Ok(o) = sh::run(
            Command::new("readelf")
                .args(["-S", "--wide"])
                .arg(tmp.join(path)),
        ) {
            sections.insert(
                bin.to_string(),
                parse_sections(&String::from_utf8_lossy(&o.stdout)),
            );
        }
    }
    let problems = check(
        &Contents {
            listing: parse_listing(&listing),
            control,
            conffiles,
            scripts,
            sections,
        },
        version,
    );
    print!("{listing}");
    fs::remove_dir_all(&tmp)?;
    Ok(problems)
}

fn tempdir() -> Result<PathBuf> {
    let base = target_dir().join("tmp");
    fs::create_dir_all(&base)?;
    let d = base.join(format!("package-check-{}", std::process::id()));
    if d.exists() {
        fs::remove_dir_all(&d)?;
    }
    fs::create_dir_all(&d)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MD: &str = "# Changelog\n\nIntro.\n\n## 0.2.0 - 2027-01-15\n\n- Two things,\n  wrapped.\n- Another.\n\n## 0.1.0 - 2026-12-06\n\nThe first release.\n";

    #[test]
    fn changelog_releases_and_debian_entries() {
        let r = parse_changelog(MD).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].version.as_str(), r[0].date.as_str()),
            ("0.2.0", "2027-01-15")
        );
        let d = debian_changelog(&r, "0.2.0", "0.2.0-3", "M <m@x.invalid>").unwrap();
        assert!(d.starts_with("overlay-agent (0.2.0-3) unstable; urgency=medium\n\n  * Two things, wrapped.\n  * Another.\n\n -- M <m@x.invalid>  Fri, 15 Jan 2027 00:00:00 +0000\n"), "{d}");
        assert!(d.contains("overlay-agent (0.1.0-1) unstable"), "{d}");
        assert!(d.contains("  * The first release.\n"), "{d}");
        assert!(d.contains("Sun, 06 Dec 2026 00:00:00 +0000"), "{d}");
        assert!(debian_changelog(&r, "0.3.0", "0.3.0-1", "M").is_err());
        assert!(parse_changelog("## 0.1.0\n").is_err());
        assert!(parse_changelog("## 0.1.0 - 2026-13-01\n").is_err());
        assert!(parse_changelog("nothing").is_err());
    }

    #[test]
    fn weekdays() {
        assert_eq!(
            rfc2822("1970-01-01").unwrap(),
            "Thu, 01 Jan 1970 00:00:00 +0000"
        );
        assert_eq!(
            rfc2822("2000-02-29").unwrap(),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
        assert_eq!(
            rfc2822("2026-12-06").unwrap(),
            "Sun, 06 Dec 2026 00:00:00 +0000"
        );
    }

    #[test]
    fn licences() {
        assert!(apache_alternative("MIT OR Apache-2.0"));
        assert!(apache_alternative("MIT/Apache-2.0"));
        assert!(apache_alternative("Apache-2.0"));
        assert!(!apache_alternative("MIT"));
        assert!(!apache_alternative("(MIT OR Apache-2.0) AND Unicode-3.0"));
        assert!(!apache_alternative("Apache-2.0 AND ISC"));
        assert_eq!(dep5_license("MIT/Apache-2.0"), "MIT or Apache-2.0");
        assert_eq!(
            dep5_license("(MIT OR Apache-2.0) AND Unicode-3.0"),
            "(MIT or Apache-2.0) and Unicode-3.0"
        );
        let c = |name: &str, lic: &str, local: bool| Crate {
            name: name.into(),
            version: "1.0.0".into(),
            license: lic.into(),
            authors: vec![],
            local,
            licence_files: vec![],
        };
        let text = copyright_file(
            &[
                c("ours", "Apache-2.0", true),
                c("a", "MIT OR Apache-2.0", false),
                c("b", "ISC", false),
            ],
            "2026 us",
        );
        assert!(text.contains(
            "Files: vendor/a-1.0.0/*\nCopyright: the a authors\nLicense: MIT or Apache-2.0\n"
        ));
        assert!(text.contains("\nLicense: ISC\n"));
        assert!(text.contains("\nLicense: MIT\n"));
        assert!(!text.contains("vendor/ours"));
        assert!(text.contains("/usr/share/common-licenses/Apache-2.0"));
    }

    #[test]
    fn crates_from_cargo_metadata() {
        let meta = serde_json::json!({
            "packages": [
                {"id": "agent", "name": "overlay-agent", "version": "0.1.0", "license": "Apache-2.0", "authors": [], "source": null, "manifest_path": "/nonexistent/agent/Cargo.toml"},
                {"id": "tokio", "name": "tokio", "version": "1.0.0", "license": "MIT", "authors": ["T"], "source": "registry", "manifest_path": "/nonexistent/tokio/Cargo.toml"},
                {"id": "cc", "name": "cc", "version": "1.0.0", "license": "MIT", "authors": [], "source": "registry", "manifest_path": "/nonexistent/cc/Cargo.toml"},
                {"id": "tempfile", "name": "tempfile", "version": "3.0.0", "license": "MIT", "authors": [], "source": "registry", "manifest_path": "/nonexistent/tempfile/Cargo.toml"},
            ],
            "resolve": {"nodes": [
                {"id": "agent", "deps": [
                    {"pkg": "tokio", "dep_kinds": [{"kind": null}]},
                    {"pkg": "cc", "dep_kinds": [{"kind": "build"}]},
                    {"pkg": "tempfile", "dep_kinds": [{"kind": "dev"}]},
                ]},
                {"id": "tokio", "deps": []},
                {"id": "cc", "deps": []},
                {"id": "tempfile", "deps": []},
            ]}
        });
        let c = crates_from_metadata(&meta).unwrap();
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["overlay-agent", "tokio"]);
        assert!(c[0].local && !c[1].local);
        assert!(c[1].needs_own_licence() && !c[0].needs_own_licence());
    }

    fn good() -> Contents {
        let mut listing = String::from("drwxr-xr-x root/root 0 2026-12-06 00:00 ./\n");
        for r in REQUIRED {
            let mode = if r.contains("/bin/") || r.contains("/sbin/") {
                "-rwxr-xr-x"
            } else {
                "-rw-r--r--"
            };
            listing.push_str(&format!("{mode} 0/0 10 2026-12-06 00:00 {r}\n"));
        }
        let mut scripts = BTreeMap::new();
        scripts.insert(
            "postinst".into(),
            "addgroup --system --quiet overlay-agent\ndeb-systemd-helper update-state".into(),
        );
        scripts.insert(
            "postrm".into(),
            "if [ \"$1\" = purge ]; then rm -rf /var/lib/overlay-agent; fi".into(),
        );
        let mut sections = BTreeMap::new();
        for b in ["overlay-agent", "overlayctl"] {
            sections.insert(
                b.to_string(),
                vec![".text".to_string(), ".rodata".to_string()],
            );
        }
        Contents {
            listing: parse_listing(&listing),
            control: "Package: overlay-agent\nVersion: 0.1.0-1\nArchitecture: amd64\n\
                      Depends: adduser, iptables, libc6 (>= 2.34), nftables\n"
                .to_string(),
            conffiles: "/etc/overlay-agent/config.toml\n".to_string(),
            scripts,
            sections,
        }
    }

    #[test]
    fn a_good_package_passes_and_each_fault_is_named() {
        let good = good();
        assert_eq!(check(&good, "0.1.0-1"), Vec::<String>::new());

        let mut c = good.clone();
        c.listing
            .retain(|x| x.path != "./usr/share/man/man8/overlay-agent.8.gz");
        c.listing.push(
            parse_listing("-rw-r--r-- root/root 1 2026-12-06 00:00 ./usr/local/bin/x\n")[0].clone(),
        );
        let p = check(&c, "0.1.0-1");
        assert!(
            p.iter()
                .any(|x| x.contains("missing ./usr/share/man/man8/overlay-agent.8.gz")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|x| x.contains("unexpected file ./usr/local/bin/x")),
            "{p:?}"
        );

        // strip keeps .debug_gdb_scripts (loaded with the program); debug info is a fault.
        let mut c = good.clone();
        let ctl = c.sections.get_mut("overlayctl").unwrap();
        ctl.push(".debug_gdb_scripts".into());
        assert_eq!(check(&c, "0.1.0-1"), Vec::<String>::new());
        c.sections
            .get_mut("overlayctl")
            .unwrap()
            .push(".debug_line".into());
        assert_eq!(
            check(&c, "0.1.0-1"),
            vec!["overlayctl is not stripped (has .debug_line)".to_string()]
        );

        let c = Contents {
            control: good.control.replace("adduser, ", ""),
            conffiles: String::new(),
            scripts: BTreeMap::new(),
            ..good.clone()
        };
        let p = check(&c, "0.1.0-2");
        for want in [
            "Version is",
            "Depends lacks adduser",
            "not a conffile",
            "socket group",
            "purge",
        ] {
            assert!(p.iter().any(|x| x.contains(want)), "{want}: {p:?}");
        }

        let mut c = good.clone();
        c.listing[1].mode = "-rwxrwxrwx".into();
        c.listing[2].owner = "user/user".into();
        assert_eq!(check(&c, "0.1.0-1").len(), 2);
    }

    #[test]
    fn readelf_sections() {
        let out = "There are 3 section headers:\n\nSection Headers:\n  [Nr] Name Type Address Off Size ES Flg Lk Inf Al\n  [ 0]                   NULL            0000000000000000 000000 000000 00      0   0  0\n  [ 1] .text PROGBITS 0 0 0 0 AX 0 0 16\n  [ 2] .debug_info PROGBITS 0 0 0 0 0 0 1\n";
        assert_eq!(parse_sections(out), vec!["NULL", ".text", ".debug_info"]);
    }
}
