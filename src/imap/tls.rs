//! TLS for the IMAP listeners: a rustls server configuration from the
//! PEM certificate chain and key named in the config, reloadable while the
//! server runs (SIGHUP after a renewal: new handshakes get the new
//! certificate, established sessions keep theirs), and, for `estafette
//! dev`, a self-signed certificate for localhost. Nothing else here: the
//! handshake itself happens in the connection code.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// The certificate and key the listeners present, read from PEM files and
/// re-read on demand. A reload that fails (a half-written renewal, a key
/// that does not match) keeps the certificate in use.
#[derive(Debug)]
pub struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificate {
    fn read(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| file_err(cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_err(cert, e))?;
        if certs.is_empty() {
            return Err(file_err(cert, "no certificate in this file"));
        }
        let der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
        let provider = rustls::crypto::ring::default_provider();
        let ck = CertifiedKey::from_der(certs, der, &provider)
            .map_err(|e| file_err(key, format!("does not fit the certificate {}: {e}", cert.display())))?;
        Ok(Arc::new(ck))
    }

    /// Reads the files again; on success new handshakes use them.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Self::read(&self.cert, &self.key)?;
        if let Ok(mut cur) = self.current.write() {
            *cur = fresh;
        }
        Ok(())
    }

    /// The end-entity certificate in use (DER).
    #[cfg(test)]
    pub fn leaf(&self) -> Option<Vec<u8>> {
        let cur = self.current.read().ok()?;
        cur.cert.first().map(|c| c.as_ref().to_vec())
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

/// The server configuration for a certificate chain and key in PEM files,
/// and the handle that reloads them.
pub fn load(cert: &Path, key: &Path) -> Result<(Arc<rustls::ServerConfig>, Arc<Certificate>), TlsError> {
    let certificate = Arc::new(Certificate {
        cert: cert.to_owned(),
        key: key.to_owned(),
        current: RwLock::new(Certificate::read(cert, key)?),
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certificate.clone());
    Ok((Arc::new(cfg), certificate))
}

/// Writes a self-signed certificate for localhost/127.0.0.1 (PEM) to the
/// two paths unless both exist already; for `estafette dev`.
pub fn ensure_self_signed(cert: &Path, key: &Path) -> Result<(), TlsError> {
    if cert.exists() && key.exists() {
        return Ok(());
    }
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Config(e.to_string()))?;
    std::fs::write(cert, ck.cert.pem()).map_err(|e| file_err(cert, e))?;
    write_private(key, ck.key_pair.serialize_pem().as_bytes()).map_err(|e| file_err(key, e))?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_loads_and_errors_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        let (c, k) = (d.path().join("c.pem"), d.path().join("k.pem"));
        ensure_self_signed(&c, &k).unwrap();
        load(&c, &k).unwrap();
        let e = load(&d.path().join("missing.pem"), &k).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        std::fs::write(&c, "not a certificate").unwrap();
        let e = load(&c, &k).unwrap_err().to_string();
        assert!(e.contains("c.pem"), "{e}");
    }

    #[test]
    fn reload_swaps_the_certificate_and_keeps_it_on_failure() {
        let d = tempfile::tempdir().unwrap();
        let (c, k) = (d.path().join("c.pem"), d.path().join("k.pem"));
        ensure_self_signed(&c, &k).unwrap();
        let (_, cert) = load(&c, &k).unwrap();
        let first = cert.leaf().unwrap();
        // A renewal: new files, then a reload.
        std::fs::remove_file(&c).unwrap();
        ensure_self_signed(&c, &d.path().join("k2.pem")).unwrap();
        // The new certificate with the old key does not fit: refused, kept.
        let e = cert.reload().unwrap_err().to_string();
        assert!(e.contains("k.pem") && e.contains("does not fit"), "{e}");
        assert_eq!(cert.leaf().unwrap(), first);
        std::fs::rename(d.path().join("k2.pem"), &k).unwrap();
        cert.reload().unwrap();
        assert_ne!(cert.leaf().unwrap(), first, "new handshakes get the renewed certificate");
    }
}
