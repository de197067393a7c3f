//! TLS material and credentials for etcd (`etcds://`), read and checked before any connection,
//! and the reasons etcd gives when it refuses a client, in words an operator can act on.
//!
//! The files are read here once, at start: a file that is missing, is not PEM, holds no
//! certificate or no key, or a key that does not belong to the certificate is refused with a
//! one-line reason before anything touches the network. What only the cluster can judge (a CA
//! that did not sign the members' certificates, a client certificate etcd does not trust, a
//! wrong password) comes back from the first request as [`KvError::Refused`].

use std::{path::Path, sync::Arc, time::Duration};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{KvError, Result};

/// A password that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(p: impl Into<String>) -> Self {
        Self(p.into())
    }

    /// The password itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A client certificate (chain) and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// The certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// The private key.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// How to prove who we are to a secured etcd, and whom to trust. Everything optional:
/// [`Default`] is a plain, anonymous client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdSecurity {
    /// PEM certificates of the CA(s) that sign the members' server certificates; `None`
    /// trusts the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate for etcd's `--client-cert-auth` (with auth enabled, etcd takes the
    /// certificate's common name as the user name when no password is given).
    pub identity: Option<Identity>,
    /// User name and password for etcd's authentication (`etcdctl user add`).
    pub user: Option<(String, Password)>,
}

impl EtcdSecurity {
    /// Whether nothing is set (a plain `etcd://` client).
    pub fn is_empty(&self) -> bool {
        self.ca_pem.is_none() && self.identity.is_none() && self.user.is_none()
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| KvError::InvalidMaterial(format!("cannot read {}: {e}", path.display())))
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| KvError::InvalidMaterial(format!("{}: not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(KvError::InvalidMaterial(format!(
            "{}: no PEM certificate in it (\"-----BEGIN CERTIFICATE-----\")",
            path.display()
        )));
    }
    Ok(certs)
}

/// Reads a CA bundle: a PEM file with at least one certificate, each of which parses.
pub fn load_ca(path: &Path) -> Result<Vec<u8>> {
    let pem = read(path)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path, &pem)? {
        roots.add(cert).map_err(|e| {
            KvError::InvalidMaterial(format!(
                "{}: not a usable CA certificate: {e}",
                path.display()
            ))
        })?;
    }
    Ok(pem)
}

/// Reads a client certificate and its key, and checks that the key belongs to the
/// certificate (the leaf, the first one in the file).
pub fn load_identity(cert: &Path, key: &Path) -> Result<Identity> {
    let cert_pem = read(cert)?;
    let certs = certificates(cert, &cert_pem)?;
    let key_pem = read(key)?;
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        KvError::InvalidMaterial(format!(
            "{}: no usable PEM private key in it: {e}",
            key.display()
        ))
    })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| {
        KvError::InvalidMaterial(format!("{}: unsupported private key: {e}", key.display()))
    })?;
    rustls::sign::CertifiedKey::new(certs, signer)
        .keys_match()
        .map_err(|e| {
            KvError::InvalidMaterial(format!(
                "{} does not belong to the certificate {}: {e}",
                key.display(),
                cert.display()
            ))
        })?;
    Ok(Identity { cert_pem, key_pem })
}

/// Reads a password file: its first line, without the line end. An empty password is refused.
pub fn load_password(path: &Path) -> Result<Password> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| KvError::InvalidMaterial(format!("cannot read {}: {e}", path.display())))?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(KvError::InvalidMaterial(format!(
            "{}: the password (its first line) is empty",
            path.display()
        )));
    }
    Ok(Password::new(line))
}

/// Why a TLS handshake failed, if `err` (or anything in its chain of sources) is a TLS error.
pub(crate) fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(explain_tls(t));
        }
        // tokio-rustls wraps rustls errors in io::Error, whose `source` skips the wrapped error.
        if let Some(t) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(explain_tls(t));
        }
        cur = e.source();
    }
    None
}

fn explain_tls(e: &rustls::Error) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let hint = match e {
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "the etcd server certificate is not signed by the CA we trust (--kv-ca)"
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the etcd server certificate does not name the address we connect to (its \
             subject alternative names must include the host or IP of each endpoint)"
        }
        E::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => "the etcd server certificate is expired or not yet valid",
        E::AlertReceived(A::CertificateRequired) => {
            "etcd requires a client certificate (--kv-cert, --kv-key)"
        }
        E::AlertReceived(
            A::BadCertificate | A::UnknownCA | A::CertificateUnknown | A::UnsupportedCertificate,
        ) => "etcd did not accept our client certificate (--kv-cert: signed by a CA etcd trusts?)",
        E::AlertReceived(A::CertificateExpired) => "etcd says our client certificate expired",
        _ => "TLS handshake failed",
    };
    format!("{hint}: {e}")
}

