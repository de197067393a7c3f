//! The host's WireGuard key pair and its key file.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use boringtun::x25519;

use crate::{Error, Result};

/// Length in bytes of a Curve25519 key.
const KEY_LEN: usize = 32;
/// Length of a key in standard base64 (with one `=` of padding).
const KEY_B64_LEN: usize = 44;

/// A WireGuard (Curve25519) public key.
///
/// Displayed, parsed and serialized as standard base64 (44 characters), the
/// form `wg` and WireGuard configuration files use.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub(crate) fn to_x25519(self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&B64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bytes = decode_key(s).map_err(|reason| Error::InvalidPublicKey {
            input: s.to_owned(),
            reason,
        })?;
        Ok(PublicKey(bytes))
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Decodes a 44-character standard-base64 key into its 32 bytes.
fn decode_key(s: &str) -> std::result::Result<[u8; KEY_LEN], &'static str> {
    if s.len() != KEY_B64_LEN {
        return Err("expected 44 characters of standard base64");
    }
    let bytes = B64.decode(s).map_err(|_| "not valid standard base64")?;
    bytes.try_into().map_err(|_| "does not decode to 32 bytes")
}

/// The host's WireGuard key pair.
///
/// `Debug` shows only the public key: the private key must never reach a log.
#[derive(Clone)]
pub struct KeyPair {
    secret: x25519::StaticSecret,
    public: PublicKey,
}

impl KeyPair {
    /// A fresh random key pair from the operating system's CSPRNG.
    pub fn generate() -> KeyPair {
        let mut bytes = [0u8; KEY_LEN];
        // The OS RNG failing means the host cannot make any key safely; there
        // is no sensible fallback.
        getrandom::fill(&mut bytes).expect("operating system random number generator failed");
        // Clamped as `wg genkey` does, so the key file is byte-for-byte what
        // WireGuard's own tools would write (x25519 clamps on use anyway).
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        KeyPair::from_private_bytes(bytes)
    }

