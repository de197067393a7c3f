//! The config file the Debian package installs as `/etc/overlay-agent/config.toml`: every
//! setting of `overlay-agent`, commented out, with its default (or, for settings without
//! one, an example). It is rendered from the clap definitions of [`Cli`]: the keys, help texts
//! and environment variables are the flags' own, and the defaults are what
//! [`Settings::resolve`] picks when nothing is given. A flag this module knows neither a
//! default nor an example for is an error, so a new flag cannot be left out of the file.

use clap::CommandFactory;
use toml::Value;

use crate::config::{Cli, Settings};

/// Where the package installs the file (the systemd unit passes it with `--config`).
pub const PATH: &str = "/etc/overlay-agent/config.toml";

/// Arguments that are not settings of the file.
const NOT_SETTINGS: &[&str] = &["config", "help", "version"];

/// A flag the file cannot describe.
#[derive(Debug, thiserror::Error)]
#[error(
    "--{0} has neither a default nor an example in agent/src/conffile.rs: add it to `examples` \
     (and to the config file section of README.md)"
)]
pub struct UnknownSetting(pub String);

/// One setting of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Key: the long flag without dashes (`host-id`).
    pub key: String,
    /// The flag's help text.
    pub help: String,
    /// Its environment variable, if any.
    pub env: Option<String>,
    /// Its possible values, when they are a fixed set.
    pub values: Vec<String>,
    /// What the agent uses when the setting is absent; `None`: no default.
    pub default: Option<Value>,
    /// An example value, for settings without a default.
    pub example: Option<Value>,
}

impl Entry {
    /// The value written on the (commented) line: the default, else the example.
    pub fn shown(&self) -> &Value {
        self.default
            .as_ref()
            .or(self.example.as_ref())
            .expect("entries have a default or an example")
    }
}

/// The defaults of the settings that have one, as [`Settings::resolve`] fills them in.
pub fn defaults() -> Vec<(&'static str, Value)> {
    let cli = Cli {
        host_id: Some("h".into()),
        advertise_addr: Some("192.0.2.1".into()),
        ..Cli::default()
    };
    let s = Settings::resolve(cli).expect("the defaults are valid");
    let path = |p: &std::path::Path| Value::String(p.display().to_string());
    let secs = |d: std::time::Duration| Value::Integer(d.as_secs() as i64);
    vec![
        ("datapath", Value::String(s.datapath.to_string())),
        ("run-dir", path(&s.run_dir)),
        ("state-dir", path(&s.state_dir)),
        ("docker-plugin", Value::Boolean(s.docker_plugin)),
        (
            "no-docker-network-sync",
            Value::Boolean(!s.docker_network_sync),
        ),
        ("datapath-fallback", Value::Boolean(s.datapath_fallback)),
        ("vxlan-port", Value::Integer(i64::from(s.vxlan_port))),
        ("wg-port", Value::Integer(i64::from(s.wg_port))),
        ("wireguard", Value::String(s.wireguard.to_string())),
        (
            "encrypted-vxlan-port",
            Value::Integer(i64::from(s.encrypted_vxlan_port)),
        ),
        ("lease-ttl", secs(s.lease_ttl)),
        ("resync-interval", secs(s.resync_interval)),
        ("subnet-pool", Value::String(s.subnet_pool.pool.to_string())),
    ]
}

/// Examples for the settings without a default (required, off, or chosen at run time, as
/// their help says). Settings announced in DESIGN.md are listed before their flags exist.
pub fn examples() -> Vec<(&'static str, Value)> {
    let s = |v: &str| Value::String(v.into());
    vec![
        ("host-id", s("node1")),
        ("advertise-addr", s("192.0.2.11")),
        (
            "kv",
            s("etcds://192.0.2.5:2379,192.0.2.6:2379,192.0.2.7:2379"),
        ),
        ("gw-subnet", s("172.31.0.0/24")),
        ("metrics-addr", s("127.0.0.1:9464")),
        ("dns-upstream", s("192.0.2.53,192.0.2.54")),
        ("dns-addr", s("169.254.53.53")),
        ("dns-interfaces", s("docker0,docker_gwbridge,br-*")),
        ("socket-group", s("overlay-agent")),
        ("kv-ca", s("/etc/overlay-agent/etcd-ca.pem")),
        ("kv-cert", s("/etc/overlay-agent/etcd-client.pem")),
        ("kv-key", s("/etc/overlay-agent/etcd-client-key.pem")),
        ("kv-user", s("overlay-agent")),
        ("kv-password-file", s("/etc/overlay-agent/etcd-password")),
    ]
}