/// What a direct TLS handshake with one endpoint found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// No TCP connection (refused, timed out).
    Unreachable(String),
    /// The handshake failed, or the server closed the connection right after it (how TLS 1.3
    /// servers reject a client certificate: after the client considers the handshake done).
    Refused(String),
    /// The server spoke HTTP/2 back: TLS is fine.
    Accepted,
}

/// The HTTP/2 client preface and an empty SETTINGS frame: what a gRPC client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

fn client_config(security: &EtcdSecurity) -> std::result::Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &security.ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots
                    .add(cert.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // One unusable system certificate must not hide the others.
                let _ = roots.add(cert);
            }
        }
    }
    // The provider tonic's TLS (feature tls-ring) uses for the real connections.
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| {
            #[allow(deprecated)]
            Arc::new(rustls::crypto::ring::default_provider())
        });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match &security.identity {
        Some(id) => {
            let certs = CertificateDer::pem_slice_iter(&id.cert_pem)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_slice(&id.key_pem).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Connects to `endpoint` (`host:port`), shakes hands as the gRPC client would and waits for
/// the server's first HTTP/2 frame, to tell a refused client from an unreachable server
/// (gRPC reports both as a closed connection).
pub(crate) async fn probe(endpoint: &str, security: &EtcdSecurity, deadline: Duration) -> Probe {
    let attempt = async {
        let host = match endpoint.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => endpoint,
        };
        let name = match ServerName::try_from(host.to_string()) {
            Ok(n) => n,
            Err(e) => return Probe::Refused(format!("{host:?} is not a TLS server name: {e}")),
        };
        let config = match client_config(security) {
            Ok(c) => c,
            Err(e) => return Probe::Refused(format!("TLS settings: {e}")),
        };
        let tcp = match tokio::net::TcpStream::connect(endpoint).await {
            Ok(t) => t,
            Err(e) => return Probe::Unreachable(format!("{endpoint}: {e}")),
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let mut tls = match connector.connect(name, tcp).await {
            Ok(t) => t,
            Err(e) => {
                return match tls_failure(&e) {
                    Some(why) => Probe::Refused(why),
                    None => Probe::Unreachable(format!("{endpoint}: TLS handshake: {e}")),
                };
            }
        };
        if let Err(e) = tls.write_all(H2_PREFACE).await.and(tls.flush().await) {
            return match tls_failure(&e) {
                Some(why) => Probe::Refused(why),
                None => Probe::Unreachable(format!("{endpoint}: {e}")),
            };
        }
        let mut byte = [0u8; 1];
        match tls.read(&mut byte).await {
            Ok(1..) => Probe::Accepted,
            Ok(0) => Probe::Refused(
                "etcd closed the connection right after the TLS handshake: it did not accept \
                 our client certificate (--kv-cert: signed by a CA etcd trusts?)"
                    .into(),
            ),
            Err(e) => match tls_failure(&e) {
                Some(why) => Probe::Refused(why),
                None => Probe::Unreachable(format!("{endpoint}: {e}")),
            },
        }
    };
    tokio::time::timeout(deadline, attempt)
        .await
        .unwrap_or_else(|_| {
            Probe::Unreachable(format!("{endpoint}: no answer within {deadline:?}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let s = EtcdSecurity {
            ca_pem: None,
            identity: Some(Identity {
                cert_pem: b"CERT".to_vec(),
                key_pem: b"-----BEGIN PRIVATE KEY----- sekrit".to_vec(),
            }),
            user: Some(("agent".into(), Password::new("hunter2"))),
        };
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("sekrit"), "{dbg}");
        assert!(dbg.contains("agent"), "{dbg}");
    }

    #[test]
    fn unreadable_or_wrong_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();
        let missing = dir.path().join("missing.pem");
        for (e, want) in [
            (load_ca(&missing).unwrap_err(), "cannot read"),
            (load_ca(&junk).unwrap_err(), "no PEM certificate"),
            (
                load_identity(&junk, &junk).unwrap_err(),
                "no PEM certificate",
            ),
            (load_password(&missing).unwrap_err(), "cannot read"),
        ] {
            let msg = e.to_string();
            assert!(msg.contains(want), "{msg}");
            assert!(msg.contains(dir.path().to_str().unwrap()), "{msg}");
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
        std::fs::write(&junk, "\nsecond line\n").unwrap();
        assert!(
            load_password(&junk)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        std::fs::write(&junk, "s3cret\n").unwrap();
        assert_eq!(load_password(&junk).unwrap().expose(), "s3cret");
    }

    #[test]
    fn tls_errors_are_found_inside_io_errors() {
        let inner = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, inner);
        let why = tls_failure(&io).expect("found");
        assert!(why.contains("not signed by the CA"), "{why}");
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(tls_failure(&plain).is_none());
    }
}
