//! Naming rules. There is one rule for network names, used by the CLI, the store, the Docker
//! plugin and both datapaths, so a name one layer accepts is never refused by another.

use crate::error::{Error, Result};

/// Longest network name.
pub const MAX_NETWORK_NAME: usize = 48;

/// A network name: 1-48 characters of `[A-Za-z0-9_-]`, starting with a letter or digit.
///
/// Why these limits: a network name is the file name of the kernel datapath's sandbox
/// namespace, part of KV keys and of ifalias markers (at most 255 bytes together with the
/// endpoint id), and the last label of `name.network` in DNS, which must split
/// unambiguously, so no dots. Docker allows more characters (dots) in its names; a Docker
/// network that breaks this rule is refused by the plugin with this message, before anything
/// is reserved.
pub fn validate_network_name(name: &str) -> Result<()> {
    validate_label(name, "network name", MAX_NETWORK_NAME, false)
}

/// A container name or alias: 1-63 characters of `[A-Za-z0-9_.-]`, starting with a letter or
/// digit (Docker's rule; 63 is a DNS label).
pub fn validate_endpoint_name(name: &str) -> Result<()> {
    validate_label(name, "container name", 63, true)
}

fn validate_label(s: &str, what: &'static str, max: usize, dots: bool) -> Result<()> {
    if s.is_empty() || s.len() > max {
        return Err(Error::name(what, s, format!("must be 1-{max} characters")));
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(Error::name(what, s, "must start with a letter or digit"));
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || (dots && c == '.');
    if let Some(bad) = s.chars().find(|c| !ok(*c)) {
        return Err(Error::name(
            what,
            s,
            format!("character {bad:?} not allowed"),
        ));
    }
    Ok(())
}

/// Endpoint ids are stored in interface aliases: printable ASCII without spaces, 1-128 long.
pub fn validate_endpoint_id(id: &str) -> Result<()> {
    if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(Error::name(
            "endpoint id",
            id,
            "use 1-128 printable ASCII characters without spaces",
        ))
    }
}

/// Linux interface names: 1-15 bytes, no '/', ':' or whitespace, not `.` or `..`.
pub fn validate_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(Error::name(
            "interface name",
            name,
            "1-15 characters, no '/', ':' or spaces",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_names() {
        for ok in ["net1", "my_net-2", "9", &"x".repeat(48)] {
            assert!(validate_network_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "a.b",
            "",
            "-x",
            "_x",
            "a/b",
            "a b",
            "../etc",
            &"x".repeat(49),
        ] {
            assert!(validate_network_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            validate_network_name("bad.name").unwrap_err().to_string(),
            "invalid network name \"bad.name\": character '.' not allowed"
        );
    }

    #[test]
    fn container_names_ids_and_ifnames() {
        assert!(validate_endpoint_name("web.1").is_ok());
        assert!(validate_endpoint_name(&"x".repeat(64)).is_err());
        assert!(validate_endpoint_id("3f4e8d2c1b0a").is_ok());
        assert!(validate_endpoint_id("has space").is_err());
        assert!(validate_endpoint_id(&"x".repeat(129)).is_err());
        assert!(validate_ifname("eth0").is_ok());
        for bad in ["", ".", "..", "a/b", "a:b", "way-too-long-name", "a b"] {
            assert!(validate_ifname(bad).is_err(), "{bad}");
        }
    }
}