/// The settings of `cmd` (the agent's command line), in flag order.
pub fn entries_for(cmd: &clap::Command) -> Result<Vec<Entry>, UnknownSetting> {
    let defaults = defaults();
    let examples = examples();
    let lookup = |list: &[(&str, Value)], key: &str| {
        list.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    };
    let mut out = Vec::new();
    for arg in cmd.get_arguments() {
        let Some(key) = arg.get_long() else { continue };
        if NOT_SETTINGS.contains(&key) || arg.is_hide_set() {
            continue;
        }
        let default = lookup(&defaults, key);
        let example = lookup(&examples, key);
        if default.is_none() && example.is_none() {
            return Err(UnknownSetting(key.to_string()));
        }
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        out.push(Entry {
            key: key.to_string(),
            help,
            env: arg.get_env().map(|e| e.to_string_lossy().into_owned()),
            values: arg
                .get_possible_values()
                .iter()
                .map(|v| v.get_name().to_string())
                .collect(),
            default,
            example,
        });
    }
    Ok(out)
}

/// The settings of `overlay-agent`.
pub fn entries() -> Result<Vec<Entry>, UnknownSetting> {
    entries_for(&Cli::command())
}

/// Wraps `text` into `# `-comment lines of at most 95 columns.
fn comment(text: &str, out: &mut String) {
    for para in text.split('\n') {
        let mut line = String::from("#");
        for word in para.split_whitespace() {
            if line.len() + 1 + word.len() > 95 && line.len() > 1 {
                out.push_str(&line);
                out.push('\n');
                line = String::from("#");
            }
            line.push(' ');
            line.push_str(word);
        }
        out.push_str(&line);
        out.push('\n');
    }
}