    /// The key pair whose private key is `bytes`.
    pub fn from_private_bytes(bytes: [u8; KEY_LEN]) -> KeyPair {
        let secret = x25519::StaticSecret::from(bytes);
        let public = PublicKey(x25519::PublicKey::from(&secret).to_bytes());
        KeyPair { secret, public }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The private key's bytes, for the kernel's WireGuard (which takes the key itself).
    pub(crate) fn private_bytes(&self) -> [u8; KEY_LEN] {
        self.secret().to_bytes()
    }

    pub(crate) fn secret(&self) -> &x25519::StaticSecret {
        &self.secret
    }

    /// The private key in the key file's form (base64, no newline).
    fn private_base64(&self) -> String {
        B64.encode(self.secret.to_bytes())
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .field("private", &"<redacted>")
            .finish()
    }
}

/// Loads the key pair from `path`, or creates a new one there if the file does
/// not exist.
///
/// The file holds the base64 private key and a newline (the format of
/// `wg genkey`). It is created with mode 0600 atomically: written to a
/// temporary file beside it, fsynced, then linked into place, so a crash never
/// leaves a truncated key and two concurrent creators agree on one key. An
/// existing file is refused if group or others have any access to it, or if it
/// does not hold a valid key. The parent directory must exist.
pub fn load_or_create(path: &Path) -> Result<KeyPair> {
    match read_key_file(path) {
        Ok(pair) => return Ok(pair),
        Err(Error::KeyIo { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let pair = KeyPair::generate();
    let tmp = write_tmp(path, &pair)?;
    // hard_link fails if the target exists, unlike rename: a key another
    // process created meanwhile is kept, not silently replaced.
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_parent(path)?;
            tracing::info!(path = %path.display(), public_key = %pair.public, "created WireGuard key");
            Ok(pair)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_key_file(path),
        Err(e) => Err(key_io(path, "linking new key file into place", e)),
    }
}

/// Replaces the key at `path` with a new pair (`keys rotate`), written
/// atomically as [`load_or_create`] does, and returns it.
pub fn replace(path: &Path) -> Result<KeyPair> {
    let pair = KeyPair::generate();
    let tmp = write_tmp(path, &pair)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(key_io(path, "renaming new key file into place", e));
    }
    sync_parent(path)?;
    tracing::info!(path = %path.display(), public_key = %pair.public, "replaced WireGuard key");
    Ok(pair)
}

fn key_io(path: &Path, context: &'static str, source: io::Error) -> Error {
    Error::KeyIo {
        path: path.to_owned(),
        context,
        source,
    }
}

fn read_key_file(path: &Path) -> Result<KeyPair> {
    // O_NOFOLLOW: the mode check below must be about the file we read, not a
    // symlink's target someone could swap.
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| key_io(path, "opening key file", e))?;
    let meta = file
        .metadata()
        .map_err(|e| key_io(path, "reading key file metadata", e))?;
    if !meta.is_file() {
        return Err(Error::KeyInvalid {
            path: path.to_owned(),
            reason: "not a regular file".into(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::KeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = String::new();
    // A key file is 45 bytes; reading a little more is enough to reject junk.
    (&mut file)
        .take(256)
        .read_to_string(&mut text)
        .map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => Error::KeyInvalid {
                path: path.to_owned(),
                reason: "not UTF-8 text".into(),
            },
            _ => key_io(path, "reading key file", e),
        })?;
    let line = text.strip_suffix('\n').unwrap_or(&text);
    let bytes = decode_key(line).map_err(|reason| Error::KeyInvalid {
        path: path.to_owned(),
        reason: reason.into(),
    })?;
    Ok(KeyPair::from_private_bytes(bytes))
}

/// Writes `pair`'s private key to a fresh 0600 temporary file beside `path`
/// and fsyncs it; returns the temporary path.
fn write_tmp(path: &Path, pair: &KeyPair) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| Error::KeyInvalid {
        path: path.to_owned(),
        reason: "path has no file name".into(),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    // A leftover from a crashed run of this same pid is stale by definition.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.write_all(pair.private_base64().as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(key_io(&tmp, "writing temporary key file", e));
    }
    Ok(tmp)
}

/// Makes the new directory entry durable, so a crash after we return cannot
/// bring the old key (or no key) back.
fn sync_parent(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| key_io(parent, "syncing key file directory", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_0600_and_reloaded_identically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        let a = load_or_create(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 45);
        assert!(text.ends_with('\n'));
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public(), b.public());
        assert_eq!(a.secret().to_bytes(), b.secret().to_bytes());
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn stricter_mode_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        let a = load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(load_or_create(&path).unwrap().public(), a.public());
    }

    #[test]
    fn group_readable_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        load_or_create(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, Error::KeyPermissions { mode: 0o644, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("0644") && msg.contains("0600"), "{msg}");
    }

    #[test]
    fn garbage_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        for junk in [
            &b"hello\n"[..],
            b"",
            b"!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!=\n",
            b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
            b"\xff\xfe\n",
        ] {
            fs::write(&path, junk).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            let err = load_or_create(&path).unwrap_err();
            assert!(matches!(err, Error::KeyInvalid { .. }), "{junk:?}: {err:?}");
            assert!(err.to_string().contains("wg.key"), "{err}");
        }
        // A refused file is left alone, never overwritten.
        assert_eq!(fs::read(&path).unwrap(), b"\xff\xfe\n");
    }

    #[test]
    fn wg_genkey_format_accepted() {
        // A key as `wg genkey` prints it (test vector, never used anywhere).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        f.write_all(b"YHKVyvCZ6oPFC9Ky/0WvhjoxTTpXxA8GHQ1DTZs4zWQ=\n")
            .unwrap();
        let pair = load_or_create(&path).unwrap();
        assert_eq!(
            pair.private_base64(),
            "YHKVyvCZ6oPFC9Ky/0WvhjoxTTpXxA8GHQ1DTZs4zWQ="
        );
    }

    #[test]
    fn replace_changes_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wg.key");
        let a = load_or_create(&path).unwrap();
        let b = replace(&path).unwrap();
        assert_ne!(a.public(), b.public());
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        assert_eq!(load_or_create(&path).unwrap().public(), b.public());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn missing_parent_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("wg.key");
        let err = load_or_create(&path).unwrap_err();
        assert!(matches!(err, Error::KeyIo { .. }), "{err:?}");
    }

    #[test]
    fn public_key_base64_roundtrip_and_serde() {
        let pair = KeyPair::generate();
        let pk = pair.public();
        let s = pk.to_string();
        assert_eq!(s.len(), 44);
        assert_eq!(s.parse::<PublicKey>().unwrap(), pk);
        let json = serde_json::to_string(&pk).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), pk);
        assert!(serde_json::from_str::<PublicKey>("\"abc\"").is_err());
        assert!("abc".parse::<PublicKey>().is_err());
        // 44 chars but 33 bytes' worth is impossible; 44 chars of the wrong
        // alphabet must fail.
        assert!(format!("{}=", "-".repeat(43)).parse::<PublicKey>().is_err());
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let pair = KeyPair::generate();
        let dbg = format!("{pair:?}");
        assert!(!dbg.contains(&pair.private_base64()), "{dbg}");
        assert!(dbg.contains(&pair.public().to_string()), "{dbg}");
    }
}
