//! A throwaway PKI for the TLS tests, made with rcgen in a temp dir: the cluster's CA, one
//! certificate for every etcd member (SANs 127.0.0.1 and localhost), client certificates
//! whose common names are etcd user names, and a second, unrelated ("rogue") CA with a
//! client certificate of its own.

use std::path::{Path, PathBuf};

use anyhow::Result;
use ovl_kv::{EtcdSecurity, secure};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

use super::MemberTls;

/// The files, under one temp dir (removed on drop).
pub struct Pki {
    dir: TempDir,
}

fn ca(cn: &str) -> Result<(String, Issuer<'static, KeyPair>)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

/// A leaf certificate for `cn` (and `sans`), good for both server and client use.
fn leaf(cn: &str, sans: &[&str], issuer: &Issuer<'static, KeyPair>) -> Result<(String, String)> {
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
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl Pki {
    /// Makes every file: `ca.pem`; `server.pem`/`server-key.pem`; `<cn>.pem`/`<cn>-key.pem`
    /// for each of `clients`; `rogue-ca.pem` and `rogue-<cn>.pem`/`rogue-<cn>-key.pem` for the
    /// first client, signed by the rogue CA.
    pub fn new(clients: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("kvt-pki-").tempdir()?;
        let pki = Self { dir };
        let (ca_pem, issuer) = ca("kvt-ca")?;
        pki.write("ca.pem", &ca_pem)?;
        let (cert, key) = leaf("kvt-etcd", &["127.0.0.1", "localhost"], &issuer)?;
        pki.write("server.pem", &cert)?;
        pki.write("server-key.pem", &key)?;
        for cn in clients {
            let (cert, key) = leaf(cn, &[], &issuer)?;
            pki.write(&format!("{cn}.pem"), &cert)?;
            pki.write(&format!("{cn}-key.pem"), &key)?;
        }
        let (rogue_pem, rogue) = ca("kvt-rogue-ca")?;
        pki.write("rogue-ca.pem", &rogue_pem)?;
        if let Some(cn) = clients.first() {
            let (cert, key) = leaf(cn, &[], &rogue)?;
            pki.write(&format!("rogue-{cn}.pem"), &cert)?;
            pki.write(&format!("rogue-{cn}-key.pem"), &key)?;
        }
        Ok(pki)
    }

    fn write(&self, name: &str, text: &str) -> Result<()> {
        std::fs::write(self.path(name), text)?;
        Ok(())
    }

    /// A file of the PKI.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What etcd members start with.
    pub fn member(&self) -> MemberTls {
        MemberTls {
            ca: self.path("ca.pem"),
            cert: self.path("server.pem"),
            key: self.path("server-key.pem"),
        }
    }

    /// Security settings loaded the way the agent loads them: trusting `ca` (a file name),
    /// presenting client certificate `client` (`<client>.pem` and `<client>-key.pem`), and
    /// logging in as `user`.
    pub fn security(
        &self,
        ca: &str,
        client: Option<&str>,
        user: Option<(&str, &str)>,
    ) -> Result<EtcdSecurity> {
        Ok(EtcdSecurity {
            ca_pem: Some(secure::load_ca(&self.path(ca))?),
            identity: match client {
                Some(c) => Some(secure::load_identity(
                    &self.path(&format!("{c}.pem")),
                    &self.path(&format!("{c}-key.pem")),
                )?),
                None => None,
            },
            user: user.map(|(u, p)| (u.to_string(), secure::Password::new(p))),
        })
    }
}