/// The file: a header, then every setting commented out with its default (or an example).
/// `set` lists settings the package turns on, written uncommented when the flag exists.
pub fn render(entries: &[Entry], set: &[(&str, Value)]) -> String {
    let mut out = String::new();
    comment(
        "overlay-agent configuration, read by the systemd unit (`overlay-agent --config \
         /etc/overlay-agent/config.toml`). Every setting of `overlay-agent --help` is listed \
         with its default; keys are the long flags. Flags and OVERLAY_* environment \
         variables given to the agent win over this file.\n\
         \n\
         Set at least host-id and advertise-addr, and kv on every host of a cluster (the \
         embedded default serves one machine only). Then `systemctl enable --now \
         overlay-agent` (or `systemctl restart overlay-agent` after a change: the datapath \
         stays in place across restarts).\n\
         \n\
         Generated from the agent's flags (agent/src/conffile.rs); see overlay-agent(8).",
        &mut out,
    );
    for e in entries {
        out.push('\n');
        comment(&e.help, &mut out);
        let mut facts = Vec::new();
        if let Some(env) = &e.env {
            facts.push(format!("Environment: {env}."));
        }
        if !e.values.is_empty() {
            facts.push(format!("Values: {}.", e.values.join(", ")));
        }
        facts.push(match &e.default {
            Some(_) => "Default:".to_string(),
            None => "Not set by default; for example:".to_string(),
        });
        comment(&facts.join(" "), &mut out);
        out.push_str(&format!("#{} = {}\n", e.key, e.shown()));
        if let Some((_, v)) = set.iter().find(|(k, _)| *k == e.key) {
            out.push_str("# Set by the package:\n");
            out.push_str(&format!("{} = {v}\n", e.key));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Parser};

    fn file() -> String {
        render(&entries().unwrap(), &[])
    }

    #[test]
    fn every_flag_is_in_the_file() {
        let text = file();
        let cmd = Cli::command();
        let mut n = 0;
        for arg in cmd.get_arguments() {
            let Some(key) = arg.get_long() else { continue };
            if NOT_SETTINGS.contains(&key) {
                continue;
            }
            n += 1;
            assert!(
                text.lines().any(|l| l.starts_with(&format!("#{key} = "))),
                "--{key} is missing from the config file:\n{text}"
            );
            if let Some(env) = arg.get_env() {
                assert!(text.contains(&env.to_string_lossy().to_string()));
            }
        }
        assert!(n >= 15, "only {n} settings");
        assert!(text.contains("#lease-ttl = 10\n"), "{text}");
        assert!(text.contains("#datapath = \"kernel\"\n"), "{text}");
        assert!(text.contains("#docker-plugin = false\n"), "{text}");
        assert!(
            text.lines().all(|l| l.len() <= 95 || l.starts_with("#kv")),
            "{text}"
        );
    }

    #[test]
    fn a_flag_without_default_or_example_is_refused() {
        let cmd = Cli::command().arg(Arg::new("new-thing").long("new-thing"));
        let e = entries_for(&cmd).unwrap_err();
        assert_eq!(e.0, "new-thing");
        assert!(e.to_string().contains("conffile.rs"));
    }

    fn resolve(text: &str) -> Settings {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, text).unwrap();
        Settings::resolve(
            Cli::try_parse_from(["overlay-agent", "--config", p.to_str().unwrap()]).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    #[test]
    fn the_file_is_what_the_agent_reads() {
        // Everything commented: valid TOML that sets nothing (the agent then asks for its
        // host id, not about the file).
        let text = file();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, &text).unwrap();
        let e = Settings::resolve(
            Cli::try_parse_from(["overlay-agent", "--config", p.to_str().unwrap()]).unwrap(),
        )
        .unwrap_err();
        assert!(e.0.contains("--host-id is required"), "{e}");

        // Every line uncommented: the agent accepts every key and value, and the defaults
        // written are the ones it uses anyway.
        let entries = entries().unwrap();
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest)
                    if entries
                        .iter()
                        .any(|e| rest.starts_with(&format!("{} = ", e.key))) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        // The example files (etcd credentials) must exist for the agent to read them.
        let etc = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["node1".to_string()]).unwrap();
        for (f, text) in [
            ("etcd-password", "x\n".to_string()),
            ("etcd-ca.pem", ck.cert.pem()),
            ("etcd-client.pem", ck.cert.pem()),
            ("etcd-client-key.pem", ck.signing_key.serialize_pem()),
        ] {
            std::fs::write(etc.path().join(f), text).unwrap();
        }
        let uncommented = uncommented.replace(
            "\"/etc/overlay-agent/etcd-",
            &format!("\"{}/etcd-", etc.path().display()),
        );
        // The package creates its group; a test machine has root's.
        let uncommented = uncommented.replace(
            "socket-group = \"overlay-agent\"",
            "socket-group = \"root\"",
        );
        let all = resolve(&uncommented);
        let only_required = resolve("host-id = \"node1\"\nadvertise-addr = \"192.0.2.11\"\n");
        assert_eq!(all.host_id, "node1");
        assert_eq!(all.datapath, only_required.datapath);
        assert_eq!(all.run_dir, only_required.run_dir);
        assert_eq!(all.state_dir, only_required.state_dir);
        assert_eq!(all.lease_ttl, only_required.lease_ttl);
        assert_eq!(all.resync_interval, only_required.resync_interval);
        assert_eq!(all.vxlan_port, only_required.vxlan_port);
        assert_eq!(all.subnet_pool.pool, only_required.subnet_pool.pool);
        assert_eq!(all.docker_plugin, only_required.docker_plugin);
    }

    #[test]
    fn package_settings_are_written_only_for_existing_flags() {
        let entries = entries().unwrap();
        let set = [
            ("docker-plugin", Value::Boolean(true)),
            ("no-such-flag", Value::Boolean(true)),
        ];
        let text = render(&entries, &set);
        assert!(text.contains("\ndocker-plugin = true\n"), "{text}");
        assert!(!text.contains("no-such-flag"), "{text}");
        assert!(
            resolve(&format!(
                "{text}host-id = \"a\"\nadvertise-addr = \"192.0.2.1\"\n"
            ))
            .docker_plugin
        );
    }
}
