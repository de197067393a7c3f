//! A small PKI for a lab's etcd over TLS (`--kv etcds`), made with rcgen: a CA, the etcd
//! server's certificate (SANs: the underlay gateway address, 127.0.0.1, localhost), and
//! client certificates. Files are written with mode 0600 in a directory of mode 0700.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::Path,
};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

fn write(path: &Path, text: &str) -> Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

fn new_ca(cn: &str) -> Result<(String, Issuer<'static, KeyPair>)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let pem = params.self_signed(&key)?.pem();
    Ok((pem, Issuer::new(params, key)))
}

/// A PKI directory: `ca.pem` and, per [`Pki::issue`], `<name>.pem` and `<name>-key.pem`.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    dir: std::path::PathBuf,
}

impl Pki {
    /// Makes a CA called `cn` in `dir` (created, mode 0700).
    pub fn create(dir: &Path, cn: &str) -> Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let (pem, issuer) = new_ca(cn)?;
        write(&dir.join("ca.pem"), &pem)?;
        Ok(Self {
            issuer,
            dir: dir.to_path_buf(),
        })
    }

    /// Issues `<name>.pem`/`<name>-key.pem` with common name `cn` and subject alternative
    /// names `sans` (addresses or DNS names), usable by servers and clients.
    pub fn issue(&self, name: &str, cn: &str, sans: &[&str]) -> Result<()> {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        write(&self.dir.join(format!("{name}.pem")), &cert.pem())?;
        write(
            &self.dir.join(format!("{name}-key.pem")),
            &key.serialize_pem(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_pem_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("xtask-pki-{}", std::process::id()));
        let pki = Pki::create(&dir, "test-ca").unwrap();
        pki.issue("server", "etcd", &["127.0.0.1", "localhost"])
            .unwrap();
        for f in ["ca.pem", "server.pem", "server-key.pem"] {
            let p = dir.join(f);
            let text = fs::read_to_string(&p).unwrap();
            assert!(text.starts_with("-----BEGIN"), "{f}");
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
