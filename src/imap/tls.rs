//! TLS for the IMAP listeners: a rustls server configuration from the
//! PEM certificate chain and key named in the config, and, for `estafette
//! dev`, a self-signed certificate for localhost. Nothing else here: the
//! handshake itself happens in the connection code.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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

/// The server configuration for a certificate chain and key in PEM files.
pub fn load(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e))?;
    if certs.is_empty() {
        return Err(file_err(cert, "no certificate in this file"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key, e))?;
    build(certs, key)
}

fn build(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(cfg))
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
}
